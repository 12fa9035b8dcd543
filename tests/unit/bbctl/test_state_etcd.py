"""What only the etcd store has: its pool index, the conversion of an older layout, several members.

The shared behaviour runs in test_state on SQLite, one etcd member and a
three-member cluster; here: the index's encoding, a store an older bbctl
wrote (brick keys, no index), an index that misses a brick, a write whose
answer is lost, a member that refuses connections, and a member SIGKILLed
during a burst of allocations from several processes.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from bbctl.pools import Brick, NotEnoughBricks
from bbctl.state import BufferState, StateError, open_store
from bbctl.state.etcd import EtcdStore
from bbctl.state.etcd_gateway import Gateway, OutcomeUnknown, b64
from bbctl.state.etcd_index import PoolIndex
from bbctl.testbed.etcd import EtcdCluster, free_ports
from tests.unit.bbctl.test_state import etcd_endpoint, make_pool, spec

__all__ = ["etcd_endpoint"]  # the session's one-member server, from test_state


@pytest.fixture
def store(etcd_endpoint: str) -> EtcdStore:
    return EtcdStore(etcd_endpoint, prefix=f"/test-{uuid.uuid4().hex}")


def put(store: EtcdStore, key: str, value: str) -> None:
    store._call("/v3/kv/put", {"key": b64(key), "value": b64(value)})


# --- the index's encoding -----------------------------------------------------------------

def test_the_index_round_trips_and_counts_per_server():
    pool = make_pool(servers=5, per_server=3)
    bricks = [b for b in pool.bricks if b.server in ("s01", "s03")][:4]
    index = PoolIndex().taking(bricks)
    again = PoolIndex.decode(index.encode(), 7)
    assert again.revision == 7
    assert again.ids() == {b.id for b in bricks}
    assert again.in_use() == {"s01": 3, "s03": 1}
    freed = again.freeing(bricks[:3])
    assert freed.in_use() == {"s01": 0, "s03": 1} and freed.ids() == {bricks[3].id}
    assert again.ids() == {b.id for b in bricks}, "taking and freeing copy: the read index is left as read"


def test_the_index_grows_past_eight_paths_per_server():
    bricks = [Brick("nvme", "s1", "a", f"/bricks/b{n:02d}", "d") for n in range(20)]
    index = PoolIndex().taking(bricks[:5])
    index = PoolIndex.decode(index.taking(bricks[5:]).encode(), 1).freeing(bricks[3:4])
    assert index.width == 3
    assert index.ids() == {b.id for b in bricks} - {bricks[3].id}
    assert index.in_use() == {"s1": 19}


def test_an_index_of_another_layout_version_is_refused():
    import zlib
    with pytest.raises(Exception, match="layout version 2, not 1"):
        PoolIndex.decode(zlib.compress(b'{"v":2,"paths":[],"width":1}\n\n'), 1)


def test_the_allocator_chooses_exactly_as_from_the_brick_ids():
    rng = random.Random(3)
    pool = make_pool(servers=12, per_server=4)
    for _ in range(100):
        taken = {b.id for b in pool.bricks if rng.random() < 0.4}
        index = PoolIndex.from_brick_ids(taken)
        for n in (1, 3, 7):
            try:
                expected = pool.choose(taken, n)
            except NotEnoughBricks:
                continue
            assert index.choose(pool, n) == expected


# --- a store an older bbctl wrote ---------------------------------------------------------

def test_a_store_of_the_older_layout_is_converted_on_first_allocation(store):
    """Brick keys and records as the one-key-per-brick bbctl wrote them, no index: nothing given twice."""
    pool = make_pool(servers=3, per_server=2)
    old = spec("old", bricks=3)
    held = [b for b in pool.bricks if b.path.endswith("nvme1")]  # one per server
    put(store, store._buffer_key("old"), __import__("json").dumps(
        {"key": "old", "owner_uid": 1000, "owner_gid": 1000, "pool": "nvme", "capacity": old.capacity,
         "fs": "gluster", "state": "allocating", "bricks": [b.to_dict() for b in held], "created_at": 1.0,
         "updated_at": 1.0, "last_error": "", "stage_out_verified": False, "meta": {}}))
    for brick in held:
        put(store, store._brick_key("nvme", brick.id), "old")
    assert store._get_raw(store._index_key("nvme")) is None

    new = store.allocate(spec("new", bricks=3), pool)
    assert {b.id for b in new.bricks}.isdisjoint({b.id for b in held})
    index = PoolIndex.decode(store._get_raw(store._index_key("nvme")).value, 0)
    assert index.ids() == {b.id for b in held + list(new.bricks)}
    with pytest.raises(NotEnoughBricks, match="1 needed, 0 free"):
        store.allocate(spec("more"), pool)
    store.transition("old", BufferState.ALLOCATING, BufferState.DESTROYED)
    assert store.release("old") is True
    assert store.allocated_brick_ids("nvme") == {b.id for b in new.bricks}
    assert PoolIndex.decode(store._get_raw(store._index_key("nvme")).value, 0).ids() == {b.id for b in new.bricks}


def test_an_index_that_misses_a_brick_is_rebuilt_from_the_brick_keys(store):
    pool = make_pool(servers=2, per_server=1)
    store.allocate(spec("a"), pool)  # s01's brick; the index now exists
    put(store, store._brick_key("nvme", "s02:/bricks/nvme1"), "written-by-hand")
    with pytest.raises(NotEnoughBricks, match="1 needed, 0 free"):
        store.allocate(spec("b"), pool)
    assert store.get("b") is None
    assert PoolIndex.decode(store._get_raw(store._index_key("nvme")).value, 0).ids() == {
        "s01:/bricks/nvme1", "s02:/bricks/nvme1"}


# --- lost answers and dead members ---------------------------------------------------------

class LoseAnswers:
    """Sends writes through, then raises OutcomeUnknown for the first `count` of them (the write committed)."""

    def __init__(self, gateway: Gateway, count: int) -> None:
        self.gateway, self.count, self.call = gateway, count, gateway.call

    def __call__(self, path: str, body: dict, *, write: bool) -> dict:
        answer = self.call(path, body, write=write)
        if write and self.count > 0:
            self.count -= 1
            raise OutcomeUnknown("answer lost (test)")
        return answer


def test_a_write_whose_answer_is_lost_is_found_on_the_next_read(store, monkeypatch):
    pool = make_pool()
    monkeypatch.setattr(store.gateway, "call", LoseAnswers(store.gateway, 1))
    record = store.allocate(spec("7", bricks=2), pool)
    assert store.get("7") == record
    assert store.allocated_brick_ids("nvme") == {b.id for b in record.bricks}

    monkeypatch.setattr(store.gateway, "call", LoseAnswers(store.gateway, 1))
    assert store.transition("7", BufferState.ALLOCATING, BufferState.DESTROYED).state is BufferState.DESTROYED
    monkeypatch.setattr(store.gateway, "call", LoseAnswers(store.gateway, 1))
    assert store.release("7") is True
    assert store.get("7") is None and store.allocated_brick_ids("nvme") == set()


def test_a_member_refusing_connections_is_passed_over(etcd_endpoint):
    (dead,) = free_ports(1)  # nothing listens there
    store = EtcdStore([f"http://127.0.0.1:{dead}", etcd_endpoint], prefix=f"/test-{uuid.uuid4().hex}")
    assert store.allocate(spec("7"), make_pool()).key == "7"
    assert store.get("7") is not None


def test_open_store_takes_every_member_of_a_cluster():
    store = open_store("http://10.0.0.1:2379, http://10.0.0.2:2379/")
    assert isinstance(store, EtcdStore)
    assert store.gateway.endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    with pytest.raises(StateError, match="write it as http://HOST:PORT"):
        EtcdStore("http://10.0.0.1:2379,etcd2:2379")


def test_no_member_answering_is_a_clear_error_within_the_timeout():
    ports = free_ports(2)
    store = EtcdStore([f"http://127.0.0.1:{p}" for p in ports], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(Exception, match=r"etcd is unreachable .*127\.0\.0\.1"):
        store.get("7")
    assert time.monotonic() - started < 3


# --- a member SIGKILLed during a burst of allocations ----------------------------------------

WORKERS, PER_WORKER = 4, 30


def allocate_many(endpoints: list[str], prefix: str, worker: int, started, results) -> None:
    """One process allocating PER_WORKER buffers in a row, as that many bbctl setups would."""
    rng = random.Random(worker)
    pool = make_pool(servers=100, per_server=4)
    for n in range(PER_WORKER):
        store = EtcdStore(endpoints, prefix=prefix, timeout=30)  # each setup its own store
        key = f"w{worker}-{n}"
        try:
            record = store.allocate(spec(key, bricks=rng.randint(1, 4)), pool)
            results.put((key, "granted", [b.id for b in record.bricks], time.monotonic()))
        except Exception as exc:  # reported, so the test names it instead of hanging
            results.put((key, "error", repr(exc), time.monotonic()))
        with started.get_lock():
            started.value += 1


def leader(cluster: EtcdCluster) -> int:
    for n, endpoint in enumerate(cluster.endpoints):
        request = urllib.request.Request(f"{endpoint}/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            status = __import__("json").loads(response.read())
        if status["leader"] == status["header"]["member_id"]:
            return n
    raise AssertionError("no member says it leads")


def test_a_member_killed_during_a_burst_of_allocations_loses_none_and_gives_none_twice(tmp_path):
    with EtcdCluster(tmp_path, 3) as cluster:
        killed = leader(cluster)  # the worst member to lose: every write waits for a new election
        prefix = f"/test-{uuid.uuid4().hex}"
        context = multiprocessing.get_context("fork")
        started, results = context.Value("i", 0), context.Queue()
        workers = []
        for worker in range(WORKERS):  # each process starts at a different member, some at the doomed one
            endpoints = [*cluster.endpoints[worker % 3:], *cluster.endpoints[:worker % 3]]
            workers.append(context.Process(target=allocate_many, args=(endpoints, prefix, worker, started, results)))
        for process in workers:
            process.start()
        deadline = time.monotonic() + 60
        while started.value < WORKERS * PER_WORKER // 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting for the burst to be under way
        cluster.kill(killed)
        killed_at = time.monotonic()
        outcomes = [results.get(timeout=120) for _ in range(WORKERS * PER_WORKER)]
        for process in workers:
            process.join(timeout=30)

        assert [o for o in outcomes if o[1] == "error"] == []
        granted = [brick for _, _, bricks, _ in outcomes for brick in bricks]
        assert len(granted) == len(set(granted)), "a brick was given twice"
        after = [o for o in outcomes if o[3] > killed_at]
        assert len(after) >= WORKERS * PER_WORKER // 2, "the burst went on after the kill"

        survivor = EtcdStore([e for n, e in enumerate(cluster.endpoints) if n != killed], prefix=prefix)
        assert {b.key for b in survivor.buffers()} == {key for key, *_ in outcomes}
        for key, _, bricks, _ in outcomes:
            assert [b.id for b in survivor.get(key).bricks] == bricks
        assert survivor.allocated_brick_ids("nvme") == set(granted)
        index = PoolIndex.decode(survivor._get_raw(survivor._index_key("nvme")).value, 0)
        assert index.ids() == set(granted)
    assert [p.name for p in Path(tmp_path).iterdir() if p.is_dir()] == [], "data directories left behind"


def test_a_failure_count_whose_answer_is_lost_is_counted_once(store, monkeypatch):
    monkeypatch.setattr(store.gateway, "call", LoseAnswers(store.gateway, 1))
    assert store.record_runs({"s01": "s01: x: y"}, [], limit=2) == []
    assert store.servers()["s01"].failures == 1
    monkeypatch.setattr(store.gateway, "call", LoseAnswers(store.gateway, 1))
    [marked] = store.record_runs({"s01": "s01: x: y"}, [], limit=2)
    assert marked.failures == 2 and store.servers()["s01"] == marked


class BeforeFirstWrite:
    """Runs ``action`` (another controller's write) once, just before this store's first write is sent."""

    def __init__(self, gateway: Gateway, action) -> None:
        self.call, self.action, self.writes = gateway.call, action, 0

    def __call__(self, path: str, body: dict, *, write: bool) -> dict:
        if write:
            self.writes += 1
            if self.writes == 1:
                self.action()
        return self.call(path, body, write=write)


def test_a_server_drained_while_an_allocation_is_in_flight_gets_none_of_its_bricks(store, monkeypatch):
    pool = make_pool(servers=2, per_server=1)  # the two-brick buffer needs both servers
    other = EtcdStore(store.gateway.endpoints, prefix=store.prefix)
    monkeypatch.setattr(store.gateway, "call", BeforeFirstWrite(
        store.gateway, lambda: other.drain_server("s01", "maintenance")))
    with pytest.raises(NotEnoughBricks):
        store.allocate(spec("7", bricks=2), pool)
    assert store.get("7") is None and store.allocated_brick_ids("nvme") == set()


def test_a_failure_counted_below_the_limit_restarts_no_allocation(store, monkeypatch):
    pool = make_pool(servers=2, per_server=1)
    other = EtcdStore(store.gateway.endpoints, prefix=store.prefix)
    hook = BeforeFirstWrite(store.gateway, lambda: other.record_runs({"s01": "s01: x: y"}, [], limit=3))
    monkeypatch.setattr(store.gateway, "call", hook)
    assert {b.server for b in store.allocate(spec("7", bricks=2), pool).bricks} == {"s01", "s02"}
    assert hook.writes == 1, "the allocation's transaction went through at the first attempt"
