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

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import (
    CommandError,
    CommandRunner,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import (
    MountError,
    is_shared,
    mount_at,
    normalise_path,
    parse_mode,
    read_mountinfo,
)


class RootError(Exception):
    """The mount root cannot be made shared; the message says what to do."""


def plan_shared(path, exists, is_dir, mount, mode):
    """Argv lists that make path a shared mount point; [] if it is one. Pure.

    mount: the MountEntry at path (None: path is not a mount point).
    """
    if exists and not is_dir:
        raise RootError(f"{path} exists and is not a directory; buffers are mounted under a directory")
    commands = [] if exists else [["mkdir", "-p", "--mode", f"{mode:04o}", path]]
    if mount is None:
        commands.append(["mount", "--bind", path, path])
    if mount is None or not is_shared(mount):
        commands.append(["mount", "--make-shared", path])
    return commands


def describe(mount):
    return {"mount_point": mount is not None, "shared": mount is not None and is_shared(mount)}


def run(runner, path, mode):
    mount = mount_at(read_mountinfo(), path)
    before = describe(mount)
    runner.change_all(plan_shared(path, os.path.lexists(path), os.path.isdir(path), mount, mode))
    if runner.check_mode:
        after = {"mount_point": True, "shared": True}
    else:
        after = describe(mount_at(read_mountinfo(), path))
        if not after["shared"]:
            raise RootError(f"mount --make-shared {path} succeeded but the kernel shows no shared "
                            "propagation there; see dmesg")
    return runner.result(before, after, **after)


def main():
    module = AnsibleModule(argument_spec=dict(path=dict(type="path", required=True),
                                              mode=dict(type="str", default="0755")),
                           supports_check_mode=True)
    path = normalise_path(module.params["path"])
    runner = CommandRunner(module)
    try:
        result = run(runner, path, parse_mode(module.params["mode"]))
    except (RootError, MountError, CommandError, OSError) as error:
        module.fail_json(**runner.failure(error, path=path))
    module.exit_json(**result, path=path)


if __name__ == "__main__":
    main()
