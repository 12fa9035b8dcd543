"""What bbctl keeps about buffers, and the one interface both stores implement.

A buffer record is written *before* anything is built (state ``allocating``,
bricks already reserved), so a bbctl killed at any point leaves a record that
`bbctl gc` can find. Every later change is a compare-and-swap on the state the
caller believes the buffer is in: of two bbctl processes racing on one job,
exactly one moves it on, the other gets StateConflict.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from bbctl.errors import BBError
from bbctl.pools import Brick, Pool, bricks_needed
from bbctl.state.timings import Running, StageTiming


class BufferState(StrEnum):
    ALLOCATING = "allocating"    # record + bricks reserved; nothing built yet
    CREATING = "creating"        # the create playbook may have started
    CREATED = "created"
    STAGED_IN = "staged_in"
    MOUNTED = "mounted"
    STAGING_OUT = "staging_out"
    STAGED_OUT = "staged_out"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"      # nothing left on the servers; bricks may be released
    FAILED = "failed"            # held for an operator or a teardown; last_error says why


# States a single bbctl stage passes through and leaves before it exits. A
# record sitting in one long after its last update means the stage died
# mid-way: that is what `bbctl gc` must look at. The other states are at rest
# (a job running, a buffer held as failed) and belong to jobs Slurm knows.
IN_FLIGHT = frozenset({BufferState.ALLOCATING, BufferState.CREATING, BufferState.STAGING_OUT,
                       BufferState.DESTROYING, BufferState.DESTROYED})

# States whose bricks carry nothing built: the record may be dropped and the bricks reused.
RELEASABLE = frozenset({BufferState.ALLOCATING, BufferState.DESTROYED})

KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")

# How often an etcd compare-and-swap is retried after losing to another writer.
# Each loss means another writer committed, so the system as a whole progresses.
MAX_CAS_ATTEMPTS = 200


class StateError(BBError):
    """The state store refused or could not do what was asked."""


class BufferExists(StateError):
    def __init__(self, key: str) -> None:
        super().__init__(f"buffer {key} already exists: another bbctl process set it up; "
                         "see `bbctl status` before retrying")


class BufferNotFound(StateError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no buffer {key} in the state store: it was never set up or is already torn down")


class StateConflict(StateError):
    """The buffer is not in the state the caller expected (another process moved it)."""

    def __init__(self, key: str, current: BufferState, wanted: str) -> None:
        super().__init__(f"buffer {key} is {current.value!r}, not {wanted}: another bbctl process "
                         "moved it, or the stages ran out of order")
        self.current = current


@dataclass(frozen=True)
class BufferSpec:
    """What a setup asks for; the store adds bricks, state and timestamps."""

    key: str  # job id, or the persistent buffer's name
    owner_uid: int
    owner_gid: int
    capacity: int  # bytes, as asked (the bricks may give more)
    fs: str = "gluster"
    bricks: int = 0  # bricks to allocate (data and redundancy, bbctl.layouts); 0: one per granule of capacity
    meta: Mapping[str, Any] = field(default_factory=dict)  # the record's first meta (e.g. its layout)

    def brick_count(self, granularity: int) -> int:
        return self.bricks or bricks_needed(self.capacity, granularity)


@dataclass(frozen=True)
class Buffer:
    key: str
    owner_uid: int
    owner_gid: int
    pool: str
    capacity: int
    fs: str
    state: BufferState
    bricks: tuple[Brick, ...]  # in allocation order: the first hosts Lustre's MGS+MDT
    created_at: float
    updated_at: float
    last_error: str = ""
    stage_out_verified: bool = False
    # What the stages learn and later stages need: the job's compute nodes, the
    # jobs using a persistent buffer ("user:<job id>"), ... JSON values only.
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["bricks"] = [brick.to_dict() for brick in self.bricks]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Buffer:
        fields = dict(data)
        fields["state"] = BufferState(fields["state"])
        fields["bricks"] = tuple(Brick.from_dict(b) for b in fields["bricks"])
        return cls(**fields)


@dataclass(frozen=True)
class BrickAllocation:
    """A brick marked in use by a buffer. Stray if that buffer does not exist or does not list it."""

    pool: str
    brick_id: str
    buffer_key: str


# Why a storage server is unusable (ServerHealth.unusable): marked by bbctl after server_fail_limit
# consecutive failed runs, or by an operator (`bbctl servers --drain`). Slurm's words: a drained node.
FAILING = "failing"
DRAINED = "drained"


@dataclass(frozen=True)
class ServerHealth:
    """What the store keeps about one storage server (one record per server, shared by every controller).

    A server with no record is healthy: records appear with its first failure or drain.
    """

    name: str  # inventory host name, as Brick.server
    failures: int = 0  # consecutive failed playbook runs on it; a successful run resets it
    last_error: str = ""  # the latest failure's message ("host: task: message")
    last_error_at: float = 0.0  # when (epoch seconds); 0: never failed
    unusable: str = ""  # "" (usable), FAILING or DRAINED: no new brick on it is allocated
    reason: str = ""  # why it is unusable, for `bbctl servers`
    since: float = 0.0  # when it became unusable

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerHealth:
        return cls(**data)


@dataclass(frozen=True)
class Orphans:
    stale_buffers: list[Buffer] = field(default_factory=list)
    stray_bricks: list[BrickAllocation] = field(default_factory=list)
    failed_buffers: list[Buffer] = field(default_factory=list)  # failed, not updated for older_than


class StateStore(Protocol):
    """Buffers and their bricks. Every method is one atomic operation."""

    def allocate(self, spec: BufferSpec, pool: Pool) -> Buffer:
        """Record the buffer in state allocating with its bricks reserved, atomically.

        Raises BufferExists, or NotEnoughBricks (naming pool, needed, free).
        """

    def get(self, key: str) -> Buffer | None: ...

    def buffers(self) -> list[Buffer]:
        """All records, by key."""

    def transition(self, key: str, expected: BufferState | Collection[BufferState], new: BufferState, *,
                   last_error: str | None = None, stage_out_verified: bool | None = None,
                   meta: Mapping[str, Any] | None = None) -> Buffer:
        """Move key from one of the expected states to new; StateConflict if it is elsewhere.

        meta is merged into the record's meta in the same atomic step; a None value removes its key.
        """

    def release(self, key: str) -> bool:
        """Free the bricks and drop the record, keeping its summary in the bounded history;
        False if there was none (not an error).

        Only from RELEASABLE states: bricks under a built filesystem are never freed.
        """

    def allocated_brick_ids(self, pool: str) -> set[str]: ...

    def start_stage(self, key: str, running: Running) -> bool:
        """Note on key's record the stage that runs now (meta stage_now); False if there is no record."""

    def finish_stage(self, key: str, timing: StageTiming) -> bool:
        """Append timing to key's record (or, when it was released, to its history record) and add the
        timing's counter increments, in one atomic step. The counters grow even when no record holds
        the timing (a setup that found no bricks). True if a record holds it."""

    def history(self, key: str) -> dict[str, Any] | None:
        """The kept summary of key's released record (bbctl.state.timings.history_record), if any."""

    def stage_counters(self) -> dict[str, dict[str, float]]:
        """Every stage's counters (bbctl.state.timings.counter_increments), summed over all time."""

    def orphans(self, older_than: float) -> Orphans:
        """IN_FLIGHT records not updated for older_than seconds, and stray bricks."""

    def servers(self) -> dict[str, ServerHealth]:
        """Every storage server with a health record, by name (a server without one is healthy)."""

    def record_runs(self, failed: Mapping[str, str], succeeded: Collection[str], *, limit: int) -> list[ServerHealth]:
        """One atomic update of servers' health after a playbook run: each of failed (name -> message) counts one
        more consecutive failure, and becomes unusable (FAILING) at ``limit`` of them (0: never); each of
        succeeded has its count reset (an unusable server stays so: an operator returns it). Returns the
        servers this call made unusable."""

    def drain_server(self, name: str, reason: str) -> ServerHealth:
        """Mark name unusable by an operator (DRAINED, with reason); a failing server becomes drained."""

    def resume_server(self, name: str) -> ServerHealth:
        """Make name usable again, its failure count cleared (its last error kept, for the record)."""

    def close(self) -> None: ...


# --- rules both stores share -------------------------------------------------------

def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise StateError(f"buffer key {key!r}: use a job id or a name of letters, digits, '.', '_', ':' or '-' "
                         "(not starting with '.', ':' or '-')")
    return key


def expected_states(expected: BufferState | Collection[BufferState]) -> frozenset[BufferState]:
    return frozenset([expected] if isinstance(expected, BufferState) else expected)


def describe(states: frozenset[BufferState]) -> str:
    return " or ".join(repr(state.value) for state in sorted(states))


def new_record(spec: BufferSpec, pool: Pool, bricks: list[Brick], now: float) -> Buffer:
    return Buffer(key=spec.key, owner_uid=spec.owner_uid, owner_gid=spec.owner_gid, pool=pool.name,
                  capacity=spec.capacity, fs=spec.fs, state=BufferState.ALLOCATING, bricks=tuple(bricks),
                  created_at=now, updated_at=now, meta=dict(spec.meta))


def moved(current: Buffer, expected: frozenset[BufferState], new: BufferState, now: float, *,
          last_error: str | None, stage_out_verified: bool | None,
          meta: Mapping[str, Any] | None = None) -> Buffer:
    """current after the transition, or StateConflict if the move is not allowed."""
    if current.state not in expected:
        raise StateConflict(current.key, current.state, describe(expected))
    if current.state is BufferState.DESTROYED and new is not BufferState.DESTROYED:
        raise StateConflict(current.key, current.state, "a state it can leave (destroyed is final)")
    return replace(current, state=new, updated_at=now,
                   last_error=current.last_error if last_error is None else last_error,
                   stage_out_verified=(current.stage_out_verified if stage_out_verified is None
                                       else stage_out_verified),
                   meta=merged_meta(current.meta, meta))


def merged_meta(current: Mapping[str, Any], changes: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(current)
    for key, value in (changes or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def check_releasable(buffer: Buffer) -> None:
    if buffer.state not in RELEASABLE:
        raise StateConflict(buffer.key, buffer.state,
                            f"{describe(RELEASABLE)}; destroy it before releasing its bricks")


def unusable_servers(health: Mapping[str, ServerHealth]) -> frozenset[str]:
    """The names of the servers no new brick may be allocated on."""
    return frozenset(name for name, server in health.items() if server.unusable)


def counted_failure(current: ServerHealth | None, name: str, error: str, now: float, limit: int) -> ServerHealth:
    """current after one more failed run; FAILING once failures reach limit (0: never)."""
    server = current or ServerHealth(name)
    failures = server.failures + 1
    server = replace(server, failures=failures, last_error=error, last_error_at=now)
    if limit and failures >= limit and not server.unusable:
        server = replace(server, unusable=FAILING, since=now,
                         reason=f"{failures} consecutive failed runs (server_fail_limit {limit}); last: {error}")
    return server


def counted_success(current: ServerHealth | None, name: str) -> ServerHealth | None:
    """current after a successful run: its count reset (None: nothing to record, it had no record)."""
    if current is None:
        return None
    return replace(current, failures=0)


def drained(current: ServerHealth | None, name: str, reason: str, now: float) -> ServerHealth:
    server = current or ServerHealth(name)
    since = server.since if server.unusable == DRAINED else now
    return replace(server, unusable=DRAINED, reason=reason or "drained by an operator", since=since)


def resumed(current: ServerHealth | None, name: str) -> ServerHealth:
    server = current or ServerHealth(name)
    return replace(server, failures=0, unusable="", reason="", since=0.0)


def find_orphans(records: list[Buffer], allocations: list[BrickAllocation], older_than: float,
                 now: float) -> Orphans:
    """The orphan rule, applied to a consistent snapshot of records and brick allocations."""
    stale = [b for b in records if b.state in IN_FLIGHT and now - b.updated_at > older_than]
    failed = [b for b in records if b.state is BufferState.FAILED and now - b.updated_at > older_than]
    listed = {(b.key, brick.id) for b in records for brick in b.bricks}
    stray = [a for a in allocations if (a.buffer_key, a.brick_id) not in listed]
    return Orphans(stale_buffers=stale, stray_bricks=stray, failed_buffers=failed)
