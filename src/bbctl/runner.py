"""One playbook run per (buffer, stage): the only way bbctl reaches the collection.

A stage runs in the warm runner (bbctl.warm: a resident process with ansible-core
imported, the same playbook, inventory, variables and environment) when one answers
on the site's ``warm_runner_socket``; otherwise, and always when it does not answer,
through ansible-runner as one fresh ansible-playbook.

Each run gets a fresh private_data_dir under ``<work_dir>/runs/<key>/`` (so the
artifacts of every stage of a job stay side by side for an operator), an
inventory of exactly the hosts the stage touches (the site inventory, limited to
the allocated servers, plus the stage host and the job's compute nodes), the
collection on its paths, a timeout the caller derives from burst_buffer.conf,
and a cancel callback that a SIGTERM from Slurm trips. Task events go to the
caller's ``on_event`` as one-line messages; failures come back as the host,
task and message of each failed task.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bbctl import playbook_guard
from bbctl.collection import COLLECTION_ROOT, COLLECTIONS_PATH, PLAYBOOKS, linux_process, sizes
from bbctl.errors import BBError
from bbctl.site import Site
from bbctl.warm import client as warm_client
from bbctl.warm import protocol

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# A loop reports each failed item, then a summary ("One or more items failed") we skip.
FAILED_EVENTS = ("runner_on_failed", "runner_item_on_failed", "runner_on_unreachable")
STAGE_GROUP = "bb_stage"
CLIENT_GROUP = "bb_clients"
STAGE_HOST = "localhost"
# Settings that make a stage cheap: no facts, no retry files, no cowsay; the
# collection found without installing it.
ANSIBLE_ENV = {
    "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_PATH),
    "ANSIBLE_ROLES_PATH": str(COLLECTION_ROOT / "roles"),
    "ANSIBLE_GATHERING": "explicit",
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
    "ANSIBLE_NOCOWS": "1",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_FORCE_COLOR": "0",
    "ANSIBLE_DEPRECATION_WARNINGS": "False",
    "ANSIBLE_LOCALHOST_WARNING": "False",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
    # Measured (benchmarks/lifecycle.py): modules fed through stdin skip the temp-dir
    # round trips, and only the YAML inventory plugin is tried.
    "ANSIBLE_PIPELINING": "True",
    "ANSIBLE_INVENTORY_ENABLED": "yaml",
    # Plays bbctl does not need name a group that does not exist (see buffer_destroy.yml).
    "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore",
    # slurmctld's environment may have no locale; Ansible refuses anything but UTF-8.
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}


@contextlib.contextmanager
def pty_closed_without_settling() -> Iterator[None]:
    """Within: ptyprocess's close() skips its 0.1 s sleep when the child is already reaped.

    ptyprocess sleeps before checking that the child is gone ("give the kernel
    time"); ansible-runner closes the pty only after its loop saw the playbook
    exit, so the sleep is 0.1 s per stage for nothing (benchmarks/lifecycle.py).
    A child that is still alive gets the original close, sleep and all.
    ansible-runner has no setting for it (its pexpect.spawn is built inside
    Runner.run) and its subprocess mode has no cancel callback, so the method
    is swapped for the duration of one run and put back after it. A run
    started while another holds the swap runs with it and leaves it alone."""
    import ptyprocess  # with ansible-runner, only where a playbook runs (see run_stage)

    original = ptyprocess.PtyProcess.close
    if getattr(original, "bbctl_no_settle", False):
        yield
        return

    def close(self: ptyprocess.PtyProcess, force: bool = True) -> None:
        if self.terminated:
            self.delayafterclose = 0
        original(self, force)

    close.bbctl_no_settle = True  # type: ignore[attr-defined]
    ptyprocess.PtyProcess.close = close
    try:
        yield
    finally:
        ptyprocess.PtyProcess.close = original


class StageFailed(BBError):
    """A stage's playbook failed, timed out or was cancelled; the message says where."""


@dataclass
class StageRun:
    stage: str
    status: str  # successful, failed, timeout, canceled
    rc: int
    seconds: float
    run_dir: Path
    failures: list[str] = field(default_factory=list)
    files: int | None = None  # copied by bb_stage (None: the playbook copies nothing)
    bytes: int | None = None
    results: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (host, result) of each ok task

    def failed_hosts(self) -> dict[str, str]:
        """Host -> its first failure ("host: task: message"), from failures (a host name holds no ": ")."""
        hosts: dict[str, str] = {}
        for failure in self.failures:
            hosts.setdefault(failure.split(": ", 1)[0], failure)
        return hosts

    def ok_hosts(self) -> set[str]:
        """The hosts on which at least one task succeeded."""
        return {host for host, _result in self.results}

    def output_tail(self) -> str:
        """The last line ansible-playbook printed (why it stopped before any task failed)."""
        for stdout in sorted(self.run_dir.glob("artifacts/*/stdout")):
            text = ANSI_ESCAPE.sub("", stdout.read_text(errors="replace"))
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1]
        return "no output"

    def raise_for_failure(self) -> None:
        if self.status == "successful":
            return
        if self.status == "timeout":
            reason = f"timed out after {self.seconds:.0f} s"
        elif self.status == "canceled":
            reason = "cancelled"
        else:
            reason = "; ".join(self.failures) or f"ansible-playbook exited {self.rc}: {self.output_tail()}"
        raise StageFailed(f"{self.stage}: {reason} (artifacts: {self.run_dir})")


class Cancel:
    """Set by a signal handler; ansible-runner polls it and stops the playbook."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


def inventory_sources(site: Site, run_dir: Path, *, nodes: Iterable[str] = ()) -> list[str]:
    """The site inventory plus a generated one naming the stage host and the job's nodes."""
    generated = {
        STAGE_GROUP: {"hosts": {STAGE_HOST: {"ansible_connection": "local",
                                             "ansible_python_interpreter": sys.executable}}},
        CLIENT_GROUP: {"hosts": {node: None for node in nodes}},
    }
    path = run_dir / "inventory" / "bbctl.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"all": {"children": generated}}, sort_keys=False))
    return [str(site.inventory), str(path)]


def run_stage(site: Site, key: str, stage: str, playbook: str, *, extravars: Mapping[str, Any],
              hosts: Iterable[str], nodes: Iterable[str] = (), timeout: int,
              on_event: Callable[[str], None] = lambda _m: None, cancel: Cancel | None = None) -> StageRun:
    """Run playbooks/<playbook> for one stage of one buffer and wait for it: through the warm runner
    when one answers on the site's socket (bbctl.warm), else through ansible-runner."""
    linux_process.set_niceness(site.stage_nice)  # stage processes start at 10 (bbctl.entry); the site's now
    started = time.monotonic()
    run_dir = site.runs_dir / key / f"{time.strftime('%Y%m%dT%H%M%S')}-{stage}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = run_dir.with_name(f"{run_dir.name.split('.')[0]}.{suffix}")
    run_dir.mkdir(parents=True)
    nodes = list(nodes)
    limit = ",".join([*hosts, STAGE_HOST, *nodes])
    collector = _Events(on_event)
    inventory = inventory_sources(site, run_dir, nodes=nodes)
    warm = warm_client.run(site.warm_runner_socket, protocol.Request(stage=stage, key=key, run=run_dir.name), run_dir,
                           playbook=playbook, limit=limit, timeout=timeout, extravars=dict(extravars),
                           inventory=site.inventory, on_event=collector, cancel=cancel or (lambda: False))
    if warm is not None:
        if warm.lost:
            collector.failures.append(f"{STAGE_HOST}: {stage}: {warm.lost}")
        status, rc = warm.status, warm.rc
    else:
        status, rc = _run_ansible_runner(run_dir, playbook, inventory, limit, extravars, site, timeout, collector,
                                         cancel)
    return StageRun(stage=stage, status=status, rc=rc, seconds=time.monotonic() - started, run_dir=run_dir,
                    failures=collector.failures, files=collector.files, bytes=collector.bytes,
                    results=collector.results)


def _run_ansible_runner(run_dir: Path, playbook: str, inventory: list[str], limit: str, extravars: Mapping[str, Any],
                        site: Site, timeout: int, collector: _Events, cancel: Cancel | None) -> tuple[str, int]:
    """The stage as one ansible-runner run (a fresh ansible-playbook): how every stage ran before the
    warm runner, and how it runs whenever the warm runner does not take it."""
    # Imported here, not with the module: stages without a playbook (paths, real-size), the operator
    # views and stages the warm runner takes start faster without it.
    import ansible_runner

    with pty_closed_without_settling():
        result = ansible_runner.run(
            private_data_dir=str(run_dir), project_dir=str(PLAYBOOKS), playbook=playbook,
            inventory=inventory, limit=limit,
            extravars=dict(extravars), envvars={**ANSIBLE_ENV, "PATH": _path_with_ansible(site)}, timeout=timeout,
            quiet=True, event_handler=collector, cancel_callback=cancel or (lambda: False),
            # pexpect_timeout: how often the cancel callback is polled (default 5 s; Slurm's
            # SIGKILL may follow its SIGTERM sooner).
            settings={"suppress_ansible_output": True, "pexpect_timeout": 0.2})
    return result.status, result.rc or 0


def _path_with_ansible(site: Site) -> str:
    """PATH with the playbook guard, then this Python's bin (Slurm's PATH may lack bbctl's venv)."""
    guard = playbook_guard.install(site.work_dir / "bin")
    return os.pathsep.join([str(guard), str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])


class _Events:
    """ansible-runner's event_handler: progress lines out, failures kept."""

    def __init__(self, on_event: Callable[[str], None]) -> None:
        self.on_event = on_event
        self.failures: list[str] = []
        self.files: int | None = None  # summed over bb_stage's results, once there is one
        self.bytes: int | None = None
        self.results: list[tuple[str, dict[str, Any]]] = []

    def _count(self, result: Mapping[str, Any]) -> None:
        if isinstance(result.get("files"), int) and isinstance(result.get("bytes"), int):
            self.files = (self.files or 0) + result["files"]
            self.bytes = (self.bytes or 0) + result["bytes"]

    def __call__(self, event: Mapping[str, Any]) -> bool:
        kind, data = event.get("event", ""), event.get("event_data") or {}
        host, task = data.get("host", ""), data.get("task", "")
        if kind == "playbook_on_task_start":
            self.on_event(f"task: {task}")
        elif kind == "runner_on_ok":
            result = data.get("res") or {}
            self.results.append((host, result))
            if result.get("changed"):
                self.on_event(f"  {host}: changed ({data.get('duration') or 0:.1f} s)")
        elif kind == "runner_item_on_ok":
            self._count(data.get("res") or {})
            summary = describe_copy(data.get("res") or {})
            if summary:
                self.on_event(summary)
        elif kind in FAILED_EVENTS and not data.get("ignore_errors"):
            result = data.get("res") or {}
            if kind == "runner_item_on_failed":
                self._count(result)  # what a failed copy did copy
            if kind == "runner_on_failed" and result.get("results"):
                return False  # a loop's summary: its items were reported one by one
            message = str(result.get("msg") or result.get("stderr") or "failed").strip()
            if kind == "runner_on_unreachable":  # the host itself is gone (bbctl.server_health blames it)
                message = f"unreachable: {message}"
            self.failures.append(f"{host}: {task}: {message}")
            self.on_event(f"  {host}: FAILED: {message}")
        return False  # nothing downstream needs the event on disk twice


class ProgressWatcher:
    """Follows the JSON lines bb_stage appends to a progress file while the stage runs.

    ansible-runner only reports a task when it ends; this thread turns the copy's
    own snapshots (files, bytes, rate) into progress lines as they arrive.
    """

    def __init__(self, path: Path, on_event: Callable[[str], None], interval: float = 1.0) -> None:
        self.path, self.on_event, self.interval = path, on_event, interval
        self._stop = threading.Event()
        self._offset = 0
        self._thread = threading.Thread(target=self._follow, name="bbctl-progress", daemon=True)

    def __enter__(self) -> ProgressWatcher:
        self.path.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()  # the final snapshot

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def _read(self) -> None:
        try:
            with self.path.open() as stream:
                stream.seek(self._offset)
                lines = stream.readlines()
                self._offset = stream.tell()
        except FileNotFoundError:
            return
        complete = [line for line in lines if line.endswith("\n")]
        if len(complete) < len(lines):  # a line still being written: read it next time
            self._offset -= len(lines[-1].encode())
        if complete:
            self.on_event(describe_progress(json.loads(complete[-1])))


def describe_progress(snapshot: Mapping[str, Any]) -> str:
    done, total = snapshot.get("bytes_done", 0), snapshot.get("bytes_total", 0)
    percent = f"{100 * done / total:.0f}%" if total else "100%"
    return (f"  copied {snapshot.get('files_done', 0)}/{snapshot.get('files_total', 0)} files, "
            f"{_mib(done)}/{_mib(total)} MiB ({percent}) at {_mib(snapshot.get('rate', 0)):.0f} MiB/s")


def describe_copy(result: Mapping[str, Any]) -> str | None:
    """One line for what a bb_stage loop item did (None for other modules' results): operators
    see each directive's figures and, when it happens, why libgfapi was not used."""
    if not {"files", "bytes", "complete", "seconds"} <= result.keys():
        return None
    label = result.get("_ansible_item_label") or ""
    line = (f"  {label}: {result['files']} files, {sizes.describe_size(result['bytes'])} copied, "
            f"{result['complete']} already complete, in {result['seconds']:.1f} s")
    if result.get("gfapi_files"):
        line += f"; {result['gfapi_files']} of the files through libgfapi"
    if result.get("gfapi_unused"):
        line += f"; libgfapi not used: {result['gfapi_unused']}"
    return line


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def prune_runs(site: Site, live_keys: set[str]) -> list[Path]:
    """Remove run directories of finished buffers beyond the newest ``keep_runs``."""
    if not site.runs_dir.is_dir():
        return []
    finished = [d for d in site.runs_dir.iterdir() if d.is_dir() and d.name not in live_keys]
    finished.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    removed = finished[site.keep_runs:]
    for directory in removed:
        shutil.rmtree(directory, ignore_errors=True)
    return removed
