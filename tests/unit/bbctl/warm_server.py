"""A real warm runner for the tests: a site on localhost, the server as its own process, processes by marker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from bbctl import runner, site

PLAYBOOKS = Path(__file__).with_name("warm_playbooks")
MAIN = "import sys; from bbctl.cli import main; sys.exit(main())"


def local_site(root: Path, **settings: object) -> site.Site:
    """A site of the stage host and one storage server, both this machine (local connection, this Python);
    settings: more of bbctl.yml."""
    root.mkdir(parents=True, exist_ok=True)
    inventory = root / "inventory.yml"
    second = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}  # a storage server
    inventory.write_text(yaml.safe_dump({"all": {"children": {"bb_storage": {"hosts": {"local2": second}}}}}))
    config = root / "bbctl.yml"
    config.write_text(yaml.safe_dump({"inventory": str(inventory), "pools": {"nvme": {}},
                                      "work_dir": str(root / "work"),
                                      "warm_runner_socket": str(root / "warm" / "runner.sock"), **settings}))
    return site.load(config)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, as systemd stops it; then whatever of its process group is left."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(config: site.Site, *playbook_dirs: Path, env: dict[str, str] | None = None) -> Server:
    """``bbctl warm-runner`` for config in a session of its own; returns once it is ready."""
    log = config.work_dir.parent / f"warm-runner-{time.monotonic_ns()}.log"
    args = [arg for d in (playbook_dirs or (PLAYBOOKS,)) for arg in ("--playbooks", str(d))]
    env = {**os.environ, **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", MAIN, "--config", str(config.path), "warm-runner", *args],
                                   stdout=out, stderr=out, env=env, start_new_session=True)
    server = Server(process, log)
    deadline = time.monotonic() + 60
    while "ready on" not in server.text():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"the warm runner did not start: {server.text()}")
        time.sleep(0.05)
    return server


def run(config: site.Site, playbook: str, *, key: str = "4711", stage: str = "setup", timeout: int = 120,
        cancel: runner.Cancel | None = None, **extravars: object) -> tuple[runner.StageRun, list[str]]:
    """run_stage of a test playbook on the stage host; the run and the progress lines it gave."""
    seen: list[str] = []
    run = runner.run_stage(config, key, stage, str(PLAYBOOKS / playbook), extravars=extravars, hosts=[],
                           timeout=timeout, on_event=seen.append, cancel=cancel)
    return run, seen


def ran_warm(run: runner.StageRun) -> bool:
    """Whether the warm runner ran it (its artifacts) rather than ansible-runner (artifacts/<uuid>)."""
    return (run.run_dir / "artifacts" / "warm" / "stdout").exists()


def processes_with(marker: str) -> list[int]:
    """Pids of processes whose command line holds marker (a sleep of a unique length)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def children(pid: int) -> Iterator[int]:
    """The direct children of pid (Linux /proc/PID/task/*/children)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            yield from (int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
