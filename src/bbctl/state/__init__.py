"""bbctl's state: buffer records and brick allocations, in SQLite (default) or etcd.

``open_store("/var/lib/bbctl/state.db")`` or ``open_store("http://127.0.0.1:2379")`` (several etcd
members: their URLs separated by commas);
both give a StateStore (see base.py for the record and the rules).
"""

from __future__ import annotations

from pathlib import Path

from bbctl.state.base import (
    DRAINED,
    FAILING,
    IN_FLIGHT,
    RELEASABLE,
    BrickAllocation,
    Buffer,
    BufferExists,
    BufferNotFound,
    BufferSpec,
    BufferState,
    Orphans,
    ServerHealth,
    StateConflict,
    StateError,
    StateStore,
)
from bbctl.state.sqlite import DEFAULT_PATH, SQLiteStore


def open_store(location: str | Path = DEFAULT_PATH, *, timeout: float = 10.0) -> StateStore:
    """An etcd store for http(s):// endpoints (comma-separated), else a SQLite store at that path.

    timeout: seconds an etcd call may spend trying the members before StateError (SQLite ignores it).
    """
    text = str(location)
    if text.startswith(("http://", "https://")):
        # Imported here: the HTTP client stack is a tenth of bbctl's start-up, and every
        # Slurm stage of a SQLite site would pay it.
        from bbctl.state.etcd import EtcdStore

        return EtcdStore(text, timeout=timeout)
    return SQLiteStore(Path(text))


__all__ = [
    "DEFAULT_PATH",
    "DRAINED",
    "FAILING",
    "IN_FLIGHT",
    "RELEASABLE",
    "BrickAllocation",
    "Buffer",
    "BufferExists",
    "BufferNotFound",
    "BufferSpec",
    "BufferState",
    "Orphans",
    "SQLiteStore",
    "ServerHealth",
    "StateConflict",
    "StateError",
    "StateStore",
    "open_store",
]
