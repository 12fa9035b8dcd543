"""bbctl's start-up: a whole bbctl call that runs no playbook, for one or more checkouts side by side.

Run: ``.venv/bin/python benchmarks/startup.py [--runs N] [CHECKOUT ...]`` (default: this
checkout; give others, e.g. a ``git worktree`` of an older commit or ``git archive main | tar -x
-C DIR``, to compare: each call writes .pyc files under CHECKOUT/src, so give a copy of a tree
that must stay untouched). Each call is a
fresh Python running ``bbctl.cli.main`` from ``CHECKOUT/src`` against a throw-away site (a
bbctl.yml, a two-server inventory and a job script with three ``#DW`` lines in a temporary
directory), as Slurm calls it: ``status``, ``paths``, ``real-size``, plus ``paths`` with the
validated-settings cache removed before each call (the first call after bbctl.yml changed).
Checkouts alternate call by call, in turning order, after one warm-up round (.pyc files
are written and used, as an installed bbctl has them). Prints medians of wall time and of
the CPU time (user + system) of the child, the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import results_doc  # benchmarks/, beside this script

REPO = Path(__file__).resolve().parents[1]
MAIN = "import sys; from bbctl.cli import main; sys.exit(main())"
INVENTORY = """all:
  children:
    bb_storage:
      hosts:
        s1: {ansible_host: 127.1.1.1, bb_bricks: [{device: /dev/nvme0n1, path: /bricks/nvme0}]}
        s2: {ansible_host: 127.1.1.2, bb_bricks: [{device: /dev/nvme0n1, path: /bricks/nvme0}]}
"""
JOB = """#!/bin/bash
#SBATCH -N 1
#DW jobdw type=scratch access_mode=striped capacity=8GiB
#DW stage_in type=directory source=/home/u/in destination=$DW_JOB_STRIPED/in
#DW stage_out type=directory source=$DW_JOB_STRIPED/out destination=/home/u/out
srun ./a.out
"""


def make_site(root: Path) -> Path:
    """A bbctl.yml under root, with its inventory, work directory and a job script beside it."""
    root.mkdir(parents=True)
    (root / "inventory.yml").write_text(INVENTORY)
    (root / "job.sh").write_text(JOB)
    config = root / "bbctl.yml"
    config.write_text(f"inventory: {root / 'inventory.yml'}\npools: {{nvme: {{granularity: 4GiB}}}}\n"
                      f"work_dir: {root / 'work'}\nmount_root: {root / 'mnt'}\n")
    return config


def make_calls(root: Path) -> dict[str, tuple[list[str], Callable[[], None]]]:
    """The calls to time: name -> (argv after ``python -c MAIN``, what to do before each).

    The call without the settings cache has a site of its own, so that removing its
    cache never leaves the other calls without theirs.
    """
    config, cold = make_site(root / "site"), make_site(root / "cold")
    paths = ["paths", "--job-id", "12", "--script", str(config.parent / "job.sh")]

    def nothing() -> None:
        pass

    def uncached() -> None:
        shutil.rmtree(cold.parent / "work" / "site-cache", ignore_errors=True)

    return {
        "bbctl status": (["--config", str(config), "status"], nothing),
        "bbctl paths": (["--config", str(config), *paths], nothing),
        "bbctl real-size": (["--config", str(config), "real-size", "--job-id", "12"], nothing),
        "bbctl paths, settings cache removed first": (["--config", str(cold), *paths], uncached),
    }


def timed(checkout: Path, argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call of bbctl from checkout."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "ANSIBLE_CONFIG": str(checkout / "ansible.cfg")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", MAIN, *argv], env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run(checkouts: list[Path], runs: int, root: Path) -> dict[tuple[str, Path], list[tuple[float, float]]]:
    # A site per checkout: their state stores may have different schemas (an older bbctl refuses a newer one).
    calls = {checkout: make_calls(root / f"checkout{n}") for n, checkout in enumerate(checkouts)}
    results: dict[tuple[str, Path], list[tuple[float, float]]] = {}
    for round_ in range(runs + 1):
        for name in calls[checkouts[0]]:
            turn = round_ % len(checkouts)
            for checkout in checkouts[turn:] + checkouts[:turn]:
                argv, first = calls[checkout][name]
                first()
                sample = timed(checkout, argv)
                if round_:  # round 0 warms the page cache and writes .pyc files
                    results.setdefault((name, checkout), []).append(sample)
    return results


def report(checkouts: list[Path], runs: int, results: dict[tuple[str, Path], list[tuple[float, float]]]) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores; Python "
          f"{sys.version.split()[0]}; {runs} calls each, alternating; load average at the end "
          + "/".join(f"{load:.1f}" for load in os.getloadavg()) + "\n")
    print("| call | " + " | ".join(f"{c.name}: wall, median (min-max) | {c.name}: CPU" for c in checkouts) + " |")
    print("| --- |" + " --- | --- |" * len(checkouts))
    for name in dict.fromkeys(name for name, _ in results):
        cells = []
        for checkout in checkouts:
            walls = sorted(wall * 1000 for wall, _ in results[(name, checkout)])
            cpu = statistics.median(cpu * 1000 for _, cpu in results[(name, checkout)])
            cells.append(f"{statistics.median(walls):.0f} ms ({walls[0]:.0f}-{walls[-1]:.0f}) | {cpu:.0f} ms")
        print(f"| {name} | " + " | ".join(cells) + " |")


def figures(checkout: Path, results: dict[tuple[str, Path], list[tuple[float, float]]]) -> dict[str, float]:
    """The first checkout's medians in ms: {paths_wall_ms, paths_cpu_ms, status_..., real_size_...,
    paths_uncached_...} ("settings cache removed first" is uncached)."""
    found = {}
    for (name, where), samples in results.items():
        if where == checkout:
            slug = name.removeprefix("bbctl ").replace(", settings cache removed first", "_uncached").replace("-", "_")
            found[f"{slug}_wall_ms"] = statistics.median(wall for wall, _ in samples) * 1e3
            found[f"{slug}_cpu_ms"] = statistics.median(cpu for _, cpu in samples) * 1e3
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[REPO], help="checkouts to compare")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per checkout and call (default 30)")
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    checkouts = [checkout.resolve() for checkout in args.checkouts]
    with tempfile.TemporaryDirectory(prefix="bb-startup-") as root:
        results = run(checkouts, args.runs, Path(root))
    report(checkouts, args.runs, results)
    results_doc.write_figures(args.json, figures(checkouts[0], results))


if __name__ == "__main__":
    main()
