# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libgfapi through ctypes: create small files in a GlusterFS volume without its FUSE mount.

Why (docs/BENCHMARKS.md, "Staging"): through FUSE each small file costs the
kernel round trips of lookup, create, write, setattr, flush and release, and the
machine runs out of CPU before the bricks do. libgfapi runs the client in this
process: a file is created by handle in its parent directory (no lookup of the
path), written and given its times: three calls instead of six, and no kernel
round trips.

Only what staging needs: new small files and hard links to them for a stage-in
(``Volume.create_file``, ``Volume.link``), small files read for a stage-out (``Volume.read_file``):
the calls below, in the versions GlusterFS 10.3 exports as default (ctypes binds
those). Identity: gfapi sends the bricks the uid, gid and groups set with ``glfs_setfsuid``/``glfs_setfsgid``/
``glfs_setfsgroups`` for the calling thread; the copy worker runs as the job's
user and sets the same per thread, so files are created and checked as the user.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import os
import platform
import threading
import time

LIBRARY = "libgfapi.so.0"
VOLFILE_PORT = 24007
LOG_ERROR = 4  # gf_loglevel_t: NONE, EMERG, ALERT, CRITICAL, ERROR, ...
INIT_TIMEOUT = 15.0  # glfs_init blocks for good when the bricks refuse this client
# Translators that keep a file's lock after its last write and update its size and version
# on the bricks only when they let go: a second later, at contention, at flush or at fini.
DELAYED_POST_OP = (b"type cluster/disperse", b"type cluster/replicate")
VOLFILE_LIMIT = 1 << 20
VOLFILE_ATTEMPTS = 4  # the graph can change between asking the volfile's length and copying it
VOLFILE_WAIT, VOLFILE_PAUSE = 2.0, 0.01  # s to wait at most for a volfile not stored yet, and between asks
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL
SPECIAL_BITS = 0o6000  # set-user-id, set-group-id
SET_ATTR_MODE, SET_ATTR_ATIME, SET_ATTR_MTIME = 0x1, 0x10, 0x20  # GFAPI_SET_ATTR_*


class GfapiError(Exception):
    """libgfapi cannot be used here; the message says why (the mount is used instead)."""


class SourceChanged(Exception):
    """A file to read is not what the stage planned (the message says how, in the copy engine's words)."""


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class Stat(ctypes.Structure):
    """struct stat of x86_64 Linux (144 bytes), as glfs_h_setattrs reads it; other machines lay
    it out differently, so Api refuses them (and the mount is used)."""
    _fields_ = [("st_dev", ctypes.c_ulong), ("st_ino", ctypes.c_ulong), ("st_nlink", ctypes.c_ulong),
                ("st_mode", ctypes.c_uint), ("st_uid", ctypes.c_uint), ("st_gid", ctypes.c_uint),
                ("_pad0", ctypes.c_int), ("st_rdev", ctypes.c_ulong), ("st_size", ctypes.c_long),
                ("st_blksize", ctypes.c_long), ("st_blocks", ctypes.c_long),
                ("st_atim", Timespec), ("st_mtim", Timespec), ("st_ctim", Timespec),
                ("_reserved", ctypes.c_long * 3)]


def glusterfs_mount(entries, path):
    """(server, volume, mount point) of the fuse.glusterfs mount holding path, or None.

    entries: mounts.parse_mountinfo() output; the deepest mount containing path wins."""
    path = path.rstrip("/") or "/"
    best = None
    for entry in entries:
        target = entry.target.rstrip("/") or "/"
        inside = path == target or path.startswith(target + "/") or target == "/"
        if inside and (best is None or len(target) >= len(best.target.rstrip("/") or "/")):
            best = entry
    if best is None or best.fstype != "fuse.glusterfs" or ":" not in best.source:
        return None
    server, volume = best.source.rsplit(":", 1)
    return server, volume.lstrip("/"), best.target


def volume_path(mount_point, path):
    """path (under the mount point) as the volume sees it: '/' + the part below the mount."""
    relative = os.path.relpath(path, mount_point)
    return "/" if relative == "." else "/" + relative


def _bind(library, name, restype, *argtypes):
    function = getattr(library, name)
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


def _raise(what=None, name=None):
    """OSError of errno; a file operation's reads as the mount's would (no call name)."""
    number = ctypes.get_errno()
    text = os.strerror(number)
    raise OSError(number, text if what is None else "%s: %s" % (what, text), name)


class Api:
    """The bound calls. Raises GfapiError when the library or a call is missing."""

    def __init__(self, library=LIBRARY):
        if platform.machine() != "x86_64" or ctypes.sizeof(Stat) != 144:
            raise GfapiError("struct stat is laid out here for x86_64 only, not %s" % platform.machine())
        try:
            lib = ctypes.CDLL(library, use_errno=True)
        except OSError as exc:
            raise GfapiError("cannot load %s (%s)" % (library, exc)) from None
        vp, cp, ci, u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32
        try:
            self.new = _bind(lib, "glfs_new", vp, cp)
            self.set_volfile_server = _bind(lib, "glfs_set_volfile_server", ci, vp, cp, cp, ci)
            self.set_logging = _bind(lib, "glfs_set_logging", ci, vp, cp, ci)
            self.init = _bind(lib, "glfs_init", ci, vp)
            self.get_volfile = _bind(lib, "glfs_get_volfile", ctypes.c_ssize_t, vp, vp, ctypes.c_size_t)
            self.h_lookupat = _bind(lib, "glfs_h_lookupat", vp, vp, vp, cp, vp, ci)
            self.h_creat = _bind(lib, "glfs_h_creat", vp, vp, vp, cp, ci, u32, vp)
            self.h_anonymous_write = _bind(lib, "glfs_h_anonymous_write", ctypes.c_ssize_t, vp, vp, vp,
                                           ctypes.c_size_t, ctypes.c_long)
            self.h_setattrs = _bind(lib, "glfs_h_setattrs", ci, vp, vp, ctypes.POINTER(Stat), ci)
            self.h_unlink = _bind(lib, "glfs_h_unlink", ci, vp, vp, cp)
            self.h_link = _bind(lib, "glfs_h_link", ci, vp, vp, vp, cp)
            self.h_close = _bind(lib, "glfs_h_close", ci, vp)
            # create and open in one call (GFAPI_6.6): the fd may write whatever the mode, as
            # open(2) with O_CREAT; a separate glfs_h_open of a 0444 file is refused (EACCES)
            self.h_creat_open = _bind(lib, "glfs_h_creat_open", vp, vp, vp, cp, ci, u32, vp, ctypes.POINTER(vp))
            self.write = _bind(lib, "glfs_write", ctypes.c_ssize_t, vp, vp, ctypes.c_size_t, ci)
            self.h_open = _bind(lib, "glfs_h_open", vp, vp, vp, ci)
            self.read = _bind(lib, "glfs_read", ctypes.c_ssize_t, vp, vp, ctypes.c_size_t, ci)
            self.close = _bind(lib, "glfs_close", ci, vp)
            self.setfsuid = _bind(lib, "glfs_setfsuid", ci, u32)
            self.setfsgid = _bind(lib, "glfs_setfsgid", ci, u32)
            self.setfsgroups = _bind(lib, "glfs_setfsgroups", ci, ctypes.c_size_t,
                                     ctypes.POINTER(u32))
        except AttributeError as exc:
            raise GfapiError("%s lacks a call staging needs (%s)" % (library, exc)) from None


class Volume:
    """One gfapi client of a volume, shared by the copy threads."""

    def __init__(self, server, volume, api=None, log_path="/dev/null", timeout=INIT_TIMEOUT):
        self.api = api or Api()
        self.name = volume
        self.fs = self.api.new(volume.encode())
        if not self.fs:
            raise GfapiError("glfs_new(%s) failed" % volume)
        if self.api.set_volfile_server(self.fs, b"tcp", server.encode(), VOLFILE_PORT) != 0:
            raise GfapiError("cannot use %s as the volfile server of %s" % (server, volume))
        self.api.set_logging(self.fs, log_path.encode(), LOG_ERROR)
        self._connect(server, timeout)
        self.lock = threading.Lock()
        self.directories = {}
        volfile = self._volfile()
        # Without the volfile nothing says the volume writes at once: files are closed one by one,
        # which is right on every volume (only slower where nothing delays its post-op).
        self.close_each_file = not volfile or any(name in volfile for name in DELAYED_POST_OP)

    def _volfile(self, wait=None):
        """The client graph this process runs (bytes), as glusterd sent it; b"" if gfapi has not
        stored it within ``wait`` s (default VOLFILE_WAIT).

        glfs_init can return before gfapi stores the volfile it built the graph from (GlusterFS
        api/src/glfs-mgmt.c stores it after activating the graph, and the bricks can come up
        first): it then has length 0. Taken for a volume without delayed post-ops, that once made
        a stage-in on a dispersed volume write without closing its files; they read back empty
        (tests/integration/bbctl/test_load.py: 2 of 108 jobs, docs/RELIABILITY.md). So an empty
        answer is asked again."""
        deadline = time.monotonic() + (VOLFILE_WAIT if wait is None else wait)
        while True:
            volfile = self._volfile_once()
            if volfile or time.monotonic() >= deadline:
                return volfile
            time.sleep(VOLFILE_PAUSE)

    def _volfile_once(self):
        """The volfile gfapi holds now (b"" if none yet).

        glfs_get_volfile copies as many bytes as it is offered, not the volfile's length
        (GlusterFS 10.3 api/src/glfs.c): a 64 KiB buffer for a 3 KiB volfile read past the end
        of gfapi's copy and killed the copy worker with SIGSEGV, once in a few hundred stage-ins
        under load. So it is asked the length first (a short buffer gets the shortfall,
        negated) and offered exactly that; if the graph changed in between, it is asked again."""
        size = 0
        for _attempt in range(VOLFILE_ATTEMPTS):
            buffer = ctypes.create_string_buffer(size) if size else None
            got = self.api.get_volfile(self.fs, buffer, size)
            if got == size:
                return buffer.raw if buffer else b""
            size = size - got if got < 0 else size  # too short: got is size less the volfile's length
            if size > VOLFILE_LIMIT:
                raise GfapiError("the client volfile of %s is over %d bytes" % (self.name, VOLFILE_LIMIT))
        raise GfapiError("the client volfile of %s kept changing while it was read" % self.name)

    def _connect(self, server, timeout):
        # glfs_init never returns when the bricks refuse the client (an unprivileged port
        # with server.allow-insecure off): we give up and use the mount.
        self._call_within("glfs_init", lambda: self.api.init(self.fs), timeout, "of %s at %s" % (self.name, server))

    @staticmethod
    def _call_within(name, call, timeout, what):
        """call() in a thread (libgfapi calls can block for good); GfapiError unless it gives 0."""
        outcome = {}

        def run():
            outcome["rc"] = call()
            outcome["errno"] = ctypes.get_errno()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise GfapiError("%s %s did not answer in %g s" % (name, what, timeout))
        if outcome["rc"] != 0:
            raise GfapiError("%s %s failed: %s" % (name, what, os.strerror(outcome["errno"])))

    def use_identity(self, uid, gid, groups):
        """This thread's calls run as uid/gid/groups on the bricks (gfapi keeps it per thread)."""
        array = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
        if self.api.setfsgroups(len(groups), array) != 0:
            _raise("glfs_setfsgroups")
        if self.api.setfsgid(gid) != 0:
            _raise("glfs_setfsgid")
        if self.api.setfsuid(uid) != 0:
            _raise("glfs_setfsuid")

    def directory(self, path):
        """The handle of a directory of the volume ('/a/b'), looked up once."""
        with self.lock:
            handle = self.directories.get(path)
        if handle:
            return handle
        handle = self.api.h_lookupat(self.fs, None, path.encode("utf-8", "surrogateescape"), None, 0)
        if not handle:
            _raise(name=path)
        with self.lock:
            if path in self.directories:
                self.api.h_close(handle)
                return self.directories[path]
            self.directories[path] = handle
        return handle

    def create_file(self, parent, name, data, mode, atime_ns, mtime_ns):
        """A new file name in directory handle parent, holding data, with mode and times.

        Create, write, set the times: three calls to the bricks (through FUSE: six), on a
        volume whose translators write at once (close_each_file False). On a dispersed or
        replicated volume the file is created and opened in one call (glfs_h_creat_open, so
        that a read-only mode such as 0444 does not refuse the file's own write, as open(2)
        with O_CREAT), written through that fd and closed: its flush is what puts the file's
        size and version on the bricks, which this process, exiting soon after, would
        otherwise never do (its last files read as empty through every mount).
        A write that write-behind held back and the brick then refused (a full quota) fails
        the setattr or close that follows it, so it is this file's error. A file that fails
        after it was created is removed: no partial file is left under its name."""
        api, raw = self.api, name.encode("utf-8", "surrogateescape")
        fd = ctypes.c_void_p()
        if self.close_each_file:
            handle = api.h_creat_open(self.fs, parent, raw, CREATE_FLAGS, mode, None, ctypes.byref(fd))
        else:
            handle = api.h_creat(self.fs, parent, raw, CREATE_FLAGS, mode, None)
        if not handle:
            _raise(name=name)
        try:
            if self.close_each_file:
                self._write_closed(fd.value, data, name)
            else:
                self._write_all(handle, data, name)
            self._set_times(handle, mode, atime_ns, mtime_ns, name)
        except OSError:
            api.h_unlink(self.fs, parent, raw)
            raise
        finally:
            api.h_close(handle)

    def link(self, leader_parent, leader_name, parent, name):
        """A new name ``name`` in directory handle ``parent`` for the regular file ``leader_name`` of
        directory handle ``leader_parent`` (glfs_h_link), checked afterwards: a lookup of the new
        name must find the leader's inode, else the name is removed and EIO raised. Raises
        OSError with the errno of the call that failed (EEXIST: the name is taken)."""
        api = self.api
        leader_raw, raw = leader_name.encode("utf-8", "surrogateescape"), name.encode("utf-8", "surrogateescape")
        leader, leader_stat = self._lookup(leader_parent, leader_raw, leader_name)
        try:
            if leader_stat.st_mode & 0o170000 != 0o100000:
                raise OSError(errno.EIO, "%s is no longer a regular file" % leader_name, leader_name)
            if api.h_link(self.fs, leader, parent, raw) != 0:
                _raise(name=name)
            made, made_stat = self._lookup(parent, raw, name)
            api.h_close(made)
            if made_stat.st_ino != leader_stat.st_ino:
                api.h_unlink(self.fs, parent, raw)
                raise OSError(errno.EIO, "verification failed: not a link of %s" % leader_name, name)
        finally:
            api.h_close(leader)

    def read_file(self, parent, name, size):
        """(FileInfo, bytes) of the regular file ``name`` in directory handle ``parent``, which must hold
        ``size`` bytes: looked up without following a symlink, opened read-only (the brick checks the
        caller's identity, as an open through the mount does) and read whole. Raises OSError when a call
        fails, SourceChanged when the file is no longer a regular file of ``size`` bytes.

        Never through an anonymous fd (glfs_h_anonymous_read, which would save the open and the
        close): tried on GlusterFS 10.3 on 2026-12-08, the bricks let the job's user read a root-only
        0600 file that way: the user is checked at the open (tests/integration/test_bb_stage.py)."""
        raw = name.encode("utf-8", "surrogateescape")
        handle, attributes = self._lookup(parent, raw, name)
        try:
            if attributes.st_mode & 0o170000 != 0o100000:
                raise SourceChanged("no longer a regular file")
            if attributes.st_size != size:
                raise SourceChanged("changed while staging (%d bytes, %d when planned); stage again"
                                    % (attributes.st_size, size))
            fd = self.api.h_open(self.fs, handle, os.O_RDONLY)
            if not fd:
                _raise(name=name)
            try:
                data = self._read_all(fd, size, name)
            finally:
                self.api.close(fd)
        finally:
            self.api.h_close(handle)
        return FileInfo(attributes.st_mode, size, _ns(attributes.st_atim), _ns(attributes.st_mtim)), data

    def _read_all(self, fd, size, name):
        """size bytes from fd; one byte more is asked for, so a file that grew is seen."""
        buffer = ctypes.create_string_buffer(size + 1)
        start = ctypes.addressof(buffer)
        done = 0
        while done <= size:
            got = self.api.read(fd, start + done, size + 1 - done, 0)
            if got < 0:
                _raise(name=name)
            if got == 0:
                break
            done += got
        if done != size:
            raise SourceChanged("changed while staging (%d bytes read, %d when planned); stage again"
                                % (done, size))
        return buffer.raw[:size]

    def _lookup(self, parent, raw, name):
        """(handle, Stat) of ``raw`` in directory handle ``parent``, never following a symlink;
        the caller closes the handle."""
        attributes = Stat()
        handle = self.api.h_lookupat(self.fs, parent, raw, ctypes.addressof(attributes), 0)
        if not handle:
            _raise(name=name)
        return handle, attributes

    def _set_times(self, handle, mode, atime_ns, mtime_ns, name):
        attributes = Stat()
        valid = SET_ATTR_ATIME | SET_ATTR_MTIME
        if mode & SPECIAL_BITS:  # a write clears them
            attributes.st_mode, valid = mode, valid | SET_ATTR_MODE
        attributes.st_atim = Timespec(*divmod(atime_ns, 10**9))
        attributes.st_mtim = Timespec(*divmod(mtime_ns, 10**9))
        if self.api.h_setattrs(self.fs, handle, ctypes.byref(attributes), valid) != 0:
            _raise(name=name)

    def _write_closed(self, fd, data, name):
        """data through fd (the file's, from glfs_h_creat_open), flushed and closed before the times are set."""
        if not fd:
            _raise(name=name)
        try:
            _write_chunks(lambda at, count, done: self.api.write(fd, at, count, 0), data, name)
        except OSError:
            self.api.close(fd)
            raise
        if self.api.close(fd) != 0:
            _raise(name=name)

    def _write_all(self, handle, data, name):
        """data at offset 0 through anonymous writes to handle."""
        _write_chunks(lambda at, count, done: self.api.h_anonymous_write(self.fs, handle, at, count, done),
                      data, name)


class FileInfo:
    """What a stage needs of a source file's stat, with os.stat_result's names."""

    __slots__ = ("st_atime_ns", "st_mode", "st_mtime_ns", "st_size")

    def __init__(self, mode, size, atime_ns, mtime_ns):
        self.st_mode, self.st_size, self.st_atime_ns, self.st_mtime_ns = mode, size, atime_ns, mtime_ns


def _ns(timespec):
    return timespec.tv_sec * 10**9 + timespec.tv_nsec


def _write_chunks(write, data, name):
    """data (bytes), read by libgfapi in place (no copy), with write(address, count, offset) until all
    of it is written; write returns bytes written or < 0 (errno set)."""
    start = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    done = 0
    while done < len(data):
        wrote = write(start + done, len(data) - done, done)
        if wrote < 0:
            _raise(name=name)
        done += wrote
