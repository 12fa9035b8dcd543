"""One suite, two stores: every test runs against SQLite, a real etcd, and a three-member etcd cluster.

The etcd members are started here on free loopback ports with their own data
directories (bbctl.testbed.etcd), and stopped by their pids. If one cannot
start, the etcd tests fail with etcd's own words: a missing etcd is a broken
machine, not a skip.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bbctl.pools import Brick, NotEnoughBricks, Pool
from bbctl.state import (
    BufferExists,
    BufferNotFound,
    BufferSpec,
    BufferState,
    SQLiteStore,
    StateConflict,
    StateStore,
    open_store,
)
from bbctl.state.etcd import EtcdStore
from bbctl.state.timings import MAX_TIMINGS, STAGE_NOW, TIMINGS, Running, StageTiming
from bbctl.testbed.etcd import EtcdCluster, EtcdStartError

GiB = 1024**3
START = 1_700_000_000.0


class Clock:
    """A clock the test moves by hand: ages without sleeping."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def make_pool(servers: int = 20, per_server: int = 3, name: str = "nvme") -> Pool:
    bricks = tuple(Brick(pool=name, server=f"s{s:02d}", address=f"127.1.1.{s}", path=f"/bricks/nvme{b}",
                         device=f"/dev/nvme{b}n1")
                   for s in range(1, servers + 1) for b in range(1, per_server + 1))
    return Pool(name, GiB, bricks)


def spec(key: str, bricks: int = 1, uid: int = 1000) -> BufferSpec:
    return BufferSpec(key=key, owner_uid=uid, owner_gid=uid, capacity=bricks * GiB, fs="gluster")


# --- the etcd servers ---------------------------------------------------------------

def etcd_cluster(root: Path, members: int) -> Iterator[EtcdCluster]:
    try:
        with EtcdCluster(root, members) as cluster:
            yield cluster
    except EtcdStartError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def etcd_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One member, shared by the session (each test has its own prefix)."""
    for cluster in etcd_cluster(tmp_path_factory.mktemp("etcd"), 1):
        yield cluster.endpoints[0]


@pytest.fixture(scope="session")
def etcd3_endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three members on loopback, shared by the session: what an HA controller pair would use."""
    for cluster in etcd_cluster(tmp_path_factory.mktemp("etcd3"), 3):
        yield cluster.endpoints


# --- both stores behind one fixture ------------------------------------------------

@dataclass
class Backend:
    """Opens stores on one shared state (as separate bbctl processes would), and plants damage."""

    name: str
    open: Callable[..., StateStore]
    plant_allocation: Callable[[str, str, str], None]


def sqlite_backend(path: Path) -> Backend:
    def plant(pool: str, brick_id: str, buffer_key: str) -> None:
        store = SQLiteStore(path)
        with store._write() as db:
            db.execute("INSERT INTO allocations (brick_id, pool, server, buffer_key) VALUES (?, ?, ?, ?)",
                       (brick_id, pool, brick_id.split(":")[0], buffer_key))
        store.close()

    return Backend("sqlite", lambda clock=time.time, **options: SQLiteStore(path, clock=clock, **options), plant)


def etcd_backend(endpoint: str | list[str], name: str = "etcd") -> Backend:
    prefix = f"/test-{uuid.uuid4().hex}"  # each test its own namespace on the shared server

    def plant(pool: str, brick_id: str, buffer_key: str) -> None:
        store = EtcdStore(endpoint, prefix=prefix)
        store._call("/v3/kv/put", {"key": _b64(store._brick_key(pool, brick_id)), "value": _b64(buffer_key)})

    return Backend(name, lambda clock=time.time, **options: EtcdStore(endpoint, prefix=prefix, clock=clock,
                                                                     **options), plant)


def _b64(text: str) -> str:
    import base64
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(params=["sqlite", "etcd", "etcd3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return sqlite_backend(tmp_path / "state.db")
    if request.param == "etcd3":  # all three members listed, each store starting at a different one
        endpoints = request.getfixturevalue("etcd3_endpoints")
        turn = next(_turns)
        return etcd_backend([*endpoints[turn % 3:], *endpoints[:turn % 3]], "etcd3")
    return etcd_backend(request.getfixturevalue("etcd_endpoint"))


_turns = itertools.count()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(backend: Backend, clock: Clock) -> Iterator[StateStore]:
    opened = backend.open(clock)
    yield opened
    opened.close()


# --- intent before acting ------------------------------------------------------------

def test_allocate_records_intent_visible_to_another_process_before_acting(backend, store, clock):
    pool = make_pool()
    record = store.allocate(spec("1234", bricks=3), pool)
    # What gc, or a second bbctl, sees at this moment, before any playbook ran:
    seen = backend.open().get("1234")
    assert seen == record
    assert seen.state is BufferState.ALLOCATING
    assert (seen.created_at, seen.updated_at) == (START, START)
    assert (seen.owner_uid, seen.pool, seen.capacity, seen.fs) == (1000, "nvme", 3 * GiB, "gluster")
    assert len({brick.server for brick in seen.bricks}) == 3, "spread: one brick per server"
    assert backend.open().allocated_brick_ids("nvme") == {brick.id for brick in seen.bricks}


def test_allocations_never_share_a_brick(store):
    pool = make_pool(servers=4, per_server=2)
    first = store.allocate(spec("a", bricks=5), pool)
    second = store.allocate(spec("b", bricks=3), pool)
    assert not {b.id for b in first.bricks} & {b.id for b in second.bricks}
    assert len(store.allocated_brick_ids("nvme")) == 8


def test_allocating_the_same_key_twice_is_refused_and_takes_nothing(store):
    pool = make_pool()
    store.allocate(spec("1234", bricks=2), pool)
    with pytest.raises(BufferExists, match="1234 already exists"):
        store.allocate(spec("1234", bricks=2), pool)
    assert len(store.allocated_brick_ids("nvme")) == 2


def test_not_enough_bricks_names_pool_needed_and_free_and_records_nothing(store):
    pool = make_pool(servers=2, per_server=2)
    store.allocate(spec("first", bricks=3), pool)
    with pytest.raises(NotEnoughBricks, match=r"not enough free bricks in pool 'nvme': 2 needed, 1 free"):
        store.allocate(spec("second", bricks=2), pool)
    assert store.get("second") is None
    assert len(store.allocated_brick_ids("nvme")) == 3


def test_buffers_lists_every_record_by_key(store):
    pool = make_pool()
    for key in ("b", "a", "c"):
        store.allocate(spec(key), pool)
    assert [b.key for b in store.buffers()] == ["a", "b", "c"]
    assert store.get("missing") is None


# --- compare-and-swap transitions ------------------------------------------------------

def test_transition_moves_from_the_expected_state_only(store, clock):
    store.allocate(spec("7"), make_pool())
    clock.now += 5
    moved = store.transition("7", BufferState.ALLOCATING, BufferState.CREATING)
    assert (moved.state, moved.updated_at, moved.created_at) == (BufferState.CREATING, START + 5, START)
    with pytest.raises(StateConflict, match="7 is 'creating', not 'allocating'"):
        store.transition("7", BufferState.ALLOCATING, BufferState.CREATING)
    assert store.get("7").state is BufferState.CREATING


def test_transition_accepts_any_of_several_expected_states_and_updates_fields(store):
    store.allocate(spec("7"), make_pool())
    store.transition("7", BufferState.ALLOCATING, BufferState.STAGING_OUT)
    done = store.transition("7", {BufferState.MOUNTED, BufferState.STAGING_OUT}, BufferState.STAGED_OUT,
                            stage_out_verified=True)
    assert done.stage_out_verified
    failed = store.transition("7", BufferState.STAGED_OUT, BufferState.FAILED, last_error="glusterd down")
    assert store.get("7") == failed
    assert (failed.last_error, failed.stage_out_verified) == ("glusterd down", True)


def test_transition_of_unknown_buffer_is_an_error(store):
    with pytest.raises(BufferNotFound, match="no buffer 99"):
        store.transition("99", BufferState.ALLOCATING, BufferState.CREATING)


def test_destroyed_is_final(store):
    store.allocate(spec("7"), make_pool())
    store.transition("7", BufferState.ALLOCATING, BufferState.DESTROYED)
    with pytest.raises(StateConflict, match="destroyed is final"):
        store.transition("7", BufferState.DESTROYED, BufferState.CREATING)


def test_racing_transitions_have_exactly_one_winner(backend, store):
    store.allocate(spec("7"), make_pool())
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def race() -> None:
        racer = backend.open()  # its own handle: a SQLite connection belongs to its thread
        barrier.wait(timeout=10)
        try:
            racer.transition("7", BufferState.ALLOCATING, BufferState.CREATING)
            outcomes.append("won")
        except StateConflict:
            outcomes.append("lost")
        finally:
            racer.close()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]


# --- release -------------------------------------------------------------------------------

def test_release_is_idempotent_and_frees_the_bricks(store):
    pool = make_pool(servers=1, per_server=2)
    assert store.release("never-existed") is False
    store.allocate(spec("7", bricks=2), pool)
    store.transition("7", BufferState.ALLOCATING, BufferState.DESTROYED)
    assert store.release("7") is True
    assert store.release("7") is False
    assert store.get("7") is None
    assert store.allocated_brick_ids("nvme") == set()
    assert len(store.allocate(spec("8", bricks=2), pool).bricks) == 2, "the freed bricks are given again"


def test_release_refuses_a_buffer_that_may_still_be_built(store):
    store.allocate(spec("7", bricks=2), make_pool())
    store.transition("7", BufferState.ALLOCATING, BufferState.MOUNTED)
    with pytest.raises(StateConflict, match="destroy it before releasing"):
        store.release("7")
    assert len(store.allocated_brick_ids("nvme")) == 2


def test_release_straight_from_allocating_undoes_an_intent(store):
    store.allocate(spec("7", bricks=2), make_pool())
    assert store.release("7") is True
    assert store.allocated_brick_ids("nvme") == set()


# --- orphans, for bbctl gc --------------------------------------------------------------------

def test_orphans_are_old_in_flight_records_and_stray_bricks(backend, store, clock):
    pool = make_pool()
    store.allocate(spec("stuck-creating"), pool)
    store.transition("stuck-creating", BufferState.ALLOCATING, BufferState.CREATING)
    store.allocate(spec("long-running-job"), pool)
    store.transition("long-running-job", BufferState.ALLOCATING, BufferState.MOUNTED)
    clock.now += 3600
    store.allocate(spec("fresh"), pool)
    backend.plant_allocation("nvme", "s99:/bricks/lost", "ghost")

    found = store.orphans(older_than=600)
    assert [b.key for b in found.stale_buffers] == ["stuck-creating"]
    assert [(a.pool, a.brick_id, a.buffer_key) for a in found.stray_bricks] == [("nvme", "s99:/bricks/lost", "ghost")]
    assert store.orphans(older_than=7200).stale_buffers == []


# --- many allocators at once ------------------------------------------------------------------

REQUESTS = [3, 3, 2, 1, 3] * 6  # 30 allocators wanting 72 bricks of 60: some must be refused


def allocate_one(open_store_: Callable[[], StateStore], key: str, bricks: int, pool: Pool,
                 barrier, results) -> None:
    """One allocator, as one bbctl setup stage: its own store handle, then one allocate."""
    store = open_store_()
    barrier.wait(timeout=30)
    try:
        record = store.allocate(spec(key, bricks=bricks), pool)
        results.put((key, bricks, "granted", [b.id for b in record.bricks]))
    except NotEnoughBricks as exc:
        results.put((key, bricks, "refused", str(exc)))
    except Exception as exc:  # reported, so the test names it instead of hanging
        results.put((key, bricks, "error", repr(exc)))
    finally:
        store.close()


def run_allocators_in_processes(path: Path, pool: Pool) -> list[tuple]:
    # fork: each child opens its own connection after the fork, as separate bbctl runs do.
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(REQUESTS)), context.Queue()
    opener = _Opener(path)
    workers = [context.Process(target=allocate_one, args=(opener, f"job{i}", n, pool, barrier, results))
               for i, n in enumerate(REQUESTS)]
    for worker in workers:
        worker.start()
    collected = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    return collected


@dataclass(frozen=True)
class _Opener:
    path: Path

    def __call__(self) -> StateStore:
        return SQLiteStore(self.path)


def run_allocators_in_threads(backend: Backend, pool: Pool) -> list[tuple]:
    barrier, results = threading.Barrier(len(REQUESTS)), queue.Queue()
    workers = [threading.Thread(target=allocate_one, args=(backend.open, f"job{i}", n, pool, barrier, results))
               for i, n in enumerate(REQUESTS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return [results.get_nowait() for _ in workers]


def test_concurrent_allocators_never_share_a_brick(backend, tmp_path):
    pool = make_pool(servers=20, per_server=3)
    if backend.name == "sqlite":
        outcomes = run_allocators_in_processes(tmp_path / "state.db", pool)
    else:
        outcomes = run_allocators_in_threads(backend, pool)

    assert len(outcomes) == len(REQUESTS)
    assert [o for o in outcomes if o[2] == "error"] == []
    granted = [brick for _, _, verdict, bricks in outcomes if verdict == "granted" for brick in bricks]
    refused = [(n, message) for _, n, verdict, message in outcomes if verdict == "refused"]
    assert len(granted) == len(set(granted)), "a brick was given twice"
    assert len(granted) <= pool.quantity
    assert refused, "72 bricks asked of 60: someone must be refused"
    for _, message in refused:
        assert "not enough free bricks in pool 'nvme'" in message
    # Free bricks only shrink during the race, so each refusal must still hold at the end.
    free_at_end = pool.quantity - len(granted)
    assert free_at_end < min(n for n, _ in refused)

    store = backend.open()
    assert store.allocated_brick_ids("nvme") == set(granted)
    for key, n, verdict, bricks in outcomes:
        record = store.get(key)
        if verdict == "granted":
            assert [b.id for b in record.bricks] == bricks and len(bricks) == n
        else:
            assert record is None


def test_open_store_picks_the_backend_from_the_location(tmp_path):
    assert isinstance(open_store(tmp_path / "x.db"), SQLiteStore)
    assert isinstance(open_store("http://127.0.0.1:2379"), EtcdStore)


def test_transition_merges_meta_in_the_same_step_and_none_removes_a_key(store):
    pool = make_pool(servers=3, per_server=1)
    store.allocate(BufferSpec(key="p1", owner_uid=1001, owner_gid=1001, capacity=GiB), pool)
    store.transition("p1", BufferState.ALLOCATING, BufferState.CREATED, meta={"user:7": ["n1"], "nodes": ["n1"]})
    store.transition("p1", BufferState.CREATED, BufferState.CREATED, meta={"user:8": ["n2"], "nodes": None})
    assert store.get("p1").meta == {"user:7": ["n1"], "user:8": ["n2"]}
    assert store.get("p1").state is BufferState.CREATED


# --- stage timings, the history of released buffers, the counters ------------------------------

def timing(stage: str, start: float, seconds: float, **fields) -> StageTiming:
    return StageTiming(stage=stage, start=start, seconds=seconds, **fields)


def test_a_stage_is_noted_when_it_starts_and_kept_with_its_counters_when_it_ends(backend, store, clock):
    store.allocate(spec("7"), make_pool())
    assert store.start_stage("7", Running("stage-in", clock.now)) is True
    other = backend.open(clock)  # another bbctl process sees the stage running
    assert other.get("7").meta[STAGE_NOW] == {"stage": "stage-in", "start": clock.now}
    assert store.finish_stage("7", timing("stage-in", clock.now, 12.5, files=3, bytes=4096)) is True
    record = other.get("7")
    assert STAGE_NOW not in record.meta
    assert record.meta[TIMINGS] == [{"stage": "stage-in", "start": clock.now, "seconds": 12.5, "outcome": "ok",
                                     "files": 3, "bytes": 4096}]
    store.finish_stage("7", timing("stage-in", clock.now, 40.0, outcome="failed", reason="timed out",
                                   kind="timeout", files=1, bytes=10))
    assert other.stage_counters() == {"stage-in": {"runs:ok": 1, "runs:failed": 1, "seconds": 52.5, "files": 4,
                                                   "bytes": 4106, "le:30": 1, "le:60": 1, "failures:timeout": 1}}


def test_counters_grow_even_when_no_record_holds_the_timing(store, clock):
    assert store.start_stage("ghost", Running("setup", clock.now)) is False
    assert store.finish_stage("ghost", timing("setup", clock.now, 0.2, outcome="failed", kind="no_space")) is False
    assert store.stage_counters() == {"setup": {"runs:failed": 1, "seconds": 0.2, "le:1": 1, "failures:no_space": 1}}
    assert store.history("ghost") is None


def test_a_record_keeps_only_its_newest_timings(store, clock):
    store.allocate(spec("7"), make_pool())
    for n in range(MAX_TIMINGS + 5):
        store.finish_stage("7", timing("pre-run", clock.now + n, 1.0))
    kept = store.get("7").meta[TIMINGS]
    assert len(kept) == MAX_TIMINGS and kept[-1]["start"] == clock.now + MAX_TIMINGS + 4
    assert store.stage_counters()["pre-run"]["runs:ok"] == MAX_TIMINGS + 5


def test_a_released_buffer_leaves_its_timings_in_the_history(backend, store, clock):
    store.allocate(spec("7", bricks=2), make_pool())
    store.finish_stage("7", timing("setup", clock.now, 3.0))
    store.start_stage("7", Running("teardown", clock.now + 60))
    store.transition("7", BufferState.ALLOCATING, BufferState.DESTROYED)
    clock.now += 100
    assert store.release("7") is True
    # the teardown that released it ends afterwards: its timing joins the history
    assert store.finish_stage("7", timing("teardown", clock.now - 40, 40.0)) is True
    kept = backend.open(clock).history("7")
    assert kept["key"] == "7" and kept["state"] == "destroyed" and kept["brick_count"] == 2
    assert kept["finished_at"] == clock.now and "bricks" not in kept
    assert [t["stage"] for t in kept["meta"][TIMINGS]] == ["setup", "teardown"]
    assert STAGE_NOW not in kept["meta"]
    assert store.get("7") is None and store.allocated_brick_ids("nvme") == set()


def test_the_history_is_cut_to_its_count_and_age(backend, clock):
    store = backend.open(clock, history_jobs=3, history_seconds=1000)
    pool = make_pool()
    for n in range(5):
        store.allocate(spec(str(n)), pool)
        store.transition(str(n), BufferState.ALLOCATING, BufferState.DESTROYED)
        store.release(str(n))
        clock.now += 10
    assert [k for k in map(str, range(5)) if store.history(k)] == ["2", "3", "4"]
    clock.now += 995  # "2" was released 1025 s ago, "3" 1015 s, "4" 1005 s ... and now "5"
    store.allocate(spec("5"), pool)
    store.transition("5", BufferState.ALLOCATING, BufferState.DESTROYED)
    store.release("5")
    assert [k for k in map(str, range(6)) if store.history(k)] == ["5"]


def test_a_key_used_again_keeps_only_its_latest_history(backend, clock):
    store = backend.open(clock, history_jobs=2)
    pool = make_pool()
    for life in range(3):
        store.allocate(spec("p1", uid=1000 + life), pool)
        store.transition("p1", BufferState.ALLOCATING, BufferState.DESTROYED)
        store.release("p1")
        clock.now += 1
    assert store.history("p1")["owner_uid"] == 1002
    store.allocate(spec("other"), pool)
    store.transition("other", BufferState.ALLOCATING, BufferState.DESTROYED)
    store.release("other")
    # two entries allowed: p1's latest and other's; p1's earlier lives left no index behind to cut it early
    assert store.history("p1")["owner_uid"] == 1002 and store.history("other") is not None


def test_a_key_released_twice_in_the_same_instant_keeps_one_history(backend, clock):
    store = backend.open(clock, history_jobs=2)
    for uid in (1000, 1001):  # the clock does not move: both lives end at the same time
        store.allocate(spec("p1", uid=uid), make_pool())
        store.transition("p1", BufferState.ALLOCATING, BufferState.DESTROYED)
        assert store.release("p1") is True
    assert store.history("p1")["owner_uid"] == 1001


def test_no_history_when_it_is_switched_off(backend, clock):
    store = backend.open(clock, history_jobs=0)
    store.allocate(spec("7"), make_pool())
    store.transition("7", BufferState.ALLOCATING, BufferState.DESTROYED)
    store.release("7")
    assert store.history("7") is None


def test_counters_lose_no_increment_to_concurrent_writers(backend, clock):
    """Each finished stage is one atomic read-add-write: eight writers at once, every run counted."""
    writers, each = 8, 5
    pool = make_pool()
    setup = backend.open(clock)
    for n in range(writers):
        setup.allocate(spec(f"w{n}"), pool)
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        store = backend.open(clock)
        try:
            barrier.wait()
            for k in range(each):
                store.finish_stage(f"w{n}", timing("stage-in", clock.now + k, 1.0, files=1, bytes=10))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    counts = setup.stage_counters()["stage-in"]
    assert (counts["runs:ok"], counts["files"], counts["bytes"]) == (writers * each, writers * each,
                                                                     10 * writers * each)
    assert all(len(setup.get(f"w{n}").meta[TIMINGS]) == each for n in range(writers))


def test_a_schema_2_database_gains_the_history_and_counters(tmp_path, clock):
    path = tmp_path / "state.db"
    store = SQLiteStore(path, clock=clock)
    with store._write() as db:  # back to what a bbctl of schema 2 left
        db.execute("DROP TABLE history")
        db.execute("DROP TABLE stage_counters")
        db.execute("PRAGMA user_version = 2")
    store.allocate(spec("7"), make_pool())
    store.close()
    upgraded = SQLiteStore(path, clock=clock)
    assert upgraded._db.execute("PRAGMA user_version").fetchone()[0] == 4
    upgraded.finish_stage("7", timing("setup", clock.now, 2.0))
    upgraded.transition("7", BufferState.ALLOCATING, BufferState.DESTROYED)
    upgraded.release("7")
    assert [t["stage"] for t in upgraded.history("7")["meta"][TIMINGS]] == ["setup"]


def test_opening_a_current_database_waits_for_no_writer(tmp_path, clock):
    """`paths` and `job_process` open the store under a 5 s ValidateTimeout; 50 jobs' stages write
    all the time. Opening must not queue for the write lock (2026-12-07: `paths` killed at 5.1 s)."""
    path = tmp_path / "state.db"
    SQLiteStore(path, clock=clock).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a stage's write in progress
    try:
        started = time.monotonic()
        reader = SQLiteStore(path, clock=clock, busy_timeout=2.0)
        assert time.monotonic() - started < 1.0
        assert reader.buffers() == []
        reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
