"""The variables of bbctl's playbook runs: a buffer and its stages as the collection's roles read them.

Pure functions of the site configuration and the state record: ``bb_buffer`` (the
argument spec of roles/gluster_buffer, buffer_client), and ``bb_stages`` (bb_stage's
requests, with every directive path made a path on the stage host).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bbctl import layouts
from bbctl import site as sitecfg
from bbctl.directives import BufferPath, Stage
from bbctl.site import Site
from bbctl.state import Buffer

PRIVATE = "private"  # state meta: compute nodes also mount their private directories
SWAP = "swap"  # state meta: bytes of swap each compute node gets on the job's buffer
SWAP_NODES = "swap_nodes"  # state meta: how many nodes setup made room for swap on
CACHE = "cache"  # state meta: the directory a cache buffer caches (jobdw type=cache pfs=DIR)


def buffer_vars(buffer: Buffer, extra: dict[str, Any]) -> dict[str, Any]:
    """``bb_buffer``: the volume, its owner and bricks, whether its capacity needs quota (``quota``,
    layouts.Layout.quota), a Lustre buffer's ``fsname`` (site.lustre_fsname), and the paths of this
    run (``extra``)."""
    lustre = {"fsname": sitecfg.lustre_fsname(buffer.key)} if buffer.fs == "lustre" else {}
    return {"name": sitecfg.volume_name(buffer.key), "fs": buffer.fs, "capacity": str(buffer.capacity),
            "owner": buffer.owner_uid, "group": buffer.owner_gid,
            "bricks": [{"host": b.server, "path": b.path, "device": b.device} for b in buffer.bricks],
            "layout": volume_layout(buffer), "quota": layouts.of(buffer).quota, **lustre, **extra}


def volume_layout(buffer: Buffer) -> dict[str, Any]:
    """``bb_buffer.layout``: gluster_volume's disperse/redundancy, and force where a set shares a server.

    GlusterFS refuses (without force) a disperse set with two bricks on one server: losing that
    server loses both. A pool with fewer servers than a set has bricks must accept that; the
    allocator spreads bricks over servers first, so this happens only when it has to.
    """
    layout = layouts.of(buffer)
    args: dict[str, Any] = layout.volume_args()
    if args:
        width = args["disperse"]
        sets = [buffer.bricks[i:i + width] for i in range(0, len(buffer.bricks), width)]
        args["force"] = any(len({brick.server for brick in bricks}) < len(bricks) for bricks in sets)
    return args


def client_paths(site: Site, buffer: Buffer) -> dict[str, Any]:
    """Where compute nodes mount the buffer (and their private directories, if it has them), and
    the swap each of them gets on it (``swap``, bytes; set up after mounting, removed before unmounting).

    A cache buffer's volume goes to cache_volume_path, and the job's cache (``cache``: fuse-overlayfs
    over the cached directory, its upper directory in the volume) to mount_path, where the job looks.
    """
    if buffer.meta.get(CACHE):
        return {"mount_path": str(sitecfg.cache_volume_path(site, buffer.key)),
                "cache": {"path": str(sitecfg.mount_path(site, buffer.key)), "lower": str(buffer.meta[CACHE])},
                **({"swap": str(buffer.meta[SWAP])} if buffer.meta.get(SWAP) else {})}
    paths: dict[str, Any] = {"mount_path": str(sitecfg.mount_path(site, buffer.key))}
    if buffer.meta.get(PRIVATE):
        paths["private_mount_path"] = str(sitecfg.private_mount_path(site, buffer.key))
    if buffer.meta.get(SWAP):
        paths["swap"] = str(buffer.meta[SWAP])
    return paths


def stage_specs(site: Site, job_key: str, stages: Iterable[Stage]) -> dict[str, list[dict[str, Any]]]:
    """Directive stages as bb_stage requests on the stage host, by the key of the buffer they touch."""
    by_buffer: dict[str, list[dict[str, Any]]] = {}
    for stage in stages:
        key = area_key(stage.buffer_path, job_key)
        root = str(sitecfg.stage_path(site, key))
        inside = root + stage.buffer_path.subpath  # $DW_JOB_PRIVATE never gets here: the grammar refuses it
        source, destination = (stage.pfs_path, inside) if stage.direction == "in" else (inside, stage.pfs_path)
        spec: dict[str, Any] = {"type": stage.type, "source": source, "destination": destination,
                                "buffer_root": root}
        if stage.type == "list":  # its lines name the buffer as the directive does
            spec["buffer_variables"] = {name: root for name in sitecfg.buffer_variables(stage.buffer_path)}
        by_buffer.setdefault(key, []).append(spec)
    return by_buffer


def area_key(path: BufferPath, job_key: str) -> str:
    """The key of the buffer a directive path lies in: a persistent one's name, else the job's own."""
    return path.name if path.area == "persistent" and path.name else job_key
