#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cache_overlay
short_description: Mount a cache buffer (fuse-overlayfs over the cached directory) for the job's user
version_added: "0.1.0"
description:
  - A cache buffer (C(jobdw type=cache pfs=DIR)) is a fuse-overlayfs mount at O(path) whose lower
    directory is O(lower) (DIR) and whose upper and work directories are C(upper) and C(work) in
    O(buffer_dir), a directory of the job's mounted burst buffer. The job reads what it has not
    written from DIR; what it creates, changes or deletes stays in the buffer until
    hpc.burstbuffer.cache_writeback writes it back.
  - The overlay daemon runs as O(uid)/O(gid), so DIR is read and the buffer written with the job
    user's rights only. The module (root) makes the FUSE mount itself and hands the device to
    the daemon, so it works whatever the mode of C(/dev/fuse). Without C(allow_other) only that
    user can enter the mount (not even root).
  - Before the first mount the user's C(upper) and C(work) directories are made (mode 0700) and
    the time of the mount is kept in O(buffer_dir)C(/since) (the write-back keeps what others
    changed on DIR after it).
  - O(state=unmounted) unmounts and waits until the daemon has exited, so every write the job made
    is in the buffer before the write-back reads it. A busy mount fails with what to do.
  - Idempotent; the truth is C(/proc/self/mountinfo).
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  path:
    description: Where the job finds the cache (its C($DW_JOB_STRIPED)). Made (mode 0755) when missing.
    type: path
    required: true
  lower:
    description:
      - The cached directory on the parallel file system (the job's C(pfs=)). The job's user must be
        able to read it. Required with O(state=mounted).
    type: path
  buffer_dir:
    description:
      - The directory of the mounted buffer that holds C(upper), C(work) and C(since), owned by the
        job's user. Required with O(state=mounted).
    type: path
  uid:
    description: The job's user; never 0. Required with O(state=mounted).
    type: int
  gid:
    description: The job's group; never 0. Required with O(state=mounted).
    type: int
  state:
    description: V(mounted) or V(unmounted).
    type: str
    choices: [mounted, unmounted]
    default: mounted
  remove_dir:
    description: With O(state=unmounted), remove the empty directory O(path) afterwards.
    type: bool
    default: false
  wait:
    description: Seconds to wait for the daemon to exit after the unmount.
    type: float
    default: 60
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Paths holding C(,) or C(:) cannot be passed to fuse-overlayfs and are refused.
  - One node only - fuse-overlayfs on several nodes over one shared upper directory is not safe.
requirements:
  - fuse-overlayfs (Debian package C(fuse-overlayfs)), FUSE in the kernel
  - root on the target
seealso:
  - module: hpc.burstbuffer.cache_writeback
  - module: hpc.burstbuffer.buffer_mount
"""

EXAMPLES = r"""
- name: The job's cache of /lus/alice/run42
  hpc.burstbuffer.cache_overlay:
    path: /mnt/bb/bbjob-42
    lower: /lus/alice/run42
    buffer_dir: /mnt/bb/bbjob-42-cache
    uid: 1001
    gid: 1001

- name: Unmount it at the end of the job
  hpc.burstbuffer.cache_overlay:
    path: /mnt/bb/bbjob-42
    state: unmounted
    remove_dir: true
"""

RETURN = r"""
path:
  description: The mount point.
  returned: always
  type: str
  sample: /mnt/bb/bbjob-42
pid:
  description: The overlay daemon's process id, when this run mounted it.
  returned: when mounted by this run
  type: int
  sample: 4242
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from ansible_collections.hpc.burstbuffer.plugins.module_utils import cache_overlay as co
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    lower=dict(type="path"),
    buffer_dir=dict(type="path"),
    uid=dict(type="int"),
    gid=dict(type="int"),
    state=dict(type="str", default="mounted", choices=["mounted", "unmounted"]),
    remove_dir=dict(type="bool", default=False),
    wait=dict(type="float", default=60.0),
)


def mount(module, params):
    path = params["path"]
    if params["uid"] == 0 or params["gid"] == 0:
        module.fail_json(msg="refusing to run the cache as uid %d gid %d: the overlay runs as the job's user, "
                             "never as root." % (params["uid"], params["gid"]), path=path)
    if co.is_mounted(path):
        module.exit_json(changed=False, path=path)
    if module.check_mode:
        module.exit_json(changed=True, path=path)
    try:
        if not os.path.isdir(path):
            os.makedirs(path, 0o755)
        co.prepare_as_user(params["lower"], params["buffer_dir"], params["uid"], params["gid"])
        pid = co.mount_overlay(params["lower"], params["buffer_dir"], path, params["uid"], params["gid"],
                               binary=module.get_bin_path("fuse-overlayfs", required=True))
    except (co.OverlayError, StageError, OSError) as exc:
        module.fail_json(msg="cache overlay at %s: %s" % (path, to_native(exc)), path=path)
    module.exit_json(changed=True, path=path, pid=pid)


def unmount(module, params):
    """Unmount, wait for the daemon, remove the directory if asked. Root cannot stat a user's FUSE
    mount (no allow_other), so the directory is looked at only after the unmount."""
    path = params["path"]
    mounted = co.is_mounted(path)
    leftover = co.daemon_pid(path) is not None
    if module.check_mode:
        module.exit_json(changed=mounted or (params["remove_dir"] and os.path.isdir(path)), path=path)
    removed = False
    try:
        co.unmount_overlay(path, mounted, wait=params["wait"])
        if params["remove_dir"] and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
            removed = True
    except (co.OverlayError, OSError) as exc:
        module.fail_json(msg=to_native(exc), path=path)
    module.exit_json(changed=mounted or leftover or removed, path=path)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "mounted", ["lower", "buffer_dir", "uid", "gid"])])
    if module.params["state"] == "mounted":
        mount(module, module.params)
    unmount(module, module.params)


if __name__ == "__main__":
    main()
