"""bbctl.allocation: setups that find too few bricks wait, in turn, on a real SQLite store."""

from __future__ import annotations

import threading
import time

import pytest

from bbctl import allocation
from bbctl.pools import NotEnoughBricks
from bbctl.state import SQLiteStore
from tests.unit.bbctl.test_state import make_pool, spec


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(allocation, "POLL", 0.05)
    monkeypatch.setattr(allocation, "TURN_POLL", 0.01)


def allocate_in_thread(db, key: str, bricks: int, lock, wait: float, results: dict, ready=None):
    """Allocate from another thread (its own SQLite connection), recording the buffer or the error."""
    def run():
        store = SQLiteStore(db)
        try:
            results[key] = allocation.allocate(store, spec(key, bricks), POOL, lock=lock, wait=wait,
                                               on_wait=lambda _short: ready and ready.set())[0]
        except NotEnoughBricks as short:
            results[key] = short
        finally:
            store.close()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


POOL = make_pool(servers=2, per_server=2)  # four bricks


def test_enough_bricks_is_allocated_at_once_and_nothing_is_waited(tmp_path):
    store = SQLiteStore(tmp_path / "state.db")
    noted = []
    buffer, waited = allocation.allocate(store, spec("1", 3), POOL, lock=tmp_path / "lock", wait=30,
                                         on_wait=noted.append)
    assert len(buffer.bricks) == 3 and waited < 1 and noted == []


def test_a_setup_waits_for_bricks_being_released_and_says_so_once(tmp_path):
    store = SQLiteStore(tmp_path / "state.db")
    store.allocate(spec("1", 3), POOL)
    threading.Timer(0.3, lambda: release(tmp_path / "state.db", "1")).start()
    noted = []
    buffer, waited = allocation.allocate(store, spec("2", 2), POOL, lock=tmp_path / "lock", wait=30,
                                         on_wait=noted.append)
    assert len(buffer.bricks) == 2 and 0.3 <= waited < 10
    assert [str(n) for n in noted] == ["not enough free bricks in pool 'nvme': 2 needed, 1 free; ask for less "
                                       "capacity or wait for other buffers to be torn down"]


def test_after_the_wait_the_shortage_is_raised_and_nothing_is_held(tmp_path):
    store = SQLiteStore(tmp_path / "state.db")
    store.allocate(spec("1", 3), POOL)
    began = time.monotonic()
    with pytest.raises(NotEnoughBricks, match="2 needed, 1 free"):
        allocation.allocate(store, spec("2", 2), POOL, lock=tmp_path / "lock", wait=0.5, on_wait=lambda _s: None)
    assert 0.4 <= time.monotonic() - began < 5
    assert store.get("2") is None and len(store.allocated_brick_ids("nvme")) == 3


def test_a_waiting_setup_is_not_overtaken_by_a_smaller_one_admitted_after_it(tmp_path):
    db, lock = tmp_path / "state.db", tmp_path / "lock"
    store = SQLiteStore(db)
    store.allocate(spec("running", 3), POOL)  # one brick free
    results: dict = {}
    big_waits = threading.Event()
    big = allocate_in_thread(db, "big", 3, lock, 30, results, ready=big_waits)
    assert big_waits.wait(10)
    small = allocate_in_thread(db, "small", 1, lock, 30, results)  # would fit now: must not take the brick
    time.sleep(0.3)
    assert "small" not in results and store.get("small") is None
    release(db, "running")
    big.join(10)
    small.join(10)
    assert len(results["big"].bricks) == 3 and len(results["small"].bricks) == 1
    assert results["big"].created_at <= results["small"].created_at


def test_a_setup_that_never_gets_its_turn_tries_once_and_takes_bricks_that_are_free(tmp_path):
    db, lock = tmp_path / "state.db", tmp_path / "lock"
    store = SQLiteStore(db)
    store.allocate(spec("running", 3), POOL)
    results: dict = {}
    big = allocate_in_thread(db, "big", 3, lock, 2, results)  # waits 2 s, holding the turn
    time.sleep(0.2)
    buffer, waited = allocation.allocate(store, spec("small", 1), POOL, lock=lock, wait=0.5,
                                         on_wait=lambda _s: None)
    assert len(buffer.bricks) == 1 and 0.4 <= waited < 2
    big.join(10)
    assert isinstance(results["big"], NotEnoughBricks)


def release(db, key: str) -> None:
    store = SQLiteStore(db)
    try:
        store.release(key)
    finally:
        store.close()
