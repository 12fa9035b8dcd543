# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Block devices: is it one, what does it carry, and is anything using it.

Read before acting, as community.general's ``filesystem`` and the storage role's
safe mode do: ``blkid -p`` (low-level probe, no cache) names any filesystem,
partition table, RAID/LVM member or swap signature; /proc/self/mountinfo,
/sys/class/block/X/holders and /proc/swaps say whether the kernel uses it.
Pure parsers take text; the readers take paths or the module's CommandRunner.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import (
    mounts_of_device,
    read_mountinfo,
    unescape,
)

SYS_BLOCK = "/sys/class/block"
# How a brick's XFS is mounted. allocsize=64k: with XFS's dynamic speculative preallocation the
# bricks of a dispersed volume held different numbers of blocks, so near the quota some refused
# a write (EDQUOT) that others took, or one filled first, and the writer got EIO at 91-99.5 %
# instead of EDQUOT at 100 % (docs/BENCHMARKS.md, "Filling a dispersed buffer").
BRICK_MOUNT_OPTIONS = "noatime,inode64,allocsize=64k"
SYS_DEV_BLOCK = "/sys/dev/block"
PROC_SWAPS = "/proc/swaps"

# blkid(8) exit codes in low-level probe mode.
BLKID_FOUND = 0
BLKID_NOTHING = 2
BLKID_AMBIVALENT = 8
_USAGE_NOUNS = {"filesystem": "filesystem", "raid": "RAID/LVM member", "crypto": "encrypted volume"}


class DeviceError(Exception):
    """A device that cannot be probed; the message says which and why."""


# --- what it is ----------------------------------------------------------------

def is_block_device(path):
    """True only for an existing block special file (symlinks such as by-id are followed)."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def describe_non_block(path):
    """Why path is not a block device, in words for an error message."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "does not exist"
    if stat.S_ISREG(mode):
        return "is a regular file"
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISCHR(mode):
        return "is a character device"
    return "is not a block device"


def device_numbers(path):
    """(major, minor) of a block device node."""
    rdev = os.stat(path).st_rdev
    return os.major(rdev), os.minor(rdev)


def sysfs_name(numbers, sys_dev_block=SYS_DEV_BLOCK):
    """Kernel name (``loop3``, ``nvme0n1``) of the device with these numbers."""
    major, minor = numbers
    return os.path.basename(os.path.realpath(os.path.join(sys_dev_block, f"{major}:{minor}")))


# --- signatures ------------------------------------------------------------------

def _unescape_export_value(value):
    # blkid -o export escapes unsafe characters with a backslash (udev style).
    out, chars = [], iter(value)
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


def parse_blkid_export(text):
    """``blkid -o export`` output -> {KEY: value} for one device."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key:
            info[key] = _unescape_export_value(value)
    return info


def signature_from_probe(rc, out, err, device):
    """blkid's answer -> signature dict ({} = none). AMBIVALENT=1 marks several at once."""
    if rc == BLKID_NOTHING:
        return {}
    if rc == BLKID_AMBIVALENT:
        info = parse_blkid_export(out)
        info["AMBIVALENT"] = "1"
        return info
    if rc != BLKID_FOUND:
        raise DeviceError(f"blkid -p {device} failed (rc {rc}): {(err or out).strip()}")
    return parse_blkid_export(out)


def probe_signature(runner, device):
    """Low-level probe of device (bypasses blkid's cache, which may be stale), through the
    module's CommandRunner: read-only, so it runs in check mode too."""
    done = runner.read(["blkid", "-p", "-o", "export", device], ok=None)
    return signature_from_probe(done.rc, done.out, done.err, device)


def filesystem_type(signature):
    """The filesystem (or swap, LVM2_member ...) TYPE, or None."""
    return signature.get("TYPE") or None


def describe_signature(signature):
    """Human words for a signature: 'ext4 filesystem (UUID ...)', 'dos partition table'."""
    if not signature:
        return "no signature"
    parts = []
    if signature.get("AMBIVALENT"):
        parts.append("several conflicting signatures (blkid -p: ambivalent result)")
    if signature.get("PTTYPE"):
        parts.append(f"{signature['PTTYPE']} partition table")
    kind = signature.get("TYPE")
    if kind:
        noun = _USAGE_NOUNS.get(signature.get("USAGE", "filesystem"), "signature")
        words = "swap space" if kind == "swap" else f"{kind} {noun}"
        if signature.get("UUID"):
            words += f" (UUID {signature['UUID']})"
        parts.append(words)
    return " and ".join(parts) or "unrecognised signature"


# --- users of the device ---------------------------------------------------------

def parse_proc_swaps(text):
    """Active swap areas (files or devices) listed in /proc/swaps."""
    lines = text.splitlines()[1:]  # first line is the header
    return [unescape(line.split()[0]) for line in lines if line.strip()]


def partitions(name, sys_block=SYS_BLOCK):
    """Kernel names of the partitions the kernel knows on device ``name``."""
    base = os.path.join(sys_block, name)
    try:
        children = sorted(os.listdir(base))
    except OSError:
        return []
    return [child for child in children if os.path.exists(os.path.join(base, child, "partition"))]


def holders(name, sys_block=SYS_BLOCK):
    """Devices stacked on ``name`` (device-mapper, MD RAID, bcache ...)."""
    try:
        return sorted(os.listdir(os.path.join(sys_block, name, "holders")))
    except OSError:
        return []


def _numbers_of(name, sys_block):
    with open(os.path.join(sys_block, name, "dev")) as handle:
        major, minor = handle.read().strip().split(":")
    return int(major), int(minor)


def _swap_numbers(swap_paths):
    numbers = set()
    for path in swap_paths:
        if is_block_device(path):
            numbers.add(device_numbers(path))
    return numbers


def usage_reasons(devices, entries, swap_numbers, holder_names):
    """Why a device (and its partitions) is in use, as sentences; [] = free.

    ``devices`` is [(kernel name, (major, minor))] for the device and each
    partition; the other arguments are what the kernel reported.
    """
    reasons = []
    for name, numbers in devices:
        for entry in mounts_of_device(entries, "/dev/" + name, numbers):
            reasons.append(f"/dev/{name} is mounted at {entry.target} ({entry.fstype})")
        if numbers in swap_numbers:
            reasons.append(f"/dev/{name} is active swap")
    if holder_names:
        reasons.append(f"held by {', '.join(sorted(holder_names))} "
                       "(device-mapper, RAID or bcache stacked on it)")
    return reasons


def device_usage(device, sys_block=SYS_BLOCK, mountinfo_entries=None, swaps_path=PROC_SWAPS):
    """Everything the kernel says about who uses device, for refusal messages.

    Returns a dict: name, numbers, partitions, holders, mounts (MountEntry list
    of the device and its partitions), swap (bool).
    """
    numbers = device_numbers(device)
    name = sysfs_name(numbers)
    devices = [(name, numbers)]
    for part in partitions(name, sys_block):
        devices.append((part, _numbers_of(part, sys_block)))
    entries = read_mountinfo() if mountinfo_entries is None else mountinfo_entries
    with open(swaps_path) as handle:
        swap_numbers = _swap_numbers(parse_proc_swaps(handle.read()))
    holder_names = set()
    for dev_name, _numbers in devices:
        holder_names.update(holders(dev_name, sys_block))
    mounts = [entry for dev_name, dev_numbers in devices
              for entry in mounts_of_device(entries, "/dev/" + dev_name, dev_numbers)]
    return {
        "name": name, "numbers": numbers, "partitions": [d[0] for d in devices[1:]],
        "holders": sorted(holder_names), "mounts": mounts,
        "swap": any(n in swap_numbers for _d, n in devices),
        "reasons": usage_reasons(devices, entries, swap_numbers, holder_names),
    }
