# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Mounts: what the kernel says is mounted, and mount/umount that survive "busy".

The truth is /proc/self/mountinfo (not /etc/mtab, not /etc/fstab): it names the
device by major:minor, so a brick mounted through another device node or bound
elsewhere is still recognised. Parsers are pure functions of text; commands run
through a CommandRunner (module_utils.command_runner), and ``busy_retry`` is the
policy that waits out EBUSY there.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import grp
import os
import pwd
import re
import signal
import stat
import time
from collections import namedtuple

from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import (
    TIMED_OUT,
    CommandError,
    CommandRunner,
    Retry,
    under_deadline,
)

MOUNTINFO = "/proc/self/mountinfo"

# Transient EBUSY from umount/mount: a process still has a file open or its
# cwd inside, or a FUSE daemon has not finished tearing down. Worth retrying.
_BUSY_PATTERNS = ("target is busy", "device is busy", "device or resource busy")
# All mount.glusterfs says when its client reached no brick: glusterd or the bricks not answering
# yet, or every privileged source port of the host taken (seen with 130 jobs at once, 2026-12-06:
# the client then binds an unprivileged one, which bricks that accept only privileged ports refuse,
# "Request received from non-privileged port"). Worth retrying: closed connections free their
# ports within TCP's 60 s TIME_WAIT. A mount that fails for good fails as late as the retries end.
_GLUSTER_UNREACHED = "Mount failed. Check the log file"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

# optional: the optional fields (propagation: "shared:N", "master:N", "propagate_from:N",
# "unbindable"; none for a private mount).
MountEntry = namedtuple("MountEntry", [
    "mount_id", "parent_id", "major", "minor", "root", "target", "options",
    "fstype", "source", "super_options", "optional",
], defaults=[()])


class MountError(Exception):
    """A mount or umount that failed for good; the message says what to do."""


def unescape(field):
    """Undo the kernel's octal escapes in mountinfo/swaps fields (``\\040`` = space)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo_line(line):
    """One mountinfo line -> MountEntry (see proc(5): optional fields end at ``-``)."""
    fields = line.split()
    separator = fields.index("-", 6)
    major, minor = fields[2].split(":")
    fstype, source, super_options = [*fields[separator + 1:separator + 4], "", ""][:3]
    return MountEntry(
        mount_id=int(fields[0]), parent_id=int(fields[1]), major=int(major), minor=int(minor),
        root=unescape(fields[3]), target=unescape(fields[4]), options=fields[5],
        fstype=fstype, source=unescape(source), super_options=super_options,
        optional=tuple(fields[6:separator]))


def is_shared(entry):
    """Whether mount and unmount events under this mount reach its peers and slaves."""
    return any(field.startswith("shared:") for field in entry.optional)


def parse_mountinfo(text):
    """All mounts in mountinfo text, in mount order (later entries stack on earlier)."""
    return [parse_mountinfo_line(line) for line in text.splitlines() if line.strip()]


def read_mountinfo(path=MOUNTINFO):
    with open(path) as handle:
        return parse_mountinfo(handle.read())


def normalise_path(path, mountinfo=None):
    """Absolute, symlink-free path as the kernel reports it, even if it does not exist yet.

    A path the kernel shows as a mount point is never looked up itself (only its parent is):
    a lookup of a FUSE mount whose daemon no longer answers blocks for good, and with it the
    unmount that would free it (seen on the test bed: a glusterfs stage mount under load).
    ``mountinfo``: read_mountinfo()'s entries (read here when None)."""
    absolute = os.path.abspath(path)
    beside = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    entries = read_mountinfo() if mountinfo is None else mountinfo
    if any(entry.target == beside for entry in entries):
        return beside
    return os.path.realpath(absolute)


def mount_at(entries, path):
    """The mount visible at path (the last one stacked there), or None."""
    found = [entry for entry in entries if entry.target == path]
    return found[-1] if found else None


def mounts_of_device(entries, device, numbers=None):
    """Mounts of a block device, found by major:minor first (bind mounts, other names)."""
    return [entry for entry in entries
            if (numbers is not None and (entry.major, entry.minor) == tuple(numbers))
            or entry.source == device]


def is_busy(stderr):
    text = (stderr or "").lower()
    return any(pattern in text for pattern in _BUSY_PATTERNS)


def mount_argv(source, path, fstype=None, options=None):
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", options]
    return [*argv, source, path]


def umount_argv(path, lazy=False):
    """umount of a normalised path. --no-canonicalize: umount would otherwise stat the path
    first, and a stat of a FUSE mount whose daemon no longer answers blocks for good (seen on
    the test bed: umount stuck in newfstatat, 2026-12-06); umount2() itself does not wait for
    the daemon. lazy: detach now, free when the last user goes (umount -l)."""
    return ["umount", "--no-canonicalize", *(["--lazy"] if lazy else []), path]


def backoff_delays(retries, delay):
    """Seconds to wait before each retry: delay, 2*delay, 4*delay ... capped at 30 s."""
    return [min(delay * (2 ** attempt), 30.0) for attempt in range(retries)]


def failed_busy(rc, _out, err):
    return rc != 0 and is_busy(err)


def busy_message(argv, attempts):
    """What to do about a mount point that stayed busy: name the process that holds it."""
    return (f"{' '.join(argv)}: still busy after {attempts} attempts: a process has a file or "
            f"its working directory under {argv[-1]}; stop it (`fuser -vm {argv[-1]}` names it) "
            "and try again.")


def failed_busy_or_unreached(rc, out, err):
    return rc != 0 and (is_busy(err) or _GLUSTER_UNREACHED in out + err)


def mount_retry(retries, delay):
    """The Retry of buffer_mount: mount while busy or while a GlusterFS client reaches no brick,
    umount while busy (then busy_message), waiting backoff_delays(retries, delay); a mount that
    still fails is judged by its own words."""
    def gave_up(argv, attempts):
        return busy_message(argv, attempts) if argv[0] == "umount" else None

    return Retry(when=failed_busy_or_unreached, delays=backoff_delays(retries, delay), gave_up=gave_up,
                 only=("mount", "umount"))


def busy_retry(retries, delay, only=None):
    """The Retry of mount/umount: while EBUSY, wait backoff_delays(retries, delay), then fail
    with busy_message. only: the programs it applies to (None: every command)."""
    return Retry(when=failed_busy, delays=backoff_delays(retries, delay), gave_up=busy_message,
                 only=only)


def run_with_busy_retry(module, argv, retries=0, delay=1.0, sleep=time.sleep):
    """Run argv in the C locale, retrying while it fails with EBUSY.

    Returns (rc, stdout, stderr, attempts). Never raises for a failed command:
    the caller decides what a failure means.
    """
    retry = busy_retry(retries, delay)._replace(gave_up=None)
    done = CommandRunner(module, retry=retry, sleep=sleep).read(argv, ok=None)
    return done.rc, done.out, done.err, done.attempts


def unmount(module, path, retries=3, delay=1.0, sleep=time.sleep):
    """Unmount path, retrying on busy; raise MountError naming the cause otherwise."""
    return _run_mount_command(module, umount_argv(path), retries, delay, sleep)


def mount(module, source, path, fstype=None, options=None, retries=0, delay=1.0, sleep=time.sleep):
    """Mount source at path; raise MountError with the command's own words on failure."""
    return _run_mount_command(module, mount_argv(source, path, fstype, options), retries, delay,
                              sleep)


def _run_mount_command(module, argv, retries, delay, sleep):
    """The number of attempts argv took; MountError if it failed for good."""
    try:
        return CommandRunner(module, retry=busy_retry(retries, delay), sleep=sleep).read(
            argv).attempts
    except CommandError as error:
        raise MountError(str(error)) from None


# --- a FUSE mount whose daemon no longer answers ----------------------------------

FUSECTL = "/sys/fs/fuse/connections"


def answers_argv(path, timeout):
    """A statfs of path in a child that timeout(1) kills after ``timeout`` s. A FUSE request
    waits killably, so SIGKILL ends the child even when the daemon never answers. statfs, not
    stat: the kernel answers a stat from its attribute cache for a while (a stopped glusterfs
    client's mount "answered" a stat 0.5 s after another one), never a statfs."""
    return under_deadline(["stat", "--file-system", "--format=%i", "--", path], timeout)


def answers(runner, path, timeout):
    """Whether the file system mounted at path answered a stat within ``timeout`` s. An error
    is an answer (a GlusterFS client that lost its bricks says ENOTCONN); silence is not: a
    glusterfs client that never reached a brick can leave its mount with no reader of
    /dev/fuse (seen under load, 2026-12-06), and every stat there then blocks for good."""
    return runner.read(answers_argv(path, timeout), ok=None, retry=None).rc not in TIMED_OUT


def abort_fuse_connection(runner, minor, fusectl=FUSECTL):
    """Abort FUSE connection ``minor`` (a FUSE mount's device minor is its connection number):
    every request waiting on it ends with ENOTCONN, so the processes stuck there go on. fusectl
    is mounted for the purpose when it is not (and unmounted after). Not in check mode."""
    mounted_here = not os.path.ismount(fusectl)
    if mounted_here:
        runner.change(["mount", "-t", "fusectl", "fusectl", fusectl])
    try:
        runner.act(_write_abort, os.path.join(fusectl, str(minor), "abort"))
    finally:
        if mounted_here:
            runner.change(umount_argv(fusectl))


def _write_abort(path):
    try:
        with open(path, "w") as handle:
            handle.write("1")
    except FileNotFoundError:
        pass  # the connection has ended already


def release_dead_fuse(runner, entry, fusectl=FUSECTL):
    """Unmount a FUSE mount (a MountEntry) whose daemon no longer answers: abort its connection,
    then unmount it, lazily if a process still has its working directory there (nothing can
    reach the files behind a dead connection anyway). Check mode plans the first umount only.
    Returns the connection number."""
    abort_fuse_connection(runner, entry.minor, fusectl)
    done = runner.change(umount_argv(entry.target), ok=None, retry=None)
    if done is not None and done.rc != 0:
        runner.change(umount_argv(entry.target, lazy=True), retry=None)
    return entry.minor


def glusterfs_clients_of(target, proc="/proc"):
    """Pids of the glusterfs client processes mount.glusterfs started for mount point ``target``
    (the last word of such a client's command line is its mount point)."""
    wanted = os.fsencode(target)
    pids = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc, name, "cmdline"), "rb") as handle:
                argv = handle.read().rstrip(b"\0").split(b"\0")
        except OSError:
            continue  # ended meanwhile
        if os.path.basename(argv[0]) == b"glusterfs" and argv[-1] == wanted:
            pids.append(int(name))
    return pids


def end_processes(pids, signal_number=signal.SIGTERM):
    """Send signal_number to each pid that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal_number)


# --- glusterd's aux mounts ------------------------------------------------------------

# A gluster quota command mounts the volume on the host it runs on, at
# /var/run/gluster/<volume>_quota_list (quota list) or _quota_limit (limit-usage), the client's
# pid in that path + ".pid" (compiled into glusterd and the CLI, whatever glusterd's run
# directory). A command that timed out leaves its mount (found after 50 jobs at once, 2026-12-07),
# and every quota command leaves its pid file.
AUX_MOUNT_DIR = "/var/run/gluster"
AUX_MOUNT_KINDS = ("_quota_list", "_quota_limit")


def aux_mount_paths(name, directory=AUX_MOUNT_DIR):
    """Where glusterd's quota commands mount volume ``name``: the kernel's spelling (no symlink)."""
    real = os.path.realpath(directory)
    return [os.path.join(real, name + kind) for kind in AUX_MOUNT_KINDS]


def aux_mount_volume(target, directory=AUX_MOUNT_DIR):
    """The volume whose aux mount target is, or None when target is no aux mount."""
    if os.path.dirname(target) != os.path.realpath(directory):
        return None
    name = os.path.basename(target)
    return next((name[:-len(kind)] for kind in AUX_MOUNT_KINDS if name.endswith(kind)), None)


def release_aux_mounts(runner, name, directory=AUX_MOUNT_DIR, mountinfo=None):
    """Remove what quota commands left of a deleted volume on this host: each aux mount (lazily:
    its client may no longer answer), its directory and the pid files. Check mode plans the
    commands. Returns the paths removed or to remove."""
    entries = read_mountinfo() if mountinfo is None else mountinfo
    removed = []
    for path in aux_mount_paths(name, directory):
        if mount_at(entries, path) is not None:
            runner.change(umount_argv(path, lazy=True))
            removed.append(path)
        if os.path.isdir(path) and not os.path.islink(path):
            runner.change(["rmdir", path])
            removed.append(path)
        if os.path.isfile(path + ".pid"):
            runner.act(os.remove, path + ".pid")
            removed.append(path + ".pid")
    return sorted(set(removed))


def release_dead_aux_mounts(runner, timeout=5, min_age=60, directory=AUX_MOUNT_DIR, mountinfo=None,
                            fusectl=FUSECTL, clock=time.time):
    """Abort the FUSE connection of each aux mount on this host, at least ``min_age`` s old, that
    no longer answers a statfs within ``timeout`` s (answers()). Not in check mode. Returns those
    mounts' paths.

    glusterd ends a quota command by unmounting its aux mount itself (``umount -l PATH``, which
    stats PATH first) while it holds the trusted pool's lock. An aux mount whose client never
    reached a brick (no privileged port was free, 2026-12-07) has no reader of /dev/fuse: that
    stat blocks for good, and so does every gluster transaction of the pool ("Another
    transaction is in progress" for 12 minutes, 11 teardowns waiting). Aborting the connection
    ends the stat with an error; glusterd's umount finishes and the lock goes (the 11
    teardowns ended within 25 s). The age (of the client's pid file, which glusterd writes
    when it mounts; no pid file: old) spares the mount of a quota command still running on a
    loaded host, whose client may take a while to answer."""
    if runner.check_mode:
        return []
    entries = read_mountinfo() if mountinfo is None else mountinfo
    aborted = []
    for entry in entries:
        if not entry.fstype.startswith("fuse") or aux_mount_volume(entry.target, directory) is None:
            continue
        try:
            age = clock() - os.stat(entry.target + ".pid").st_mtime
        except OSError:
            age = min_age
        if age >= min_age and not answers(runner, entry.target, timeout):
            abort_fuse_connection(runner, entry.minor, fusectl)
            aborted.append(entry.target)
    return aborted


# --- a shared mount root (containers made earlier see buffers mounted under it) ----------

def plan_shared(path, exists, is_dir, mount, mode):
    """Argv lists that make path a shared mount point; [] if it is one. Pure.

    mount: the MountEntry at path (None: path is not a mount point); mode: of path if made.
    Raises MountError if path is something other than a directory.
    """
    if exists and not is_dir:
        raise MountError(f"{path} exists and is not a directory; buffers are mounted under a directory")
    commands = [] if exists else [["mkdir", "-p", "--mode", f"{mode:04o}", path]]
    if mount is None:
        commands.append(["mount", "--bind", path, path])
    if mount is None or not is_shared(mount):
        commands.append(["mount", "--make-shared", path])
    return commands


def describe_shared(mount):
    """{mount_point, shared} of the MountEntry at a path (None: not a mount point)."""
    return {"mount_point": mount is not None, "shared": mount is not None and is_shared(mount)}


def ensure_shared(runner, path, mode=0o755):
    """Make path (normalised) a shared mount point through runner (a CommandRunner; check mode
    plans only). Returns (before, after) as describe_shared; raises MountError when the kernel
    shows no shared propagation afterwards."""
    mount = mount_at(read_mountinfo(), path)
    before = describe_shared(mount)
    runner.change_all(plan_shared(path, os.path.lexists(path), os.path.isdir(path), mount, mode))
    if runner.check_mode:
        return before, {"mount_point": True, "shared": True}
    after = describe_shared(mount_at(read_mountinfo(), path))
    if not after["shared"]:
        raise MountError(f"mount --make-shared {path} succeeded but the kernel shows no shared "
                         "propagation there; see dmesg")
    return before, after


# --- owner and mode of a mount's root ----------------------------------------------

def resolve_uid(owner):
    """uid for a user name or a numeric id (ids need not exist in passwd: a job's uid may not)."""
    if owner is None:
        return None
    text = str(owner)
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise MountError(f"owner {text!r}: no such user on this host; "
                         "give an existing user name or a numeric uid") from None


def resolve_gid(group):
    """gid for a group name or a numeric id."""
    if group is None:
        return None
    text = str(group)
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise MountError(f"group {text!r}: no such group on this host; "
                         "give an existing group name or a numeric gid") from None


def parse_mode(mode):
    """Permission bits from an octal string ('0700', '755') or an int (YAML 0700 arrives as 448)."""
    if mode is None:
        return None
    if isinstance(mode, int) and not isinstance(mode, bool):
        value = mode
    elif re.match(r"^0?[0-7]{3,4}$", str(mode).strip()):
        value = int(str(mode).strip(), 8)
    else:
        raise MountError(f"mode {mode!r}: give octal permissions as a quoted string, e.g. '0700'")
    if value > 0o7777:
        raise MountError(f"mode {mode!r}: permissions go up to 07777")
    return value


def root_attributes(path):
    """(uid, gid, permission bits) of path."""
    info = os.stat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def attribute_commands(path, current, uid=None, gid=None, mode=None):
    """chown/chmod argv that bring path from current (uid, gid, mode) to the wanted ones."""
    cur_uid, cur_gid, cur_mode = current
    owner = str(uid) if uid is not None and uid != cur_uid else ""
    group = str(gid) if gid is not None and gid != cur_gid else ""
    commands = []
    if owner or group:
        commands.append(["chown", owner + (":" + group if group else ""), path])
    if mode is not None and mode != cur_mode:
        commands.append(["chmod", f"{mode:04o}", path])
    return commands
