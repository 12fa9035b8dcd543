"""Setup + teardown of a 3-brick buffer: the whole stack against the raw gluster CLI.

Run (as root): ``.venv/bin/python benchmarks/lifecycle.py [--rounds N] [--write-doc]``

The stack: ``bbctl setup`` then ``bbctl teardown`` as burst_buffer.lua calls
them (bbctl -> state store -> ansible-runner -> the collection's playbooks ->
gluster) for a job with a 3-brick ``jobdw`` and no staging. The reference: a
shell doing the same work with the gluster CLI on the same bricks: create (a
striped 12 GiB buffer is disperse 3+1 on four bricks, bbctl.layouts), owner,
privileged-port and quota-timeout options (the role's defaults), start, quota
enable + limit, close the port gate, then stop, delete and remove the brick
directories. Between the two, pre-run and post-run: ``bbctl pre-run`` mounts
the buffer on the job's compute node and ``bbctl post-run`` unmounts it, against
a raw ``mount -t glusterfs`` and ``umount`` of the raw volume (the target: each
at most 0.5 s). (A job that stages also mounts the buffer on the stage host;
that costs both sides the same mount and is left out.) The contenders
alternate in one run so load and cache effects hit both.
Brings the test bed up if it is not (and down again afterwards).

A third contender measures the floor of the design: per stage, a fresh Python
that runs one ansible-runner run (bbctl's runner: same environment, inventory
and guard) of one no-op module task (benchmarks/noop_stage.yml) on one server.
Raw + two such stages is the best any design of "one ansible-runner run of one
module task per stage" could reach here; the rest of bbctl's time is its own.

``--warm-runner``: also the same stack and floor through the warm runner (bbctl.warm),
which this script starts (``bbctl warm-runner`` on the site's socket, the benchmarks
directory's playbooks allowed) and stops; the ansible-runner contenders then run with
``BBCTL_WARM_RUNNER=0``. All contenders alternate within each round.
"""

from __future__ import annotations

import argparse
import os
import platform
import pwd
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import results_doc  # benchmarks/, beside this script
import stage_floor  # benchmarks/, beside this script: the warm runner's start

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bbctl import layouts  # noqa: E402

BIN = Path(sys.executable).parent
ROOT = Path("/var/lib/bbctl-testbed")
CONFIG = ROOT / "bbctl.yml"
CAPACITY_GIB = 12  # three 4 GiB granules, striped: disperse 3+1 (bbctl.layouts)
JOB_BASE = 990000
# the bricks bbctl's allocator takes from an empty test bed: one per server, then the first server again
BRICKS = [(f"127.1.1.{n}", ROOT / f"node{n}" / "bricks" / "nvme1") for n in (1, 2, 3)] + [
    ("127.1.1.1", ROOT / "node1" / "bricks" / "nvme2")]
LAYOUT = layouts.plan(CAPACITY_GIB * 1024**3, 4 * 1024**3, striped=True)
SOCKET = ROOT / "node1" / "run" / "glusterd.socket"
FIRST_SERVER = "bbnode1"  # inventory name of 127.1.1.1

COMPUTE_NODE = "vm"  # the test bed's one compute node (bb_clients), 127.0.0.1
RAW_MOUNT = Path("/var/lib/bbctl-testbed/bbctl/bench-raw-mount")
RAW_CREATE = r"""
set -euo pipefail
g() { gluster --mode=script --glusterd-sock="$SOCK" "$@" >/dev/null; }
g volume create "$VOL" disperse "$DISPERSE" redundancy "$REDUNDANCY" transport tcp $BRICKS force
g volume set "$VOL" storage.owner-uid "$OWNER"
g volume set "$VOL" features.soft-timeout 1
g volume set "$VOL" features.hard-timeout 0
g volume set "$VOL" storage.owner-gid "$OWNER"
g volume set "$VOL" client.bind-insecure off
g volume start "$VOL"
g volume quota "$VOL" enable
g volume quota "$VOL" limit-usage / "$LIMIT"
g volume set "$VOL" server.allow-insecure off
"""
RAW_DELETE = r"""
set -euo pipefail
g() { gluster --mode=script --glusterd-sock="$SOCK" "$@" >/dev/null; }
g volume stop "$VOL"
g volume delete "$VOL"
for dir in $DIRS; do rm -rf "$dir"; done
"""


class Cycle(NamedTuple):
    """One contender's lifecycle in s: the buffer made and destroyed (for raw, create .. delete without the
    mount), and its mount and unmount on the compute node."""

    create_delete: float
    mount: float
    unmount: float


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - start


def raw_cycle(round_no: int, uid: int) -> Cycle:
    volume = f"bbraw-{round_no}"
    env = {**os.environ, "SOCK": str(SOCKET), "VOL": volume, "OWNER": str(uid), "LIMIT": f"{CAPACITY_GIB}GB",
           "DISPERSE": str(LAYOUT.disperse), "REDUNDANCY": str(LAYOUT.redundancy),
           "BRICKS": " ".join(f"{address}:{path}/{volume}" for address, path in BRICKS),
           "DIRS": " ".join(f"{path}/{volume}" for _address, path in BRICKS)}
    RAW_MOUNT.mkdir(parents=True, exist_ok=True)
    create = timed(["bash", "-c", RAW_CREATE], env)
    mount = timed(["mount", "-t", "glusterfs", f"{BRICKS[0][0]}:/{volume}", str(RAW_MOUNT)])
    unmount = timed(["umount", str(RAW_MOUNT)])
    delete = timed(["bash", "-c", RAW_DELETE], env)
    return Cycle(create + delete, mount, unmount)


def environment(warm: bool, code: Path | None = None) -> dict[str, str]:
    """bbctl's environment for one contender: BBCTL_WARM_RUNNER=0 keeps a stage off the warm runner;
    ``code``, another checkout, runs its bbctl and its collection instead of this one's."""
    env = {**os.environ, "BBCTL_WARM_RUNNER": "1" if warm else "0"}
    if code is not None:
        env.update(PYTHONPATH=str(code / "src"), BBCTL_COLLECTION_ROOT=str(code))
    return env


def bbctl(*args: str, warm: bool = False, code: Path | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "bbctl"), "--config", str(CONFIG), *args], capture_output=True, text=True,
                          check=False, env=environment(warm, code))
    if done.returncode != 0:
        raise SystemExit(f"bbctl {args[0]} failed: {done.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - start


def stack_cycle(round_no: int, uid: int, script: Path, warm: bool = False,
                code: Path | None = None, contender: int = 0) -> tuple[float, float, Cycle]:
    """bbctl setup, pre-run, post-run, teardown of one job: (setup s, teardown s, the cycle)."""
    job = str(JOB_BASE + 10 * round_no + (2 + contender if code else warm))
    setup = bbctl("setup", "--job-id", job, "--uid", str(uid), "--gid", str(uid), "--script", str(script),
                  warm=warm, code=code)
    mount = bbctl("pre-run", "--job-id", job, "--script", str(script), "--nodes", COMPUTE_NODE, warm=warm, code=code)
    unmount = bbctl("post-run", "--job-id", job, "--script", str(script), warm=warm, code=code)
    teardown = bbctl("teardown", "--job-id", job, "--script", str(script), warm=warm, code=code)
    return setup, teardown, Cycle(setup + teardown, mount, unmount)


def floor_cycle(warm: bool = False) -> float:
    """Two fresh Pythons, each running one run_stage of one no-op module task."""
    start = time.perf_counter()
    for _stage in ("setup", "teardown"):
        subprocess.run([sys.executable, __file__, "--floor-stage"], check=True, env=environment(warm))
    return time.perf_counter() - start


def start_warm_runner() -> subprocess.Popen[bytes]:
    """``bbctl warm-runner`` on the test bed site's socket, allowed to run noop_stage.yml; ready when it returns."""
    log = ROOT / "bbctl" / "warm-runner.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        server = subprocess.Popen([str(BIN / "bbctl"), "--config", str(CONFIG), "warm-runner", "--playbooks",
                                   str(REPO / "benchmarks")], stdout=out, stderr=out)
    return stage_floor.wait_ready(server, log)


def floor_stage() -> int:
    from bbctl import runner, site

    run = runner.run_stage(site.load(CONFIG), "floor", "floor", str(REPO / "benchmarks" / "noop_stage.yml"),
                           extravars={}, hosts=[FIRST_SERVER], timeout=60)
    return 0 if run.status == "successful" else 1


def testbed_up() -> bool:
    return subprocess.run([str(BIN / "bbctl"), "testbed", "status"], capture_output=True, check=False).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-doc", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    parser.add_argument("--warm-runner", action="store_true",
                        help="also run the stack and the floor through the warm runner (started and stopped here)")
    parser.add_argument("--against", type=Path, metavar="CHECKOUT", action="append", default=[],
                        help="also run the stack from another checkout (its src/ and collection), alternating: "
                             "a change's cost side by side (repeatable)")
    parser.add_argument("--floor-stage", action="store_true", help=argparse.SUPPRESS)
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    if args.floor_stage:
        return floor_stage()
    started_here = not testbed_up()
    if started_here:
        subprocess.run([str(BIN / "bbctl"), "testbed", "up"], check=True, capture_output=True)
    server = start_warm_runner() if args.warm_runner else None
    try:
        uid = pwd.getpwnam("bbuser").pw_uid
        script = ROOT / "bbctl" / "bench-job.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(f"#!/bin/bash\n#BB_LUA jobdw capacity={CAPACITY_GIB}GiB pool=nvme\n")
        series: dict[str, list[float]] = defaultdict(list)
        other: dict[Path, list[Cycle]] = {checkout: [] for checkout in args.against}
        for n in range(args.rounds):
            raw = raw_cycle(n, uid)
            series["raw"].append(raw.create_delete)
            series["raw mount"].append(raw.mount)
            series["raw unmount"].append(raw.unmount)
            contenders = [""] + (["warm "] if server else [])
            for prefix in contenders:
                setup, teardown, cycle = stack_cycle(n, uid, script, warm=bool(prefix))
                series[prefix + "setup"].append(setup)
                series[prefix + "teardown"].append(teardown)
                series[prefix + "pre-run"].append(cycle.mount)
                series[prefix + "post-run"].append(cycle.unmount)
                series[prefix + "floor"].append(floor_cycle(warm=bool(prefix)))
            for index, checkout in enumerate(args.against):
                _setup, _teardown, cycle = stack_cycle(n, uid, script, code=checkout.resolve(), contender=index)
                other[checkout].append(cycle)
            print(f"round {n + 1}: " + ", ".join(f"{name} {values[-1]:.2f} s" for name, values in series.items()),
                  file=sys.stderr)
    finally:
        if server:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        if started_here:
            subprocess.run([str(BIN / "bbctl"), "testbed", "down"], check=True, capture_output=True)
    report = render(series, args.rounds)
    for checkout, theirs in other.items():
        report += against_lines(checkout, theirs, series)
    print(report)
    results_doc.write_figures(args.json, figures(series))
    if args.write_doc:
        write_section(REPO / "docs" / "BENCHMARKS.md", report)
    return 0


BEGIN, END = "<!-- lifecycle-results:begin -->", "<!-- lifecycle-results:end -->"


def stack(series: dict[str, list[float]], prefix: str = "") -> list[float]:
    """Setup + teardown per round, s."""
    return [s + t for s, t in zip(series[prefix + "setup"], series[prefix + "teardown"], strict=True)]


def figures(series: dict[str, list[float]]) -> dict[str, float]:
    """Medians in s and the ratios the section quotes: {raw_s, setup_s, teardown_s, stack_s, floor_s,
    stack_raw_ratio (target <= 1.3), floor_raw_ratio, above_floor_s, prerun_s, postrun_s, raw_mount_s,
    raw_unmount_s}, with --warm-runner also warm_stack_s, warm_stack_raw_ratio, warm_prerun_s, warm_postrun_s."""
    med = statistics.median
    raw, floor, both = med(series["raw"]), med(series["floor"]), med(stack(series))
    found = {"raw_s": raw, "setup_s": med(series["setup"]), "teardown_s": med(series["teardown"]),
             "stack_s": both, "floor_s": floor, "stack_raw_ratio": both / raw,
             "floor_raw_ratio": (raw + floor) / raw, "above_floor_s": both - raw - floor,
             "prerun_s": med(series["pre-run"]), "postrun_s": med(series["post-run"]),
             "raw_mount_s": med(series["raw mount"]), "raw_unmount_s": med(series["raw unmount"])}
    if "warm setup" in series:
        warm = med(stack(series, "warm "))
        found |= {"warm_stack_s": warm, "warm_stack_raw_ratio": warm / raw,
                  "warm_prerun_s": med(series["warm pre-run"]), "warm_postrun_s": med(series["warm post-run"])}
    return found


ROWS = [  # (series, label)
    ("raw", "raw gluster CLI, create .. delete"),
    ("setup", "bbctl setup"),
    ("teardown", "bbctl teardown"),
    ("stack", "bbctl setup + teardown"),
    ("floor", "two no-op stages (one ansible-runner run of one `ping` each)"),
    ("warm setup", "bbctl setup, warm runner"),
    ("warm teardown", "bbctl teardown, warm runner"),
    ("warm stack", "bbctl setup + teardown, warm runner"),
    ("warm floor", "two no-op stages, warm runner"),
    ("raw mount", "raw `mount -t glusterfs` on the compute node"),
    ("pre-run", "bbctl pre-run (the buffer mounted on the compute node)"),
    ("warm pre-run", "bbctl pre-run, warm runner"),
    ("raw unmount", "raw `umount`"),
    ("post-run", "bbctl post-run (unmounted)"),
    ("warm post-run", "bbctl post-run, warm runner"),
]


def render(series: dict[str, list[float]], rounds: int) -> str:
    warm = "warm setup" in series
    series = {**series, "stack": stack(series)} | ({"warm stack": stack(series, "warm ")} if warm else {})
    med = statistics.median
    machine = (f"{platform.node()}, {os.cpu_count()} cores, Linux {platform.release()}, "
               f"Python {platform.python_version()}")
    flag = " --warm-runner" if warm else ""
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine}; load average "
        f"{os.getloadavg()[0]:.1f} at the end. `.venv/bin/python benchmarks/lifecycle.py --rounds {rounds}{flag}`: "
        f"{rounds} rounds, raw, bbctl and the no-op stages alternating"
        f"{', each through ansible-runner and through the warm runner' if warm else ''}.",
        "",
        "| | median | min | max |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {label} | {med(series[key]):.2f} s | {min(series[key]):.2f} s | {max(series[key]):.2f} s |"
              for key, label in ROWS if key in series]
    raw, floor = med(series["raw"]), med(series["floor"])
    lines += [
        "",
        f"**Ratio (medians) bbctl / raw: {med(series['stack']) / raw:.2f}** (target at most 1.3). "
        f"Floor of the design, (raw + two no-op stages) / raw: {(raw + floor) / raw:.2f}; "
        f"bbctl above that floor: {med(series['stack']) - raw - floor:.2f} s for both stages. "
        f"Pre-run {med(series['pre-run']):.2f} s, post-run {med(series['post-run']):.2f} s (target at most 0.5 s "
        f"each; the raw mount {med(series['raw mount']):.2f} s, umount {med(series['raw unmount']):.2f} s).",
    ]
    if warm:
        lines += [
            "",
            f"**With the warm runner: bbctl / raw {med(series['warm stack']) / raw:.2f}**; floor "
            f"(raw + two no-op stages) / raw {(raw + med(series['warm floor'])) / raw:.2f}; "
            f"{med(series['stack']) - med(series['warm stack']):.2f} s less for both stages than through "
            f"ansible-runner; pre-run {med(series['warm pre-run']):.2f} s, post-run "
            f"{med(series['warm post-run']):.2f} s.",
        ]
    return "\n".join(lines)


def against_lines(checkout: Path, other: list[Cycle], series: dict[str, list[float]]) -> str:
    """The other checkout's setup + teardown, pre-run and post-run beside this one's (through ansible-runner;
    medians, and setup + teardown's ratio to raw)."""
    med = statistics.median
    mine, theirs = med(stack(series)), [cycle.create_delete for cycle in other]
    med_raw = med(series["raw"])
    return (f"\n\nAgainst {checkout} in the same rounds (through ansible-runner): setup + teardown "
            f"{med(theirs):.2f} s median (min {min(theirs):.2f}, max {max(theirs):.2f}), {med(theirs) / med_raw:.2f}x "
            f"raw; this checkout {mine:.2f} s, {mine / med_raw:.2f}x raw: this / that {mine / med(theirs):.3f}. "
            f"Pre-run {med(c.mount for c in other):.2f} s there, {med(series['pre-run']):.2f} s here; post-run "
            f"{med(c.unmount for c in other):.2f} s there, {med(series['post-run']):.2f} s here.")


def write_section(doc: Path, block: str) -> None:
    results_doc.write_section(BEGIN, END, [block], "Setup and teardown through the whole stack", doc)


if __name__ == "__main__":
    sys.exit(main())
