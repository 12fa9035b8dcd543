"""Task events of an in-process playbook run, in the shape bbctl.runner's _Events reads from ansible-runner.

ansible-runner's own callback (awx_display) hands its events to the process that started
ansible-playbook through files and escape sequences in stdout; a playbook run inside the
warm runner has no such parent, so this callback writes each event bbctl needs as one
protocol line to bbctl's socket: task starts, ok and failed results (items too), and
unreachable hosts, with the fields _Events uses (host, task, res, duration, ignore_errors).
The default stdout callback still writes the human-readable output to the run's artifacts.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from ansible.plugins.callback import CallbackBase

from bbctl.warm import protocol


class StreamEvents(CallbackBase):
    """Writes events to a socket; a bbctl that went away makes the writes no-ops (the supervisor
    notices the hang-up and ends the run)."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "bbctl_warm_events"

    def __init__(self, sock: socket.socket, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.sock, self.clock = sock, clock
        self._started: dict[str, float] = {}  # host -> when its current task started
        self._broken = False

    def _send(self, kind: str, **data: Any) -> None:
        if self._broken:
            return
        try:
            self.sock.sendall(protocol.encode({"event": kind, "event_data": data}))
        except OSError:
            self._broken = True

    def _result(self, kind: str, result: Any, **extra: Any) -> None:
        host = result.host.get_name()
        started = self._started.get(host)
        duration = self.clock() - started if started is not None else None
        self._send(kind, host=host, task=task_name(result.task), res=result.result, duration=duration, **extra)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._send("playbook_on_task_start", task=task_name(task), name=task.get_name())

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._send("playbook_on_task_start", task=task_name(task), name=task.get_name())

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self._started[host.get_name()] = self.clock()

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result("runner_on_ok", result)

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self._result("runner_item_on_ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result("runner_on_failed", result, ignore_errors=ignore_errors)

    def v2_runner_item_on_failed(self, result: Any) -> None:
        self._result("runner_item_on_failed", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result("runner_on_unreachable", result)


def task_name(task: Any) -> str:
    """The task's own name, without its role's (ansible-runner's ``task`` field: bbctl's messages quote it)."""
    return str(task.name or task.action)
