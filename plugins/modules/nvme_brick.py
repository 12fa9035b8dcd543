#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nvme_brick
short_description: Format an NVMe device as an XFS brick and mount it at its brick root
version_added: "0.1.0"
description:
  - Makes one block device a brick (C(mkfs.xfs -i size=512), mounted at the brick root),
    or undoes that.
  - Reads first, then acts. The device is probed with C(blkid -p) (no cache) and the kernel
    is asked who uses it (C(/proc/self/mountinfo) by major:minor,
    C(/sys/class/block/X/holders), C(/proc/swaps)).
  - Safe by default. A device that already carries XFS is never reformatted. One that carries
    anything else (another filesystem, a partition table, an LVM or RAID member, swap, several
    signatures) is refused unless O(force=true). A device mounted somewhere other than O(path),
    held by another device or used as swap is always refused.
  - Runs C(mkfs.xfs) only on a path that is a block device at that moment (loop devices are).
  - Leaves C(/etc/fstab) alone unless O(persist=true).
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  device:
    description:
      - The block device, for example C(/dev/nvme0n1), a C(/dev/disk/by-id/) link or a loop
        device.
    type: path
    required: true
  path:
    description:
      - The brick root, where the device is mounted. Created (C(mkdir -p)) when missing.
    type: path
    required: true
  state:
    description:
      - V(present) formats the device XFS if it carries no signature (or O(force=true)) and
        mounts it at O(path).
      - V(absent) unmounts O(path) and removes every signature from the device (C(wipefs -a)).
        It refuses while O(path) holds GlusterFS brick data (a C(.glusterfs) directory in
        O(path) or in one of its subdirectories) unless O(force=true). That check needs the
        device mounted at O(path); an unmounted device is wiped as asked.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - With O(state=present), wipe and reformat a device that carries a signature other than
        XFS. An existing XFS filesystem is kept whatever O(force) says, so a second run never
        reformats.
      - With O(state=absent), wipe a brick even though it still holds GlusterFS brick data.
      - Never overrides the refusal of a device in use (mounted elsewhere, held, active swap).
    type: bool
    default: false
  mkfs_options:
    description:
      - Options given to C(mkfs.xfs) before the device. C(-f) is added only when O(force=true).
    type: list
    elements: str
    default: ['-i', 'size=512']
  mount_options:
    description:
      - Options of the mount at O(path). Applied when mounting; a mounted brick is not remounted.
      - C(allocsize=64k) keeps XFS from preallocating beyond what is written, so a dispersed
        buffer's bricks do not fill before its quota (the writer then gets EIO instead of EDQUOT).
    type: str
    default: noatime,inode64,allocsize=64k
  owner:
    description:
      - Owner of the brick root after mounting, a user name or a numeric uid.
      - Unchanged when not given.
    type: str
  mode:
    description:
      - Permissions of the brick root after mounting, an octal string such as V('0755').
        Quote it in YAML.
      - Unchanged when not given.
    type: raw
  persist:
    description:
      - Bricks are permanent server state, but this module records them in O(fstab) only when
        asked.
      - When V(true) and O(state=present), exactly one line
        C(UUID=<uuid> <path> xfs <mount_options> 0 0) is kept in O(fstab); older lines for the
        same mount point or UUID are replaced. When V(true) and O(state=absent), those lines are
        removed.
      - When V(false), O(fstab) is neither read nor written.
    type: bool
    default: false
  fstab:
    description:
      - The fstab file that O(persist) edits.
    type: path
    default: /etc/fstab
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Check mode reads everything and runs nothing; RV(commands) lists the exact commands that a
    real run would run.
  - In check mode the owner and mode of a brick root that is not mounted yet are predicted as
    those of a new XFS filesystem (root:root, 0755).
requirements:
  - util-linux (blkid, wipefs, mount, umount)
  - xfsprogs (mkfs.xfs)
seealso:
  - module: hpc.burstbuffer.buffer_mount
"""

EXAMPLES = r"""
- name: Make the first NVMe of each storage server a brick
  hpc.burstbuffer.nvme_brick:
    device: /dev/nvme0n1
    path: /srv/bricks/nvme0

- name: Reuse a device that carried an old ext4 filesystem, and keep the brick across reboots
  hpc.burstbuffer.nvme_brick:
    device: /dev/disk/by-id/nvme-SAMSUNG_MZQL23T8HCLS-00A07_S64HNE0T000001
    path: /srv/bricks/nvme1
    force: true
    persist: true

- name: Retire a brick (refused while it still holds a GlusterFS brick directory)
  hpc.burstbuffer.nvme_brick:
    device: /dev/nvme0n1
    path: /srv/bricks/nvme0
    state: absent
"""

RETURN = r"""
device:
  description: The device as given.
  returned: always
  type: str
  sample: /dev/nvme0n1
path:
  description: The brick root, absolute and without symlinks.
  returned: always
  type: str
  sample: /srv/bricks/nvme0
fstype:
  description: The filesystem on the device afterwards (in check mode, what it would be).
  returned: success
  type: str
  sample: xfs
uuid:
  description:
    - The filesystem UUID afterwards.
    - Null when there is none, or in check mode before C(mkfs.xfs) made it.
  returned: success
  type: str
  sample: 9170bc37-e4be-403a-aaec-936a1212c08a
commands:
  description:
    - The commands run, or in check mode the commands that would run, as argv lists.
    - After a failure, those that succeeded before it; the failed one is C(cmd), with C(rc),
      C(stdout) and C(stderr).
  returned: always
  type: list
  elements: list
  sample:
    - ["mkfs.xfs", "-i", "size=512", "/dev/nvme0n1"]
    - ["mount", "-t", "xfs", "-o", "noatime,inode64,allocsize=64k", "/dev/nvme0n1", "/srv/bricks/nvme0"]
fstab_line:
  description: The line kept in O(fstab).
  returned: when O(persist=true) and O(state=present)
  type: str
  sample: UUID=9170bc37-e4be-403a-aaec-936a1212c08a /srv/bricks/nvme0 xfs noatime,inode64,allocsize=64k 0 0
"""

import os
import tempfile
from collections import namedtuple
from functools import partial

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.block_devices import (
    BRICK_MOUNT_OPTIONS,
    DeviceError,
    describe_non_block,
    describe_signature,
    device_usage,
    filesystem_type,
    is_block_device,
    probe_signature,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import (
    CommandError,
    CommandRunner,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import (
    MountError,
    attribute_commands,
    busy_retry,
    mount_argv,
    mount_at,
    normalise_path,
    parse_mode,
    read_mountinfo,
    resolve_uid,
    root_attributes,
    umount_argv,
)

XFS = "xfs"
# What mkfs.xfs gives a new filesystem's root: the check-mode prediction.
NEW_XFS_ROOT = (0, 0, 0o755)
UMOUNT_RETRIES = 3
UMOUNT_DELAY = 1.0
UUID_PLACEHOLDER = "<uuid of the new filesystem>"

_BRICK_STATE_FIELDS = [
    "device", "path", "is_block", "not_block", "signature", "usage", "path_mount",
    "path_exists", "path_is_dir", "root", "gluster_dirs",
]
# What read_state found; fields it could not read (the device is no block device) stay None.
BrickState = namedtuple("BrickState", _BRICK_STATE_FIELDS,
                        defaults=[None] * len(_BRICK_STATE_FIELDS))


class BrickError(Exception):
    """The brick cannot be brought to the wanted state safely; the message says what to do."""


# --- reading ---------------------------------------------------------------------

def gluster_brick_dirs(path):
    """GlusterFS brick data under path: path/.glusterfs or path/<dir>/.glusterfs."""
    found = [path] if os.path.isdir(os.path.join(path, ".glusterfs")) else []
    try:
        children = sorted(os.listdir(path))
    except OSError:
        return found
    return found + [os.path.join(path, child) for child in children
                    if os.path.isdir(os.path.join(path, child, ".glusterfs"))]


def read_state(runner, device, path):
    entries = read_mountinfo()
    common = dict(device=device, path=path, path_mount=mount_at(entries, path),
                  path_exists=os.path.lexists(path), path_is_dir=os.path.isdir(path))
    if not is_block_device(device):
        return BrickState(is_block=False, not_block=describe_non_block(device), **common)
    state = BrickState(is_block=True, signature=probe_signature(runner, device),
                       usage=device_usage(device, mountinfo_entries=entries), **common)
    if mounted_here(state):
        state = state._replace(root=root_attributes(path), gluster_dirs=gluster_brick_dirs(path))
    return state


def mounted_here(state):
    """True if the device itself (not a partition, not another device) is mounted at path."""
    mount = state.path_mount
    return bool(mount and state.usage
                and (mount.major, mount.minor) == tuple(state.usage["numbers"]))


# --- planning: (state read, params) -> commands; pure ----------------------------------

def refuse_if_in_use(state):
    usage = state.usage
    reasons = "; ".join(usage["reasons"])
    if usage["holders"] or usage["swap"]:
        raise BrickError(f"{state.device} is in use: {reasons}. Stop using it (swapoff, remove "
                         "what is stacked on it) before making it a brick.")
    elsewhere = [m for m in usage["mounts"] if m.target != state.path]
    if elsewhere and not mounted_here(state):
        raise BrickError(f"{state.device} is in use: {reasons}. Unmount it first, or give "
                         f"path: {elsewhere[0].target} if that is its brick root.")


def refuse_foreign_mount_at_path(state):
    mount = state.path_mount
    if mount and not mounted_here(state):
        raise BrickError(f"{state.path} has {mount.source} ({mount.fstype}) mounted, not "
                         f"{state.device}; unmount it or choose another path.")


def refuse_path_not_dir(state):
    if state.path_exists and not state.path_is_dir:
        raise BrickError(f"{state.path} exists and is not a directory; "
                         "a brick root must be a directory.")


def mkfs_argv(device, mkfs_options, force):
    return ["mkfs.xfs", *(["-f"] if force else []), *mkfs_options, device]


def carries_plain_xfs(signature):
    return (filesystem_type(signature) == XFS and not signature.get("PTTYPE")
            and not signature.get("AMBIVALENT"))


def format_commands(state, params):
    """Commands that put XFS on the device; [] if it already carries XFS."""
    signature = state.signature
    if carries_plain_xfs(signature):
        return []
    if not signature:
        return [mkfs_argv(state.device, params["mkfs_options"], params["force"])]
    if not params["force"]:
        raise BrickError(
            f"{state.device} carries {describe_signature(signature)}; refusing to format it as "
            "a brick (safe mode). If its data may be destroyed, set force: true (runs wipefs -a "
            "and mkfs.xfs -f); otherwise choose another device.")
    return [["wipefs", "-a", state.device], mkfs_argv(state.device, params["mkfs_options"], True)]


def refuse_non_block(state):
    raise BrickError(f"{state.device} {state.not_block}: not a block device. Give the NVMe "
                     "device node (or its /dev/disk/by-id link); this module never runs mkfs "
                     "on anything else.")


def plan_present(state, params):
    """Argv lists that make the device an XFS brick mounted at path."""
    if not state.is_block:
        refuse_non_block(state)
    refuse_if_in_use(state)
    refuse_foreign_mount_at_path(state)
    if mounted_here(state):
        if state.path_mount.fstype != XFS:
            raise BrickError(f"{state.device} is mounted at {state.path} as "
                             f"{state.path_mount.fstype}, not XFS; unmount it and set "
                             "force: true to reformat it.")
        return []
    refuse_path_not_dir(state)
    commands = format_commands(state, params)
    if not state.path_exists:
        commands.append(["mkdir", "-p", state.path])
    commands.append(mount_argv(state.device, state.path, XFS, params["mount_options"]))
    return commands


def plan_absent(state, params):
    """Argv lists that unmount the brick and wipe the device."""
    if not state.is_block:
        if state.not_block == "does not exist":
            return []  # the device is gone: nothing of the brick is left on it
        raise BrickError(f"{state.device} {state.not_block}: not a block device; "
                         "there is no brick to remove there.")
    refuse_if_in_use(state)
    refuse_foreign_mount_at_path(state)
    commands = []
    if mounted_here(state):
        if state.gluster_dirs and not params["force"]:
            raise BrickError(
                f"{state.path} holds GlusterFS brick data ({', '.join(state.gluster_dirs)}); "
                "delete the volume that uses it first, or set force: true to destroy it.")
        commands.append(umount_argv(state.path))
    if state.signature:
        commands.append(["wipefs", "-a", state.device])
    return commands


# --- fstab: lines in, lines out; pure -------------------------------------------------

def fstab_escape(path):
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")


def fstab_line(uuid, path, options):
    return f"UUID={uuid} {fstab_escape(path)} xfs {options} 0 0"


def _is_line_for(line, path, uuid):
    fields = line.split()
    if len(fields) < 2 or fields[0].startswith("#"):
        return False
    return fields[1] == fstab_escape(path) or (uuid is not None and fields[0] == f"UUID={uuid}")


def fstab_without(lines, path, uuid):
    """fstab lines without those for this mount point or UUID."""
    return [line for line in lines if not _is_line_for(line, path, uuid)]


def fstab_with(lines, path, uuid, wanted):
    """fstab lines with exactly one line for this brick, in place of any older ones."""
    if [line for line in lines if _is_line_for(line, path, uuid)] == [wanted]:
        return list(lines)
    return [*fstab_without(lines, path, uuid), wanted]


# --- acting ----------------------------------------------------------------------------

def brick_runner(module):
    """The module's CommandRunner: umount is retried while the brick is busy."""
    return CommandRunner(module, retry=busy_retry(UMOUNT_RETRIES, UMOUNT_DELAY, only=("umount",)))


def run_commands(runner, commands):
    """Each command through the runner; mkfs.xfs only on what is a block device at that moment."""
    for argv in commands:
        guard = partial(refuse_vanished_device, argv[-1]) if argv[0] == "mkfs.xfs" else None
        runner.change(argv, before=guard)


def refuse_vanished_device(device):
    """Checked again at the last moment: a device node can vanish or become a file."""
    if not is_block_device(device):
        raise BrickError(f"{device} is no longer a block device; not running mkfs.xfs.")


def edit_fstab(runner, fstab, update):
    """Apply update(lines) -> lines to the fstab file; True if that changes it.

    Written atomically (temporary file + rename) and never in check mode.
    """
    try:
        with open(fstab) as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        lines = []
    new_lines = update(lines)
    if new_lines == lines:
        return False
    runner.act(write_fstab, runner.module, fstab, new_lines)
    return True


def write_fstab(module, fstab, lines):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(fstab) or ".", prefix=".fstab.")
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))
    module.atomic_move(tmp, fstab)


def brick_facts(state):
    mount = state.path_mount if mounted_here(state) else None
    return {"fstype": filesystem_type(state.signature or {}), "mounted": mount is not None,
            "mount_point": mount.target if mount else None}


def ensure_present(runner, params, state):
    planned = plan_present(state, params)
    run_commands(runner, planned)
    uuid = state.signature.get("UUID")
    if any(argv[0] == "mkfs.xfs" for argv in planned):
        uuid = None if runner.check_mode else probe_signature(runner, state.device).get("UUID")
    root = (state.root or NEW_XFS_ROOT) if runner.check_mode else root_attributes(state.path)
    run_commands(runner, attribute_commands(state.path, root, uid=resolve_uid(params["owner"]),
                                            mode=parse_mode(params["mode"])))
    result = {"fstype": XFS, "uuid": uuid}
    if params["persist"]:
        line = fstab_line(uuid or UUID_PLACEHOLDER, state.path, params["mount_options"])
        result["fstab_changed"] = edit_fstab(
            runner, params["fstab"], lambda lines: fstab_with(lines, state.path, uuid, line))
        result["fstab_line"] = line
    return result, {"fstype": XFS, "mounted": True, "mount_point": state.path}


def ensure_absent(runner, params, state):
    run_commands(runner, plan_absent(state, params))
    result = {"fstype": None, "uuid": None}
    if params["persist"]:
        uuid = (state.signature or {}).get("UUID")
        result["fstab_changed"] = edit_fstab(
            runner, params["fstab"], lambda lines: fstab_without(lines, state.path, uuid))
    return result, {"fstype": None, "mounted": False, "mount_point": None}


ARGUMENT_SPEC = dict(
    device=dict(type="path", required=True),
    path=dict(type="path", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    force=dict(type="bool", default=False),
    mkfs_options=dict(type="list", elements="str", default=["-i", "size=512"]),
    mount_options=dict(type="str", default=BRICK_MOUNT_OPTIONS),
    owner=dict(type="str"),
    mode=dict(type="raw"),
    persist=dict(type="bool", default=False),
    fstab=dict(type="path", default="/etc/fstab"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = dict(module.params, path=normalise_path(module.params["path"]))
    runner = brick_runner(module)
    echoed = {"device": params["device"], "path": params["path"]}
    try:
        result = run(runner, params)
    except (BrickError, CommandError, DeviceError, MountError, OSError) as error:
        module.fail_json(**runner.failure(error, **echoed))
    module.exit_json(**result, **echoed)


def run(runner, params):
    state = read_state(runner, params["device"], params["path"])
    ensure = ensure_present if params["state"] == "present" else ensure_absent
    result, after = ensure(runner, params, state)
    fstab_changed = result.pop("fstab_changed", False)
    return runner.result(brick_facts(state), after,
                         changed=bool(runner.commands) or fstab_changed, **result)


if __name__ == "__main__":
    main()
