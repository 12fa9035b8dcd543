"""Timing a stage into its buffer's record: when it started, how long it ran, how it ended.

``timed`` notes the stage on the record when it starts (bbctl.state.timings.Running) and
its StageTiming when it ends: seconds, outcome, a short reason and the few-valued kind of
a failure, and the files and bytes its playbook runs copied. This is what bbctl show,
bbctl status, scontrol show bbstat and bbctl metrics report. Recording never fails a
stage: a store that cannot record is told to whoever runs bbctl, and the stage goes on.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator

from bbctl import runner
from bbctl.errors import BBError, Refused
from bbctl.pools import NotEnoughBricks
from bbctl.state import StateError, StateStore
from bbctl.state.timings import FAILED, Running, StageTiming, short_reason

Note = Callable[[str, str, str], None]  # (key, stage, message): Lifecycle.note


@contextlib.contextmanager
def timed(store: StateStore, note: Note, key: str, stage: str, *,
          job_key: str | None = None) -> Iterator[StageMeter]:
    """Record the stage run within on key's record: its start now, its timing and outcome at the end.

    ``job_key``: the job the stage serves when that is not the buffer's own (a persistent buffer's)."""
    meter = StageMeter(store, note, key, stage, job="" if job_key in (None, key) else str(job_key))
    meter.started()
    try:
        yield meter
    except BaseException as exc:
        meter.finish(exc)
        raise
    meter.finish(None)


class StageMeter:
    """One stage of one buffer being timed (``timed``): its start, its runs, its outcome."""

    def __init__(self, store: StateStore, note: Note, key: str, stage: str, *, job: str = "") -> None:
        self.store, self.note, self.key, self.stage, self.job = store, note, key, stage, job
        self.start = time.time()
        self._clock = time.monotonic()
        self.runs: list[runner.StageRun] = []

    def started(self) -> None:
        """Note the stage on the record (again, once setup has made the record)."""
        running = Running(self.stage, self.start, self.job, pid=os.getpid(), host=socket.gethostname())
        self._record(lambda: self.store.start_stage(self.key, running))

    def ran(self, run: runner.StageRun) -> runner.StageRun:
        """Count run's files and bytes into the stage's; run, unchanged."""
        self.runs.append(run)
        return run

    def finish(self, failure: BaseException | None) -> None:
        """Record the stage's timing: succeeded, or failed with ``failure``."""
        files = [n for n in (getattr(r, "files", None) for r in self.runs) if n is not None]
        copied = [n for n in (getattr(r, "bytes", None) for r in self.runs) if n is not None]
        timing = StageTiming(
            stage=self.stage, start=self.start, seconds=time.monotonic() - self._clock, job=self.job,
            files=sum(files) if files else None, bytes=sum(copied) if copied else None,
            **({} if failure is None else {"outcome": FAILED, "reason": short_reason(str(failure) or
                                                                                    type(failure).__name__),
                                           "kind": failure_kind(failure, self.runs)}))
        self._record(lambda: self.store.finish_stage(self.key, timing))

    def _record(self, what: Callable[[], object]) -> None:
        try:
            what()
        except StateError as exc:  # the store went away or lost races: the stage itself goes on
            self.note(self.key, self.stage, f"could not record the stage's timing: {exc}")


def failure_kind(failure: BaseException, runs: list[runner.StageRun]) -> str:
    """The few-valued kind of a stage's failure (a metrics label): see bbctl.state.timings.KINDS."""
    if isinstance(failure, runner.StageFailed) and runs:
        return {"timeout": "timeout", "canceled": "cancelled"}.get(runs[-1].status, "task_failed")
    if isinstance(failure, runner.StageFailed):
        return "task_failed"
    if isinstance(failure, Refused):
        return "refused"
    if isinstance(failure, NotEnoughBricks):
        return "no_space"
    if isinstance(failure, StateError):
        return "state"
    if isinstance(failure, KeyboardInterrupt):
        return "cancelled"
    if isinstance(failure, BBError) and failure.exit_code == 2:
        return "bad_input"
    return "error"
