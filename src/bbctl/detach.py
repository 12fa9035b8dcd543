"""Running a teardown so that it finishes even when Slurm kills the script that started it.

Slurm 22.05's burst_buffer/lua, when a job is cancelled during stage-in, kills the job's running
scripts and queues its teardown, and then kills that teardown too ("teardown for JobId=N terminated by
slurmctld", seen in the 50-job load, docs/RELIABILITY.md): the buffer was left built, its record said
created, and nothing freed its bricks. A teardown is the one stage that must always run to its end, so
bbctl runs it in a child in a session of its own that ignores SIGTERM, SIGINT and SIGHUP; the process
Slurm started waits for the child and passes on its exit code. If that process is killed, the child
carries on; what it prints then goes nowhere (bbctl.log has it all). Its playbook still has its own
timeout (bbctl.slurmconf), so a teardown that cannot finish still ends.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import TextIO

from bbctl.collection import linux_process

IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Unread:
    """A stream whose reader may be gone: writes that fail (EPIPE) are dropped, and so are later ones."""

    def __init__(self, stream: TextIO) -> None:
        self._stream: TextIO | None = stream

    def write(self, text: str) -> int:
        if self._stream is not None:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError):
                self._stream = None
        return len(text)

    def flush(self) -> None:
        if self._stream is not None:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._stream = None

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream or sys.__stderr__, name)


def run_detached(work: Callable[[], int]) -> int:
    """work()'s exit code, work having run in a child that outlives this process if it is killed."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.setsid()  # out of the process group Slurm kills
            # ... and into an autogroup of its own, where only the session's niceness counts.
            linux_process.set_session_niceness()
            for sig in IGNORED:
                signal.signal(sig, signal.SIG_IGN)
            sys.stdout, sys.stderr = _Unread(sys.stdout), _Unread(sys.stderr)  # type: ignore[assignment]
            code = work()
        except BaseException:  # the child must reach os._exit whatever happened
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    while True:
        try:
            _pid, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue
