"""bbctl's side of the warm runner: run one stage through it, or say that bbctl must run it itself.

``run`` returns None, having run nothing, when there is no socket, nothing answers, the
answer is not from root, the runner refuses the request, or it does not accept within
ACCEPT_TIMEOUT: bbctl.runner then runs the stage through ansible-runner as it always
did. Once bbctl has said go, the stage is the runner's: its events go to on_event, a
cancel shuts bbctl's side of the connection (the runner ends the playbook and reports
``canceled``), and a runner that vanishes mid-stage makes the stage fail with that said
(the runner ended the playbook's process group on its way out; the stage is not run a
second time behind its back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbctl.warm import protocol

ACCEPT_TIMEOUT = 5.0
POLL_SECONDS = 0.2  # how often a cancel is noticed while waiting for events
LATE_SECONDS = 30.0  # beyond the stage's timeout: the runner's own deadline has long fired by then
log = logging.getLogger("bbctl")


@dataclass(frozen=True)
class Outcome:
    status: str  # successful, failed, timeout, canceled (ansible-runner's)
    rc: int
    lost: str | None = None  # why the stage ended without the runner's report


def run(socket_path: Path, request: protocol.Request, run_dir: Path, *, playbook: str, limit: str, timeout: int,
        extravars: dict[str, Any], inventory: Path, on_event: Callable[[dict[str, Any]], Any],
        cancel: Callable[[], bool]) -> Outcome | None:
    """Run the stage through the warm runner at socket_path; None: not run, run it yourself."""
    if os.environ.get(protocol.DISABLE_ENV) == "0" or not _is_socket(socket_path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        protocol.write_inputs(run_dir, playbook=playbook, limit=limit, timeout=int(timeout), extravars=extravars,
                              inventory=inventory)
        sock.settimeout(ACCEPT_TIMEOUT)
        sock.connect(str(socket_path))
        if protocol.peer_uid(sock) not in (0, os.geteuid()):
            log.info("warm runner at %s: not run by root; running the stage here", socket_path)
            sock.close()
            return None
        sock.sendall(request.line())
        reader = protocol.LineReader(sock)
        answer = reader.next()
        if not answer or answer.get("accepted") is not True:
            why = (answer or {}).get("refused", "no answer")
            log.info("warm runner at %s refused %s %s: %s; running the stage here", socket_path,
                     request.key, request.stage, why)
            sock.close()
            return None
        sock.sendall(protocol.encode({"go": True}))
    except (OSError, ValueError, TypeError) as exc:  # TypeError: extravars JSON cannot hold
        log.info("warm runner at %s: %s; running the stage here", socket_path, exc)
        sock.close()
        return None
    with sock:
        return _follow(sock, reader, timeout, on_event, cancel)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _follow(sock: socket.socket, reader: protocol.LineReader, timeout: int,
            on_event: Callable[[dict[str, Any]], Any], cancel: Callable[[], bool]) -> Outcome:
    """Events until the runner's done line; never waits past the stage's timeout plus LATE_SECONDS."""
    sock.settimeout(POLL_SECONDS)
    give_up = time.monotonic() + timeout + LATE_SECONDS
    cancelled = False
    while True:
        if cancel() and not cancelled:
            cancelled = True
            _shut(sock)
        if time.monotonic() > give_up:
            _shut(sock)
            return Outcome("timeout", 254, lost=f"the warm runner did not finish within {timeout:.0f} s "
                                                f"+ {LATE_SECONDS:.0f} s")
        try:
            message = reader.next()
        except TimeoutError:
            continue
        except (OSError, ValueError) as exc:
            return Outcome("failed", 1, lost=f"the warm runner's connection broke mid-stage: {exc}")
        if message is None:
            return Outcome("canceled" if cancelled else "failed", 254 if cancelled else 1,
                           lost=None if cancelled else "the warm runner went away mid-stage (the stage was "
                                                       "stopped; run it again)")
        if "event" in message:
            on_event(message)
        elif isinstance(message.get("done"), dict):
            done = message["done"]
            return Outcome(str(done.get("status", "failed")), int(done.get("rc", 1)))


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the runner: nothing left to tell it
        sock.shutdown(socket.SHUT_WR)
