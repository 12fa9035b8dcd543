# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A cache buffer on a compute node: fuse-overlayfs over the cached directory, run as the job's user.

The job's ``$DW_JOB_STRIPED`` is a fuse-overlayfs mount whose lower directory is the cached
directory (``pfs=DIR``) and whose upper and work directories lie in the job's buffer
(``<buffer>/upper``, ``<buffer>/work``; cache_writeback.py reads the upper one at the end).

Why it is mounted this way:

- The overlay daemon runs as the job's user, so every read of DIR and every write into the
  buffer is the user's, checked by the kernel and the file systems; root never reads the
  user's files for them. Without ``allow_other`` only that user (not even root) can enter the
  mount, which is right for a job.
- Root makes the mount itself (open ``/dev/fuse``, ``mount(2)`` with ``user_id``/``group_id``
  of the user, as the setuid ``fusermount3`` would) and hands the open device to the daemon,
  which libfuse takes as the mount point ``/dev/fd/N``. fusermount3 opens ``/dev/fuse`` with
  the user's own rights, so it fails where ``/dev/fuse`` is not mode 0666 (hosts without
  udev's rule for it); this way works on every host and needs no setuid program.
- The daemon runs in the foreground in a session of its own (``setsid``), its pid recorded
  under PID_DIR, so unmounting can wait until it has exited: every write it took has then
  reached the buffer before the write-back reads it.
- Kernel overlayfs cannot use a GlusterFS mount as its upper directory (no RENAME_WHITEOUT);
  fuse-overlayfs can, and then writes whiteouts as ``.wh.NAME`` files.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import ctypes
import ctypes.util
import os
import stat
import time

from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import mount_at, read_mountinfo
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError
from ansible_collections.hpc.burstbuffer.plugins.module_utils.user_worker import drop_privileges, run_as_user

FUSE_DEVICE = "/dev/fuse"
FSTYPE = "fuse.fuse-overlayfs"
PID_DIR = "/run/hpc.burstbuffer/cache-overlay"
UPPER = "upper"
WORK = "work"
SINCE = "since"  # in the buffer: when the cache was first mounted, ns since the epoch
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2


class OverlayError(Exception):
    """The overlay could not be mounted or unmounted; the message says why and what to do."""


def overlay_options(lower, upper, work):
    """fuse-overlayfs's -o value. Paths with a comma or colon cannot be given to it: refused."""
    for path in (lower, upper, work):
        if "," in path or ":" in path:
            raise OverlayError("%s holds ',' or ':', which fuse-overlayfs cannot take in a path: "
                               "cache a directory whose path has neither" % path)
    return "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work)


def daemon_argv(binary, options, fd):
    """The daemon in the foreground, serving the FUSE device it inherits as fd ``fd``."""
    return [binary, "-f", "-o", options, "/dev/fd/%d" % fd]


def mount_data(fd, uid, gid):
    """The FUSE mount's data: the device, the root's type, and the one user it answers."""
    return "fd=%d,rootmode=40000,user_id=%d,group_id=%d" % (fd, uid, gid)


def is_mounted(path, entries=None):
    """The cache overlay is mounted at ``path`` (mountinfo's word: root cannot stat a user's FUSE mount)."""
    entry = mount_at(read_mountinfo() if entries is None else entries, os.path.normpath(path))
    return entry is not None and entry.fstype == FSTYPE


def pid_file(path):
    return os.path.join(PID_DIR, path.strip("/").replace("/", "_") + ".pid")


def prepare_as_user(lower, buffer_dir, uid, gid):
    """As the user: check DIR can be read, make ``upper`` and ``work`` in the buffer, and give the
    upper root DIR's mode and times (the job sees the mount's root as DIR)."""

    def work(_send):
        try:
            info = os.stat(lower)
            os.listdir(lower)
        except OSError as exc:
            raise StageError("the job's user (uid %d) cannot read the cached directory %s: %s"
                             % (uid, lower, os.strerror(exc.errno))) from None
        if not stat.S_ISDIR(info.st_mode):
            raise StageError("the cached directory %s is not a directory" % lower)
        made = False
        for name in (UPPER, WORK):
            path = os.path.join(buffer_dir, name)
            try:
                os.mkdir(path, 0o700)
                made = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise StageError("cannot make %s in the buffer: %s" % (path, os.strerror(exc.errno))) from None
        upper = os.path.join(buffer_dir, UPPER)
        if made and not os.listdir(upper):
            os.chmod(upper, stat.S_IMODE(info.st_mode))
            os.utime(upper, ns=(info.st_atime_ns, info.st_mtime_ns))
        return {"since_ns": _keep_since(os.path.join(buffer_dir, SINCE)), "made": made}

    return run_as_user(uid, gid, work)


def _keep_since(path):
    """The time of the first mount, written once (a job requeued keeps its first time). As the user."""
    since = read_since(path)
    if since is not None:
        return since
    since = time.time_ns()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("%d\n" % since)
    return since


def read_since(path):
    """The time kept by the first mount, or None. The file is the user's: read it as the user (never
    through a symlink, only a regular file, at most 32 bytes, never waiting on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return int(os.read(fd, 32).decode("ascii", "replace").strip())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def mount_overlay(lower, buffer_dir, path, uid, gid, binary="fuse-overlayfs"):
    """Mount the overlay at ``path`` for uid/gid; returns the daemon's pid. Root only."""
    upper, work = os.path.join(buffer_dir, UPPER), os.path.join(buffer_dir, WORK)
    options = overlay_options(lower, upper, work)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        data = mount_data(fd, uid, gid).encode()
        if libc.mount(b"fuse-overlayfs", path.encode(), FSTYPE.encode(), MS_NOSUID | MS_NODEV, data) != 0:
            number = ctypes.get_errno()
            raise OverlayError("cannot mount the cache overlay at %s: %s" % (path, os.strerror(number)))
        pid = _start_daemon(binary, fd, uid, gid, options)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)  # the daemon holds the device now: if it dies, the mount answers ENOTCONN
    _record_pid(path, pid)
    try:
        run_as_user(uid, gid, lambda _send: sorted(os.listdir(path))[:0])
    except StageError as exc:
        detach(libc, path)
        with contextlib.suppress(OSError):
            os.unlink(pid_file(path))
        raise OverlayError("the cache overlay at %s does not answer (%s); it was unmounted" % (path, exc)) from None
    return pid


def _start_daemon(binary, fd, uid, gid, options):
    """fork; the child starts a session, becomes the user and execs the daemon in the foreground."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; checked by the unit tests' real mounts
        try:
            os.setsid()
            drop_privileges(uid, gid)
            null = os.open(os.devnull, os.O_RDWR)
            for target in (0, 1, 2):
                os.dup2(null, target)
            os.set_inheritable(fd, True)
            os.chdir("/")
            os.execvp(binary, daemon_argv(binary, options, fd))
        finally:
            os._exit(127)
    return pid


def _record_pid(path, pid):
    os.makedirs(PID_DIR, mode=0o700, exist_ok=True)
    with open(pid_file(path), "w") as handle:
        handle.write("%d\n" % pid)


def daemon_pid(path):
    try:
        with open(pid_file(path)) as handle:
            return int(handle.read().strip() or "0") or None
    except (OSError, ValueError):
        return None


def detach(libc, path):
    libc.umount2(path.encode(), MNT_DETACH)


def unmount_overlay(path, mounted, wait=60.0, sleep=time.sleep):
    """Unmount the overlay at ``path`` (if ``mounted``) and wait for its daemon to exit.

    A busy mount (the job left a process in it) is an OverlayError: the upper directory may
    still change, so the write-back must not start.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if mounted and libc.umount2(path.encode(), 0) != 0:
        number = ctypes.get_errno()
        raise OverlayError("cannot unmount the cache overlay at %s: %s; end the processes using it "
                           "(fuser -m %s) and run post-run again" % (path, os.strerror(number), path))
    pid = daemon_pid(path)
    if pid is not None:
        _wait_for_exit(pid, wait, sleep, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file(path))


def _wait_for_exit(pid, wait, sleep, path):
    deadline = time.monotonic() + wait
    while True:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child (another module run started it)
            if not _alive(pid):
                return
        if time.monotonic() > deadline:
            break
        sleep(0.1)
    raise OverlayError("the cache overlay daemon (pid %d) of %s has not exited %.0f s after the unmount; "
                       "its last writes may not be in the buffer yet: try post-run again" % (pid, path, wait))


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"
