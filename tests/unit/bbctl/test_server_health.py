"""Storage servers' health: the store's counts and marks (SQLite, one etcd member, three), allocation around
unusable servers, and the pools Slurm reads."""

from __future__ import annotations

import pytest

from bbctl.pools import NotEnoughBricks, pools_document
from bbctl.state import DRAINED, FAILING, ServerHealth
from tests.unit.bbctl.test_state import (
    START,
    backend,
    clock,
    etcd3_endpoints,
    etcd_endpoint,
    make_pool,
    spec,
    store,
)

__all__ = ["backend", "clock", "etcd3_endpoints", "etcd_endpoint", "store"]  # the shared fixtures


# --- counting --------------------------------------------------------------------------------

def test_failures_count_per_server_and_a_success_resets_the_count(store, clock):
    assert store.servers() == {}, "a server with no record is healthy"
    assert store.record_runs({"s01": "s01: create: boom"}, ["s02"], limit=3) == []
    clock.now += 5
    store.record_runs({"s01": "s01: create: again"}, [], limit=3)
    s01 = store.servers()["s01"]
    assert (s01.failures, s01.last_error, s01.last_error_at, s01.unusable) == (2, "s01: create: again",
                                                                                START + 5, "")
    assert "s02" not in store.servers(), "a success on a server with no record writes nothing"
    store.record_runs({}, ["s01"], limit=3)
    s01 = store.servers()["s01"]
    assert s01.failures == 0 and s01.last_error == "s01: create: again", "the last error is kept for the record"


def test_the_limit_marks_a_server_failing_once_and_names_the_reason(store, clock):
    for _ in range(2):
        assert store.record_runs({"s01": "s01: destroy: no route"}, [], limit=3) == []
    clock.now += 1
    [marked] = store.record_runs({"s01": "s01: destroy: no route"}, ["s02"], limit=3)
    assert marked.name == "s01" and marked.unusable == FAILING and marked.since == START + 1
    assert "3 consecutive failed runs" in marked.reason and "no route" in marked.reason
    assert store.record_runs({"s01": "s01: x: y"}, [], limit=3) == [], "already unusable: not marked again"
    store.record_runs({}, ["s01"], limit=3)
    s01 = store.servers()["s01"]
    assert s01.unusable == FAILING and s01.failures == 0, "a success resets the count, only an operator returns it"


def test_a_limit_of_zero_never_marks_a_server(store):
    for _ in range(10):
        assert store.record_runs({"s01": "s01: x: y"}, [], limit=0) == []
    assert store.servers()["s01"].failures == 10 and not store.servers()["s01"].unusable


def test_drain_and_resume(store, clock):
    store.record_runs({"s03": "s03: x: y"}, [], limit=3)
    drained = store.drain_server("s03", "new NVMe")
    assert (drained.unusable, drained.reason, drained.since, drained.failures) == (DRAINED, "new NVMe", START, 1)
    assert store.servers()["s03"] == drained
    assert store.drain_server("s04", "").reason == "drained by an operator"
    resumed = store.resume_server("s03")
    assert (resumed.unusable, resumed.reason, resumed.failures) == ("", "", 0)
    assert store.servers()["s03"] == resumed


def test_a_failing_server_drained_stays_out_until_resumed(store):
    store.record_runs({"s01": "s01: x: y"}, [], limit=1)
    assert store.drain_server("s01", "checking it").unusable == DRAINED
    assert store.resume_server("s01") == ServerHealth("s01", last_error="s01: x: y",
                                                       last_error_at=store.servers()["s01"].last_error_at)


# --- allocation --------------------------------------------------------------------------------

def test_allocation_never_takes_a_brick_of_an_unusable_server(store):
    pool = make_pool(servers=3, per_server=2)
    store.drain_server("s01", "")
    store.record_runs({"s02": "s02: x: y"}, [], limit=1)
    buffer = store.allocate(spec("a", bricks=2), pool)
    assert {b.server for b in buffer.bricks} == {"s03"}


def test_too_few_usable_bricks_says_that_bricks_are_on_unusable_servers(store):
    pool = make_pool(servers=3, per_server=2)
    store.drain_server("s01", "")
    store.drain_server("s02", "")
    with pytest.raises(NotEnoughBricks) as short:
        store.allocate(spec("striped", bricks=3), pool)  # e.g. a striped buffer of two granules: 2 + 1
    assert (short.value.needed, short.value.free, short.value.held_back) == (3, 2, 4)
    assert "4 more on unusable server(s) s01, s02" in str(short.value)
    assert store.buffers() == [], "nothing recorded"
    store.resume_server("s02")
    assert len(store.allocate(spec("striped", bricks=3), pool).bricks) == 3


def test_buffers_already_on_a_server_are_untouched_and_release_as_before(store):
    pool = make_pool(servers=2, per_server=1)
    held = store.allocate(spec("held", bricks=2), pool)
    store.drain_server("s01", "")
    assert store.get("held") == held
    assert store.release("held")
    assert store.allocated_brick_ids(pool.name) == set()


# --- the pools Slurm reads ---------------------------------------------------------------------

def test_the_pools_document_counts_only_usable_bricks():
    pool = make_pool(servers=3, per_server=2)
    in_use = {"s01:/bricks/nvme1", "s02:/bricks/nvme1"}
    [entry] = pools_document([pool], {pool.name: in_use}, unusable={"s01"})["pools"]
    assert (entry["quantity"], entry["free"]) == (4, 3)
    [entry] = pools_document([pool], {pool.name: in_use})["pools"]
    assert (entry["quantity"], entry["free"]) == (6, 4)


def test_choose_skips_unusable_servers_and_the_shortage_names_them():
    pool = make_pool(servers=3, per_server=2)
    chosen = pool.choose(set(), 4, unusable={"s02"})
    assert {b.server for b in chosen} == {"s01", "s03"}
    with pytest.raises(NotEnoughBricks, match=r"5 needed, 4 free \(2 more on unusable server\(s\) s02"):
        pool.choose(set(), 5, unusable={"s02"})
    with pytest.raises(NotEnoughBricks) as short:
        pool.choose(set(), 7, unusable=set())
    assert short.value.held_back == 0 and "unusable" not in str(short.value)
