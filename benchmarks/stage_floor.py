"""The floor of one stage on localhost: ansible-runner's fresh ansible-playbook against the warm runner.

Run (as root, no test bed needed): ``.venv/bin/python benchmarks/stage_floor.py [--rounds N] [--write-doc]``

Each call is what Slurm pays per stage before any work: a fresh Python (as ``bbctl``)
that loads the site and runs bbctl.runner.run_stage on localhost (local connection,
this virtualenv's Python) of one no-op module task (benchmarks/noop_stage.yml,
``ansible.builtin.ping``), or of post-run's buffer_unmount.yml for a buffer that is not
mounted (the buffer_client role: its argument validation, its skipped tasks, one
buffer_mount that finds nothing to unmount). Two contenders each, alternating call by
call after a warm-up call each: ``BBCTL_WARM_RUNNER=0`` (ansible-runner, as every stage
ran before) and the warm runner (``bbctl warm-runner`` started by this script on a
socket of its own).
A throw-away site under a temporary directory. Prints medians, min and max of the
wall time, the ratio of the medians, and the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_doc  # benchmarks/, beside this script

REPO = Path(__file__).resolve().parents[1]
NOOP = REPO / "benchmarks" / "noop_stage.yml"
STAGE = f"""
import sys
from pathlib import Path
from bbctl import runner, site
config = site.load(Path(sys.argv[1]))
if sys.argv[2] == "noop":
    run = runner.run_stage(config, "floor", "floor", {str(NOOP)!r}, extravars={{}}, hosts=["localhost"], timeout=60)
else:  # post-run of a buffer not mounted here: the buffer_client role (its validation, its skipped tasks), one module
    buffer = {{"name": "bbjob-1", "fs": "gluster", "capacity": "1073741824", "owner": 0, "group": 0, "layout": {{}},
              "bricks": [{{"host": "localhost", "path": "/nonexistent", "device": "/dev/null"}}],
              "mount_path": str(config.work_dir / "mnt" / "bbjob-1")}}
    run = runner.run_stage(config, "1", "post-run", "buffer_unmount.yml", extravars={{"bb_buffer": buffer}},
                           hosts=["localhost"], nodes=["localhost"], timeout=60)
sys.exit(0 if run.status == "successful" else 1)
"""
MAIN = "import sys; from bbctl.cli import main; sys.exit(main())"
WHICH = {"noop": "no-op stage (`noop_stage.yml`: one `ping`)",
         "post-run": "post-run of a buffer not mounted here (`buffer_unmount.yml`)"}
BEGIN, END = "<!-- stage-floor-results:begin -->", "<!-- stage-floor-results:end -->"


def make_site(root: Path) -> Path:
    inventory = root / "inventory.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(json.dumps({"all": {"children": {"bb_storage": {"hosts": {"localhost": host}}}}}))
    config = root / "bbctl.yml"
    config.write_text(f"inventory: {inventory}\npools: {{nvme: {{}}}}\nwork_dir: {root / 'work'}\n"
                      f"warm_runner_socket: {root / 'warm' / 'runner.sock'}\n")
    return config


def start_runner(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-c", MAIN, "--config", str(config), "warm-runner",
                                   "--playbooks", str(NOOP.parent)], stdout=out, stderr=out, env=environment())
    return wait_ready(server, log)


def wait_ready(server: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> subprocess.Popen[bytes]:
    """server, once the warm runner it is has logged "ready on" into log; SystemExit if it died or took
    longer than timeout s (benchmarks/lifecycle.py starts its runner this way too)."""
    deadline = time.monotonic() + timeout
    while b"ready on" not in log.read_bytes():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the warm runner did not start: {log.read_text()}")
        time.sleep(0.05)
    return server


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # .pyc files written and used, as in an installed bbctl
    return env


def one_stage(config: Path, warm: bool, which: str = "noop") -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", STAGE, str(config), which], check=True,
                   env=environment(**({} if warm else {"BBCTL_WARM_RUNNER": "0"})))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--write-doc", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bbctl-stage-floor-"))
    try:
        config = make_site(root)
        server = start_runner(config, root / "warm-runner.log")
        try:
            times: dict[tuple[str, bool], list[float]] = {(which, warm): [] for which in WHICH for warm in (0, 1)}
            for which in WHICH:  # warm-up: the AnsiballZ payloads, as every stage after a runner's first
                one_stage(config, False, which)
                one_stage(config, True, which)
            loads = [os.getloadavg()[0]]
            for n in range(args.rounds):
                for which in WHICH:
                    for warm in (False, True):
                        times[which, warm].append(one_stage(config, warm, which))
                said = [f"{which} {'warm' if warm else 'ansible-runner'} {values[-1]:.3f} s"
                        for (which, warm), values in times.items()]
                print(f"round {n + 1}: {', '.join(said)}", file=sys.stderr)
            loads.append(os.getloadavg()[0])
            served = (root / "warm-runner.log").read_text().count(": successful, rc 0")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if served != len(WHICH) * (args.rounds + 1):
        raise SystemExit(f"the warm runner ran {served} stages, not {len(WHICH) * (args.rounds + 1)}: some fell back")
    results_doc.publish([render(times, args.rounds, loads)], figures(times), args.json,
                        (BEGIN, END, "The floor of one stage, warm or not") if args.write_doc else None)
    return 0


def figures(times: dict[tuple[str, bool], list[float]]) -> dict[str, float]:
    """Medians in s and warm / ansible-runner: {noop_ansible_runner_s, noop_warm_s, noop_warm_ratio,
    post_run_ansible_runner_s, post_run_warm_s, post_run_warm_ratio}."""
    found = {}
    for which in WHICH:
        cold, warm = statistics.median(times[which, False]), statistics.median(times[which, True])
        slug = which.replace("-", "_")
        found |= {f"{slug}_ansible_runner_s": cold, f"{slug}_warm_s": warm, f"{slug}_warm_ratio": warm / cold}
    return found


def render(times: dict[tuple[str, bool], list[float]], rounds: int, loads: list[float]) -> str:
    machine = (f"{platform.node()}, {os.cpu_count()} cores, Linux {platform.release()}, "
               f"Python {platform.python_version()}")
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine}; load average {loads[0]:.1f} at the "
        f"start, {loads[1]:.1f} at the end. `.venv/bin/python benchmarks/stage_floor.py --rounds {rounds}`: "
        f"{rounds} calls each, alternating.",
        "",
        "| one stage on localhost (a fresh Python running `run_stage`) | median | min | max |",
        "| --- | --- | --- | --- |",
    ]
    for (which, warm), values in times.items():
        label = f"{WHICH[which]}, {'warm runner' if warm else 'ansible-runner (`BBCTL_WARM_RUNNER=0`)'}"
        lines.append(f"| {label} | {statistics.median(values):.3f} s | {min(values):.3f} s | {max(values):.3f} s |")
    lines.append("")
    for which, label in WHICH.items():
        cold, warm = statistics.median(times[which, False]), statistics.median(times[which, True])
        lines.append(f"**{label}: warm / ansible-runner (medians) {warm / cold:.2f}**, {cold - warm:.3f} s less "
                     f"per stage.  ")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    sys.exit(main())
