# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Swap areas on a burst buffer: a file on the buffer's mount behind a loop device.

The kernel cannot swap to a file on FUSE (GlusterFS) directly, but it can swap to a loop
device whose backing file lives there (verified on the test bed). Three layers, as in
gluster.py: what is there (``read_swap_state``: the file, the loop devices backing it by
inode and device number, ``/proc/swaps``, the loop device's signature), pure planners from
that state to argv lists (``plan_present``, ``plan_absent``), and ``apply`` that runs a
plan through the module's CommandRunner, putting the name ``losetup --find --show`` printed
in place of ``NEW_LOOP``.

The file holds whatever memory the node pages out, any process's: it and its directory are
root's alone (``0600``/``0700``), and a path that goes through a symbolic link, or a file or
directory that is not root's, is refused (the buffer's root belongs to the job's user).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import stat
from collections import namedtuple

from ansible_collections.hpc.burstbuffer.plugins.module_utils.block_devices import (
    PROC_SWAPS,
    filesystem_type,
    parse_proc_swaps,
    probe_signature,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import CommandError

MIB = 1024 ** 2
NEW_LOOP = "<new loop device>"  # in a plan: the device losetup --find --show will print
FILE_MODE = 0o600
DIR_MODE = 0o700
LOSETUP_LIST = ["losetup", "--list", "--json", "--output", "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN"]

# What is on the disk at a path (lstat: a symbolic link is neither regular nor a directory):
# exists, a regular file, a directory, size, owner, mode, and the (inode, (major, minor)) a
# loop device names as its backing file.
SwapFile = namedtuple("SwapFile", ["exists", "regular", "is_dir", "size", "uid", "mode", "identity"])
LoopDevice = namedtuple("LoopDevice", ["name", "back_file", "identity"])
# path: the swap file; directory: its parent as SwapFile; file; loops: the loop devices
# backing the file; active: loop device names in /proc/swaps; signatures: {device: TYPE};
# strays: [(LoopDevice, SwapFile of its backing file)] of this buffer whose file is no longer
# at path (the buffer's owner may rename .swap: its parent is theirs).
SwapState = namedtuple("SwapState", ["path", "directory", "file", "loops", "active", "signatures", "strays"],
                       defaults=[()])


class SwapError(Exception):
    """The swap area cannot be brought to the wanted state safely; the message says what to do."""


# --- reading ------------------------------------------------------------------------

def file_facts(path):
    """SwapFile for path, not following a symbolic link at its end."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return SwapFile(False, False, False, None, None, None, None)
    return SwapFile(True, stat.S_ISREG(info.st_mode), stat.S_ISDIR(info.st_mode), info.st_size, info.st_uid,
                    stat.S_IMODE(info.st_mode), (info.st_ino, (os.major(info.st_dev), os.minor(info.st_dev))))


def _major_minor(text):
    major, minor = str(text).strip().split(":")
    return int(major), int(minor)


def parse_losetup_list(text):
    """``losetup --list --json --output NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN`` -> [LoopDevice].

    No loop device at all: losetup prints nothing. BACK-MAJ:MIN comes padded ("  254:0 ").
    """
    if not text.strip():
        return []
    loops = []
    for entry in json.loads(text).get("loopdevices", []):
        back_ino, back_dev = entry.get("back-ino"), entry.get("back-maj:min")
        identity = None
        if back_ino not in (None, "") and back_dev:
            identity = (int(back_ino), _major_minor(back_dev))
        loops.append(LoopDevice(entry["name"], entry.get("back-file"), identity))
    return loops


def backing(loops, swap_file):
    """The loop devices whose backing file is swap_file (by inode and device, never by name)."""
    if swap_file.identity is None:
        return []
    return [loop for loop in loops if loop.identity == swap_file.identity]


def strays(all_loops, swap_file, path):
    """Loop devices over other files of the same filesystem under the buffer (the directory
    above the swap file's), by the path the kernel shows now: a swap file moved away."""
    buffer_root = os.path.dirname(os.path.dirname(path))
    try:
        info = os.stat(buffer_root)
    except OSError:
        return []
    device = (os.major(info.st_dev), os.minor(info.st_dev))
    return [loop for loop in all_loops
            if loop.identity is not None and loop.identity[1] == device and loop.identity != swap_file.identity
            and (loop.back_file or "").startswith(buffer_root + "/")]


def read_swap_state(runner, path, swaps_path=PROC_SWAPS):
    swap_file = file_facts(path)
    all_loops = runner.read(LOSETUP_LIST, parse=lambda done: parse_losetup_list(done.out))
    loops = backing(all_loops, swap_file)
    with open(swaps_path) as handle:
        active = set(parse_proc_swaps(handle.read()))
    signatures = {loop.name: filesystem_type(probe_signature(runner, loop.name)) for loop in loops}
    moved = [(loop, file_facts(loop.back_file)) for loop in strays(all_loops, swap_file, path)]
    return SwapState(path=path, directory=file_facts(os.path.dirname(path)), file=swap_file,
                     loops=loops, active=active, signatures=signatures, strays=moved)


# --- planning: (state, size) -> argv lists; pure ------------------------------------------

def check_size(size):
    """A swap area is whole MiB (the allocation falls back to dd in MiB), at least one."""
    if size < MIB or size % MIB:
        raise SwapError(f"swap size {size} bytes: give a whole number of MiB, at least 1MiB (e.g. 4GiB)")
    return size


def check_path(path, real_path):
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        raise SwapError(f"swap file {path}: give an absolute, normalised path")
    if real_path != path:
        raise SwapError(f"swap file {path} goes through a symbolic link (it is {real_path}); "
                        "the buffer belongs to the job's user, so nothing there that is not root's is used")


def _refuse_foreign(what, facts, path, owner):
    if facts.uid != owner:
        raise SwapError(f"{what} {path} belongs to uid {facts.uid}, not {owner}: not made by this module, "
                        "so not used; remove it (or choose another path)")


def check_directory(state, owner):
    directory = os.path.dirname(state.path)
    facts = state.directory
    if not facts.exists:
        return
    if not facts.is_dir:
        raise SwapError(f"{directory} exists and is not a directory; the swap file's directory must be one")
    _refuse_foreign("directory", facts, directory, owner)


def check_file(state, owner):
    if state.file.exists and not state.file.regular:
        raise SwapError(f"{state.path} exists and is not a regular file; not used as swap, not removed")
    if state.file.exists:
        _refuse_foreign("swap file", state.file, state.path, owner)


def the_loop(state):
    """The loop device that serves the swap area: an active one first, else the first attached."""
    active = [loop for loop in state.loops if loop.name in state.active]
    return (active or state.loops or [None])[0]


def plan_allocate(state, size):
    """Argv lists that leave a root-only file of size bytes at state.path (none if it is there)."""
    directory = os.path.dirname(state.path)
    commands = []
    if not state.directory.exists:
        commands.append(["mkdir", "--mode", f"{DIR_MODE:04o}", directory])
    elif state.directory.mode != DIR_MODE:
        commands.append(["chmod", f"{DIR_MODE:04o}", directory])
    if state.file.exists and state.file.size == size:
        if state.file.mode != FILE_MODE:
            commands.append(["chmod", f"{FILE_MODE:04o}", state.path])
        return commands
    if state.file.exists:
        commands.append(["rm", "--force", state.path])
    return [*commands, allocate_argv(state.path, size), ["chmod", f"{FILE_MODE:04o}", state.path]]


def allocate_argv(path, size):
    return ["fallocate", "--length", str(size), path]


def zero_fill_argv(path, size):
    """Where fallocate is not supported: write the zeros (swap must never meet a hole it cannot fill)."""
    return ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size // MIB}", "conv=fsync", "status=none"]


def plan_present(state, size, owner=0, priority=None):
    """Argv lists that make state.path an active swap area of size bytes; [] if it is one."""
    check_size(size)
    check_directory(state, owner)
    check_file(state, owner)
    loop = the_loop(state)
    if state.file.exists and state.file.size != size and loop is not None:
        raise SwapError(f"{state.path} is in use ({loop.name}) with {state.file.size} bytes, not {size}; "
                        "remove the swap area first (state=absent), then set it up again")
    commands = plan_allocate(state, size)
    if loop is None:
        commands.append(attach_argv(state.path))
        device = NEW_LOOP
    else:
        device = loop.name
    if device == NEW_LOOP or state.signatures.get(device) != "swap":
        if device in state.active:
            raise SwapError(f"{device} is active swap but carries no swap signature; swapoff it by hand")
        commands.append(["mkswap", device])
    if device not in state.active:
        commands.append(swapon_argv(device, priority))
    return commands


def attach_argv(path):
    """A free loop device over path, with direct I/O: pages swapped out are not cached again in
    the page cache of the file beneath (losetup leaves direct I/O off where the file cannot do it)."""
    return ["losetup", "--find", "--show", "--direct-io=on", path]


def swapon_argv(device, priority=None):
    return ["swapon", device] if priority is None else ["swapon", "--priority", str(priority), device]


def plan_absent(state, owner=0, remove_dir=True, others_in_dir=None):
    """Argv lists that leave no swap area at state.path: swapoff, detach, remove; [] if none.

    others_in_dir: entries of the file's directory besides the file (None: read it); with
    remove_dir the directory goes when nothing else is in it (nodes share it).
    """
    check_file(state, owner)
    commands = []
    for loop in [*state.loops, *(loop for loop, _facts in state.strays)]:
        if loop.name in state.active:
            commands.append(["swapoff", loop.name])
        commands.append(["losetup", "--detach", loop.name])
    if state.file.exists:
        commands.append(["rm", "--force", state.path])
    for loop, facts in state.strays:
        # Removed only if it is still that file and root's (the path is the kernel's, now).
        if facts.regular and facts.identity == loop.identity and facts.uid == owner:
            commands.append(["rm", "--force", loop.back_file])
    if remove_dir and state.directory.is_dir:
        check_directory(state, owner)
        if not others_in_dir:
            # Another node may have removed it meanwhile, or added its file: both are fine.
            commands.append(["rmdir", "--ignore-fail-on-non-empty", os.path.dirname(state.path)])
    return commands


def others_in(directory, name):
    try:
        return sorted(entry for entry in os.listdir(directory) if entry != name)
    except OSError:
        return []


# --- acting -------------------------------------------------------------------------------

def apply(runner, commands, size=None):
    """Run a plan; the loop device it attaches replaces NEW_LOOP. Returns the device (or None).

    fallocate that the filesystem does not support is replaced by writing zeros.
    """
    device = None
    for argv in commands:
        argv = [device if arg == NEW_LOOP and device else arg for arg in argv]
        if argv[0] == "losetup" and "--find" in argv:
            device = _attach(runner, argv)
        elif argv[0] == "fallocate":
            _allocate(runner, argv, size)
        elif argv[0] == "rmdir":
            runner.change(argv, ok=(0, 1))  # 1: gone already (another node removed it)
        else:
            runner.change(argv)
    return device


def _attach(runner, argv):
    """The device losetup attached (NEW_LOOP in check mode); without direct I/O if it was refused."""
    try:
        done = runner.change(argv)
    except CommandError:
        if "--direct-io=on" not in argv:
            raise
        runner.module.warn(f"{' '.join(argv)} failed; attached without direct I/O")
        done = runner.change([arg for arg in argv if arg != "--direct-io=on"])
    return done.out.strip() if done is not None else NEW_LOOP


def _allocate(runner, argv, size):
    try:
        runner.change(argv)
    except CommandError as error:
        if "not supported" not in (error.err or "").lower():
            raise
        runner.change(zero_fill_argv(argv[-1], size))


def undo_commands(state_before, state_after):
    """What removes the parts of a swap area a failed setup made (never what was there before).

    A loop device, file or directory that existed before stays; the new ones go.
    """
    before_loops = {loop.name for loop in state_before.loops}
    commands = []
    for loop in state_after.loops:
        if loop.name in before_loops:
            continue
        if loop.name in state_after.active:
            commands.append(["swapoff", loop.name])
        commands.append(["losetup", "--detach", loop.name])
    if state_after.file.exists and not state_before.file.exists:
        commands.append(["rm", "--force", state_after.path])
    if state_after.directory.exists and not state_before.directory.exists:
        commands.append(["rmdir", "--ignore-fail-on-non-empty", os.path.dirname(state_after.path)])
    return commands


def describe(state, device=None):
    """The facts --diff shows."""
    loop = device or (the_loop(state).name if the_loop(state) else None)
    return {"path": state.path, "size": state.file.size if state.file.exists else None,
            "loop_device": loop, "active": bool(loop and loop in state.active)}
