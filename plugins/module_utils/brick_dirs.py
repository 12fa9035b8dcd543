# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Brick directories a deleted GlusterFS volume leaves behind, and removing them safely.

``gluster volume delete`` leaves each brick directory with its volume-id
attribute and ``.glusterfs`` tree, and gluster refuses to reuse such a path.
Removing one is the last step of a teardown, and the most dangerous: these
rules decide what may go. Shared by gluster_brick_dir (any server) and
gluster_volume (the server that deletes the volume cleans its own bricks in the
same task).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import time

from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster import GlusterError
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster_rules import (
    is_local_host,
    volume_id_of,
)

# How often a waiting server asks its glusterd again whether the volume is gone.
POLL_INTERVAL = 0.1


class BrickDirError(Exception):
    """The directory must not be removed; the message says why and what to do."""


def refuse_non_brick_dir(path):
    """Raise unless path looks like a brick directory that may be removed as a whole."""
    if path == "/" or os.path.islink(path) or not os.path.isdir(path):
        raise BrickDirError(f"{path} is not a directory (or is a symbolic link or /); "
                            "give the brick directory of the deleted volume")
    if os.path.ismount(path):
        raise BrickDirError(f"{path} is a mount point (a brick root?); give the brick directory "
                            f"inside it, e.g. {path}/VOLUME")
    if volume_id_of(path) is None and not os.path.isdir(os.path.join(path, ".glusterfs")):
        raise BrickDirError(f"{path} carries no trusted.glusterfs.volume-id attribute and no "
                            ".glusterfs directory: it is not a gluster brick directory, so it "
                            "is left alone")


def owning_volume(volumes, path, volume_id, is_local=is_local_host):
    """The existing volume this directory belongs to, by volume-id or by brick path; or None."""
    for volume in volumes:
        if volume_id and volume["id"] == volume_id:
            return volume
        if any(b["path"] == path and is_local(b["host"]) for b in volume["bricks"]):
            return volume
    return None


def existing_dirs(paths):
    """[{path, volume_id}] of the paths that exist, each checked to be a brick directory.

    Raises BrickDirError for the first one that is not, before anything is removed."""
    found = []
    for path in paths:
        if os.path.lexists(path):
            refuse_non_brick_dir(path)
            found.append({"path": path, "volume_id": volume_id_of(path)})
    return found


def owners(volumes, dirs, is_local=is_local_host):
    """{path: volume} for each directory an existing volume still owns."""
    owned = {}
    for entry in dirs:
        volume = owning_volume(volumes, entry["path"], entry["volume_id"], is_local)
        if volume:
            owned[entry["path"]] = volume
    return owned


def owned_message(owned, waited):
    path, volume = next(iter(owned.items()))
    after = f" after waiting {waited:g} s for it to be deleted" if waited else ""
    return (f"{path} belongs to volume {volume['name']} ({volume['status']}){after}; "
            "delete the volume first (hpc.burstbuffer.gluster_volume with state: absent)")


def wait_until_unowned(read_volumes, dirs, timeout, sleep=time.sleep, clock=time.monotonic, read_peers=None):
    """Ask glusterd until no volume owns any of dirs, for up to timeout seconds.

    read_volumes() returns the volumes glusterd knows. Lets every server start its
    part of a teardown while the first server is still stopping the volume.
    read_peers() (parse_pool_list's shape), when given, ends the wait early with a
    BrickDirError while a peer is disconnected: glusterd deletes no volume then ("Some of
    the peers are down"), so waiting would only run into the teardown's timeout."""
    deadline = clock() + timeout
    while True:
        owned = owners(_ask(read_volumes, dirs), dirs)
        if not owned or clock() >= deadline:
            return owned
        down = [] if read_peers is None else disconnected(_ask(read_peers, dirs))
        if down:
            path, volume = next(iter(owned.items()))
            raise BrickDirError(
                f"{path} belongs to volume {volume['name']}, which glusterd will not delete while "
                f"peer(s) {', '.join(down)} are disconnected; start glusterd there (or detach the "
                "peer), then tear the buffer down again (bbctl gc --repair)")
        sleep(POLL_INTERVAL)


def disconnected(peers):
    """Hostnames of the peers (parse_pool_list's shape) this glusterd has lost."""
    return [peer["hostname"] for peer in peers if not peer["local"] and not peer["connected"]]


def _ask(read, dirs):
    try:
        return read()
    except GlusterError as error:
        raise BrickDirError(
            f"cannot ask glusterd whether {dirs[0]['path']} still belongs to a volume "
            f"({error}); start glusterd, give glusterd_socket, or set check_volumes: false "
            "if no glusterd runs here any more") from None


def remove(dirs):
    for entry in dirs:
        shutil.rmtree(entry["path"])
