#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: buffer_survey
short_description: Report what exists of burst buffers on a host, changing nothing
version_added: "0.1.0"
description:
  - Reads, on the host the task runs on, the three things a burst buffer leaves on a machine
    so that they can be compared with what the orchestrator's state store says should exist
    (C(bbctl reconcile)) - the GlusterFS volumes this server's glusterd knows, the brick
    directories on its brick roots, the mounts under the buffer mount roots, and (with
    O(aux_mounts)) the mounts that gluster's quota commands left.
  - Only names that start with one of O(prefixes) are reported, so a site's other volumes
    and directories are never listed, and never offered for removal.
  - Never changes anything; check mode and normal mode do the same.
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  volumes:
    description:
      - Ask this server's glusterd (C(gluster volume info)) for its volumes and their bricks.
    type: bool
    default: false
  timeout:
    description:
      - Seconds glusterd has to answer (the gluster CLI's C(--timeout); its own default is 120).
        A glusterd that is stopped or hung fails the task with C(Request timed out) after them,
        and C(bbctl reconcile) counts that against the server.
    type: int
  brick_roots:
    description:
      - Brick roots (the mount points of the NVMe bricks, the C(path) of each C(bb_bricks)
        entry) whose directories are listed. A root that does not exist is skipped.
    type: list
    elements: path
    default: []
  aux_mounts:
    description:
      - List the aux mounts of burst buffer volumes that gluster's quota commands make on the
        host they run on, C(/var/run/gluster/NAME_quota_list) and C(NAME_quota_limit). A command
        that timed out leaves its mount behind.
    type: bool
    default: false
  lustre_target_roots:
    description:
      - Directories where Lustre buffers' server targets are mounted (the C(lustre_buffer) role's
        C(lustre_buffer_target_root)). Each C(lustre) mount directly under one, named as the role
        names it (C(FSNAME-MDT0000), C(FSNAME-OST0001)), is reported in RV(lustre_targets). Nothing
        outside these directories is looked at, so a site's own Lustre servers are never listed.
    type: list
    elements: path
    default: []
  mount_roots:
    description:
      - Directories under which mounts are listed (the stage host's and compute nodes'
        buffer mount roots). Any file system type is reported.
    type: list
    elements: path
    default: []
  prefixes:
    description:
      - Names of the volumes and brick directories (and the last component of mount points)
        that belong to burst buffers.
    type: list
    elements: str
    default: [bbjob-, bbp-]
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
  - hpc.burstbuffer.glusterd
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - A brick directory's C(volume_id) is its C(trusted.glusterfs.volume-id) attribute (null when
    it has none - gluster never got to create the volume, or something else made it).
seealso:
  - module: hpc.burstbuffer.gluster_brick_dir
  - module: hpc.burstbuffer.gluster_volume
"""

EXAMPLES = r"""
- name: What this storage server holds of burst buffers
  hpc.burstbuffer.buffer_survey:
    volumes: true
    brick_roots: "{{ bb_bricks | map(attribute='path') }}"
  register: held

- name: Buffer mounts left on a compute node
  hpc.burstbuffer.buffer_survey:
    mount_roots: [/mnt/bb]
"""

RETURN = r"""
volumes:
  description: The volumes glusterd knows whose names start with a prefix ([] without O(volumes)).
  returned: always
  type: list
  elements: dict
  sample:
    - name: bbjob-4711
      id: a16102d7-05e9-4f25-8be5-bd6825bd3d20
      status: Started
      bricks: [{host: stor1-ib, path: /srv/bb/nvme0n1/bbjob-4711}]
brick_dirs:
  description: The directories on the brick roots whose names start with a prefix.
  returned: always
  type: list
  elements: dict
  sample: [{root: /srv/bb/nvme0n1, name: bbjob-4711, path: /srv/bb/nvme0n1/bbjob-4711, volume_id: null}]
aux_mounts:
  description: The aux mounts of volumes whose names start with a prefix ([] without O(aux_mounts)).
  returned: always
  type: list
  elements: dict
  sample: [{target: /run/gluster/bbjob-4711_quota_list, volume: bbjob-4711}]
lustre_targets:
  description: The Lustre targets mounted directly under O(lustre_target_roots), by their mount point's name.
  returned: always
  type: list
  elements: dict
  sample: [{target: /var/lib/bb-lustre/j3mv-OST0001, source: /dev/nvme1n1, fsname: j3mv, kind: ost, index: 1}]
mounts:
  description: Mounts at or under the mount roots whose last path component starts with a prefix.
  returned: always
  type: list
  elements: dict
  sample: [{target: /mnt/bb/bbjob-4711, source: "stor1-ib:/bbjob-4711", fstype: fuse.glusterfs}]
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster import GlusterCli, GlusterError
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster_rules import volume_id_of
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import aux_mount_volume, read_mountinfo

ARGUMENT_SPEC = dict(
    volumes=dict(type="bool", default=False),
    brick_roots=dict(type="list", elements="path", default=[]),
    aux_mounts=dict(type="bool", default=False),
    mount_roots=dict(type="list", elements="path", default=[]),
    lustre_target_roots=dict(type="list", elements="path", default=[]),
    prefixes=dict(type="list", elements="str", default=["bbjob-", "bbp-"]),
    glusterd_socket=dict(type="path"),
    timeout=dict(type="int"),
)


def ours(name, prefixes):
    return any(name.startswith(prefix) for prefix in prefixes)


def volumes(module, prefixes):
    cli = GlusterCli(module, module.params["glusterd_socket"], timeout=module.params["timeout"])
    return [{"name": v["name"], "id": v["id"], "status": v["status"],
             "bricks": [{"host": b["host"], "path": b["path"]} for b in v["bricks"]]}
            for v in cli.volumes() if ours(v["name"], prefixes)]


def brick_dirs(roots, prefixes):
    found = []
    for root in roots:
        try:
            names = sorted(os.listdir(root))
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(root, name)
            if ours(name, prefixes) and os.path.isdir(path) and not os.path.islink(path):
                found.append({"root": root, "name": name, "path": path, "volume_id": volume_id_of(path)})
    return found


def mounts(roots, prefixes):
    roots = [os.path.normpath(root) for root in roots]
    found = []
    for entry in read_mountinfo():
        target = entry.target
        inside = any(target == root or target.startswith(root + "/") for root in roots)
        if inside and ours(os.path.basename(target), prefixes):
            found.append({"target": target, "source": entry.source, "fstype": entry.fstype})
    return found


# How the lustre_buffer role names a target's mount point: FSNAME-MDT0000, FSNAME-OST000a.
TARGET_NAME = re.compile(r"^([A-Za-z0-9_-]{1,8})-(MDT|OST)([0-9a-f]{4})$")


def lustre_targets(roots, entries):
    """The lustre mounts (mountinfo entries) directly under one of roots, named as a target."""
    roots = {os.path.normpath(root) for root in roots}
    found = []
    for entry in entries:
        named = TARGET_NAME.match(os.path.basename(entry.target))
        if entry.fstype == "lustre" and os.path.dirname(entry.target) in roots and named:
            found.append({"target": entry.target, "source": entry.source, "fsname": named.group(1),
                          "kind": named.group(2).lower(), "index": int(named.group(3), 16)})
    return found


def aux_mounts(prefixes):
    found = []
    for entry in read_mountinfo():
        volume = aux_mount_volume(entry.target)
        if volume is not None and ours(volume, prefixes):
            found.append({"target": entry.target, "volume": volume})
    return found


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    result = {"changed": False, "volumes": [], "brick_dirs": [], "mounts": [], "aux_mounts": [],
              "lustre_targets": []}
    try:
        if params["volumes"]:
            result["volumes"] = volumes(module, params["prefixes"])
    except GlusterError as error:
        module.fail_json(msg=str(error), **result)
    result["brick_dirs"] = brick_dirs(params["brick_roots"], params["prefixes"])
    result["mounts"] = mounts(params["mount_roots"], params["prefixes"])
    if params["aux_mounts"]:
        result["aux_mounts"] = aux_mounts(params["prefixes"])
    if params["lustre_target_roots"]:
        result["lustre_targets"] = lustre_targets(params["lustre_target_roots"], read_mountinfo())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
