"""Allocating a buffer's bricks when Slurm's books run ahead of ours: wait in turn instead of failing.

Slurm admits a job when its own books say the pool has room (SLURM.md: the plugin adds the job's
size to the pool's used space at admission and learns the truth from ``slurm_bb_pools`` only every
so often). Our books differ in two ways: a striped buffer of k granules takes k + 1 bricks (the
redundancy brick of its disperse set, bbctl.layouts), and a torn-down buffer's bricks come free a few
seconds after Slurm has freed its space. So Slurm can start a setup for which too few bricks are free
right now. Failing it would make Slurm hold the job (priority 0) although its space is only moments
or one running job away; setup waits instead, up to a bound.

Waiting setups take turns: every allocation of this controller first holds ``<work_dir>/allocation.lock``
(an flock), so a setup that waits for three bricks is not overtaken, brick by brick, by one-brick jobs
admitted after it. Allocations normally hold it for milliseconds. Two controllers sharing an etcd store
each have their own turn; the store alone still guarantees that no brick is given twice.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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
        while True:
            try:
                return store.allocate(spec, pool), time.monotonic() - began
            except NotEnoughBricks as short:
                if time.monotonic() + POLL > deadline:
                    raise
                if time.monotonic() - began < POLL:
                    on_wait(short)
                time.sleep(POLL)


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
