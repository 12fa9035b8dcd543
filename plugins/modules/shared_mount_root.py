#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: shared_mount_root
short_description: Make the directory buffers are mounted under a shared mount point
version_added: "0.1.0"
description:
  - Makes O(path), the directory a node mounts burst buffers under, a mount point with shared
    propagation - bind-mounted onto itself if it is not a mount point yet, then
    C(mount --make-shared).
  - A mount namespace made earlier with slave propagation (C(unshare -m --propagation slave), a
    container started by Shifter, Apptainer/Singularity or bubblewrap with the root bound in) then
    sees the buffers mounted under O(path) later, and sees them go when they are unmounted.
    Without it, where the host's C(/) is a private mount (as in many containers and on hosts
    without systemd), a namespace sees only what was mounted before it was made.
  - Only O(path) itself changes; mounts already under it keep their propagation.
  - Idempotent; the truth is C(/proc/self/mountinfo) (its C(shared:N) field).
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  path:
    description:
      - The mount root, for example C(/mnt/bb). Created (C(mkdir -p), mode O(mode)) when missing.
    type: path
    required: true
  mode:
    description:
      - Permissions of O(path) when it has to be created, an octal string such as V('0755').
    type: str
    default: "0755"
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Check mode reads everything and runs nothing; RV(commands) lists the commands a real run would
    run.
  - The self bind mount stays until the node reboots or it is unmounted (C(umount PATH)) when no
    buffer is mounted under it; it costs nothing.
requirements:
  - util-linux (mount)
  - root on the target
seealso:
  - module: hpc.burstbuffer.buffer_mount
"""

EXAMPLES = r"""
- name: Let containers started before the job see its buffers
  hpc.burstbuffer.shared_mount_root:
    path: /mnt/bb
"""

RETURN = r"""
path:
  description: The mount root, absolute and without symlinks.
  returned: always
  type: str
  sample: /mnt/bb
mount_point:
  description: Whether O(path) is a mount point afterwards (in check mode, would be).
  returned: success
  type: bool
  sample: true
shared:
  description: Whether O(path) has shared propagation afterwards (in check mode, would have).
  returned: success
  type: bool
  sample: true
commands:
  description: The commands run, or in check mode the commands that would run, as argv lists.
  returned: always
  type: list
  elements: list
  sample:
    - ["mount", "--bind", "/mnt/bb", "/mnt/bb"]
    - ["mount", "--make-shared", "/mnt/bb"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import (
    CommandError,
    CommandRunner,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import (
    MountError,
    ensure_shared,
    normalise_path,
    parse_mode,
)


def run(runner, path, mode):
    before, after = ensure_shared(runner, path, mode)
    return runner.result(before, after, **after)


def main():
    module = AnsibleModule(argument_spec=dict(path=dict(type="path", required=True),
                                              mode=dict(type="str", default="0755")),
                           supports_check_mode=True)
    path = normalise_path(module.params["path"])
    runner = CommandRunner(module)
    try:
        result = run(runner, path, parse_mode(module.params["mode"]))
    except (MountError, CommandError, OSError) as error:
        module.fail_json(**runner.failure(error, path=path))
    module.exit_json(**result, path=path)


if __name__ == "__main__":
    main()
