"""The floor of one stage on localhost: ansible-runner's fresh ansible-playbook against the warm runner.

Run (as root, no test bed needed): ``.venv/bin/python benchmarks/stage_floor.py [--rounds N] [--write-doc]``

Each call is what Slurm pays per stage before any work: a fresh Python (as ``bbctl``)
that loads the site and runs bbctl.runner.run_stage of one no-op module task
(benchmarks/noop_stage.yml, ``ansible.builtin.ping``) on localhost (local connection,
this virtualenv's Python). Two contenders, alternating call by call after a warm-up
call each: ``BBCTL_WARM_RUNNER=0`` (ansible-runner, as every stage ran before) and the
warm runner (``bbctl warm-runner`` started by this script on a socket of its own).
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
run = runner.run_stage(site.load(Path(sys.argv[1])), "floor", "floor", {str(NOOP)!r}, extravars={{}},
                       hosts=["localhost"], timeout=60)
sys.exit(0 if run.status == "successful" else 1)
"""
MAIN = "import sys; from bbctl.cli import main; sys.exit(main())"
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
    deadline = time.monotonic() + 60
    while b"ready on" not in log.read_bytes():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the warm runner did not start: {log.read_text()}")
        time.sleep(0.05)
    return server


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # .pyc files written and used, as in an installed bbctl
    return env


def one_stage(config: Path, warm: bool) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", STAGE, str(config)], check=True,
                   env=environment(**({} if warm else {"BBCTL_WARM_RUNNER": "0"})))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--write-doc", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bbctl-stage-floor-"))
    try:
        config = make_site(root)
        server = start_runner(config, root / "warm-runner.log")
        try:
            cold, warm = [], []
            one_stage(config, warm=False)
            one_stage(config, warm=True)  # the AnsiballZ cache of ping, as every stage after a runner's first
            loads = [os.getloadavg()[0]]
            for n in range(args.rounds):
                cold.append(one_stage(config, warm=False))
                warm.append(one_stage(config, warm=True))
                print(f"round {n + 1}: ansible-runner {cold[-1]:.3f} s, warm runner {warm[-1]:.3f} s", file=sys.stderr)
            loads.append(os.getloadavg()[0])
            served = (root / "warm-runner.log").read_text().count("floor floor (noop_stage.yml): successful")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if served != args.rounds + 1:
        raise SystemExit(f"the warm runner ran {served} stages, not {args.rounds + 1}: some fell back")
    report = render(cold, warm, args.rounds, loads)
    print(report)
    if args.write_doc:
        results_doc.write_section(BEGIN, END, [report], "The floor of one stage, warm or not")
    return 0


def render(cold: list[float], warm: list[float], rounds: int, loads: list[float]) -> str:
    machine = (f"{platform.node()}, {os.cpu_count()} cores, Linux {platform.release()}, "
               f"Python {platform.python_version()}")

    def row(label: str, values: list[float]) -> str:
        return (f"| {label} | {statistics.median(values):.3f} s | {min(values):.3f} s | "
                f"{max(values):.3f} s |")

    return "\n".join([
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine}; load average {loads[0]:.1f} at the "
        f"start, {loads[1]:.1f} at the end. `.venv/bin/python benchmarks/stage_floor.py --rounds {rounds}`: "
        f"{rounds} calls each, alternating.",
        "",
        "| one no-op stage on localhost (a fresh Python running `run_stage`) | median | min | max |",
        "| --- | --- | --- | --- |",
        row("ansible-runner (`BBCTL_WARM_RUNNER=0`)", cold),
        row("warm runner", warm),
        "",
        f"**Warm / ansible-runner (medians): {statistics.median(warm) / statistics.median(cold):.2f}**; "
        f"{statistics.median(cold) - statistics.median(warm):.3f} s less per stage.",
    ])


if __name__ == "__main__":
    sys.exit(main())
