"""Load through Slurm: many burst-buffer jobs at once, and slurmctld's answers under a long queue.

Run as root with a test bed shaped for it (small bricks, a node with many CPUs so that buffers, not
CPUs, are what jobs wait for):

    bbctl testbed up --servers 3 --bricks 8 --brick-size 1GiB --slurm-cpus 64
    .venv/bin/python benchmarks/load.py [--jobs 50] [--queued 750] [--write-doc]

Two phases, both through the real burst_buffer/lua plugin, jobs submitted as the unprivileged user
(the harness is tests/integration/bbctl/load.py, shared with the reliability test):

1. throughput: ``--jobs`` jobs submitted back to back, each asking for a striped buffer of 1 or 2
   granules (2: disperse 2+1, three bricks) and staging in its own 64 KiB file, which the job checks
   against its checksum. Reported: total time, jobs per minute, submit-to-running median / p95 / max
   (Slurm's SubmitTime to StartTime), how many setups found too few bricks although Slurm had
   admitted the job (bbctl.allocation: setup waits, then leaves the build to stage-in), the most buffers at once, brick
   overlaps seen (must be none), jobs that were held or failed (must be none), `scontrol ping`
   throughout, volumes left that no record explains.
2. queue: ``--queued`` held jobs with buffers sit in the queue; then 100 probe jobs with a buffer and
   100 without are submitted (held too) in alternation. slurmctld logs each submit RPC's time
   (``_slurm_rpc_submit_batch_job ... usec=N``), which includes ``slurm_bb_job_process`` run in a fresh
   Lua state under slurmctld's locks: the buffer job's time less the plain job's is the hook's cost
   with a long queue. Slurm 22.05 logs no per-hook timer of its own. All held jobs are cancelled.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import results_doc  # benchmarks/, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.integration.bbctl import load  # noqa: E402
from tests.integration.bbctl.slurmjobs import ENV, as_user, use_plugin, write_job  # noqa: E402

BEGIN, END = "<!-- load-results:begin -->", "<!-- load-results:end -->"
SUBMIT_RPC = re.compile(r"^\[(\S+)\] _slurm_rpc_submit_batch_job: JobId=(\d+) .*usec=(\d+)")
PROBES = 100
PREFIXES = {"lua": "#BB_LUA", "datawarp": "#DW"}


def throughput(jobs: int, max_granules: int, timeout: float, plugin: str = "lua") -> dict:
    _bricks, granule_gib = load.pool_shape()
    run = load.LoadRun(count=jobs, max_granules=max_granules, granule_gib=granule_gib,
                       prefix=PREFIXES[plugin])
    watcher = load.Watcher(run.jobs)
    try:
        run.submit_all()
        watcher.start()
        run.wait(watcher, timeout)
    finally:
        watcher.stop()
        ok, failed_checks = run.ok(), run.failed_checks()
        run.cleanup()
    starts = [s for seen in run.jobs.values() if (s := seen.submit_to_start()) is not None]
    pings = [t for t, _ in watcher.pings]
    return {
        "jobs": jobs, "seconds": run.ended - run.began, "per_minute": jobs / ((run.ended - run.began) / 60),
        "submit_to_running": load.percentiles(starts),
        "completed": sum(seen.state == "COMPLETED" for seen in run.jobs.values()),
        "checked_ok": sum(ok.values()), "failed_checks": failed_checks,
        "strange": run.strange_reasons(), "overlaps": watcher.overlaps,
        "most_buffers": watcher.most_buffers, "short_at_setup": len(run.short_at_setup()),
        "ping_failures": sum(not up for _, up in watcher.pings), "ping_max": max(pings, default=0.0),
        "unexplained_volumes": load.gluster_matches_store(),
        "most_ports": watcher.most_ports,
    }


def _held_job(directory: Path, name: str, with_buffer: bool) -> Path:
    directive = "#BB_LUA jobdw capacity=1GiB pool=nvme access_mode=striped type=scratch\n" if with_buffer else ""
    return write_job(directory, name, directive + "true\n")


def _submit_held(script: Path) -> int:
    done = as_user("sbatch", "--parsable", "--hold", "-o", "/dev/null", str(script), cwd=script.parent)
    if done.returncode != 0:
        raise SystemExit(f"sbatch refused {script.name}: {done.stderr.strip()}")
    return int(done.stdout.strip().split(";")[0])


def queue(queued: int) -> dict:
    """Submit-RPC times of buffer and plain probe jobs while ``queued`` held buffer jobs wait."""
    run = load.LoadRun(count=0)
    held, probes = [], {True: [], False: []}
    watcher = load.Watcher({})
    try:
        filler = _held_job(run.directory, "filler.sh", True)
        held += [_submit_held(filler) for _ in range(queued)]
        scripts = {flag: _held_job(run.directory, f"probe-{flag}.sh", flag) for flag in (True, False)}
        watcher.start()
        since = datetime.now().replace(microsecond=0)
        for i in range(2 * PROBES):
            flag = i % 2 == 0
            probes[flag].append(_submit_held(scripts[flag]))
        time.sleep(1)  # the last RPC's log line
        rpc = _submit_times(since)
    finally:
        watcher.stop()
        _cancel(held + probes[True] + probes[False])
        run.cleanup()
    with_bb = [rpc[j] for j in probes[True] if j in rpc]
    plain = [rpc[j] for j in probes[False] if j in rpc]
    pings = [t for t, _ in watcher.pings]
    return {"queued": queued, "with_buffer": _us(with_bb), "plain": _us(plain),
            "ping_failures": sum(not up for _, up in watcher.pings), "ping_max": max(pings, default=0.0),
            "pings": len(pings)}


def _submit_times(since: datetime) -> dict[int, int]:
    found = {}
    for line in load.SLURMCTLD_LOG.read_text(errors="replace").splitlines():
        match = SUBMIT_RPC.match(line)
        if match and datetime.fromisoformat(match[1]) >= since:
            found[int(match[2])] = int(match[3])
    return found


def _us(values: list[int]) -> dict[str, float]:
    return {"n": len(values), **load.percentiles(values, tail=99)} if values else {}


def _cancel(jobs: list[int]) -> None:
    """Cancel the held jobs and wait until Slurm and bbctl have let every one of them go."""
    for start in range(0, len(jobs), 200):
        subprocess.run(["scancel", *map(str, jobs[start:start + 200])], env=ENV, check=False)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        live = load.all_jobs()
        if not any(job in live and live[job].get("JobState") not in load.FINISHED for job in jobs):
            return
        time.sleep(2)
    raise SystemExit("the held jobs did not end within 600 s of scancel")


def figures(result: dict, queued: dict | None) -> dict[str, float]:
    """{jobs, total_s, jobs_per_min, submit_to_running_median_s, submit_to_running_p95_s, completed, checked_ok,
    overlaps, held_or_failed, most_ports_below_1024}, with the queue phase also {submit_buffer_median_us,
    submit_buffer_p99_us, submit_plain_median_us, submit_plain_p99_us} (slurmctld's usec= of each submit RPC)."""
    s2r = result["submit_to_running"]
    found = {"jobs": result["jobs"], "total_s": result["seconds"], "jobs_per_min": result["per_minute"],
             "submit_to_running_median_s": s2r.get("median"), "submit_to_running_p95_s": s2r.get("p95"),
             "completed": result["completed"], "checked_ok": result["checked_ok"],
             "overlaps": len(result["overlaps"]), "held_or_failed": len(result["strange"]),
             "most_ports_below_1024": result["most_ports"][0]}
    if queued:
        for name, key in (("buffer", "with_buffer"), ("plain", "plain")):
            found |= {f"submit_{name}_median_us": queued[key].get("median"),
                      f"submit_{name}_p99_us": queued[key].get("p99")}
    return found


def report(result: dict, queued: dict | None) -> list[str]:
    s2r = result["submit_to_running"]
    lines = [
        f"{datetime.now():%Y-%m-%d %H:%M} UTC, {platform.node()}, Debian 12, {_cpus()} cores, load average "
        f"{_load()} at the end (other work shared the machine).", "",
        "| jobs | total s | jobs/min | submit-to-running median / p95 / max s | completed / data checked | "
        "setup short of bricks | most buffers at once | overlaps | held or failed | ping failures / max s | "
        "ports < 1024 at most (towards glusterd) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {result['jobs']} | {result['seconds']:.0f} | {result['per_minute']:.1f} | "
        f"{s2r.get('median', 0):.0f} / {s2r.get('p95', 0):.0f} / {s2r.get('max', 0):.0f} | "
        f"{result['completed']} / {result['checked_ok']} | {result['short_at_setup']} | {result['most_buffers']} | "
        f"{len(result['overlaps'])} | {len(result['strange'])} | {result['ping_failures']} / "
        f"{result['ping_max']:.2f} | {result['most_ports'][0]} ({result['most_ports'][1]}) |",
    ]
    if queued:
        bb, plain = queued["with_buffer"], queued["plain"]
        lines += ["", f"Submit RPC with {queued['queued']} held buffer jobs queued ({bb.get('n', 0)} probes each, "
                  "us, slurmctld's own `usec=`):", "",
                  "| job | median | p99 | max |", "| --- | --- | --- | --- |",
                  f"| with a buffer (runs slurm_bb_job_process) | {bb.get('median', 0):.0f} | {bb.get('p99', 0)} | "
                  f"{bb.get('max', 0)} |",
                  f"| without | {plain.get('median', 0):.0f} | {plain.get('p99', 0)} | {plain.get('max', 0)} |",
                  "", f"`scontrol ping` {queued['pings']} times during the probes: {queued['ping_failures']} "
                  f"failures, slowest {queued['ping_max']:.2f} s."]
    return lines


def _cpus() -> int:
    return os.cpu_count() or 1


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--max-granules", type=int, default=2, help="buffers of 1..N granules (default 2)")
    parser.add_argument("--queued", type=int, default=None,
                        help="held jobs for the queue phase (0: skip it; default 750 with lua, 0 with datawarp)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--plugin", choices=sorted(PREFIXES), default="lua",
                        help="Slurm's burst buffer plugin (the test bed is switched to it); the queue "
                             "phase measures burst_buffer/lua's hook, so with datawarp it runs only if asked")
    parser.add_argument("--write-doc", action="store_true")
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    use_plugin(args.plugin)
    result = throughput(args.jobs, args.max_granules, args.timeout, args.plugin)
    held = args.queued if args.queued is not None else (750 if args.plugin == "lua" else 0)
    queued = queue(held) if held else None
    lines = report(result, queued)
    print("\n".join(lines))
    results_doc.write_figures(args.json, figures(result, queued))
    for key in ("failed_checks", "strange", "overlaps", "unexplained_volumes"):
        if result[key]:
            print(f"{key}: {result[key]}")
    if args.write_doc:
        results_doc.write_section(BEGIN, END, lines, "Load through Slurm")
    failed = result["overlaps"] or result["strange"] or result["unexplained_volumes"] or \
        result["completed"] != args.jobs or result["checked_ok"] != args.jobs
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
