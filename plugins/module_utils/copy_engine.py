# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The copy engine behind stage-in and stage-out: plan, then copy in parallel, as the job's user.

Why it is shaped this way (figures in docs/BENCHMARKS.md, "Staging"):

- Privileges are dropped in a forked worker process before any user file is
  opened (``stage_as_user``): ``setuid`` applies to a whole process, so threads
  cannot each be a different user. The parent (root) only reads results from a
  pipe. Nothing is ever passed to a shell.
- On a GlusterFS FUSE mount each small file costs about six round trips to the
  bricks (lookup, create, write, setattr, flush, release) and the kernel
  serialises creates inside one directory (the parent's inode lock). So files
  are handed to the threads round-robin across directories, and many threads
  (32-64) keep the bricks busy; large files are split into chunks copied with
  ``pread``/``pwrite`` at their offsets into a destination pre-sized with
  ``ftruncate``.
- A stage-in to a GlusterFS buffer writes each new file of up to 1 MiB straight
  into the volume with libgfapi (module_utils/gfapi.py): create by handle in its
  parent, write, set times - three brick calls and no FUSE round trips. The
  worker is still the user; it keeps one capability, CAP_NET_BIND_SERVICE, so
  that bricks that only trust privileged source ports accept it. Directories,
  larger files (chunks, splice) and replacements go through the mount; when
  libgfapi or the volume cannot be reached, everything does.
- The skip rule makes a stage resumable: a destination file with the source's
  size and mtime is complete. A file's mtime is set last, after its data, so a
  copy that was interrupted never looks complete (pre-sizing gives it the right
  size, never the right mtime).
- Stage-out writes each file under a temporary name next to its destination and
  renames it into place only once it is complete (and verified, if asked). A
  file that fails is removed, never left under its final name, and reported
  with its reason.
- Symlinks are copied as symlinks, never followed. On stage-out every file read
  is opened with ``O_NOFOLLOW`` and must live on the buffer's own filesystem
  (same ``st_dev``), so a link planted in the buffer cannot lead out of it.

Pure functions (path rules, list parsing, the skip rule, chunking, temporary
names, ordering) are at the top; filesystem work below them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import posixpath
import stat
import threading
import time

from ansible_collections.hpc.burstbuffer.plugins.module_utils import gfapi
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import read_mountinfo
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError, as_user, describe_error
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_plan import Planner
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_progress import Progress
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_rules import (
    O_READ,
    check_request,
    is_inside,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_threads import ThreadCrew
from ansible_collections.hpc.burstbuffer.plugins.module_utils.user_worker import run_as_user

DEFAULT_WORKERS = 32
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
BLOCK = 1024 * 1024  # one pread/pwrite; also what FUSE turns into a few WRITE requests
NO_SMALL_FILES = "no new file of at most 1 MiB"  # why gfapi was not needed
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID  # writing a file clears these: set them again afterwards
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

O_CREATE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# --- decisions (pure) ----------------------------------------------------------------------


def chunk_ranges(size, chunk_size):
    """(offset, length) pieces of a file; one piece (even an empty one) for a small file."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if size <= chunk_size:
        return [(0, size)]
    return [(offset, min(chunk_size, size - offset)) for offset in range(0, size, chunk_size)]


def interleave_by_directory(files):
    """Files round-robin over their destination directories.

    Creating files in one directory takes the directory's lock in the kernel, so threads
    working in the same directory wait for each other; spread over directories they do not.
    """
    groups = {}
    for item in files:
        groups.setdefault(posixpath.dirname(item.destination), []).append(item)
    rounds = itertools.zip_longest(*groups.values())
    return [item for batch in rounds for item in batch if item is not None]


def order_files(files, chunk_size):
    """Large files first (their chunks spread over all threads), then the rest interleaved."""
    large = sorted((f for f in files if f.size > chunk_size), key=lambda f: -f.size)
    small = [f for f in files if f.size <= chunk_size]
    return large + interleave_by_directory(small)


# --- copying --------------------------------------------------------------------------------


class FileCopy:
    """One file in flight: shared by its chunks; the last chunk to finish completes the file."""

    def __init__(self, plan, chunks):
        self.plan = plan
        self.target = plan.temp or plan.destination
        self.remaining = chunks
        self.lock = threading.Lock()
        self.src = None
        self.dst = None
        self.info = None
        self.error = None
        self.copied = 0

    def fail(self, exc, what):
        with self.lock:
            if self.error is None:
                self.error = "%s: %s" % (what, describe_error(exc))


class Copier:
    """Carries out a Plan with a ThreadCrew: directories, then files and links, then directory times."""

    def __init__(self, plan, crew, outward, chunk_size=DEFAULT_CHUNK_SIZE, verify=False,
                 buffer_dev=None, progress=None, fast=None):
        self.plan = plan
        self.fast = fast  # a GfapiWriter: small files of a stage-in go to the volume directly
        self.crew = crew
        self.outward = outward
        self.chunk_size = chunk_size
        self.verify = verify
        self.buffer_dev = buffer_dev
        self.progress = progress or Progress(len(plan.files), plan.bytes)
        self.lock = threading.Lock()
        self.copied = 0
        self.copied_bytes = 0
        self.links = 0
        self.created_dirs = 0
        self.local = threading.local()
        self.pipes = []
        self.splice = hasattr(os, "splice")

    def run(self):
        failed_dirs = self.make_directories()
        runnable = [f for f in self.plan.files if not under_any(f.destination, failed_dirs)]
        self.crew.map_unordered(self.run_chunk, chunk_tasks(order_files(runnable, self.chunk_size),
                                                            self.chunk_size))
        links = [link for link in self.plan.links if not under_any(link.destination, failed_dirs)]
        self.crew.map_unordered(self.make_link, links)
        self.finish_directories(failed_dirs)
        for pipe in self.pipes:
            for fd in pipe:
                close_quietly(fd)

    def record_failure(self, path, reason):
        with self.lock:
            self.plan.fail(path, reason)

    # directories ------------------------------------------------------------------------------

    def make_directories(self):
        """Create missing directories level by level (parents first), in parallel within a level."""
        failed = set()
        levels = {}
        for directory in self.plan.dirs:
            if not directory.exists:
                levels.setdefault(directory.destination.count("/"), []).append(directory)
        for depth in sorted(levels):
            todo = [d for d in levels[depth] if not under_any(d.destination, failed)]
            results = [(d, self.crew.submit(self.make_directory, d)) for d in todo]
            for directory, result in results:
                if not result.value():
                    failed.add(directory.destination)
        return failed

    def make_directory(self, directory):
        # Owner rwx while we fill it; its own mode comes at the end (finish_directories).
        try:
            os.mkdir(directory.destination, directory.mode | stat.S_IRWXU)
        except FileExistsError:
            if os.path.isdir(directory.destination) and not os.path.islink(directory.destination):
                return True
            self.record_failure(directory.destination, "exists and is not a directory")
            return False
        except OSError as exc:
            self.record_failure(directory.destination, "cannot create directory%s" % as_user(exc))
            return False
        with self.lock:
            self.created_dirs += 1
        return True

    def finish_directories(self, failed):
        """Modes and times of the copied directories, deepest first (children touch parents)."""
        for directory in sorted(self.plan.dirs, key=lambda d: -d.destination.count("/")):
            if directory.source is None or directory.keep_attributes:
                continue
            if under_any(directory.destination, failed):
                continue
            try:
                if directory.exists or directory.mode != directory.mode | stat.S_IRWXU or \
                        directory.mode & 0o7000:
                    os.chmod(directory.destination, directory.mode, follow_symlinks=False)
                os.utime(directory.destination, ns=(directory.atime_ns, directory.mtime_ns),
                         follow_symlinks=False)
            except OSError as exc:
                self.record_failure(directory.destination, "cannot set mode and times%s" % as_user(exc))

    # files --------------------------------------------------------------------------------------

    def run_chunk(self, task):
        copy, offset, length = task
        if self.fast is not None and self.fast.takes(copy.plan):
            self.copy_through_gfapi(copy)
            return
        with copy.lock:
            if copy.src is None and copy.error is None:
                self.open_file(copy)
            ready = copy.error is None
        if ready:
            try:
                self.copy_range(copy, offset, length)
            except OSError as exc:
                copy.fail(exc, "copy failed")
        with copy.lock:
            copy.remaining -= 1
            last = copy.remaining == 0
        if last:
            self.complete_file(copy)

    def open_file(self, copy):
        """Open the source and create the destination (the temporary name on stage-out)."""
        plan = copy.plan
        try:
            copy.src = os.open(plan.source, O_READ)
            info = os.fstat(copy.src)
        except OSError as exc:
            copy.error = "cannot read%s" % as_user(exc)
            return
        if not stat.S_ISREG(info.st_mode):
            copy.error = "no longer a regular file"
            return
        if self.outward and self.buffer_dev is not None and info.st_dev != self.buffer_dev:
            copy.error = "not on the buffer's filesystem (a symlink on the way?); not copied"
            return
        if info.st_size != plan.size:
            copy.error = ("changed while staging (%d bytes, %d when planned); stage again"
                          % (info.st_size, plan.size))
            return
        copy.info = info
        access = os.O_RDWR if self.verify else os.O_WRONLY
        replace = plan.replace_temp if plan.temp else plan.replace
        try:
            copy.dst = create_file(copy.target, access, stat.S_IMODE(info.st_mode), replace)
            if info.st_size > self.chunk_size:
                os.ftruncate(copy.dst, info.st_size)
        except OSError as exc:
            copy.error = "cannot write %s%s" % (copy.target, as_user(exc))

    def copy_through_gfapi(self, copy):
        """A small file of a stage-in: read whole, then created, written and timed in one go."""
        plan = copy.plan
        try:
            info, data = read_small(plan)
        except OSError as exc:
            self.record_failure(plan.source, "cannot read%s" % as_user(exc))
        except StageError as exc:
            self.record_failure(plan.source, str(exc))
        else:
            try:
                self.fast.write(plan.destination, data, info, self.local)
            except OSError as exc:
                self.record_failure(plan.source, "cannot write %s%s" % (plan.destination, as_user(exc)))
            else:
                with self.lock:
                    self.copied += 1
                    self.copied_bytes += len(data)
                    self.fast.files += 1
                self.progress.add(nbytes=len(data))
        self.progress.add(files=1)

    def buffer(self):
        buf = getattr(self.local, "buffer", None)
        if buf is None:
            buf = self.local.buffer = bytearray(BLOCK)
        return buf

    def pipe(self):
        """This thread's pipe for splice, 1 MiB deep; None where splice is missing."""
        pipe = getattr(self.local, "pipe", None)
        if pipe is None and self.splice:
            pipe = self.local.pipe = os.pipe()
            with self.lock:
                self.pipes.append(pipe)
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe[1], F_SETPIPE_SZ, BLOCK)
        return pipe

    def copy_range(self, copy, offset, length):
        """Copy [offset, offset+length) at those offsets: splice for large pieces, else pread/pwrite."""
        view = memoryview(self.buffer())
        position = offset
        if length >= BLOCK and self.splice:
            try:
                position = self.splice_range(copy, offset, length)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                self.splice = False  # this filesystem cannot: read and write from here on
        self.write_range(copy, position, offset + length, view)
        if self.verify:
            verify_range(copy.src, copy.dst, offset, length, view)

    def splice_range(self, copy, position, length):
        """Page cache to page cache through this thread's pipe, without copying through Python.

        Returns how far it got; a pipe left with data in it after an error is thrown away.
        """
        read_end, write_end = self.pipe()
        end = position + length
        try:
            while position < end:
                got = os.splice(copy.src, write_end, min(BLOCK, end - position), offset_src=position)
                if got == 0:
                    raise OSError(errno.EIO, "the source shrank while being copied; stage again")
                put = 0
                while put < got:
                    put += os.splice(read_end, copy.dst, got - put, offset_dst=position + put)
                position += got
                self.progress.add(nbytes=got)
        except OSError:
            self.local.pipe = None  # may hold data: the next piece gets a fresh pipe
            raise
        return position

    def write_range(self, copy, position, end, view):
        while position < end:
            got = os.preadv(copy.src, [view[:min(BLOCK, end - position)]], position)
            if got == 0:
                raise OSError(errno.EIO, "the source shrank while being copied; stage again")
            written = 0
            while written < got:
                written += os.pwrite(copy.dst, view[written:got], position + written)
            position += got
            self.progress.add(nbytes=got)

    def complete_file(self, copy):
        plan = copy.plan
        error = copy.error
        if error is None:
            error = self.finalise(copy)
        else:
            close_quietly(copy.dst)
        close_quietly(copy.src)
        if error is not None:
            if copy.dst is not None:
                unlink_quietly(copy.target)
            self.record_failure(plan.source, error)
            self.progress.add(files=1)
            return
        with self.lock:
            self.copied += 1
            self.copied_bytes += copy.info.st_size
        self.progress.add(files=1)

    def finalise(self, copy):
        """Mode, times, close (a FUSE client reports delayed write errors here), then rename."""
        info = copy.info
        try:
            if info.st_mode & SPECIAL_BITS:
                os.fchmod(copy.dst, stat.S_IMODE(info.st_mode))
            os.utime(copy.dst, ns=(info.st_atime_ns, info.st_mtime_ns))
        except OSError as exc:
            close_quietly(copy.dst)
            return "cannot set mode and times of %s%s" % (copy.target, as_user(exc))
        try:
            os.close(copy.dst)
        except OSError as exc:
            return "writing %s failed: %s" % (copy.target, describe_error(exc))
        if copy.plan.temp:
            try:
                os.rename(copy.plan.temp, copy.plan.destination)
            except OSError as exc:
                return "cannot rename %s to %s%s" % (copy.plan.temp, copy.plan.destination, as_user(exc))
        return None

    # symlinks ------------------------------------------------------------------------------------

    def make_link(self, link):
        try:
            if link.replace:
                os.unlink(link.destination)
            os.symlink(link.target, link.destination)
            os.utime(link.destination, ns=(link.atime_ns, link.mtime_ns), follow_symlinks=False)
        except OSError as exc:
            reason = "cannot create symlink %s%s" % (link.destination, as_user(exc))
            self.record_failure(link.source, reason)
            return
        with self.lock:
            self.links += 1


def read_small(plan):
    """(fstat, bytes) of a small source file, checked as open_file checks a large one."""
    fd = os.open(plan.source, O_READ)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StageError("no longer a regular file")
        if info.st_size != plan.size:
            raise StageError("changed while staging (%d bytes, %d when planned); stage again"
                             % (info.st_size, plan.size))
        chunks, left = [], info.st_size
        while left:
            got = os.read(fd, left)
            if not got:
                raise StageError("the source shrank while being copied; stage again")
            chunks.append(got)
            left -= len(got)
        return info, b"".join(chunks)
    finally:
        os.close(fd)


class GfapiWriter:
    """Small files of a stage-in straight into the GlusterFS volume (module_utils/gfapi.py).

    Directories are still made through the mount (before any file); a file goes this way
    only when it is at most BLOCK bytes and nothing is in its place yet (a partial copy to
    replace goes through the mount). Each copy thread tells gfapi once who it is: the
    worker's own uid, gid and groups (gfapi keeps identity per thread)."""

    def __init__(self, volume, buffer_root, root_in_volume):
        self.volume = volume
        self.buffer_root = buffer_root  # as the request names it (a symlink, perhaps)
        self.root_in_volume = root_in_volume  # the same directory as the volume sees it
        self.identity = (os.geteuid(), os.getegid(), os.getgroups())
        self.handles = {}  # destination directory -> its gfapi handle (the volume keeps them)
        self.files = 0

    @staticmethod
    def takes(plan):
        return plan.size <= BLOCK and plan.temp is None and not plan.replace

    def write(self, destination, data, info, local):
        if not getattr(local, "gfapi_identity", False):
            self.volume.use_identity(*self.identity)
            local.gfapi_identity = True
        parent, name = posixpath.split(destination)
        handle = self.handles.get(parent)
        if handle is None:  # once per directory: 10,000 files spend no time here
            below = os.path.relpath(parent, self.buffer_root)
            handle = self.volume.directory(posixpath.normpath(posixpath.join(self.root_in_volume, below)))
            self.handles[parent] = handle
        self.volume.create_file(handle, name, data, stat.S_IMODE(info.st_mode), info.st_atime_ns,
                                info.st_mtime_ns)


def gfapi_target(request, use_gfapi=True, mountinfo=None):
    """(server, volume, mount point) when a stage-in may write through libgfapi, else None:
    asked for, inward, and the buffer root on a GlusterFS FUSE mount."""
    if not use_gfapi or request.direction != "in":
        return None
    try:
        entries = read_mountinfo() if mountinfo is None else mountinfo
    except OSError:
        return None
    return gfapi.glusterfs_mount(entries, os.path.realpath(request.buffer_root))


def gfapi_writer(request, plan, target, verify):
    """(GfapiWriter or None, why not) for this stage: stage-out never writes into the buffer,
    so there is nothing to say why not; a stage-in says why whenever it goes without."""
    if request.direction != "in":
        return None, None
    if not any(GfapiWriter.takes(f) for f in plan.files):
        return None, NO_SMALL_FILES
    return open_gfapi(target, verify, request.buffer_root)


def open_gfapi(target, verify, buffer_root="/"):
    """(GfapiWriter or None, why not): the mount stays in use whenever gfapi cannot be."""
    if target is None:
        return None, "the buffer is not a GlusterFS mount, or gfapi is off"
    if verify:
        return None, "verify reads back through the mount"
    server, volume, mount_point = target
    root_in_volume = gfapi.volume_path(mount_point, os.path.realpath(buffer_root))
    try:
        return GfapiWriter(gfapi.Volume(server, volume), buffer_root, root_in_volume), None
    except gfapi.GfapiError as exc:
        return None, str(exc)


def chunk_tasks(files, chunk_size):
    """(FileCopy, offset, length) for every piece; the pieces of large files round-robin.

    One file's pieces are written under that file's inode lock in the kernel, so pieces of
    different files in flight at once go faster than many pieces of one file.
    """
    per_file = []
    for plan in files:
        pieces = chunk_ranges(plan.size, chunk_size)
        copy = FileCopy(plan, len(pieces))
        per_file.append([(copy, offset, length) for offset, length in pieces])
    large = [tasks for tasks in per_file if len(tasks) > 1]
    small = [tasks[0] for tasks in per_file if len(tasks) == 1]
    rounds = itertools.zip_longest(*large)
    return [task for batch in rounds for task in batch if task is not None] + small


def create_file(path, access, mode, replace):
    """A new file at ``path`` with ``mode`` (umask is 0 in the worker); never through a symlink."""
    try:
        return os.open(path, access | O_CREATE, mode)
    except FileExistsError:
        if not replace and not os.path.lexists(path):
            raise
    os.unlink(path)  # an older, incomplete copy (possibly read-only): replace it
    return os.open(path, access | O_CREATE, mode)


def verify_range(src, dst, offset, length, view):
    """Compare checksums of the same range in source and destination (destination re-read)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(dst, offset, length, os.POSIX_FADV_DONTNEED)
    if range_digest(src, offset, length, view) != range_digest(dst, offset, length, view):
        raise OSError(errno.EIO, "verification failed: destination differs from source")


def range_digest(fd, offset, length, view):
    digest = hashlib.blake2b()
    end = offset + length
    while offset < end:
        got = os.preadv(fd, [view[:min(BLOCK, end - offset)]], offset)
        if got == 0:
            break
        digest.update(view[:got])
        offset += got
    return digest.digest()


def under_any(path, roots):
    return any(is_inside(root, path) for root in roots)


def close_quietly(fd):
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def unlink_quietly(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


# --- one stage in this process ---------------------------------------------------------------

def stage(request, workers=DEFAULT_WORKERS, chunk_size=DEFAULT_CHUNK_SIZE, verify=False,
          dry_run=False, report=None, gfapi_via=None):
    """Stage ``request`` in the current process (as whoever runs it); returns the result dict.

    ``report`` receives progress snapshots (dicts) at most every PROGRESS_INTERVAL seconds.
    ``gfapi_via``: gfapi_target()'s answer; small files then bypass the FUSE mount.
    Raises StageError when the request cannot be staged at all; per-file failures are in
    ``failed_files``.
    """
    if workers < 1:
        raise StageError("workers is %d: use at least 1." % workers)
    if chunk_size < BLOCK:
        raise StageError("chunk_size is %d bytes: use at least 1MiB." % chunk_size)
    request = check_request(request)
    start = time.monotonic()
    buffer_dev = buffer_device(request.buffer_root)
    umask = os.umask(0)  # modes are copied exactly
    crew = ThreadCrew(workers)
    try:
        plan = Planner(request, crew, buffer_dev).run()
        result = {"files": len(plan.files), "bytes": plan.bytes, "complete": plan.complete,
                  "links": len(plan.links), "directories": sum(not d.exists for d in plan.dirs)}
        if dry_run:
            result["planned"] = plan.summary()
        else:
            progress = Progress(len(plan.files), plan.bytes, report)
            fast, why_not = gfapi_writer(request, plan, gfapi_via, verify)
            copier = Copier(plan, crew, request.direction == "out", chunk_size, verify, buffer_dev,
                            progress, fast)
            copier.run()
            result.update(files=copier.copied, bytes=copier.copied_bytes, links=copier.links,
                          directories=copier.created_dirs,
                          gfapi_files=fast.files if fast else 0, gfapi_unused=why_not)
            if report is not None:
                report(progress.snapshot())
    finally:
        crew.close()
        os.umask(umask)
    result.update(seconds=round(time.monotonic() - start, 3), failed_files=plan.failed,
                  not_copied=plan.not_copied)
    return result


def buffer_device(buffer_root):
    try:
        info = os.stat(buffer_root)
    except OSError as exc:
        raise StageError("cannot reach the buffer %s%s" % (buffer_root, as_user(exc))) from None
    if not stat.S_ISDIR(info.st_mode):
        raise StageError("buffer_root %s is not a directory." % buffer_root)
    return info.st_dev


# --- as the job's user: a forked worker (user_worker.py) --------------------------------------

def stage_as_user(request, uid, gid, workers=DEFAULT_WORKERS, chunk_size=DEFAULT_CHUNK_SIZE,
                  verify=False, dry_run=False, report=None, use_gfapi=True):
    """Run ``stage`` in a forked worker that is uid/gid; the caller (root) only reads its results.

    ``report`` receives the worker's progress snapshots. ``use_gfapi``: a stage-in to a
    GlusterFS mount writes small files through libgfapi; only then does the worker keep
    the one capability that needs.
    """
    via = None if dry_run else gfapi_target(request, use_gfapi)

    def work(send_progress):
        return stage(request, workers, chunk_size, verify, dry_run, report=send_progress, gfapi_via=via)

    return run_as_user(uid, gid, work, report, keep_net_bind=via is not None)


