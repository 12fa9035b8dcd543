# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Small files between the copy engine and a GlusterFS volume, through libgfapi (gfapi.py).

Why: on a FUSE mount each small file costs several round trips through the kernel to the
client (lookup, create, write, setattr, flush, release to write one; lookup, open, read, flush,
release to read one), and the 2-core machine runs out of CPU in the FUSE client before the
bricks do. Through libgfapi a new file is created by handle in its parent, written and given
its times in three brick calls (stage-in: GfapiWriter), and a file is looked up, opened and
read with no kernel round trip at all (stage-out: GfapiReader). Only files of at most BLOCK
bytes go this way, and new hard links of a stage-in's files; directories, larger files,
replacements, verified stages and the destination side of a stage-out go through the
filesystem, and so does everything when libgfapi or the volume cannot be reached (the result
says why). The worker stays the job's user; gfapi is told that identity per thread, and the
bricks check it as they check the mount's.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import posixpath
import stat

from ansible_collections.hpc.burstbuffer.plugins.module_utils import gfapi
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import read_mountinfo
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_copy import BLOCK
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError

NO_SMALL_FILES = "no file of at most 1 MiB to copy"  # why gfapi was not needed
# A stage-out reads its small files through libgfapi only when it has at least this many. The
# FUSE mount reads fewer faster (quick-read brings a small file's content with its lookup; gfapi
# pays a lookup, an open, a read and a close), but its rate falls as the count grows past the
# FUSE client's inode table (65,536), where libgfapi's stays: trees of 1 KiB files, out of a
# 3-brick volume, entries a second FUSE / gfapi: 50,000 files 2,580 / 1,668, 100,000 1,361 /
# 1,409, 200,000 950 / 1,377 (docs/BENCHMARKS.md, "Trees into and out of GlusterFS").
GFAPI_READS_FROM = 100000


class _GfapiSide:
    """What a stage's gfapi reader and writer share: the volume, the buffer's directories by handle,
    and the worker's identity told to gfapi once per copy thread (gfapi keeps it per thread)."""

    def __init__(self, volume, buffer_root, root_in_volume):
        self.volume = volume
        self.buffer_root = buffer_root  # the buffer's directory, as the stage's paths in it start
        self.root_in_volume = root_in_volume  # the same directory as the volume sees it
        self.identity = (os.geteuid(), os.getegid(), os.getgroups())
        self.handles = {}  # directory of the buffer -> its gfapi handle (the volume keeps them)
        self.files = 0

    def identify(self, local):
        if not getattr(local, "gfapi_identity", False):
            self.volume.use_identity(*self.identity)
            local.gfapi_identity = True

    def directory(self, parent):
        """The gfapi handle of a directory of the buffer, looked up once per directory (10,000 files
        spend no time here)."""
        handle = self.handles.get(parent)
        if handle is None:
            below = os.path.relpath(parent, self.buffer_root)
            handle = self.volume.directory(posixpath.normpath(posixpath.join(self.root_in_volume, below)))
            self.handles[parent] = handle
        return handle


class GfapiReader(_GfapiSide):
    """Small files of a stage-out read straight from the GlusterFS volume (module_utils/gfapi.py).

    The planner found them through the mount; each is looked up again by name in its directory
    (never through a symlink), opened read-only as the worker's user and read whole. What the
    gfapi client resolves stays inside the volume (a symlink's absolute target is the volume's
    root), so a read cannot leave the buffer's volume, as stage-out's sources may not."""

    @staticmethod
    def takes(plan):
        return plan.size <= BLOCK

    @staticmethod
    def takes_link(_link):
        return False  # hard links are made in the destination, not in the volume

    def read(self, source, size, local):
        """(FileInfo, bytes) of the planned source path (under buffer_root) of size bytes; OSError, or
        StageError when the file is no longer what was planned."""
        self.identify(local)
        parent, name = posixpath.split(source)
        try:
            return self.volume.read_file(self.directory(parent), name, size)
        except gfapi.SourceChanged as exc:
            raise StageError(str(exc)) from None


class GfapiWriter(_GfapiSide):
    """Small files of a stage-in straight into the GlusterFS volume (module_utils/gfapi.py).

    Directories are still made through the mount (before any file); a file goes this way
    only when it is at most BLOCK bytes and nothing is in its place yet (a partial copy to
    replace goes through the mount)."""

    @staticmethod
    def takes(plan):
        return plan.size <= BLOCK and plan.temp is None and not plan.replace

    @staticmethod
    def takes_link(link):
        """A hard link of a stage-in to a new name (a name to replace goes through the mount)."""
        return link.temp is None and not link.replace

    def write(self, destination, data, info, local):
        self.identify(local)
        parent, name = posixpath.split(destination)
        self.volume.create_file(self.directory(parent), name, data, stat.S_IMODE(info.st_mode), info.st_atime_ns,
                                info.st_mtime_ns)

    def link(self, leader, destination, local):
        """destination as a hard link of leader (both paths as the request names them), as the user."""
        self.identify(local)
        leader_parent, leader_name = posixpath.split(leader)
        parent, name = posixpath.split(destination)
        self.volume.link(self.directory(leader_parent), leader_name, self.directory(parent), name)


def gfapi_target(request, use_gfapi=True, mountinfo=None):
    """(server, volume, mount point) when a stage may use libgfapi, else None: asked for, and the
    buffer root on a GlusterFS FUSE mount."""
    if not use_gfapi:
        return None
    try:
        entries = read_mountinfo() if mountinfo is None else mountinfo
    except OSError:
        return None
    return gfapi.glusterfs_mount(entries, os.path.realpath(request.buffer_root))


def gfapi_side(request, plan, target, verify, reads_from=GFAPI_READS_FROM):
    """(GfapiWriter for a stage-in or GfapiReader for a stage-out, or None; why not): the mount
    stays in use whenever gfapi cannot be, or for a stage-out of fewer than ``reads_from`` small
    files, and the result says why."""
    side = GfapiReader if request.direction == "out" else GfapiWriter
    small = sum(1 for f in plan.files if side.takes(f))
    if not small:
        return None, NO_SMALL_FILES
    if side is GfapiReader and small < reads_from:
        return None, "%d file(s) of at most 1 MiB to read, fewer than %d: the mount reads them faster" % (
            small, reads_from)
    # Stage-out's sources are planned by their resolved paths; a stage-in's destinations as named.
    root = os.path.realpath(request.buffer_root) if side is GfapiReader else request.buffer_root
    return open_gfapi(target, verify, root, side)


def open_gfapi(target, verify, buffer_root="/", side=GfapiWriter):
    """(``side``: a GfapiWriter or GfapiReader, or None; why not): the mount stays in use whenever
    gfapi cannot be."""
    if target is None:
        return None, "the buffer is not a GlusterFS mount, or gfapi is off"
    if verify:
        return None, "verify reads back through the mount"
    server, volume, mount_point = target
    root_in_volume = gfapi.volume_path(mount_point, os.path.realpath(buffer_root))
    try:
        return side(gfapi.Volume(server, volume), buffer_root, root_in_volume), None
    except gfapi.GfapiError as exc:
        return None, str(exc)
