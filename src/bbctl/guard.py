"""A guardian beside each job stage Slurm runs: if Slurm kills the stage, it sees the buffer torn down.

Slurm 22.05 SIGKILLs the process group of every script it is running for a job it cancels
(slurmscriptd's flush), and the teardown it has just queued for that job can be one of them: "teardown
for JobId=N terminated by slurmctld", and Slurm never starts another. bbctl's teardown detaches
(bbctl.detach), but only once Python runs; the kill comes within milliseconds. The CI run of
2026-12-06 lost a buffer so (a job cancelled in stage-in; 1 run in 6 on the test bed), and only the
next `bbctl gc` would have freed it.

So each stage Slurm may kill mid-way (setup, stage-in, pre-run, post-run, stage-out, and dw_wlm_cli's
functions of the same name) first starts a guardian: a small process in a session of its own (out of
the process group Slurm kills), deaf to SIGTERM, SIGINT and SIGHUP, holding the read end of a pipe. The
stage writes ``done`` when it ends in any way Python sees (success, failure, Slurm's SIGTERM at a
timeout); the guardian then exits. If the pipe closes without it, the stage was killed: the guardian
looks every POLL s, for up to WATCH_FOR s, at the buffer's record and at slurmctld's view of the job.
Once no stage of ours has run for the buffer and Slurm has shown, for GRACE s in a row, that no teardown
will come (bbctl.operator_views.teardown_verdict, the rule `bbctl gc` applies), it tears the buffer
down, or leaves it listed for an operator when its results may not have left. A killed stage whose job
Slurm still holds (a stage timeout, an operator's kill -9) is Slurm's and the operator's; so is
everything after WATCH_FOR, for gc.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bbctl.lifecycle import Lifecycle

POLL = 5.0  # s between looks at the record and at slurmctld
GRACE = 15.0  # s Slurm must show a lost teardown (and no stage of ours run) before the guardian acts
WATCH_FOR = 900.0  # s the guardian watches after the kill; then gc's --older-than rule is the backstop
DONE = b"done\n"

# What Slurm runs for a job and may kill mid-way: bbctl's commands and dw_wlm_cli's functions.
# (Teardown detaches instead; the read-only calls hold nothing.)
GUARDED_COMMANDS = frozenset({"setup", "stage-in", "pre-run", "post-run", "stage-out"})
GUARDED_FUNCTIONS = {"setup": "setup", "data_in": "stage-in", "pre_run": "pre-run", "post_run": "post-run",
                     "data_out": "stage-out"}

log = logging.getLogger("bbctl")


class Guardian:
    """The stage's end of the pipe: ``done()`` tells the guardian the stage ended as Python sees it."""

    def __init__(self, write_fd: int | None, pid: int | None = None) -> None:
        self._fd = write_fd
        self.pid = pid  # the guardian's, None if it could not be started

    def done(self) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, DONE)
        except OSError:
            pass  # the guardian is gone already: nothing to tell
        finally:
            os.close(self._fd)
            self._fd = None


def start(job_id: str, stage: str, config: Path | None) -> Guardian:
    """A guardian for job_id's stage, started as ``python -m bbctl.guard``; never fails the stage
    (if it cannot be started, the stage runs unguarded, as before guardians existed)."""
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "bbctl.guard", "--fd", str(read_fd), "--job-id", job_id, "--stage", stage]
    if config is not None:
        argv += ["--config", str(config)]
    try:
        # Its own session: outside the process group Slurm kills. No stdout: Slurm reads the stage's
        # output until every writer has closed it, and the guardian may outlive the stage.
        pid: int | None = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(read_fd,), start_new_session=True).pid
    except OSError as exc:
        log.warning("job %s %s: no guardian (%s); the stage runs unguarded", job_id, stage, exc)
        os.close(write_fd)
        write_fd = pid = None
    finally:
        os.close(read_fd)
    return Guardian(write_fd, pid)


@contextlib.contextmanager
def guarded(job_id: str, stage: str, config: Path | None) -> Iterator[None]:
    """Run the block with a guardian watching; it is told ``done`` however the block ends."""
    guardian = start(job_id, stage, config)
    try:
        yield
    finally:
        guardian.done()


def watch(life: Lifecycle, key: str, stage: str, *, poll: float = POLL, grace: float = GRACE,
          watch_for: float = WATCH_FOR, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> str:
    """What became of job buffer key after its stage was killed:
    ``gone`` (torn down by Slurm or anyone), ``torn down`` (by this guardian), ``kept`` (slurmctld
    forgot the job and its results may not have left: gc lists it), ``left`` (Slurm still had it in
    hand after watch_for seconds, or the site's configuration file is gone)."""
    from bbctl.operator_views import stage_alive, teardown_verdict  # only once a stage was killed
    from bbctl.state.timings import STAGE_NOW

    life.note(key, "guard", f"{stage} was killed before it ended; watching for the job's teardown")
    since: float | None = None
    end = clock() + watch_for
    while clock() < end:
        sleep(poll)
        if not life.site.path.exists():
            return "left"  # the site was taken away (a test bed brought down): nothing left to guard
        buffer = life.store.get(key)
        if buffer is None:
            return "gone"
        verdict = None if stage_alive(buffer.meta.get(STAGE_NOW)) else teardown_verdict(life, buffer)
        if verdict is None:
            since = None  # Slurm has it in hand, or a stage of ours is at work on it
            continue
        since = clock() if since is None else since
        if clock() - since < grace:
            continue
        if not verdict:
            life.note(key, "guard", "slurmctld no longer has the job and its results may not have left: "
                                    "kept (bbctl gc lists it under abandoned_kept)")
            return "kept"
        life.note(key, "guard", "no teardown will come (slurmctld shows the job ended with its buffer in "
                                "teardown, or no longer has the job): tearing down")
        life.destroy(key, stage="teardown")
        return "torn down"
    life.note(key, "guard", f"Slurm still had the job in hand after {watch_for:.0f} s; left to it and to gc")
    return "left"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bbctl.guard", description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="read end of the stage's pipe")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with os.fdopen(args.fd, "rb") as pipe:
        said = pipe.read()
    if said == DONE:
        return 0
    from bbctl import site  # only once a stage was killed: a guardian that is told done imports nothing
    from bbctl.commands import log_to_file
    from bbctl.errors import BBError
    from bbctl.lifecycle import Lifecycle

    try:
        settings = site.load(args.config)
        key = site.job_key(args.job_id)
        with log_to_file(settings):
            try:
                watch(Lifecycle(settings), key, args.stage)
            except BBError as exc:
                log.error("job %s: its guardian's teardown failed: %s (bbctl gc takes it)", key, exc)
                return 1
    except BBError:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
