"""The store for an HA / multi-host controller: etcd v3 through its JSON gateway.

Only the stdlib talks to etcd (``POST /v3/kv/range``, ``/v3/kv/txn``; keys and
values base64): the PyPI etcd3 client no longer imports with today's protobuf.

Layout under a prefix (default ``/bbctl``)::

    <prefix>/buffers/<key>              JSON of the Buffer record
    <prefix>/bricks/<pool>/<brick id>   the key of the buffer holding that brick
    <prefix>/history/<key>              JSON summary of a released buffer (bbctl.state.timings)
    <prefix>/history-by-time/<finished at, 17.6f>/<key>
                                        the history's index by age, for cutting it to its bounds
    <prefix>/counters/<stage>           JSON of that stage's counters, only ever incremented

Allocation reads the pool's brick keys, chooses, then commits the record and
one key per chosen brick in a transaction that succeeds only if the record
and every chosen brick key still do not exist; a loser re-reads and tries
again (each loss means another writer committed, so someone always
progresses). State changes compare the record's mod_revision.

etcd limits a transaction to ``--max-txn-ops`` operations (128 by default), so
a buffer may hold at most that many bricks minus one: raise the option (and
``max_txn_ops`` here) or the pool's granularity for bigger buffers. Run etcd
with ``--auto-compaction-retention``: every allocation adds revisions, and
without compaction the database eventually hits its space quota.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping
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
    StateError,
    check_key,
    check_releasable,
    expected_states,
    find_orphans,
    merged_meta,
    moved,
    new_record,
)
from bbctl.state.timings import Running, StageTiming

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _prefix_end(prefix: str) -> str:
    """The range_end that makes a range cover every key starting with prefix."""
    raw = prefix.encode()
    return _b64(raw[:-1] + bytes([raw[-1] + 1]))


def _unchanged(key: str, found: list[KeyValue]) -> dict[str, Any]:
    """A transaction compare: key still at the revision read, or still absent."""
    if found:
        return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(found[0].mod_revision)}
    return {"key": _b64(key), "target": "VERSION", "result": "EQUAL", "version": "0"}


def _kvs(range_response: dict[str, Any]) -> list[KeyValue]:
    # The gateway omits zero-valued fields: no "kvs" means no keys.
    return [KeyValue(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")),
                     int(kv.get("mod_revision", 0)))
            for kv in range_response.get("kvs", [])]


class EtcdStore:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, prefix: str = "/bbctl", timeout: float = 10.0,
                 max_txn_ops: int = 128, clock: Callable[[], float] = time.time,
                 history_jobs: int = timings.HISTORY_JOBS, history_seconds: float = timings.HISTORY_SECONDS) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.prefix = prefix.rstrip("/")
        self.timeout = timeout
        self.max_txn_ops = max_txn_ops
        self.clock = clock
        self.history_jobs, self.history_seconds = history_jobs, history_seconds

    # --- the gateway -----------------------------------------------------------------

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.endpoint}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise StateError(f"etcd at {self.endpoint} refused {path}: {detail or exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StateError(f"etcd at {self.endpoint} is unreachable: {reason}") from exc

    def _txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> dict[str, Any]:
        body = {"compare": compare, "success": success, "failure": failure or []}
        return self._call("/v3/kv/txn", body)

    def _snapshot(self, *ranges: dict[str, Any]) -> list[list[KeyValue]]:
        """Several ranges read at one revision (a transaction with no compare always succeeds)."""
        answer = self._txn([], [{"request_range": r} for r in ranges])
        return [_kvs(r.get("response_range", {})) for r in answer.get("responses", [])]

    def _buffer_key(self, key: str) -> str:
        return f"{self.prefix}/buffers/{key}"

    def _brick_key(self, pool: str, brick_id: str) -> str:
        return f"{self.prefix}/bricks/{pool}/{brick_id}"

    def _range_prefix(self, prefix: str, *, keys_only: bool = False) -> dict[str, Any]:
        return {"key": _b64(prefix), "range_end": _prefix_end(prefix), "keys_only": keys_only}

    def _get_kv(self, key: str) -> KeyValue | None:
        return self._get_raw(self._buffer_key(key))

    def _get_raw(self, full_key: str) -> KeyValue | None:
        found = _kvs(self._call("/v3/kv/range", {"key": _b64(full_key)}))
        return found[0] if found else None

    def _history_key(self, key: str) -> str:
        return f"{self.prefix}/history/{key}"

    def _history_index_key(self, finished_at: float, key: str) -> str:
        return f"{self.prefix}/history-by-time/{finished_at:017.6f}/{key}"

    def _counters_key(self, stage: str) -> str:
        return f"{self.prefix}/counters/{stage}"

    # --- the StateStore interface ----------------------------------------------------

    def allocate(self, spec: BufferSpec, pool: Pool) -> Buffer:
        check_key(spec.key)
        needed = spec.brick_count(pool.granularity)
        if needed + 1 > self.max_txn_ops:
            raise StateError(f"buffer {spec.key} needs {needed} bricks; etcd takes at most {self.max_txn_ops - 1} "
                             "in one transaction: raise etcd's --max-txn-ops or the pool's granularity")
        record_key = self._buffer_key(spec.key)
        pool_prefix = self._brick_key(pool.name, "")
        for _ in range(MAX_CAS_ATTEMPTS):
            existing, taken_kvs = self._snapshot({"key": _b64(record_key)},
                                                 self._range_prefix(pool_prefix, keys_only=True))
            if existing:
                raise BufferExists(spec.key)
            taken = {kv.key.removeprefix(pool_prefix) for kv in taken_kvs}
            chosen = pool.choose(taken, needed)
            record = new_record(spec, pool, chosen, self.clock())
            new_keys = [(record_key, json.dumps(record.to_dict()))]
            new_keys += [(self._brick_key(pool.name, brick.id), spec.key) for brick in chosen]
            answer = self._txn(
                compare=[{"key": _b64(k), "target": "VERSION", "result": "EQUAL", "version": "0"} for k, _ in new_keys],
                success=[{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in new_keys])
            if answer.get("succeeded"):
                return record
        raise StateError(f"buffer {spec.key}: lost {MAX_CAS_ATTEMPTS} races for bricks in pool {pool.name!r}; retry")

    def get(self, key: str) -> Buffer | None:
        kv = self._get_kv(key)
        return Buffer.from_dict(json.loads(kv.value)) if kv else None

    def buffers(self) -> list[Buffer]:
        (kvs,) = self._snapshot(self._range_prefix(self._buffer_key("")))
        return sorted((Buffer.from_dict(json.loads(kv.value)) for kv in kvs), key=lambda b: b.key)

    def transition(self, key: str, expected: BufferState | Collection[BufferState], new: BufferState, *,
                   last_error: str | None = None, stage_out_verified: bool | None = None,
                   meta: Mapping[str, Any] | None = None) -> Buffer:
        wanted = expected_states(expected)
        for _ in range(MAX_CAS_ATTEMPTS):
            kv = self._get_kv(key)
            if kv is None:
                raise BufferNotFound(key)
            record = moved(Buffer.from_dict(json.loads(kv.value)), wanted, new, self.clock(),
                           last_error=last_error, stage_out_verified=stage_out_verified, meta=meta)
            if self._put_if_unchanged(kv, json.dumps(record.to_dict())):
                return record
        raise StateError(f"buffer {key}: lost {MAX_CAS_ATTEMPTS} races to change its state; retry")

    def _put_if_unchanged(self, kv: KeyValue, value: str) -> bool:
        answer = self._txn(
            compare=[{"key": _b64(kv.key), "target": "MOD", "result": "EQUAL", "mod_revision": str(kv.mod_revision)}],
            success=[{"request_put": {"key": _b64(kv.key), "value": _b64(value)}}])
        return bool(answer.get("succeeded"))

    def release(self, key: str) -> bool:
        for _ in range(MAX_CAS_ATTEMPTS):
            kv = self._get_kv(key)
            if kv is None:
                return False
            record = Buffer.from_dict(json.loads(kv.value))
            check_releasable(record)
            # The brick keys were created with this record in one transaction, so
            # they hold this key; the record's revision guards the whole delete.
            doomed = [kv.key] + [self._brick_key(record.pool, brick.id) for brick in record.bricks]
            puts: list[tuple[str, str]] = []
            if self.history_jobs > 0:
                now = self.clock()
                older = self._get_raw(self._history_key(key))
                if older is not None:  # the key's earlier life: its index entry goes with it
                    doomed.append(self._history_index_key(json.loads(older.value)["finished_at"], key))
                puts = [(self._history_key(key), json.dumps(timings.history_record(record.to_dict(), now))),
                        (self._history_index_key(now, key), key)]
            answer = self._txn(
                compare=[{"key": _b64(kv.key), "target": "MOD", "result": "EQUAL",
                          "mod_revision": str(kv.mod_revision)}],
                success=[{"request_delete_range": {"key": _b64(k)}} for k in doomed]
                + [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in puts])
            if answer.get("succeeded"):
                if puts:
                    self._cut_history()
                return True
        raise StateError(f"buffer {key}: lost {MAX_CAS_ATTEMPTS} races to release it; retry")

    def _cut_history(self) -> None:
        """History down to its bounds: entries older than history_seconds, then the oldest beyond history_jobs."""
        index = f"{self.prefix}/history-by-time/"
        cutoff = self._history_index_key(max(self.clock() - self.history_seconds, 0), "")
        old = _kvs(self._call("/v3/kv/range", {"key": _b64(index), "range_end": _b64(cutoff), "keys_only": True}))
        count = int(self._call("/v3/kv/range", {**self._range_prefix(index), "count_only": True}).get("count", 0))
        excess = count - len(old) - self.history_jobs
        if excess > 0:
            old = _kvs(self._call("/v3/kv/range", {**self._range_prefix(index, keys_only=True),
                                                   "limit": str(len(old) + excess)}))
        for start in range(0, len(old), self.max_txn_ops // 2):
            chunk = old[start:start + self.max_txn_ops // 2]
            doomed = [kv.key for kv in chunk] + [self._history_key(kv.key.rsplit("/", 1)[1]) for kv in chunk]
            self._txn([], [{"request_delete_range": {"key": _b64(k)}} for k in doomed])

    def start_stage(self, key: str, running: Running) -> bool:
        for _ in range(MAX_CAS_ATTEMPTS):
            kv = self._get_kv(key)
            if kv is None:
                return False
            record = Buffer.from_dict(json.loads(kv.value))
            record = replace(record, meta=merged_meta(record.meta, {timings.STAGE_NOW: running.to_dict()}))
            if self._put_if_unchanged(kv, json.dumps(record.to_dict())):
                return True
        raise StateError(f"buffer {key}: lost {MAX_CAS_ATTEMPTS} races to note its stage; retry")

    def finish_stage(self, key: str, timing: StageTiming) -> bool:
        counters_key = self._counters_key(timing.stage)
        for _ in range(MAX_CAS_ATTEMPTS):
            record_kv, history_kv, counters_kv = self._snapshot(
                {"key": _b64(self._buffer_key(key))}, {"key": _b64(self._history_key(key))},
                {"key": _b64(counters_key)})
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
            answer = self._txn(compare=compare,
                               success=[{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in puts])
            if answer.get("succeeded"):
                return bool(record_kv or history_kv)
        raise StateError(f"buffer {key}: lost {MAX_CAS_ATTEMPTS} races to record its {timing.stage}; retry")

    def history(self, key: str) -> dict[str, Any] | None:
        kv = self._get_raw(self._history_key(key))
        return json.loads(kv.value) if kv else None

    def stage_counters(self) -> dict[str, dict[str, float]]:
        prefix = f"{self.prefix}/counters/"
        (kvs,) = self._snapshot(self._range_prefix(prefix))
        return {kv.key.removeprefix(prefix): json.loads(kv.value) for kv in kvs}

    def allocated_brick_ids(self, pool: str) -> set[str]:
        pool_prefix = self._brick_key(pool, "")
        (kvs,) = self._snapshot(self._range_prefix(pool_prefix, keys_only=True))
        return {kv.key.removeprefix(pool_prefix) for kv in kvs}

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

    def close(self) -> None:
        """Nothing to close: every call is its own HTTP request."""
