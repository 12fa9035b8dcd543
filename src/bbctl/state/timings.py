"""Stage timings: what each stage bbctl ran for a buffer took, and the counters every finished stage adds to.

A stage that starts writes its name and start time into the buffer record's meta
(``stage_now``); when it ends, one small StageTiming (start, seconds, outcome, a
short reason, files and bytes copied when known) is appended to the record's
``timings`` list and the store adds the stage's increments to its counters in
the same atomic step. The counters only grow, whatever happens to the records:
they are what ``bbctl metrics`` exports, so every bbctl process's work is
counted, not only the work of the process that serves the metrics.

When a buffer is released, a summary of its record (no brick list, its timings)
moves to a bounded history: at most HISTORY_JOBS records, none older than
HISTORY_SECONDS, so ``bbctl show JOB`` still shows a finished job's timings for a
while. A timing that ends after its record was released (the teardown that
released it) is appended to that history record.

Pure functions and constants only: both stores use them, and bbctl's start-up
pays for nothing more than a dataclass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

STAGE_NOW = "stage_now"  # meta: the stage running now: {"stage", "start", "job", "pid", "host"}
TIMINGS = "timings"  # meta: finished stages, oldest first
MAX_TIMINGS = 32  # a record keeps its newest 32 timings (a job has 6 to 8; retries add some)
MAX_REASON = 160  # characters of a failure's reason kept
HISTORY_JOBS = 1000  # finished buffers' records kept, newest first
HISTORY_SECONDS = 14 * 86400.0  # and none older than two weeks

OK, FAILED = "ok", "failed"
OUTCOMES = (OK, FAILED)
# Failure kinds: the `reason` label of bbctl_stage_failures_total (few values, unlike the reasons' text).
KINDS = ("timeout", "cancelled", "task_failed", "refused", "bad_input", "no_space", "state", "error")
# Upper bounds (seconds) of the duration histogram: a mount takes seconds, a copy may take a day.
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
                    86400.0)


@dataclass(frozen=True)
class StageTiming:
    """One finished stage of one buffer."""

    stage: str  # setup, stage-in, pre-run, post-run, stage-out, teardown, create-persistent, ...
    start: float  # epoch seconds
    seconds: float
    outcome: str = OK  # ok or failed
    reason: str = ""  # failed: why, in short
    kind: str = ""  # failed: one of KINDS
    job: str = ""  # the job it served, when that is not the buffer's own key (a persistent buffer)
    files: int | None = None  # copied, when the stage copies
    bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Small: empty fields are left out."""
        data: dict[str, Any] = {"stage": self.stage, "start": round(self.start, 3),
                                "seconds": round(self.seconds, 3), "outcome": self.outcome}
        for name in ("reason", "kind", "job", "files", "bytes"):
            value = getattr(self, name)
            if value not in ("", None):
                data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageTiming:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass(frozen=True)
class Running:
    """A stage that has started and not yet ended: the record's ``stage_now``."""

    stage: str
    start: float
    job: str = ""
    # The bbctl process running it, and where: an operator (or a fault test) can find it, and tell a
    # stage that still runs from one whose process died.
    pid: int = 0
    host: str = ""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"stage": self.stage, "start": round(self.start, 3)}
        if self.job:
            data["job"] = self.job
        if self.pid:
            data.update(pid=self.pid, host=self.host)
        return data


def short_reason(text: str) -> str:
    """A failure's message on one line, without the artifacts path, at most MAX_REASON characters."""
    line = " ".join(str(text).split())
    cut = line.find(" (artifacts: ")
    if cut > 0:
        line = line[:cut]
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 3] + "..."


def appended(timings: Any, timing: StageTiming) -> list[dict[str, Any]]:
    """The timings list with one more, the oldest dropped beyond MAX_TIMINGS."""
    current = list(timings) if isinstance(timings, list) else []
    return [*current, timing.to_dict()][-MAX_TIMINGS:]


def finished_meta(meta: Mapping[str, Any], timing: StageTiming) -> dict[str, Any]:
    """The meta changes that record timing: appended, and stage_now cleared if it was this stage's."""
    changes: dict[str, Any] = {TIMINGS: appended(meta.get(TIMINGS), timing)}
    now = meta.get(STAGE_NOW)
    if isinstance(now, dict) and now.get("stage") == timing.stage and now.get("job", "") == timing.job:
        changes[STAGE_NOW] = None
    return changes


def counter_increments(timing: StageTiming) -> dict[str, float]:
    """What one finished stage adds to its stage's counters, by counter name.

    ``runs:<outcome>``, ``seconds``, ``files``, ``bytes``, ``failures:<kind>`` and the
    duration histogram's own bucket ``le:<bound>`` (``le:+Inf`` above the last); the
    exporter makes the buckets cumulative.
    """
    counts: dict[str, float] = {f"runs:{timing.outcome}": 1, "seconds": timing.seconds,
                                f"le:{bucket_of(timing.seconds)}": 1}
    if timing.files is not None:
        counts["files"] = timing.files
    if timing.bytes is not None:
        counts["bytes"] = timing.bytes
    if timing.outcome == FAILED:
        counts[f"failures:{timing.kind or 'error'}"] = 1
    return counts


def bucket_of(seconds: float) -> str:
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return format_bound(bound)
    return "+Inf"


def format_bound(bound: float) -> str:
    return f"{bound:g}"


def add_counts(current: Mapping[str, float], increments: Mapping[str, float]) -> dict[str, float]:
    total = dict(current)
    for name, value in increments.items():
        total[name] = total.get(name, 0) + value
    return total


def history_record(record: Mapping[str, Any], finished_at: float) -> dict[str, Any]:
    """What is kept of a released buffer's record (Buffer.to_dict()): no brick list, no meta but timings."""
    kept = {name: value for name, value in record.items() if name not in ("bricks", "meta")}
    meta = record.get("meta") or {}
    kept.update(brick_count=len(record.get("bricks") or ()), finished_at=finished_at,
                meta={name: meta[name] for name in ("layout", TIMINGS) if name in meta})
    return kept


def history_with(record: Mapping[str, Any], timing: StageTiming) -> dict[str, Any]:
    """A history record with one more timing (one that ended after its buffer was released)."""
    meta = dict(record.get("meta") or {})
    meta[TIMINGS] = appended(meta.get(TIMINGS), timing)
    return {**record, "meta": meta}


def sorted_timings(timings: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Oldest start first: a timing that ended late (a setup around its rollback) sits where it began."""
    return sorted((dict(t) for t in timings), key=lambda t: t.get("start", 0))
