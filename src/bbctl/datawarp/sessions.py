"""DataWarp's view of bbctl's buffers: the ids, sessions, instances and configurations Slurm reads.

Ids: Slurm reads session, instance and configuration ids as JSON integers
(json-c; a string silently reads as 0). A job's buffer has the job id as its
id; a persistent buffer a stable number derived from its name, at
PERSISTENT_ID_BASE or above, where no Slurm job id reaches. One buffer is one
session, one instance and one configuration, all with the same id.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

from bbctl import layouts, site
from bbctl.lifecycle import USER_META, Lifecycle
from bbctl.state import Buffer, BufferState

# Slurm job ids stay below 0x04000000 (MAX_JOB_ID); persistent ids start far above and fit an int32.
MAX_SLURM_JOB_ID = 0x03FFFFFF
PERSISTENT_ID_BASE = 0x40000000

_ACTUALIZED = frozenset({BufferState.CREATED, BufferState.STAGED_IN, BufferState.MOUNTED, BufferState.STAGING_OUT,
                         BufferState.STAGED_OUT, BufferState.DESTROYED})
_TRANSITIONING = frozenset({BufferState.ALLOCATING, BufferState.CREATING, BufferState.STAGING_OUT,
                            BufferState.DESTROYING})


def session_id(key: str) -> int:
    """The integer id of a buffer's session (and of its instance and configuration)."""
    if site.is_job_key(key):
        return int(key)
    return PERSISTENT_ID_BASE + (zlib.crc32(key.encode("utf-8", "surrogateescape")) & 0x3FFFFFFF)


def buffer_bytes(life: Lifecycle, buffer: Buffer) -> int:
    """What the buffer's data bricks give (whole granules, not redundancy); its asked capacity if its pool is
    no longer configured."""
    pool = life.pools.get(buffer.pool)
    return layouts.of(buffer).data_bricks * pool.granularity if pool else buffer.capacity


def client_nodes(buffer: Buffer) -> list[str]:
    """Compute nodes the buffer is mounted on: its job's, or those of every job using a persistent one."""
    return sorted({node for key, nodes in buffer.meta.items() if key == "nodes" or key.startswith(USER_META)
                   for node in nodes})


def state_document(buffer: Buffer) -> dict[str, Any]:
    """DataWarp's state object: where the buffer is heading and whether it is there yet."""
    return {"goal": "destroy" if buffer.state in (BufferState.DESTROYING, BufferState.DESTROYED) else "create",
            "actualized": buffer.state in _ACTUALIZED, "transitioning": buffer.state in _TRANSITIONING,
            "fuse_blown": buffer.state is BufferState.FAILED, "mixed": False}


def sessions_document(buffers: Iterable[Buffer]) -> dict[str, list[dict[str, Any]]]:
    return {"sessions": [
        {"id": session_id(b.key), "created": int(b.created_at), "owner": b.owner_uid, "token": b.key,
         "creator": "SLURM" if site.is_job_key(b.key) else "CLI", "expiration": 0,
         "links": {"client_nodes": client_nodes(b)}, "state": state_document(b)}
        for b in buffers]}


def instances_document(life: Lifecycle, buffers: Iterable[Buffer]) -> dict[str, list[dict[str, Any]]]:
    return {"instances": [
        {"id": session_id(b.key), "created": int(b.created_at),
         "capacity": {"bytes": buffer_bytes(life, b), "nodes": 0},
         "links": {"session": session_id(b.key), "configurations": [session_id(b.key)]},
         "label": site.volume_name(b.key), "state": state_document(b)}
        for b in buffers]}


def configurations_document(buffers: Iterable[Buffer]) -> dict[str, list[dict[str, Any]]]:
    return {"configurations": [
        {"id": session_id(b.key), "type": "scratch", "links": {"instance": session_id(b.key)},
         "state": state_document(b)}
        for b in buffers]}
