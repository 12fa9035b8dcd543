# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Carrying out a plan: directories, then files in chunks, hard links and symlinks, then directory times.

Why it copies as it does (figures in docs/BENCHMARKS.md, "Staging"):

- The kernel serialises creates inside one directory (the parent's inode lock), so small
  files go to the threads round-robin across directories; large files are split into
  chunks copied at their offsets (splice, else pread/pwrite) into a destination pre-sized
  with ftruncate, the chunks of different files interleaved.
- A file's mode and times are set last, after its data, so an interrupted copy never
  passes the planner's skip rule; on stage-out the file is then renamed from its
  temporary name into place. A file that fails is removed and reported with its reason.
- Sources are opened with O_READ (never through a symlink) and checked again after
  opening: still a regular file of the planned size, and on stage-out on the buffer's own
  filesystem.
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
from collections import namedtuple

from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError, as_user, describe_error
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_hardlinks import HardLinker
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_plan import FilePlan
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_progress import Progress
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_rules import O_READ, is_inside

DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
BLOCK = 1024 * 1024  # one pread/pwrite; also what FUSE turns into a few WRITE requests
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID  # writing a file clears these: set them again afterwards
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

O_CREATE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def written_as(plan):
    """The destination a user recognises, and the temporary name it is written through, if any."""
    if plan.temp:
        return "%s (through its temporary %s)" % (plan.destination, plan.temp)
    return plan.destination


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


def chunk_tasks(files, chunk_size):
    """A Piece for every piece of a large file, round-robin, then the small files' FilePlans.

    One file's pieces are written under that file's inode lock in the kernel, so pieces of
    different files in flight at once go faster than many pieces of one file. A small file is
    its own task: its FileCopy (about 300 bytes with its lock) is made when a thread takes it,
    so a stage of 200,000 small files never holds 200,000 of them (docs/BENCHMARKS.md, "Trees
    as users have them").
    """
    large = []
    small = []
    for plan in files:
        if plan.size <= chunk_size:
            small.append(plan)
            continue
        pieces = chunk_ranges(plan.size, chunk_size)
        copy = FileCopy(plan, len(pieces))
        large.append([Piece(copy, offset, length) for offset, length in pieces])
    rounds = itertools.zip_longest(*large)
    return [task for batch in rounds for task in batch if task is not None] + small


Piece = namedtuple("Piece", ["copy", "offset", "length"])  # of a FileCopy shared by its pieces


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
    """Carries out a Plan with a Crew (stage_threads.py): directories, then files and links, then directory times."""

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
        self.failed_destinations = set()  # files that failed: their hard links fail too
        self.hardlinker = HardLinker(self)
        self.local = threading.local()
        self.pipes = []
        self.splice = hasattr(os, "splice")

    def run(self):
        failed_dirs = self.make_directories()
        runnable = [f for f in self.plan.files if not under_any(f.destination, failed_dirs)]
        self.crew.map_unordered(self.run_chunk, chunk_tasks(order_files(runnable, self.chunk_size),
                                                            self.chunk_size))
        self.hardlinker.run(self.plan.hardlinks, failed_dirs)
        links = [link for link in self.plan.links if not under_any(link.destination, failed_dirs)]
        self.crew.map_unordered(self.make_link, links)
        self.finish_directories(failed_dirs)
        for pipe in self.pipes:
            for fd in pipe:
                close_quietly(fd)

    def record_failure(self, path, reason, destination=None):
        with self.lock:
            self.plan.fail(path, reason)
            if destination is not None:
                self.failed_destinations.add(destination)

    @staticmethod
    def under_failed(path, failed_dirs):
        return under_any(path, failed_dirs)

    def copy_whole(self, source, destination, size, replace, temp):
        """One file copied in this thread, all its pieces (a hard link the kernel cannot make)."""
        plan = FilePlan(source, destination, size, replace, temp, temp is not None and os.path.lexists(temp))
        pieces = chunk_ranges(size, self.chunk_size)
        copy = FileCopy(plan, len(pieces))
        for offset, length in pieces:
            self.run_chunk(Piece(copy, offset, length))

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
            futures = [(d, self.crew.submit(self.make_directory, d)) for d in todo]
            for directory, future in futures:
                if not future.result():
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
        """One Piece of a large file, or a small file's FilePlan (one piece, made here)."""
        if isinstance(task, Piece):
            copy, offset, length = task
        else:
            copy, offset, length = FileCopy(task, 1), 0, task.size
        if self.fast is not None and self.fast.takes(copy.plan):
            (self.copy_out_through_gfapi if self.outward else self.copy_through_gfapi)(copy)
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
        self.create_target(copy, os.O_RDWR if self.verify else os.O_WRONLY)

    def create_target(self, copy, access):
        """Create the file a copy writes (the temporary name on stage-out) with the source's mode
        (``copy.info``), sized at once when it comes in several chunks; ``copy.error`` says why not."""
        plan = copy.plan
        replace = plan.replace_temp if plan.temp else plan.replace
        try:
            copy.dst = create_file(copy.target, access, stat.S_IMODE(copy.info.st_mode), replace)
            if copy.info.st_size > self.chunk_size:
                os.ftruncate(copy.dst, copy.info.st_size)
        except OSError as exc:
            copy.error = "cannot write %s%s" % (written_as(plan), as_user(exc))

    def copy_through_gfapi(self, copy):
        """A small file of a stage-in: read whole, then created, written and timed in one go."""
        plan = copy.plan
        try:
            info, data = read_small(plan)
        except OSError as exc:
            self.record_failure(plan.source, "cannot read%s" % as_user(exc), plan.destination)
        except StageError as exc:
            self.record_failure(plan.source, str(exc), plan.destination)
        else:
            try:
                self.fast.write(plan.destination, data, info, self.local)
            except OSError as exc:
                self.record_failure(plan.source, "cannot write %s%s" % (plan.destination, as_user(exc)),
                                    plan.destination)
            else:
                with self.lock:
                    self.copied += 1
                    self.copied_bytes += len(data)
                    self.fast.files += 1
                self.progress.add(nbytes=len(data))
        self.progress.add(files=1)

    def copy_out_through_gfapi(self, copy):
        """A small file of a stage-out: read whole from the volume, then written to its temporary name
        and finished as any other file (mode, times, close, rename)."""
        plan = copy.plan
        try:
            copy.info, data = self.fast.read(plan.source, plan.size, self.local)
        except OSError as exc:
            copy.error = "cannot read%s" % as_user(exc)
        except StageError as exc:
            copy.error = str(exc)
        else:
            self.create_target(copy, os.O_WRONLY)
        if copy.error is None:
            try:
                write_all(copy.dst, data)
            except OSError as exc:
                copy.error = "cannot write %s%s" % (written_as(plan), as_user(exc))
            else:
                with self.lock:
                    self.fast.files += 1
                self.progress.add(nbytes=len(data))
        self.complete_file(copy)

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
            self.record_failure(plan.source, error, plan.destination)
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


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
