#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: gluster_brick_dir
short_description: Remove the brick directories a deleted GlusterFS volume left on a server
version_added: "0.1.0"
description:
  - C(gluster volume delete) leaves each brick directory on its brick with the
    C(trusted.glusterfs.volume-id) and C(trusted.gfid) extended attributes and a C(.glusterfs)
    directory, and gluster refuses to reuse such a path for a new volume ("is already part
    of a volume"). A failed C(gluster volume create) can leave the same behind on the bricks
    that passed its checks. This module removes such directories, with everything in them, from
    the host the task runs on. Run it on each brick host after deleting the volume (the host
    that deletes it can do so in the same task, see O(hpc.burstbuffer.gluster_volume#module:remove_brick_dirs)).
  - Refuses a directory that still belongs to an existing volume. It reads the directory's
    C(trusted.glusterfs.volume-id) and asks glusterd (C(gluster volume info)) whether a volume
    with that id exists, or has a brick on this host at this path. With O(wait_timeout) it asks
    again until the volume is gone, so every server can start its part of a teardown while
    another server is still stopping and deleting the volume. It stops waiting, and refuses,
    while a peer of this glusterd is disconnected, since glusterd deletes no volume then.
  - Refuses anything that does not look like a brick directory (no volume-id attribute and no
    C(.glusterfs) directory), a symbolic link, a mount point (a brick root itself) and C(/).
    All paths are checked before any is removed; one refusal removes nothing.
  - A path that does not exist is already absent; nothing changes.
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  path:
    description:
      - The brick directories on this host, for example C(/srv/bricks/nvme0/job-4711) (the path
        after C(host:) in the volume's brick list), not the brick roots they lie in.
      - One path may be given as a string (unless it contains a comma, which Ansible would
        split on); several as a list. One task removes them all, one module run.
    type: list
    elements: path
    required: true
    aliases: [paths]
  state:
    description:
      - V(absent) is the only state; the directories are made by C(gluster volume create).
    type: str
    choices: [absent]
    default: absent
  check_volumes:
    description:
      - Ask glusterd whether each directory still belongs to a volume, and fail when glusterd
        cannot be asked.
      - Set V(false) only where no glusterd runs any more (a storage server being retired);
        then the directories are removed on the strength of their own attributes alone.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to keep asking glusterd (every 0.1 s) while a volume still owns a directory,
        before refusing. V(0) asks once.
      - For a teardown that runs on all servers at once (strategy C(free)) while the first
        server deletes the volume.
    type: int
    default: 0
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
  - hpc.burstbuffer.glusterd
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Check mode reads everything and removes nothing; C(--diff) lists the directories going
    away. With O(wait_timeout) above 0, check mode does not wait, and counts directories a
    volume still owns as removable (the volume is expected to be deleted by another task).
  - The module acts on the host it runs on only; it never reaches other brick hosts.
seealso:
  - module: hpc.burstbuffer.gluster_volume
"""

EXAMPLES = r"""
- name: Delete a buffer's volume
  hpc.burstbuffer.gluster_volume:
    name: job-4711
    state: absent
  run_once: true

- name: Then clear its brick directories, on every storage server, one task each
  hpc.burstbuffer.gluster_brick_dir:
    path: "{{ bb_bricks | map(attribute='path') | map('regex_replace', '$', '/job-4711') }}"

- name: Or, in a play with strategy free, wait for the first server to delete the volume
  hpc.burstbuffer.gluster_brick_dir:
    path: /srv/bricks/nvme0/job-4711
    wait_timeout: 120
"""

RETURN = r"""
paths:
  description: The brick directories asked for, absolute.
  returned: always
  type: list
  elements: str
  sample: [/srv/bricks/nvme0/job-4711]
removed:
  description:
    - The directories removed (in check mode, that would be removed), each with the
      C(trusted.glusterfs.volume-id) it carried (null if none).
  returned: always
  type: list
  elements: dict
  sample:
    - path: /srv/bricks/nvme0/job-4711
      volume_id: a16102d7-05e9-4f25-8be5-bd6825bd3d20
waited:
  description: Seconds spent asking glusterd until no volume owned the directories.
  returned: always
  type: float
  sample: 1.9
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.brick_dirs import (
    BrickDirError,
    existing_dirs,
    owned_message,
    remove,
    wait_until_unowned,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import (
    CommandRunner,
    diff_of,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster import GlusterCli, GlusterError

ARGUMENT_SPEC = dict(
    path=dict(type="list", elements="path", required=True, aliases=["paths"]),
    state=dict(type="str", default="absent", choices=["absent"]),
    check_volumes=dict(type="bool", default=True),
    wait_timeout=dict(type="int", default=0),
    glusterd_socket=dict(type="path"),
)


def refuse_owned(module, dirs):
    """Seconds waited until no volume owned dirs; BrickDirError if one still does after
    wait_timeout. In check mode, the directories of a volume being deleted elsewhere count as
    removable when a wait is asked."""
    params = module.params
    if not (dirs and params["check_volumes"]):
        return 0
    cli = GlusterCli(module, params["glusterd_socket"])
    wait = 0 if module.check_mode else max(params["wait_timeout"], 0)
    started = time.monotonic()
    owned = wait_until_unowned(cli.volumes, dirs, wait, read_peers=cli.pool)
    if owned and not (module.check_mode and params["wait_timeout"] > 0):
        raise BrickDirError(owned_message(owned, wait))
    return round(time.monotonic() - started, 1)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    paths = [os.path.abspath(path) for path in module.params["path"]]
    runner = CommandRunner(module)
    result = {"changed": False, "paths": paths, "removed": [], "waited": 0}
    try:
        dirs = existing_dirs(paths)
        result["waited"] = refuse_owned(module, dirs)
    except (BrickDirError, GlusterError) as error:
        module.fail_json(msg=str(error), **result)  # no commands: it only removes directories
    runner.act(remove, dirs)
    before = {"directories": [d["path"] for d in dirs]}
    result.update(changed=bool(dirs), removed=dirs,
                  diff=diff_of(before, {"directories": []}, bool(dirs)))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
