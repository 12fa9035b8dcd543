#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: lustre_target
short_description: Format, mount and unmount one Lustre server target (MGS, MDT or OST)
version_added: 0.1.0
description:
  - Makes one block device hold one Lustre target (C(mkfs.lustre)) and starts or stops
    the target service (C(mount -t lustre) / C(umount)).
  - Idempotence comes from the label on the device, read with C(blkid -p -o export).
    A device labelled C(fs-OST0003) (or C(fs:OST0003), the label of a target that has
    never been mounted) already is OST 3 of C(fs) and is not formatted again.
    For MDTs the roles are confirmed with C(tunefs.lustre --dryrun), because an MDT
    and a combined MGS/MDT carry the same label.
  - A device that carries any other label or signature is refused unless I(force=true).
    A path that is not a block device is always refused.
  - Check mode runs only the read-only probes and returns in RV(commands) the exact
    argv lists it would run (the command plan).
  - Bring targets up in the order MGS, MDT(s), OSTs and down in the order MDT(s), OSTs, MGS
    (the Lustre Operations Manual's order); this module handles one target per call.
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  fsname:
    description:
      - Name of the Lustre filesystem, 1-8 characters from C(A-Z), C(a-z), C(0-9), C(_) and C(-).
      - Not passed to C(mkfs.lustre) for a standalone MGS, which serves any number of filesystems.
    type: str
    required: true
  kind:
    description:
      - The target to make. C(mgs_mdt) is a combined MGS and MDT on one device
        (C(mkfs.lustre --mgs --mdt)).
    type: str
    required: true
    choices: [mgs, mdt, ost, mgs_mdt]
  index:
    description:
      - Target index, 0 to 65534. Required for C(mdt) and C(ost); defaults to 0 for C(mgs_mdt);
        must not be set for C(mgs).
    type: int
  device:
    description:
      - Block device to format (for I(backfstype=zfs), the vdev of the target's pool).
    type: path
    required: true
  mgsnode:
    description:
      - The MGS, one entry per MGS node (each becomes one C(--mgsnode=)); an entry lists that
        node's NIDs separated by commas, for example C(10.0.0.1@tcp,10.1.0.1@o2ib).
      - Required for C(mdt) and C(ost).
    type: list
    elements: str
  mountpoint:
    description:
      - Where the target is mounted. Required for I(state=mounted); created if missing.
    type: path
  state:
    description:
      - C(present) formats the device if needed and leaves mounts alone.
      - C(mounted) formats if needed and mounts the target at I(mountpoint).
      - C(unmounted) formats if needed and makes sure the target is not mounted.
      - C(absent) unmounts the target; with I(force=true) it also wipes the signatures
        (C(wipefs -a)) of a device that carries this target. A device that carries
        anything else is left alone.
    type: str
    choices: [present, mounted, unmounted, absent]
    default: present
  force:
    description:
      - Reformat (C(mkfs.lustre --reformat)) a device that carries a different label or any
        other signature, and let I(state=absent) wipe the device. This destroys data.
    type: bool
    default: false
  backfstype:
    description:
      - Backing filesystem of the target.
    type: str
    choices: [ldiskfs, zfs]
    default: ldiskfs
  zfs_dataset:
    description:
      - For I(backfstype=zfs), the C(pool/dataset) that holds the target; the pool is created
        on I(device). Required with I(backfstype=zfs).
    type: str
  mkfsoptions:
    description:
      - Options for the backing filesystem's mkfs, passed as C(--mkfsoptions=...).
    type: str
  mount_options:
    description:
      - Options for C(mount -t lustre), passed as C(-o ...).
    type: str
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Commands are run without a shell; C(mkfs.lustre), C(mount), C(umount), C(wipefs), C(blkid),
    C(findmnt) and C(tunefs.lustre) are looked up in E(PATH) (then the sbin directories).
  - Mount state is read with C(findmnt), that is from C(/proc/self/mountinfo).
  - An existing target is not re-tuned (I(mgsnode), I(mkfsoptions) are only used when formatting);
    use C(tunefs.lustre) for that.
  - I(state=absent) with I(force=true) is not supported for ZFS; destroy the pool with
    C(zpool destroy).
requirements:
  - Lustre server utilities (C(mkfs.lustre), C(tunefs.lustre), C(mount.lustre)) and kernel modules
    on the target host (check mode plans without them)
  - util-linux (C(blkid), C(findmnt), C(wipefs)).
"""

EXAMPLES = r"""
- name: Combined MGS and MDT 0 of filesystem bb1, started
  hpc.burstbuffer.lustre_target:
    fsname: bb1
    kind: mgs_mdt
    index: 0
    device: /dev/nvme0n1
    mountpoint: /mnt/lustre/bb1-MDT0000
    state: mounted

- name: OST 3 of bb1, registered with a failover pair of MGS nodes
  hpc.burstbuffer.lustre_target:
    fsname: bb1
    kind: ost
    index: 3
    device: /dev/nvme1n1
    mgsnode:
      - 10.0.0.1@tcp
      - 10.0.0.2@tcp
    mountpoint: /mnt/lustre/bb1-OST0003
    state: mounted

- name: Show what formatting a device that holds something else would run
  hpc.burstbuffer.lustre_target:
    fsname: bb1
    kind: ost
    index: 4
    device: /dev/nvme2n1
    mgsnode: [10.0.0.1@tcp]
    force: true
  check_mode: true
  register: plan

- name: Stop OST 3 and wipe its device
  hpc.burstbuffer.lustre_target:
    fsname: bb1
    kind: ost
    index: 3
    device: /dev/nvme1n1
    mgsnode: [10.0.0.1@tcp]
    state: absent
    force: true
"""

RETURN = r"""
label:
  description: The label that names the target (C(fs-OST0003), C(fs-MDT0000) or C(MGS)).
  returned: always
  type: str
  sample: bb1-OST0003
commands:
  description:
    - The argv lists run (or, in check mode, that would run), in order. Empty when nothing changed.
    - After a failure, those that succeeded before it; the failed one is C(cmd), with C(rc),
      C(stdout) and C(stderr).
  returned: always
  type: list
  elements: list
  sample: [["/usr/sbin/mkfs.lustre", "--ost", "--fsname=bb1", "--index=3", "--mgsnode=10.0.0.1@tcp",
            "--backfstype=ldiskfs", "/dev/nvme1n1"],
           ["/usr/bin/mount", "-t", "lustre", "/dev/nvme1n1", "/mnt/lustre/bb1-OST0003"]]
mounted:
  description: Whether the target is mounted after the run (in check mode, would be).
  returned: always
  type: bool
  sample: true
mountpoint:
  description: Where the target is mounted after the run, or null.
  returned: always
  type: str
  sample: /mnt/lustre/bb1-OST0003
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.block_devices import (
    DeviceError,
    describe_non_block,
    describe_signature,
    device_usage,
    is_block_device,
    probe_signature,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import (
    CommandError,
    CommandRunner,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.lustre import (
    LustreError,
    expected_roles,
    labels_match,
    mkfs_argv,
    mount_argv,
    mount_source,
    parse_findmnt,
    parse_tunefs_dryrun,
    target_label,
    umount_argv,
    validate_index,
    validate_mgsnodes,
    wipe_argv,
    zfs_pool,
)

ARGUMENT_SPEC = dict(
    fsname=dict(type="str", required=True),
    kind=dict(type="str", required=True, choices=["mgs", "mdt", "ost", "mgs_mdt"]),
    index=dict(type="int"),
    device=dict(type="path", required=True),
    mgsnode=dict(type="list", elements="str"),
    mountpoint=dict(type="path"),
    state=dict(type="str", default="present",
               choices=["present", "mounted", "unmounted", "absent"]),
    force=dict(type="bool", default=False),
    backfstype=dict(type="str", default="ldiskfs", choices=["ldiskfs", "zfs"]),
    zfs_dataset=dict(type="str"),
    mkfsoptions=dict(type="str"),
    mount_options=dict(type="str"),
)
REQUIRED_IF = [
    ("kind", "mdt", ["index", "mgsnode"]),
    ("kind", "ost", ["index", "mgsnode"]),
    ("state", "mounted", ["mountpoint"]),
    ("backfstype", "zfs", ["zfs_dataset"]),
]


class Refusal(Exception):
    """The module will not act: the message says why and what to do."""


def describe_request(params: dict) -> dict:
    """The validated target: label, index, MGS nodes and what gets mounted."""
    index = validate_index(params["kind"], params["index"])
    return {
        "label": target_label(params["kind"], params["fsname"], index),
        "index": index,
        "mgsnodes": validate_mgsnodes(params["kind"], params["mgsnode"]),
        "source": mount_source(params["device"], params["backfstype"], params["zfs_dataset"]),
    }


def find_bin(runner: CommandRunner, name: str) -> str:
    """Absolute path of a tool; in check mode a missing tool still yields a plan."""
    path = runner.module.get_bin_path(name)
    if path:
        return path
    if runner.check_mode:
        return name
    raise Refusal(f"{name} not found in PATH or the sbin directories: install the Lustre server "
                  "utilities (or util-linux) on this host")


def read_lustre_data(runner: CommandRunner, source: str, required: bool = False) -> dict:
    """What tunefs.lustre --dryrun says about the target on ``source`` ({} if none).

    ``required``: the label already says this is a Lustre target, so a failure
    is an error, not "foreign device" (which force would then reformat).
    """
    done = runner.read([find_bin(runner, "tunefs.lustre"), "--dryrun", source],
                       ok=(0,) if required else None)
    return parse_tunefs_dryrun(done.out) if done.rc == 0 else {}


def read_mounts(runner: CommandRunner, source: str) -> list:
    """Every mount of ``source`` (any filesystem type), from findmnt."""
    argv = [find_bin(runner, "findmnt"), "--raw", "--noheadings",
            "--output", "SOURCE,TARGET,FSTYPE"]
    out = runner.read(argv, ok=(0, 1)).out
    return [entry for entry in parse_findmnt(out) if same_source(entry["source"], source)]


def same_source(found: str, wanted: str) -> bool:
    """Devices compare by real path (mounts show /dev/sdb, not /dev/disk/by-id/...)."""
    if found.startswith("/") and wanted.startswith("/"):
        return same_path(found, wanted)
    return found == wanted


def same_path(one: str, other: str) -> bool:
    return os.path.realpath(one) == os.path.realpath(other)


def read_device(runner: CommandRunner, params: dict, request: dict) -> dict:
    """The device as it is: signature, the target label found, mounts and other users.

    ``blkid -p`` reads the device itself, not blkid's cache, so a label written
    a moment ago is seen, and its TYPE tells an unlabelled filesystem from a
    blank disk. Mounts come from findmnt; holders and swap from the kernel.
    """
    signature = probe_signature(runner, params["device"])
    label = signature.get("LABEL")
    if params["backfstype"] == "zfs":
        label = read_zfs_label(runner, params, signature)
    ours = labels_match(label, request["label"]) and roles_match(runner, params, request)
    mounts = read_mounts(runner, request["source"])
    return {
        "signature": signature,
        "label": label,
        "ours": ours,
        "blank": not signature,
        "mounts": mounts,
        "busy": device_usage(params["device"])["reasons"] or [
            f"{params['device']} is mounted at {entry['target']} ({entry['fstype']})"
            for entry in mounts],
    }


def read_zfs_label(runner: CommandRunner, params: dict, signature: dict) -> str | None:
    """The target label inside our pool, or the vdev's own label if it is another pool."""
    pool = zfs_pool(params["zfs_dataset"])
    if signature.get("TYPE") == "zfs_member" and signature.get("LABEL") == pool:
        return read_lustre_data(runner, params["zfs_dataset"]).get("target")
    return signature.get("LABEL")


def roles_match(runner: CommandRunner, params: dict, request: dict) -> bool:
    """An MDT and a combined MGS/MDT share a label; tunefs.lustre tells them apart."""
    if params["kind"] not in ("mdt", "mgs_mdt"):
        return True
    lustre_data = read_lustre_data(runner, request["source"], required=True)
    return lustre_data.get("roles") == expected_roles(params["kind"])


def lustre_mount(device: dict) -> dict | None:
    return next((entry for entry in device["mounts"] if entry["fstype"] == "lustre"), None)


def plan_actions(params: dict, request: dict, device: dict) -> list:
    """What to do, as action names (mkfs, mount, umount, wipe); Refusal when unsafe."""
    if params["state"] == "absent":
        return plan_absent(params, device)
    actions = []
    mounted = lustre_mount(device)
    if not device["ours"]:
        refuse_to_format(params, request, device)
        actions.append("mkfs")
    if params["state"] == "mounted":
        if mounted is None:
            actions.append("mount")
        elif not same_path(mounted["target"], params["mountpoint"]):
            raise Refusal(f"{request['label']} on {params['device']} is mounted at "
                          f"{mounted['target']}, not {params['mountpoint']}: unmount it first "
                          "(state=unmounted)")
    if params["state"] == "unmounted" and mounted is not None:
        actions.append("umount")
    return actions


def refuse_to_format(params: dict, request: dict, device: dict) -> None:
    """Raise unless formatting ``device`` is safe or forced, and the device is not in use."""
    if device["busy"]:
        raise Refusal(f"{params['device']} is in use ({'; '.join(device['busy'])}): free it "
                      f"before formatting it as {request['label']} (force does not override this)")
    if device["blank"] or params["force"]:
        return
    found = f"label {device['label']!r}" if device["label"] else "no label"
    raise Refusal(f"{params['device']} carries {describe_signature(device['signature'])} with "
                  f"{found}, not {request['label']!r}: refusing to format it. Set force: true "
                  "to reformat it (its data is lost), or choose another device.")


def plan_absent(params: dict, device: dict) -> list:
    if not device["ours"]:
        return []  # whatever the device holds, it is not this target: leave it alone
    actions = ["umount"] if lustre_mount(device) else []
    if params["force"]:
        if params["backfstype"] == "zfs":
            raise Refusal(f"wiping a ZFS-backed target is not supported: unmount it, then destroy "
                          f"pool {zfs_pool(params['zfs_dataset'])} with zpool destroy")
        actions.append("wipe")
    return actions


def action_argv(runner: CommandRunner, action: str, params: dict, request: dict,
                device: dict) -> list:
    if action == "mkfs":
        return mkfs_argv(params["kind"], params["fsname"], request["index"], params["device"],
                         mgsnodes=request["mgsnodes"], backfstype=params["backfstype"],
                         reformat=params["force"] and not device["blank"],
                         mkfsoptions=params["mkfsoptions"], zfs_dataset=params["zfs_dataset"],
                         mkfs_bin=find_bin(runner, "mkfs.lustre"))
    if action == "mount":
        return mount_argv(request["source"], params["mountpoint"], params["mount_options"],
                          mount_bin=find_bin(runner, "mount"))
    if action == "umount":
        return umount_argv(lustre_mount(device)["target"], umount_bin=find_bin(runner, "umount"))
    return wipe_argv(params["device"], wipefs_bin=find_bin(runner, "wipefs"))


def run_plan(runner: CommandRunner, plan: list, params: dict, request: dict) -> None:
    """Run the plan in order (in check mode: record it); the first failure stops it.

    A real run makes the mount point right before mounting, and reads the label back after
    mkfs.lustre."""
    for action, argv in plan:
        before = (lambda: make_mountpoint(params["mountpoint"])) if action == "mount" else None
        after = (lambda: verify_label(runner, params, request)) if action == "mkfs" else None
        runner.change(argv, before=before, after=after)


def make_mountpoint(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise Refusal(f"cannot create mount point {path}: {error}") from None


def verify_label(runner: CommandRunner, params: dict, request: dict) -> None:
    """After mkfs.lustre, the device must read as the target it was told to make."""
    device = read_device(runner, params, request)
    if not device["ours"]:
        raise Refusal(f"mkfs.lustre succeeded but {params['device']} now reads as "
                      f"{device['label']!r}, not {request['label']!r}")


def outcome(params: dict, request: dict, device: dict, actions: list) -> dict:
    """Label and mount state before and after (predicted, so check mode shows it too)."""
    mounted = lustre_mount(device)
    before = {"label": device["label"], "mounted": mounted is not None,
              "mountpoint": mounted["target"] if mounted else None}
    after = dict(before)
    if "mkfs" in actions:
        after["label"] = request["label"]
    if "mount" in actions:
        after.update(mounted=True, mountpoint=params["mountpoint"])
    if "umount" in actions:
        after.update(mounted=False, mountpoint=None)
    if "wipe" in actions:
        after["label"] = None
    return {"before": before, "after": after}


def run_module(runner: CommandRunner, params: dict) -> dict:
    request = describe_request(params)
    if not is_block_device(params["device"]):
        raise Refusal(f"{params['device']} {describe_non_block(params['device'])}: lustre_target "
                      "formats block devices only (for a test, attach an image with losetup)")
    device = read_device(runner, params, request)
    actions = plan_actions(params, request, device)
    plan = [(action, action_argv(runner, action, params, request, device)) for action in actions]
    run_plan(runner, plan, params, request)
    diff = outcome(params, request, device, actions)
    return runner.result(diff["before"], diff["after"], label=request["label"],
                         mounted=diff["after"]["mounted"], mountpoint=diff["after"]["mountpoint"])


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF,
                           supports_check_mode=True)
    runner = CommandRunner(module)
    try:
        result = run_module(runner, module.params)
    except (CommandError, DeviceError, LustreError, Refusal) as error:
        module.fail_json(**runner.failure(error))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
