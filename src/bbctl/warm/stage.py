"""One stage inside the warm runner: a supervisor process and the playbook process it forks.

The server forks the supervisor for each connection. The supervisor checks the request,
waits for bbctl's go, forks the playbook process and watches three things: the playbook
process ending, bbctl's side of the connection (closed: bbctl was cancelled or died) and
the stage's deadline. The playbook process runs ansible-core's PlaybookCLI in-process
(imports and plugin configuration already done by the server) in a process group of its
own, so that ending the stage ends everything it started: its workers, their modules.

The playbook process asks the kernel for SIGTERM when the supervisor dies
(PR_SET_PDEATHSIG) and on SIGTERM ends its own group (SIGTERM, a grace, SIGKILL), as
bbctl.playbook_guard does for ansible-runner's ansible-playbook. So whatever is killed
(bbctl, the supervisor, the playbook process) the stage stops and bbctl's connection
closes: bbctl never waits on a stage nobody runs.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bbctl.collection import linux_process
from bbctl.warm import protocol

GRACE_SECONDS = 2.0
POLL_SECONDS = 0.1
GO_TIMEOUT = 10.0  # bbctl answers the acceptance at once; a silent peer is not waited on longer
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
ARTIFACTS = "artifacts/warm"  # in the run directory, where ansible-runner puts artifacts/<ident>


def supervise(conn: socket.socket, runs_dir: Path, inventory: Path, playbook_dirs: list[Path],
              log: Callable[[str], None]) -> int:
    """The supervisor's whole life for one connection; returns its exit status."""
    conn.settimeout(GO_TIMEOUT)
    reader = protocol.LineReader(conn, protocol.MAX_REQUEST_BYTES)
    try:
        line = reader.next()
        if line is None:
            return 0
        request = protocol.parse_request(protocol.encode(line))
        stage = protocol.locate(runs_dir, request, playbook_dirs, inventory)
    except (protocol.NotRun, OSError, ValueError) as exc:
        why = str(exc) if isinstance(exc, protocol.NotRun) else f"unreadable request: {exc}"
        log(f"refused a request: {why}")
        _send(conn, {"refused": why})
        return 0
    if not _send(conn, {"accepted": True}):
        return 0
    try:
        go = reader.next()
    except (OSError, ValueError):
        go = None
    if not go or go.get("go") is not True:
        return 0  # bbctl gave up before the go: it runs the stage itself, so this process must not
    conn.settimeout(None)
    artifacts = stage.run_dir / ARTIFACTS
    artifacts.mkdir(parents=True, exist_ok=True)
    supervisor = os.getpid()
    pid = os.fork()
    if pid == 0:
        _playbook_process(conn, stage, inventory, artifacts, supervisor)  # never returns
    with contextlib.suppress(OSError):  # also here: _stop may need the group before the child made it
        os.setpgid(pid, pid)
    started = time.monotonic()
    status, rc = _watch(conn, pid, deadline=started + stage.timeout)
    log(f"{request.key} {request.stage} ({stage.playbook.name}): {status}, rc {rc}, "
        f"{time.monotonic() - started:.2f} s")
    for name, value in (("status", status), ("rc", str(rc))):
        (artifacts / name).write_text(value)
    _send(conn, {"done": {"status": status, "rc": rc}})
    return 0


def _send(conn: socket.socket, message: dict) -> bool:
    try:
        conn.sendall(protocol.encode(message))
    except OSError:
        return False
    return True


def _watch(conn: socket.socket, pid: int, deadline: float) -> tuple[str, int]:
    """Wait for the playbook process; end it when bbctl hangs up or the deadline passes.

    The playbook process's pidfd is polled with bbctl's connection, so its end is seen at
    once (a poll interval here is latency added to every stage); without pidfds (Linux before
    5.3), every POLL_SECONDS."""
    poller = select.poll()
    poller.register(conn, select.POLLIN | select.POLLHUP)
    pidfd = _pidfd(pid)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    try:
        while True:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(wait_status)
                return ("successful" if rc == 0 else "failed"), (rc if rc >= 0 else 128 - rc)
            ready = {fd for fd, _event in poller.poll(POLL_SECONDS * 1000)}
            if conn.fileno() in ready and not _still_there(conn):
                _stop(pid)
                return "canceled", 254  # ansible-runner's code for a run it ended
            if time.monotonic() > deadline:
                _stop(pid)
                return "timeout", 254
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _still_there(conn: socket.socket) -> bool:
    """After poll said readable: False if bbctl shut its side (cancel) or is gone. bbctl sends
    nothing after its go, so anything readable is the end of its stream."""
    try:
        return bool(conn.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


def _stop(pid: int) -> None:
    """SIGTERM the playbook process (it ends its own group); SIGKILL the group if that takes too long."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS + 1.0
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.05)
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError):
            kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _end_own_group() -> None:
    """SIGTERM this process group, a grace for the workers and modules, then SIGKILL it (us too)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os.killpg(0, signal.SIGKILL)


def _playbook_process(conn: socket.socket, stage: protocol.StageInput, inventory: Path, artifacts: Path,
                      supervisor: int) -> None:
    """Run the playbook in this (forked) process and exit with its code; never returns."""
    rc = 1
    try:
        os.setpgid(0, 0)
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda _signum, _frame: _end_own_group())
        if not linux_process.die_with_parent(signal.SIGTERM, supervisor):
            os._exit(143)
        _redirect_output(artifacts / "stdout")
        rc = _run_playbook(conn, stage, inventory)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # anything at all must end in an exit code, not a traceback up the fork
        print(f"ERROR! the warm runner could not run the playbook: {exc!r}", file=sys.stderr)
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        # os._exit: the server's atexit handlers (ansible-core removing its temporary directory, which
        # holds the AnsiballZ cache every stage shares) are not this process's to run.
        os._exit(rc)


def _redirect_output(path: Path) -> None:
    """stdout and stderr into the artifacts' stdout (ansible-runner merges both there too); no stdin."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def _run_playbook(conn: socket.socket, stage: protocol.StageInput, inventory: Path) -> int:
    """ansible-playbook's command line as ansible-runner builds it for bbctl, run in this process,
    with the event callback added to the ones ansible-core loads."""
    from ansible.cli.playbook import PlaybookCLI
    from ansible.executor.task_queue_manager import TaskQueueManager

    from bbctl.warm.events import StreamEvents

    load_callbacks = TaskQueueManager.load_callbacks

    def with_events(self: TaskQueueManager) -> None:
        # ansible-core has no setting for an extra callback object; this process runs one playbook and
        # exits, so the change lives exactly as long as the run.
        first = not self._callback_plugins
        load_callbacks(self)
        if first:
            events = StreamEvents(conn)
            events._init_callback_methods()  # what load_callbacks does for each plugin it loads (2.19: dispatch)
            self._callback_plugins.append(events)

    TaskQueueManager.load_callbacks = with_events  # type: ignore[method-assign]
    argv = ["ansible-playbook", "-i", str(inventory), "-i", str(stage.run_dir / "inventory" / "bbctl.yml"),
            "--limit", stage.limit, "-e", f"@{stage.extravars}", str(stage.playbook)]
    # cli_executor, as the ansible-playbook script: its errors printed and mapped to its exit codes (SystemExit).
    PlaybookCLI.cli_executor(argv)
    return 0
