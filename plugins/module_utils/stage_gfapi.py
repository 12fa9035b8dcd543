# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Small files of a stage-in straight into the GlusterFS volume, through libgfapi (gfapi.py).

Why: on a FUSE mount each small file costs about six round trips to the bricks (lookup,
create, write, setattr, flush, release); through libgfapi a file is created by handle in its
parent, written and given its times in three brick calls. Only new files of at most BLOCK
bytes go this way, and new hard links of a stage's files; directories, larger files,
replacements and every stage-out go through the mount, and so does everything when
libgfapi or the volume cannot be reached (the result says why). The worker stays the job's
user; gfapi is told that identity per thread.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import posixpath
import stat

from ansible_collections.hpc.burstbuffer.plugins.module_utils import gfapi
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import read_mountinfo
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_copy import BLOCK

NO_SMALL_FILES = "no new file of at most 1 MiB"  # why gfapi was not needed


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

    def identify(self, local):
        if not getattr(local, "gfapi_identity", False):
            self.volume.use_identity(*self.identity)
            local.gfapi_identity = True

    def directory(self, parent):
        """The gfapi handle of a destination directory, looked up once per directory (10,000 files
        spend no time here)."""
        handle = self.handles.get(parent)
        if handle is None:
            below = os.path.relpath(parent, self.buffer_root)
            handle = self.volume.directory(posixpath.normpath(posixpath.join(self.root_in_volume, below)))
            self.handles[parent] = handle
        return handle


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
