"""The store for an HA / multi-host controller: etcd v3 through its JSON gateway (bbctl.state.etcd_gateway).

Layout under a prefix (default ``/bbctl``)::

    <prefix>/buffers/<key>              JSON of the Buffer record
    <prefix>/pools/<pool>               the pool's bricks in use, one small value (bbctl.state.etcd_index)
    <prefix>/bricks/<pool>/<brick id>   the key of the buffer holding that brick
    <prefix>/history/<key>              JSON summary of a released buffer (bbctl.state.timings)
    <prefix>/history-by-time/<finished at, 17.6f>/<key>
                                        the history's index by age, for cutting it to its bounds
    <prefix>/counters/<stage>           JSON of that stage's counters, only ever incremented
    <prefix>/servers/<name>             JSON of a storage server's health (bbctl.state.base.ServerHealth)
    <prefix>/unusable-since             when a storage server last became unusable (allocations compare on it)

An allocation is two round trips: one read of the record's key and the
pool's index, then one transaction that succeeds only if the record does not
exist, the index is at the revision read, and every chosen brick's key does
not exist; it writes the record, the index with the chosen bricks marked,
and one key per chosen brick naming the buffer. A loser gets the fresh
values from the transaction's failure branch and chooses again without
another read (each loss means another writer committed, so someone always
progresses). A release is likewise one read (the record, the pools'
indexes, the history's oldest entries) and one transaction (record and brick
keys deleted, index rewritten, history kept and cut), compared on the
record's and the index's revisions. State changes compare the record's
mod_revision.

An allocation reads the servers' health in its snapshot and never offers a
brick of an unusable server. It compares on one key, ``<prefix>/unusable-since``,
that every write making a server unusable (a drain, the failure that reaches
the limit) rewrites in the same transaction: a server taken out during an
allocation's few milliseconds restarts that allocation, which then skips it,
while a failure counted below the limit, or a resume, restarts nothing.

The brick keys say who holds what (``bbctl gc``'s stray bricks, the status
views); the index is what the allocator reads instead of them, always
written in the same transaction. A store written by an older bbctl (brick
keys, no index) is converted on first use: the first allocation or release
in a pool with no index builds it from the brick keys, with a compare that
the index still does not exist. Should the index ever miss a brick its key
holds (an older bbctl allocating beside a newer one, a hand-written key),
the chosen brick's key makes the transaction fail and the index is rebuilt
from the brick keys. Upgrade every controller's bbctl together: an older
bbctl's release leaves the index claiming the bricks it freed.

etcd limits a transaction to ``--max-txn-ops`` operations (128 by default), so
a buffer may hold at most that many bricks minus four: raise the option (and
``max_txn_ops`` here) or the pool's granularity for bigger buffers. Run etcd
with ``--auto-compaction-retention``: every allocation adds revisions (the
index is ~3 KB at 2,500 bricks in use), and without compaction the database
eventually hits its space quota.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bbctl.pools import Pool
from bbctl.state import timings
from bbctl.state.base import (
    MAX_CAS_ATTEMPTS,
    BrickAllocation,
    Buffer,
    BufferExists,
    BufferNotFound,
    BufferSpec,
    BufferState,
    Orphans,
    ServerHealth,
    StateError,
    check_key,
    check_releasable,
    counted_failure,
    counted_success,
    drained,
    expected_states,
    find_orphans,
    merged_meta,
    moved,
    new_record,
    resumed,
    unusable_servers,
)
from bbctl.state.etcd_gateway import Gateway, KeyValue, OutcomeUnknown, b64, kvs, prefix_end
from bbctl.state.etcd_index import PoolIndex
from bbctl.state.timings import Running, StageTiming

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
HISTORY_BATCH = 16  # oldest history entries a release reads, and cuts in its own transaction
ALLOCATION_OPS = 4  # an allocation's failure branch reads the record, index, unusable-since, servers + a key a brick


def _unchanged(key: str, found: Sequence[KeyValue]) -> dict[str, Any]:
    """A transaction compare: key still at the revision read, or still absent."""
    return _at(key, found[0].mod_revision if found else 0)


def _at(key: str, mod_revision: int) -> dict[str, Any]:
    """A transaction compare: key still at mod_revision (0: still absent)."""
    if mod_revision:
        return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}
    return _absent(key)


def _absent(key: str) -> dict[str, Any]:
    return {"key": b64(key), "target": "VERSION", "result": "EQUAL", "version": "0"}


def _put(key: str, value: str | bytes) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def _delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


class EtcdStore:
    def __init__(self, endpoint: str | Sequence[str] = DEFAULT_ENDPOINT, *, prefix: str = "/bbctl",
                 timeout: float = 10.0, max_txn_ops: int = 128, clock: Callable[[], float] = time.time,
                 history_jobs: int = timings.HISTORY_JOBS, history_seconds: float = timings.HISTORY_SECONDS) -> None:
        self.gateway = Gateway(endpoint, timeout)
        self.prefix = prefix.rstrip("/")
        self.max_txn_ops = max_txn_ops
        self.clock = clock
        self.history_jobs, self.history_seconds = history_jobs, history_seconds

    # --- the gateway -----------------------------------------------------------------

    def _call(self, path: str, body: dict[str, Any], *, write: bool = True) -> dict[str, Any]:
        return self.gateway.call(path, body, write=write)

    def _txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> dict[str, Any]:
        body = {"compare": compare, "success": success, "failure": failure or []}
        return self._call("/v3/kv/txn", body)

    def _snapshot(self, *ranges: dict[str, Any]) -> list[list[KeyValue]]:
        """Several ranges read at one revision (a transaction with no compare always succeeds)."""
        answer = self._call("/v3/kv/txn", {"compare": [], "success": [{"request_range": r} for r in ranges]},
                            write=False)
        return _ranges(answer)

    def _buffer_key(self, key: str) -> str:
        return f"{self.prefix}/buffers/{key}"

    def _brick_key(self, pool: str, brick_id: str) -> str:
        return f"{self.prefix}/bricks/{pool}/{brick_id}"

    def _index_key(self, pool: str) -> str:
        return f"{self.prefix}/pools/{pool}"

    def _range_prefix(self, prefix: str, *, keys_only: bool = False) -> dict[str, Any]:
        return {"key": b64(prefix), "range_end": prefix_end(prefix), "keys_only": keys_only}

    def _get_kv(self, key: str) -> KeyValue | None:
        return self._get_raw(self._buffer_key(key))

    def _get_raw(self, full_key: str) -> KeyValue | None:
        found = kvs(self._call("/v3/kv/range", {"key": b64(full_key)}, write=False))
        return found[0] if found else None

    def _history_key(self, key: str) -> str:
        return f"{self.prefix}/history/{key}"

    def _history_index_key(self, finished_at: float, key: str) -> str:
        return f"{self.prefix}/history-by-time/{finished_at:017.6f}/{key}"

    def _counters_key(self, stage: str) -> str:
        return f"{self.prefix}/counters/{stage}"

    def _server_key(self, name: str) -> str:
        return f"{self.prefix}/servers/{name}"

    def _unusable_key(self) -> str:
        """Rewritten whenever a storage server becomes unusable; allocations compare on it."""
        return f"{self.prefix}/unusable-since"

    # --- allocation ----------------------------------------------------------------------

    def allocate(self, spec: BufferSpec, pool: Pool) -> Buffer:
        check_key(spec.key)
        needed = spec.brick_count(pool.granularity)
        if needed + ALLOCATION_OPS > self.max_txn_ops:
            raise StateError(f"buffer {spec.key} needs {needed} bricks; etcd takes at most "
                             f"{self.max_txn_ops - ALLOCATION_OPS} "
                             "in one transaction: raise etcd's --max-txn-ops or the pool's granularity")
        record_key, index_key = self._buffer_key(spec.key), self._index_key(pool.name)
        sent: set[bytes] = set()  # records of transactions whose outcome is unknown
        view = [{"key": b64(record_key)}, {"key": b64(index_key)}, {"key": b64(self._unusable_key())},
                self._range_prefix(self._server_key(""))]
        record_kvs, index_kvs, marked_kvs, server_kvs = self._snapshot(*view)
        index = self._pool_index(pool.name, index_kvs)
        for _ in range(MAX_CAS_ATTEMPTS):
            if record_kvs:
                if record_kvs[0].value in sent:  # an earlier attempt did commit
                    return Buffer.from_dict(json.loads(record_kvs[0].value))
                raise BufferExists(spec.key)
            chosen = index.choose(pool, needed, unusable_servers(self._health(server_kvs)))
            record = new_record(spec, pool, chosen, self.clock())
            value = json.dumps(record.to_dict())
            brick_keys = [self._brick_key(pool.name, brick.id) for brick in chosen]
            compare = [_absent(record_key), _at(index_key, index.revision),
                       _at(self._unusable_key(), marked_kvs[0].mod_revision if marked_kvs else 0)]
            compare += [_absent(k) for k in brick_keys]
            success = [_put(record_key, value), _put(index_key, index.taking(chosen).encode())]
            success += [_put(k, spec.key) for k in brick_keys]
            failure = [{"request_range": r} for r in view] + [{"request_range": {"key": b64(k)}} for k in brick_keys]
            try:
                answer = self._txn(compare, success, failure)
            except OutcomeUnknown:
                sent.add(value.encode())
                record_kvs, index_kvs, marked_kvs, server_kvs = self._snapshot(*view)
                index = self._pool_index(pool.name, index_kvs)
                continue
            if answer.get("succeeded"):
                return record
            record_kvs, index_kvs, marked_kvs, server_kvs, *held = _ranges(answer)
            index = self._pool_index(pool.name, index_kvs)
            if any(found and not index.holds(brick) for brick, found in zip(chosen, held, strict=True)):
                index = self._repaired_index(pool.name)  # a brick key the index misses: trust the keys
        raise StateError(f"buffer {spec.key}: lost {MAX_CAS_ATTEMPTS} races for bricks in pool {pool.name!r}; retry")

    def _pool_index(self, pool: str, index_kvs: list[KeyValue]) -> PoolIndex:
        """The index as read, or (no index yet: a store of an older bbctl, or a new pool) built from the brick keys."""
        if index_kvs:
            return PoolIndex.decode(index_kvs[0].value, index_kvs[0].mod_revision)
        return self._rebuilt_index(pool)

    def _repaired_index(self, pool: str) -> PoolIndex:
        """The index rebuilt from the brick keys and written back (if no one changed it meanwhile)."""
        index = self._rebuilt_index(pool)
        key = self._index_key(pool)
        with contextlib.suppress(OutcomeUnknown):  # the next attempt reads whatever is there
            answer = self._txn([_at(key, index.revision)], [_put(key, index.encode())])
            if answer.get("succeeded"):
                index.revision = int(answer["header"]["revision"])
        return index

    def _rebuilt_index(self, pool: str) -> PoolIndex:
        """The brick keys as an index, at the revision of the index key read in the same snapshot."""
        brick_prefix = self._brick_key(pool, "")
        index_kvs, brick_kvs = self._snapshot({"key": b64(self._index_key(pool))},
                                              self._range_prefix(brick_prefix, keys_only=True))
        revision = index_kvs[0].mod_revision if index_kvs else 0
        return PoolIndex.from_brick_ids((kv.key.removeprefix(brick_prefix) for kv in brick_kvs), revision)

    # --- records ---------------------------------------------------------------------------

    def get(self, key: str) -> Buffer | None:
        kv = self._get_kv(key)
        return Buffer.from_dict(json.loads(kv.value)) if kv else None

    def buffers(self) -> list[Buffer]:
        (found,) = self._snapshot(self._range_prefix(self._buffer_key("")))
        return sorted((Buffer.from_dict(json.loads(kv.value)) for kv in found), key=lambda b: b.key)

    def transition(self, key: str, expected: BufferState | Collection[BufferState], new: BufferState, *,
                   last_error: str | None = None, stage_out_verified: bool | None = None,
                   meta: Mapping[str, Any] | None = None) -> Buffer:
        wanted = expected_states(expected)
        try:
            record = self._update_record(key, lambda current: moved(
                current, wanted, new, self.clock(), last_error=last_error, stage_out_verified=stage_out_verified,
                meta=meta))
        except _LostRaces:
            raise StateError(f"buffer {key}: lost {MAX_CAS_ATTEMPTS} races to change its state; retry") from None
        if record is None:
            raise BufferNotFound(key)
        return record

    def _update_record(self, key: str, change: Callable[[Buffer], Buffer]) -> Buffer | None:
        """change applied to key's record by compare-and-swap; None if there is no record; _LostRaces."""
        sent: set[bytes] = set()
        for _ in range(MAX_CAS_ATTEMPTS):
            kv = self._get_kv(key)
            if kv is None:
                return None
            if kv.value in sent:  # an earlier attempt did commit
                return Buffer.from_dict(json.loads(kv.value))
            record = change(Buffer.from_dict(json.loads(kv.value)))
            value = json.dumps(record.to_dict())
            try:
                if self._txn([_unchanged(kv.key, [kv])], [_put(kv.key, value)]).get("succeeded"):
                    return record
            except OutcomeUnknown:
                sent.add(value.encode())
        raise _LostRaces

    # --- release and the history -------------------------------------------------------------

    def release(self, key: str) -> bool:
        unknown = False  # an earlier attempt's outcome is unknown: it may have released the buffer
        view = _ReleaseView.of(self._snapshot_raw(self._release_ranges(key)))
        for _ in range(MAX_CAS_ATTEMPTS):
            if view.record is None:
                return unknown
            record = Buffer.from_dict(json.loads(view.record.value))
            check_releasable(record)
            index_key = self._index_key(record.pool)
            index = view.index(index_key) or self._rebuilt_index(record.pool)
            now = self.clock()
            # The brick keys were created with this record in one transaction, so
            # they hold this key; the record's revision guards the whole delete.
            doomed = [view.record.key] + [self._brick_key(record.pool, brick.id) for brick in record.bricks]
            puts: list[tuple[str, str | bytes]] = [(index_key, index.freeing(record.bricks).encode())]
            cut_later = False
            if self.history_jobs > 0:
                entry = self._history_index_key(now, key)
                if view.history is not None:  # the key's earlier life: its index entry goes with it
                    earlier = self._history_index_key(json.loads(view.history.value)["finished_at"], key)
                    doomed += [earlier] if earlier != entry else []  # a put and a delete of one key: refused
                puts += [(self._history_key(key), json.dumps(timings.history_record(record.to_dict(), now))),
                         (entry, key)]
                cut, cut_later = self._history_cut(view, key, now, room=self.max_txn_ops - len(doomed) - len(puts))
                doomed += cut
            compare = [_unchanged(view.record.key, [view.record]), _at(index_key, index.revision)]
            try:
                answer = self._txn(compare, [_delete(k) for k in doomed] + [_put(k, v) for k, v in puts],
                                   [{"request_range": r} for r in self._release_ranges(key)])
            except OutcomeUnknown:
                unknown = True
                view = _ReleaseView.of(self._snapshot_raw(self._release_ranges(key)))
                continue
            if answer.get("succeeded"):
                if cut_later:
                    self._cut_history()
                return True
            view = _ReleaseView.of(_raw_ranges(answer))
        raise StateError(f"buffer {key}: lost {MAX_CAS_ATTEMPTS} races to release it; retry")

    def _release_ranges(self, key: str) -> list[dict[str, Any]]:
        """What a release reads: the record, its key's history, every pool's index, and the history's oldest
        entries (the answer counts them all)."""
        by_time = f"{self.prefix}/history-by-time/"
        return [{"key": b64(self._buffer_key(key))}, {"key": b64(self._history_key(key))},
                self._range_prefix(self._index_key("")),
                {**self._range_prefix(by_time, keys_only=True), "limit": str(HISTORY_BATCH)}]

    def _snapshot_raw(self, ranges: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answer = self._call("/v3/kv/txn", {"compare": [], "success": [{"request_range": r} for r in ranges]},
                            write=False)
        return _raw_ranges(answer)

    def _history_cut(self, view: _ReleaseView, key: str, now: float, room: int) -> tuple[list[str], bool]:
        """The history entries this release deletes to keep the history in bounds (its own summary counted),
        and whether more must go than it can see or fit (then _cut_history runs after it)."""
        own = (self._history_index_key(json.loads(view.history.value)["finished_at"], key)
               if view.history is not None else None)
        oldest = [k for k in view.oldest if k != own and not k.endswith(f"/{key}")]  # key's summary is kept
        cutoff = self._history_index_key(max(now - self.history_seconds, 0), "")
        too_old = next((n for n, k in enumerate(oldest) if k >= cutoff), len(oldest))
        size_after = view.size + (0 if own else 1)
        wanted = max(too_old, size_after - self.history_jobs)
        cut = oldest[:min(wanted, max(room, 0) // 2)]
        doomed = cut + [self._history_key(k.rsplit("/", 1)[1]) for k in cut]
        return doomed, wanted > len(cut) or (too_old == len(oldest) and view.more)

    def _cut_history(self) -> None:
        """History down to its bounds: entries older than history_seconds, then the oldest beyond history_jobs."""
        index = f"{self.prefix}/history-by-time/"
        cutoff = self._history_index_key(max(self.clock() - self.history_seconds, 0), "")
        old = kvs(self._call("/v3/kv/range", {"key": b64(index), "range_end": b64(cutoff), "keys_only": True},
                             write=False))
        count = int(self._call("/v3/kv/range", {**self._range_prefix(index), "count_only": True},
                               write=False).get("count", 0))
        excess = count - len(old) - self.history_jobs
        if excess > 0:
            old = kvs(self._call("/v3/kv/range", {**self._range_prefix(index, keys_only=True),
                                                  "limit": str(len(old) + excess)}, write=False))
        for start in range(0, len(old), self.max_txn_ops // 2):
            chunk = old[start:start + self.max_txn_ops // 2]
            doomed = [kv.key for kv in chunk] + [self._history_key(kv.key.rsplit("/", 1)[1]) for kv in chunk]
            with contextlib.suppress(OutcomeUnknown):  # deletes: the next cut finds whatever is left
                self._txn([], [_delete(k) for k in doomed])

    # --- stage timings -------------------------------------------------------------------------

    def start_stage(self, key: str, running: Running) -> bool:
        try:
            return self._update_record(key, lambda record: replace(record, meta=merged_meta(
                record.meta, {timings.STAGE_NOW: running.to_dict()}))) is not None
        except _LostRaces:
            raise StateError(f"buffer {key}: lost {MAX_CAS_ATTEMPTS} races to note its stage; retry") from None

    def finish_stage(self, key: str, timing: StageTiming) -> bool:
        counters_key = self._counters_key(timing.stage)
        sent: set[tuple[str, bytes]] = set()  # (key, value) of transactions whose outcome is unknown
        for _ in range(MAX_CAS_ATTEMPTS):
            record_kv, history_kv, counters_kv = self._snapshot(
                {"key": b64(self._buffer_key(key))}, {"key": b64(self._history_key(key))},
                {"key": b64(counters_key)})
            if any((kv.key, kv.value) in sent for kv in record_kv + history_kv + counters_kv):
                return bool(record_kv or history_kv)  # an earlier attempt did commit
            counts = json.loads(counters_kv[0].value) if counters_kv else {}
            puts = [(counters_key, json.dumps(timings.add_counts(counts, timings.counter_increments(timing))))]
            compare = [_unchanged(counters_key, counters_kv)]
            if record_kv:
                record = Buffer.from_dict(json.loads(record_kv[0].value))
                record = replace(record, meta=merged_meta(record.meta, timings.finished_meta(record.meta, timing)))
                puts.append((record_kv[0].key, json.dumps(record.to_dict())))
                compare.append(_unchanged(record_kv[0].key, record_kv))
            elif history_kv:
                kept = timings.history_with(json.loads(history_kv[0].value), timing)
                puts.append((history_kv[0].key, json.dumps(kept)))
                compare.append(_unchanged(history_kv[0].key, history_kv))
            try:
                if self._txn(compare, [_put(k, v) for k, v in puts]).get("succeeded"):
                    return bool(record_kv or history_kv)
            except OutcomeUnknown:
                # The record or history value names this timing alone; the counters only if nothing else.
                sent.add((puts[-1][0], puts[-1][1].encode()))
        raise StateError(f"buffer {key}: lost {MAX_CAS_ATTEMPTS} races to record its {timing.stage}; retry")

    def history(self, key: str) -> dict[str, Any] | None:
        kv = self._get_raw(self._history_key(key))
        return json.loads(kv.value) if kv else None

    def stage_counters(self) -> dict[str, dict[str, float]]:
        prefix = f"{self.prefix}/counters/"
        (found,) = self._snapshot(self._range_prefix(prefix))
        return {kv.key.removeprefix(prefix): json.loads(kv.value) for kv in found}

    # --- what is in use ------------------------------------------------------------------------

    def allocated_brick_ids(self, pool: str) -> set[str]:
        pool_prefix = self._brick_key(pool, "")
        (found,) = self._snapshot(self._range_prefix(pool_prefix, keys_only=True))
        return {kv.key.removeprefix(pool_prefix) for kv in found}

    def orphans(self, older_than: float) -> Orphans:
        bricks_prefix = f"{self.prefix}/bricks/"
        record_kvs, brick_kvs = self._snapshot(self._range_prefix(self._buffer_key("")),
                                               self._range_prefix(bricks_prefix))
        records = [Buffer.from_dict(json.loads(kv.value)) for kv in record_kvs]
        allocations = []
        for kv in brick_kvs:
            pool, brick_id = kv.key.removeprefix(bricks_prefix).split("/", 1)
            allocations.append(BrickAllocation(pool, brick_id, kv.value.decode()))
        return find_orphans(records, allocations, older_than, self.clock())

    # --- storage servers' health -------------------------------------------------------------

    def servers(self) -> dict[str, ServerHealth]:
        (found,) = self._snapshot(self._range_prefix(self._server_key("")))
        return self._health(found)

    def _health(self, found: Sequence[KeyValue]) -> dict[str, ServerHealth]:
        return {server.name: server for server in (ServerHealth.from_dict(json.loads(kv.value)) for kv in found)}

    def record_runs(self, failed: Mapping[str, str], succeeded: Collection[str], *, limit: int) -> list[ServerHealth]:
        names = sorted(set(failed) | set(succeeded))
        marked: list[ServerHealth] = []

        def change(current: dict[str, ServerHealth]) -> dict[str, ServerHealth]:
            marked.clear()
            now, changed = self.clock(), {}
            for name in names:
                was = current.get(name)
                if name in failed:
                    changed[name] = counted_failure(was, name, failed[name], now, limit)
                    if changed[name].unusable and not (was and was.unusable):
                        marked.append(changed[name])
                elif (server := counted_success(was, name)) is not None and server != was:
                    changed[name] = server
            return changed

        self._update_servers(names, change)
        return list(marked)

    def drain_server(self, name: str, reason: str) -> ServerHealth:
        changed = self._update_servers([name], lambda current: {
            name: drained(current.get(name), name, reason, self.clock())})
        return changed[name]

    def resume_server(self, name: str) -> ServerHealth:
        return self._update_servers([name], lambda current: {name: resumed(current.get(name), name)})[name]

    def _update_servers(self, names: Sequence[str], change: _HealthChange) -> dict[str, ServerHealth]:
        """change applied to the named servers' health by compare-and-swap; what it wrote."""
        sent: dict[str, bytes] = {}  # the values of a transaction whose outcome is unknown
        for _ in range(MAX_CAS_ATTEMPTS):
            found = self._snapshot(*({"key": b64(self._server_key(name))} for name in names)) if names else []
            by_key = {self._server_key(name): kvs_ for name, kvs_ in zip(names, found, strict=True)}
            if sent and all(by_key[k] and by_key[k][0].value == v for k, v in sent.items()):
                return {name: ServerHealth.from_dict(json.loads(sent[self._server_key(name)]))
                        for name in names if self._server_key(name) in sent}  # an earlier attempt did commit
            current = self._health([kv for kvs_ in found for kv in kvs_])
            changed = change(current)
            if not changed:
                return {}
            puts = {self._server_key(name): json.dumps(server.to_dict()) for name, server in changed.items()}
            writes = [_put(k, v) for k, v in puts.items()]
            if any(server.unusable and not (name in current and current[name].unusable)
                   for name, server in changed.items()):
                writes.append(_put(self._unusable_key(), str(self.clock())))  # allocations in flight start again
            try:
                if self._txn([_unchanged(k, by_key[k]) for k in puts], writes).get("succeeded"):
                    return changed
            except OutcomeUnknown:
                sent = {k: v.encode() for k, v in puts.items()}
        raise StateError(f"servers {', '.join(names)}: lost {MAX_CAS_ATTEMPTS} races to record their health; retry")

    def close(self) -> None:
        """This thread's connections closed (a later call opens new ones)."""
        self.gateway.close()


_HealthChange = Callable[[dict[str, ServerHealth]], dict[str, ServerHealth]]  # the servers' health read -> to write


class _LostRaces(Exception):
    """Every compare-and-swap of one update lost to another writer (the caller says which update)."""


@dataclass(frozen=True)
class _ReleaseView:
    """What a release reads, at one revision."""

    record: KeyValue | None
    history: KeyValue | None  # the key's summary from an earlier life
    indexes: list[KeyValue]  # every pool's
    oldest: list[str]  # the history's oldest index keys, oldest first (at most HISTORY_BATCH)
    more: bool  # the history has more entries than oldest shows
    size: int  # entries in the history

    @classmethod
    def of(cls, ranges: list[dict[str, Any]]) -> _ReleaseView:
        """From the answers to EtcdStore._release_ranges."""
        record, history, indexes, oldest = ranges
        return cls(_one(record), _one(history), kvs(indexes), [kv.key for kv in kvs(oldest)],
                   bool(oldest.get("more")), int(oldest.get("count", 0)))

    def index(self, key: str) -> PoolIndex | None:
        found = [kv for kv in self.indexes if kv.key == key]
        return PoolIndex.decode(found[0].value, found[0].mod_revision) if found else None


def _raw_ranges(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [r.get("response_range", {}) for r in answer.get("responses", [])]


def _ranges(answer: dict[str, Any]) -> list[list[KeyValue]]:
    return [kvs(r) for r in _raw_ranges(answer)]


def _one(range_response: dict[str, Any]) -> KeyValue | None:
    found = kvs(range_response)
    return found[0] if found else None
