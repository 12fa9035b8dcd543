# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Lustre targets as data: names, labels, argv lists and parsers.

Pure functions only (no I/O), so every rule here is unit-tested as a table and
the ``lustre_target`` module, the roles and bbctl all build the same argv.

The rules follow lustre-release (``lustre/utils/mkfs_lustre.c``):

* an fsname is 1-8 characters, each ASCII alphanumeric, ``_`` or ``-``;
* a target's service name (its disk label) is ``fsname`` + separator +
  ``MDT``/``OST`` + the index as 4 lower-case hex digits; the MGS is ``MGS``.
  The separator is ``:`` until the target first registers with the MGS (its
  first mount), ``=`` after ``tunefs.lustre --writeconf``, ``+`` after
  ``--nolocallogs`` and ``-`` otherwise, so ``fs:OST0003`` on a freshly
  formatted disk and ``fs-OST0003`` on a running one are the same target;
* a target index is below 0xffff (``INDEX_UNASSIGNED``); a standalone MGS
  takes no ``--index`` (mkfs.lustre rejects it) and no ``--fsname`` is needed.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import re

KINDS = ("mgs", "mdt", "ost", "mgs_mdt")
BACKFSTYPES = ("ldiskfs", "zfs")
MAX_FSNAME_LEN = 8
MAX_INDEX = 0xFFFE  # 0xffff is INDEX_UNASSIGNED in lustre_disk.h
MGS_LABEL = "MGS"

_FSNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,8}$")
# fsname, then the separator of a registered (-), virgin (:), writeconf'ed (=)
# or nolocallogs (+) target, then the role and the index in 4 hex digits.
_LABEL_RE = re.compile(
    r"^(?P<fsname>[A-Za-z0-9_-]{1,8})[-:=+](?P<role>MDT|OST)(?P<index>[0-9a-fA-F]{4})$")
_NID_FORBIDDEN = re.compile(r"[\s:/]")


class LustreError(ValueError):
    """A request Lustre would refuse; the message says what to change."""


def validate_fsname(fsname: str) -> str:
    """``fsname`` unchanged if mkfs.lustre would accept it, else LustreError."""
    if not isinstance(fsname, str) or not fsname:
        raise LustreError("fsname is empty: give the Lustre filesystem name, 1-8 characters")
    if len(fsname) > MAX_FSNAME_LEN:
        raise LustreError(
            f"fsname {fsname!r} has {len(fsname)} characters; Lustre allows at most "
            f"{MAX_FSNAME_LEN} (the disk label is fsname + 8 characters, 16 in all)")
    bad = [char for char in fsname if not _FSNAME_RE.match(char)]
    if bad:
        raise LustreError(
            f"fsname {fsname!r}: character {bad[0]!r} is not allowed; use only "
            "A-Z, a-z, 0-9, '_' and '-' (mkfs.lustre's rule)")
    return fsname


def validate_index(kind: str, index: int | None) -> int | None:
    """The target index to use: None for a standalone MGS, 0 by default for mgs_mdt."""
    if kind == "mgs":
        if index is not None:
            raise LustreError(
                "a standalone MGS has no index (mkfs.lustre rejects --index with --mgs): "
                "remove index")
        return None
    if index is None:
        if kind == "mgs_mdt":
            return 0
        raise LustreError(f"kind={kind} needs an index (0 for the first {kind.upper()})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_INDEX:
        raise LustreError(f"index {index!r} is out of range: use an integer from 0 to {MAX_INDEX}")
    return index


def validate_mgsnodes(kind: str, mgsnodes: list[str] | None) -> list[str]:
    """The MGS nodes, one NID list per node; required unless the target is an MGS."""
    mgsnodes = list(mgsnodes or [])
    if not mgsnodes and kind in ("mdt", "ost"):
        raise LustreError(
            f"kind={kind} needs mgsnode: the NID(s) of the MGS, e.g. ['10.0.0.1@tcp']")
    for node in mgsnodes:
        if not node or _NID_FORBIDDEN.search(node):
            raise LustreError(
                f"mgsnode entry {node!r} is not a NID list: give one entry per MGS node, its NIDs "
                "separated by ',' (e.g. '10.0.0.1@tcp,10.1.0.1@o2ib'), without spaces, ':' or '/'")
    return mgsnodes


def target_label(kind: str, fsname: str, index: int | None) -> str:
    """The label a registered target carries: ``fs-MDT0000``, ``fs-OST0003`` or ``MGS``."""
    if kind not in KINDS:
        raise LustreError(f"unknown target kind {kind!r}: use one of {', '.join(KINDS)}")
    index = validate_index(kind, index)
    if kind == "mgs":
        return MGS_LABEL
    role = "OST" if kind == "ost" else "MDT"
    return f"{validate_fsname(fsname)}-{role}{index:04x}"


def canonical_label(label: str | None) -> str | None:
    """A device label with the registration separator turned back into ``-``.

    ``fs:OST0003`` (never mounted), ``fs=OST0003`` (writeconf) and
    ``fs+OST0003`` (nolocallogs) all name the target ``fs-OST0003``; tunefs.lustre
    makes the same substitution at the same place (8 characters from the end).
    """
    if not label:
        return None
    if _LABEL_RE.match(label):
        return label[:-8] + "-" + label[-7:]
    return label


def labels_match(found: str | None, expected: str) -> bool:
    """True when the label found on a device names the expected target."""
    return canonical_label(found) == expected


def kind_flags(kind: str) -> list[str]:
    """mkfs.lustre's target-type flags for a kind."""
    return {
        "mgs": ["--mgs"],
        "mdt": ["--mdt"],
        "ost": ["--ost"],
        "mgs_mdt": ["--mgs", "--mdt"],
    }[kind]


def mkfs_argv(kind: str, fsname: str, index: int | None, device: str,
              mgsnodes: list[str] | None = None, backfstype: str = "ldiskfs",
              reformat: bool = False, mkfsoptions: str | None = None,
              zfs_dataset: str | None = None, mkfs_bin: str = "mkfs.lustre") -> list[str]:
    """The exact mkfs.lustre argv for one target (nothing here goes through a shell).

    ``--mgsnode`` is repeated once per MGS node (each entry may hold that
    node's comma-separated NIDs). With ZFS the target is ``pool/dataset`` and
    ``device`` becomes the pool's vdev.
    """
    if backfstype not in BACKFSTYPES:
        raise LustreError(
            f"backfstype {backfstype!r} is not supported: use one of {', '.join(BACKFSTYPES)}")
    index = validate_index(kind, index)
    argv = [mkfs_bin, *kind_flags(kind)]
    if kind != "mgs":
        # A standalone MGS serves every filesystem that names it; only MDTs/OSTs belong to one.
        argv.append(f"--fsname={validate_fsname(fsname)}")
        argv.append(f"--index={index}")
    argv += [f"--mgsnode={node}" for node in validate_mgsnodes(kind, mgsnodes)]
    argv.append(f"--backfstype={backfstype}")
    if mkfsoptions:
        argv.append(f"--mkfsoptions={mkfsoptions}")
    if reformat:
        argv.append("--reformat")
    return argv + mkfs_devices(device, backfstype, zfs_dataset)


def mkfs_devices(device: str, backfstype: str, zfs_dataset: str | None) -> list[str]:
    """The trailing device arguments: the block device, or ``pool/dataset vdev`` for ZFS."""
    if backfstype != "zfs":
        return [device]
    return [validate_zfs_dataset(zfs_dataset), device]


def validate_zfs_dataset(zfs_dataset: str | None) -> str:
    """``pool/dataset`` as mkfs.lustre wants it for a ZFS-backed target."""
    parts = (zfs_dataset or "").split("/")
    if len(parts) != 2 or not all(parts) or any(char.isspace() for char in zfs_dataset):
        raise LustreError(
            f"zfs_dataset {zfs_dataset!r} must be 'pool/dataset', e.g. 'fs-ost3/ost3'")
    return zfs_dataset


def zfs_pool(zfs_dataset: str) -> str:
    """The pool part of ``pool/dataset``: the label blkid reports on the pool's vdevs."""
    return validate_zfs_dataset(zfs_dataset).split("/")[0]


def mount_source(device: str, backfstype: str = "ldiskfs", zfs_dataset: str | None = None) -> str:
    """What a server mounts: the block device, or ``pool/dataset`` for ZFS."""
    return validate_zfs_dataset(zfs_dataset) if backfstype == "zfs" else device


def mount_argv(source: str, mountpoint: str, options: str | None = None,
               mount_bin: str = "mount") -> list[str]:
    """``mount -t lustre [-o OPTIONS] SOURCE MOUNTPOINT`` (a target or a client)."""
    argv = [mount_bin, "-t", "lustre"]
    if options:
        argv += ["-o", options]
    return [*argv, source, mountpoint]


def umount_argv(mountpoint: str, umount_bin: str = "umount") -> list[str]:
    """``umount MOUNTPOINT``: stops the target service (with recovery on restart)."""
    return [umount_bin, mountpoint]


def wipe_argv(device: str, wipefs_bin: str = "wipefs") -> list[str]:
    """``wipefs -a DEVICE``: erases every signature so the device reads as blank."""
    return [wipefs_bin, "-a", device]


def parse_tunefs_dryrun(output: str) -> dict:
    """What ``tunefs.lustre --dryrun DEV`` reports about the target on DEV.

    The first block ("Read previous values") is the on-disk data; its
    ``Target:`` line already has the registration separator turned into ``-``.
    Returns ``target``, ``fsname``, ``index`` (int or None), ``roles`` (a set of
    ``MDT``/``OST``/``MGS``), ``flags`` (other words from the flags line) and
    ``parameters``; an empty dict when the output holds no target.
    """
    block = _first_ldd_block(output or "")
    if "Target" not in block:
        return {}
    words = set(block.get("Flags words", "").split())
    roles = words & {"MDT", "OST", "MGS"}
    index = block.get("Index", "")
    return {
        "target": block["Target"],
        "fsname": block.get("Lustre FS") or None,
        "index": int(index) if index.isdigit() else None,
        "roles": roles,
        "flags": words - roles,
        "parameters": block.get("Parameters", ""),
    }


def _first_ldd_block(output: str) -> dict:
    """``Key: value`` pairs of the first target description in tunefs output."""
    block = {}
    for line in output.splitlines():
        stripped = line.strip()
        if stripped.startswith("(") and stripped.endswith(")") and "Flags" in block:
            block["Flags words"] = stripped[1:-1]
            continue
        key, sep, value = stripped.partition(":")
        if not sep or not key:
            continue
        if key == "Target" and "Target" in block:
            break  # the second block is what tunefs would write, not what is there
        block.setdefault(key, value.strip())
    return block


def expected_roles(kind: str) -> set:
    """The roles tunefs.lustre lists for a target of this kind."""
    return {"mgs": {"MGS"}, "mdt": {"MDT"}, "ost": {"OST"}, "mgs_mdt": {"MGS", "MDT"}}[kind]


def parse_findmnt(output: str) -> list[dict]:
    """Lines of ``findmnt --raw --noheadings --output SOURCE,TARGET,FSTYPE`` as dicts.

    Raw output escapes spaces and other unsafe bytes as ``\\xNN``.
    """
    mounts = []
    for line in (output or "").splitlines():
        fields = line.split()
        if len(fields) >= 3:
            source, target, fstype = (_unescape_findmnt(field) for field in fields[:3])
            mounts.append({"source": source, "target": target, "fstype": fstype})
    return mounts


def _unescape_findmnt(field: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda match: chr(int(match.group(1), 16)), field)
