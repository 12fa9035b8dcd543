#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: gluster_brick_dir
short_description: Remove the brick directory a deleted GlusterFS volume left on a brick root
version_added: "0.1.0"
description:
  - C(gluster volume delete) leaves each brick directory on its brick with the
    C(trusted.glusterfs.volume-id) and C(trusted.gfid) extended attributes and a C(.glusterfs)
    directory, and gluster refuses to reuse such a path for a new volume ("is already part
    of a volume"). A failed C(gluster volume create) can leave the same behind on the bricks
    that passed its checks. This module removes such a directory, with everything in it, from
    the host the task runs on. Run it on each brick host after deleting the volume.
  - Refuses a directory that still belongs to an existing volume. It reads the directory's
    C(trusted.glusterfs.volume-id) and asks glusterd (C(gluster volume info)) whether a volume
    with that id exists, or has a brick on this host at this path.
  - Refuses anything that does not look like a brick directory (no volume-id attribute and no
    C(.glusterfs) directory), a symbolic link, a mount point (a brick root itself) and C(/).
  - A path that does not exist is already absent; nothing changes.
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  path:
    description:
      - The brick directory, for example C(/srv/bricks/nvme0/job-4711) (the path after
        C(host:) in the volume's brick list), not the brick root it lies in.
    type: path
    required: true
  state:
    description:
      - V(absent) is the only state; the directory is made by C(gluster volume create).
    type: str
    choices: [absent]
    default: absent
  check_volumes:
    description:
      - Ask glusterd whether the directory still belongs to a volume, and fail when glusterd
        cannot be asked.
      - Set V(false) only where no glusterd runs any more (a storage server being retired);
        then the directory is removed on the strength of its own attributes alone.
    type: bool
    default: true
extends_documentation_fragment:
  - hpc.burstbuffer.glusterd
notes:
  - Check mode reads everything and removes nothing; C(--diff) shows the directory going away.
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

- name: Then clear its brick directories, on every storage server
  hpc.burstbuffer.gluster_brick_dir:
    path: "{{ item.path }}/job-4711"
  loop: "{{ bb_bricks }}"
"""

RETURN = r"""
path:
  description: The brick directory, absolute.
  returned: always
  type: str
  sample: /srv/bricks/nvme0/job-4711
volume_id:
  description: The C(trusted.glusterfs.volume-id) the directory carried; null if none or absent.
  returned: always
  type: str
  sample: a16102d7-05e9-4f25-8be5-bd6825bd3d20
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster import (
    GlusterCli,
    GlusterError,
    is_local_host,
    volume_id_of,
)

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    state=dict(type="str", default="absent", choices=["absent"]),
    check_volumes=dict(type="bool", default=True),
    glusterd_socket=dict(type="path"),
)


class BrickDirError(Exception):
    """The directory must not be removed; the message says why and what to do."""


def refuse_non_brick_dir(path):
    """Raise unless path looks like a brick directory that may be removed as a whole."""
    if path == "/" or os.path.islink(path) or not os.path.isdir(path):
        raise BrickDirError(f"{path} is not a directory (or is a symbolic link or /); "
                            "give the brick directory of the deleted volume")
    if os.path.ismount(path):
        raise BrickDirError(f"{path} is a mount point (a brick root?); give the brick directory "
                            f"inside it, e.g. {path}/VOLUME")
    if volume_id_of(path) is None and not os.path.isdir(os.path.join(path, ".glusterfs")):
        raise BrickDirError(f"{path} carries no trusted.glusterfs.volume-id attribute and no "
                            ".glusterfs directory: it is not a gluster brick directory, so it "
                            "is left alone")


def owning_volume(volumes, path, volume_id, is_local=is_local_host):
    """The existing volume this directory belongs to, by volume-id or by brick path; or None."""
    for volume in volumes:
        if volume_id and volume["id"] == volume_id:
            return volume
        if any(b["path"] == path and is_local(b["host"]) for b in volume["bricks"]):
            return volume
    return None


def refuse_if_owned(cli, path, volume_id):
    try:
        volumes = cli.volumes()
    except GlusterError as error:
        raise BrickDirError(f"cannot ask glusterd whether {path} still belongs to a volume "
                            f"({error}); start glusterd, give glusterd_socket, or set "
                            "check_volumes: false if no glusterd runs here any more") from None
    volume = owning_volume(volumes, path, volume_id)
    if volume:
        raise BrickDirError(f"{path} belongs to volume {volume['name']} ({volume['status']}); "
                            "delete the volume first (hpc.burstbuffer.gluster_volume with "
                            "state: absent)")


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    path = os.path.abspath(module.params["path"])
    result = {"changed": False, "path": path, "volume_id": None}
    if not os.path.lexists(path):
        module.exit_json(**result)
    try:
        refuse_non_brick_dir(path)
        result["volume_id"] = volume_id_of(path)
        if module.params["check_volumes"]:
            refuse_if_owned(GlusterCli(module, module.params["glusterd_socket"]), path,
                            result["volume_id"])
    except BrickDirError as error:
        module.fail_json(msg=str(error), **result)
    if not module.check_mode:
        shutil.rmtree(path)
    result["changed"] = True
    if module._diff:
        result["diff"] = {"before": {"path": path, "state": "directory"},
                          "after": {"path": path, "state": "absent"}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
