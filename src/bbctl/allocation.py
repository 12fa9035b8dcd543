"""Allocating a buffer's bricks when Slurm's books run ahead of ours: wait in turn instead of failing.

Slurm admits a job when its own books say the pool has room (Slurm 22.05's burst_buffer/lua adds the job's
size to the pool's used space at admission and learns the truth from ``slurm_bb_pools`` only every
so often). Our books differ in two ways: a striped buffer of k granules takes k + 1 bricks (the
redundancy brick of its disperse set, bbctl.layouts), and a torn-down buffer's bricks come free a few
seconds after Slurm has freed its space. So Slurm can start a setup for which too few bricks are free
right now. Failing it would make Slurm hold the job (priority 0) although its space is only moments
or one running job away; setup waits instead, up to a bound.

A job buffer's setup waits only briefly (``brick_wait``); then it leaves its build to the job's stage-in
(``defer``), which Slurm gives StageInTimeout (hours, where setup has OtherTimeout, minutes): the job waits
pending in stage-in, as Slurm shows a job staging in, and runs when bricks come free.

Waiting allocations take turns: every allocation of this controller first holds ``<work_dir>/allocation.lock``
(an flock), so a setup that waits for three bricks is not overtaken, brick by brick, by one-brick jobs
admitted after it. Allocations normally hold it for milliseconds. Two controllers sharing an etcd store
each have their own turn; the store alone still guarantees that no brick is given twice.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bbctl.pools import NotEnoughBricks, Pool
from bbctl.state import Buffer, BufferSpec, StateStore

POLL = 2.0  # seconds between attempts while waiting for bricks
TURN_POLL = 0.1  # seconds between attempts to take the turn


def allocate(store: StateStore, spec: BufferSpec, pool: Pool, *, lock: Path, wait: float,
             on_wait: Callable[[NotEnoughBricks], None]) -> tuple[Buffer, float]:
    """(the allocated buffer record, seconds spent waiting): spec's bricks from pool, in turn.

    wait: seconds to wait for bricks (and for the turn) before NotEnoughBricks; on_wait is called once,
    with the shortage, when the first attempt finds too few. Other StateErrors pass through at once.
    """
    began = time.monotonic()
    deadline = began + wait
    with _turn(lock, deadline) as ours:
        if not ours:  # a waiter ahead held the turn all along: one last try, then the shortage
            return store.allocate(spec, pool), time.monotonic() - began
        for attempt in itertools.count():
            try:
                return store.allocate(spec, pool), time.monotonic() - began
            except NotEnoughBricks as short:
                if time.monotonic() + POLL > deadline:
                    raise
                if attempt == 0:
                    on_wait(short)
                time.sleep(POLL)
    raise AssertionError("itertools.count() ended")


@contextmanager
def _turn(lock: Path, deadline: float) -> Iterator[bool]:
    """Hold the controller's allocation turn: True once it is ours, False if it was not by deadline."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(TURN_POLL)
        yield True
    finally:
        os.close(fd)  # releases the flock


# --- a job buffer whose build waits for stage-in --------------------------------------------------
# When setup finds too few bricks (Slurm's books ran ahead of ours), it leaves the arguments of the
# buffer's build here and succeeds; the job's stage-in (StageInTimeout, hours where setup has minutes)
# builds it once bricks are free, and teardown removes the note of a job cancelled while it waited.

def _deferred_path(work_dir: Path, key: str) -> Path:
    return work_dir / "deferred" / f"{key}.json"


def defer(work_dir: Path, key: str, build: dict[str, Any]) -> None:
    """Note key's build (Lifecycle.create's keyword arguments, JSON values) for stage-in: atomic, root-only."""
    path = _deferred_path(work_dir, key)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(build, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def deferred(work_dir: Path, key: str) -> dict[str, Any] | None:
    """key's deferred build, or None."""
    try:
        return json.loads(_deferred_path(work_dir, key).read_text())
    except FileNotFoundError:
        return None


def deferred_keys(work_dir: Path) -> list[str]:
    """Keys of every deferred build noted under work_dir."""
    return sorted(path.stem for path in (work_dir / "deferred").glob("*.json"))


def forget(work_dir: Path, key: str) -> bool:
    """Remove key's deferred build; True if there was one."""
    try:
        _deferred_path(work_dir, key).unlink()
        return True
    except FileNotFoundError:
        return False
