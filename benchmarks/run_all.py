"""Every benchmark in one command; each run's headline figures go into benchmarks/history.jsonl and a table.

Run as root: ``.venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...] [--skip-testbed] [--no-history]``,
or ``--table-only`` to rewrite the table from the history without running anything.

Each benchmark runs in a subprocess of its own, one after another, with its quick or full options
(REGISTRY) and ``--json PATH``, where it writes its headline figures (results_doc.write_figures); its
output goes to a log file. A benchmark that fails (non-zero exit, or no end within ``--timeout``) is
recorded with its exit code and the run goes on; the runner exits 1 if any failed. Groups, in order:

- local: neither GlusterFS nor Slurm (lua_inslurmctld, allocation, startup, stage_floor, cache,
  tree_scale); some need root and bbuser, as each says;
- gluster: layouts, brick_fill and gfapi_ports build their own GlusterFS cluster (127.1.2.x); every quotad of the
  machine shares one socket, so they run before the test bed is up;
- testbed: staging and lifecycle on ``bbctl testbed up``'s default shape, then load on a test bed of
  its own shape: the runner brings each shape up, runs its benchmarks and takes it down (also on failure).

How long ``--quick`` takes: the local group 3.7 minutes (2026-12-06, 2 cores at load 8-13; allocation is
2.5 of them); the other two about 20 minutes more (estimated from docs/BENCHMARKS.md, not yet run: layouts
and brick_fill about 3 each, gfapi_ports 2.5, two test beds up and down, staging 2.5, lifecycle 1, load about
6). A full run takes hours (staging 20 minutes, allocation 10, all eight layouts, tree_scale at 200,000
files, load's 50 jobs).

``--skip-testbed`` leaves out the last two groups. If a test bed (or the layouts' bed) already exists when
they would start, they are recorded as failed and nothing of it is touched: the runner takes down only
what it brought up.

Each run appends one JSON line to benchmarks/history.jsonl (history_line(): date, commit, machine, mode,
per benchmark status, exit code, seconds and figures) and rewrites the table of the last runs in
docs/BENCHMARKS.md, section "History (benchmarks/run_all.py)", between its markers (``--no-history``: neither).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import results_doc  # benchmarks/, beside this script

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HISTORY = HERE / "history.jsonl"
BEGIN, END = "<!-- run-all-history:begin -->", "<!-- run-all-history:end -->"
HEADING = "History (benchmarks/run_all.py)"
LOCAL, GLUSTER, TESTBED = "local", "gluster", "testbed"
# Where the test bed and the layouts' private bed live (bbctl.testbed.config.DEFAULT_ROOT, layouts.ROOT):
# if either exists, someone else's bed is there, and the runner's up/down would take it over.
BEDS = (Path("/var/lib/bbctl-testbed"), Path("/var/lib/bbctl-layouts"))
BBCTL = Path(sys.executable).parent / "bbctl"
DEFAULT_BED: tuple[str, ...] = ()  # bbctl testbed up's defaults: 3 servers x 3 bricks of 4 GiB
LOAD_BED = ("--servers", "3", "--bricks", "8", "--brick-size", "1GiB", "--slurm-cpus", "64")  # load.py's shape
ROWS = 10  # runs in the table


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: the program (argv), its options for a quick and a full run ("{scratch}" becomes a
    fresh directory of its own), its group, and for the testbed group the ``bbctl testbed up`` options."""

    name: str
    command: tuple[str, ...]
    quick: tuple[str, ...] = ()
    full: tuple[str, ...] = ()
    group: str = LOCAL
    testbed: tuple[str, ...] = DEFAULT_BED


def script(name: str) -> tuple[str, ...]:
    """The argv running benchmarks/NAME.py as its docstring says: this Python, the script by its path."""
    return (sys.executable, str(HERE / f"{name}.py"))


REGISTRY = (
    Benchmark("lua_inslurmctld", script("lua_inslurmctld"), quick=("--calls", "2000")),
    Benchmark("allocation", script("allocation"), quick=("--cycles", "300")),
    Benchmark("startup", script("startup"), quick=("--runs", "5")),
    Benchmark("stage_floor", script("stage_floor"), quick=("--rounds", "3")),
    Benchmark("cache", script("cache"), quick=("--quick",)),
    Benchmark("tree_scale", script("tree_scale"), quick=("--root", "{scratch}", "--files", "10000", "--rounds", "1"),
              full=("--root", "{scratch}")),
    # all eight layouts fill 4-8 GiB twice each (20-30 minutes): quick measures one shipped layout
    Benchmark("layouts", script("layouts"), quick=("--quick", "--only", "disperse 3+1 (shipped)"), group=GLUSTER),
    Benchmark("brick_fill", script("brick_fill"), quick=("--rounds", "1"), group=GLUSTER),
    Benchmark("gfapi_ports", script("gfapi_ports"), quick=("--writers", "40", "--rounds", "1"), group=GLUSTER),
    # staging writes its section of BENCHMARKS.md unless told not to; the runner's record is the history
    Benchmark("staging", script("staging"), quick=("--quick", "--no-write"), full=("--no-write",), group=TESTBED),
    Benchmark("lifecycle", script("lifecycle"), quick=("--rounds", "2", "--warm-runner"), full=("--warm-runner",),
              group=TESTBED),
    Benchmark("load", script("load"), quick=("--jobs", "10", "--queued", "100"), group=TESTBED, testbed=LOAD_BED),
)


@dataclass(frozen=True)
class Column:
    """A column of the history table: header, the benchmark and figure it shows, format, and what it means."""

    header: str
    benchmark: str
    figure: str
    form: str
    means: str


COLUMNS = (
    Column("Lua p99 us", "lua_inslurmctld", "load_job_process_p99_us", "{:.0f}",
           "load + job_process p99 in us (installed bytecode; target 1000)"),
    Column("SQLite p99 ms", "allocation", "sqlite_p99_ms", "{:.2f}", "allocate + release p99 in ms (target 5)"),
    Column("etcd 3m p99 ms", "allocation", "etcd3m_new_p99_ms", "{:.1f}",
           "the same on three etcd members, index per pool"),
    Column("paths CPU ms", "startup", "paths_cpu_ms", "{:.0f}", "`bbctl paths` start-up, median CPU ms"),
    Column("floor warm/cold", "stage_floor", "noop_warm_ratio", "{:.2f}",
           "a no-op stage through the warm runner / through ansible-runner (medians)"),
    Column("cache/plain", "cache", "cache_total_ratio", "{:.2f}",
           "the whole job in a cache buffer / in a plain one (medians; `--quick`: local directories)"),
    Column("stage (b) x cp", "staging", "b_cp_ratio", "{:.2f}",
           "10,000 small files: `cp -r` s / bb_stage s (target 2)"),
    Column("stage (a) % dd", "staging", "a_dd_pct", "{:.0f}", "4 large files: bb_stage as % of dd's MB/s (target 95)"),
    Column("stage (b) % limit", "staging", "b_limit_pct", "{:.0f}",
           "10,000 small files: the physical limit (`cp -r` straight onto XFS) as % of bb_stage's time"),
    Column("out (d) x cp", "staging", "d_cp_ratio", "{:.2f}",
           "10,000 small files staged out onto XFS: `cp -r` s / bb_stage s (target 2; since 2026-12-07 timed "
           "from a cold stage-host cache until synced)"),
    Column("out (d) x rsync", "staging", "d_rsync_ratio", "{:.2f}",
           "the same: `rsync -a` s / bb_stage s (target 4)"),
    Column("out (f) % dd", "staging", "f_dd_pct", "{:.0f}",
           "4 large files staged out, synced: bb_stage as % of dd's MB/s (target 95; full runs only)"),
    Column("life bbctl/raw", "lifecycle", "stack_raw_ratio", "{:.2f}",
           "setup + teardown: bbctl / raw gluster CLI (medians; through ansible-runner)"),
    Column("life warm/raw", "lifecycle", "warm_stack_raw_ratio", "{:.2f}",
           "the same through the warm runner (target 1.3)"),
    Column("pre-run s", "lifecycle", "warm_prerun_s", "{:.2f}",
           "bbctl pre-run through the warm runner: the buffer mounted on one node (target 0.5)"),
    Column("post-run s", "lifecycle", "warm_postrun_s", "{:.2f}", "the same for post-run: unmounted (target 0.5)"),
    Column("load jobs/min", "load", "jobs_per_min", "{:.1f}", "jobs through Slurm per minute"),
    Column("load ports", "load", "most_ports_below_1024", "{:.0f}",
           "the most ports below 1024 in use on the host during the load (of 1023: every client of a buffer "
           "behind the privileged-port gate binds one)"),
)


# --- running --------------------------------------------------------------------------------------

def read_figures(path: Path) -> dict[str, float]:
    """The figures a benchmark wrote to path; {} if it wrote none or not a JSON object."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def run_one(bench: Benchmark, quick: bool, log: Path, timeout: float | None) -> dict:
    """Run bench, its output into log: {status: ok | failed | timeout, exit_code (None on timeout), seconds,
    figures}."""
    with tempfile.TemporaryDirectory(prefix=f"bb-run-all-{bench.name}-", dir="/var/tmp") as scratch:
        os.chmod(scratch, 0o755)  # tree_scale copies into it as bbuser
        options = [arg.replace("{scratch}", f"{scratch}/work") for arg in (bench.quick if quick else bench.full)]
        figures_file = Path(scratch) / "figures.json"
        start = time.monotonic()
        with log.open("wb") as out:
            # its own session, so that a timeout kills the benchmark's children too, and only them
            child = subprocess.Popen([*bench.command, *options, "--json", str(figures_file)], cwd=REPO,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code: int | None = child.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                code = None
        seconds = time.monotonic() - start
        figures = read_figures(figures_file)
    status = "ok" if code == 0 else "timeout" if code is None else "failed"
    return {"status": status, "exit_code": code, "seconds": round(seconds, 1), "figures": figures}


def not_run(reason: str) -> dict:
    """The record of a benchmark the runner could not start (same shape as run_one's)."""
    return {"status": "failed", "exit_code": None, "seconds": 0.0, "figures": {}, "reason": reason}


def run_listed(benches: list[Benchmark], quick: bool, log_dir: Path, timeout: float | None,
               say=print) -> dict[str, dict]:
    """run_one for each, in order: name -> record; says each start and end."""
    results = {}
    for bench in benches:
        say(f"{bench.name}: {' '.join(bench.quick if quick else bench.full) or '(defaults)'} ...")
        results[bench.name] = record = run_one(bench, quick, log_dir / f"{bench.name}.log", timeout)
        say(f"{bench.name}: {record['status']} (exit {record['exit_code']}) in {record['seconds']:.1f} s; "
            f"{json.dumps(record['figures'])}")
        if record["status"] != "ok":
            tail = (log_dir / f"{bench.name}.log").read_text(errors="replace").splitlines()[-10:]
            say("  " + "\n  ".join(tail))
    return results


def testbed(action: list[str], log: Path) -> int:
    """``bbctl testbed ACTION...``, its output into log; its exit code."""
    with log.open("ab") as out:
        return subprocess.run([str(BBCTL), "testbed", *action], stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode


def run_on_testbed(shape: tuple[str, ...], benches: list[Benchmark], quick: bool, log_dir: Path,
                   timeout: float | None, say=print) -> dict[str, dict]:
    """Bring a test bed of shape up, run benches on it, take it down whatever happened."""
    log = log_dir / "testbed.log"
    say(f"bbctl testbed up {' '.join(shape)} ...")
    try:
        code = testbed(["up", *shape], log)
        if code != 0:
            return {b.name: not_run(f"bbctl testbed up failed (exit {code}; {log})") for b in benches}
        return run_listed(benches, quick, log_dir, timeout, say)
    finally:
        say("bbctl testbed down ...")
        if testbed(["down"], log) != 0:
            say(f"bbctl testbed down FAILED: see {log}; clean up before the next run")


def run_benchmarks(benches: list[Benchmark], quick: bool, log_dir: Path, timeout: float | None,
                   say=print) -> dict[str, dict]:
    """The local group, then the gluster group, then the testbed group shape by shape: name -> record."""
    results = run_listed([b for b in benches if b.group == LOCAL], quick, log_dir, timeout, say)
    others = [b for b in benches if b.group != LOCAL]
    if not others:
        return results
    taken = [bed for bed in BEDS if bed.exists()]
    if taken:
        reason = f"{taken[0]} exists: another bed is up or left over (the runner takes down only its own)"
        return results | {b.name: not_run(reason) for b in others}
    results |= run_listed([b for b in others if b.group == GLUSTER], quick, log_dir, timeout, say)
    on_testbed = [b for b in others if b.group == TESTBED]
    for shape in dict.fromkeys(b.testbed for b in on_testbed):
        results |= run_on_testbed(shape, [b for b in on_testbed if b.testbed == shape], quick, log_dir, timeout, say)
    return results


# --- the history ----------------------------------------------------------------------------------

def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False).stdout.strip()


def machine() -> dict[str, object]:
    """{hostname, cpu (model name), cores, memory_gib, kernel}, from /proc."""
    cpuinfo, meminfo = Path("/proc/cpuinfo").read_text(), Path("/proc/meminfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    return {"hostname": platform.node(), "cpu": model.group(1) if model else platform.processor(),
            "cores": os.cpu_count(), "memory_gib": round(int(memory.group(1)) / 1024**2, 1) if memory else None,
            "kernel": platform.release()}


def history_line(results: dict[str, dict], quick: bool, started: datetime, seconds: float,
                 load: tuple[float, float]) -> dict:
    """One run: {date (UTC, ISO 8601), commit (short), dirty (tracked files changed, besides what the runner
    writes), machine, load (1-min average before, after), mode (quick | full), seconds, benchmarks: name ->
    {status, exit_code, seconds, figures}}."""
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  f":!{HISTORY.relative_to(REPO)}", f":!{results_doc.BENCHMARKS_MD.relative_to(REPO)}")
    return {"date": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(changed), "machine": machine(), "load": [round(x, 2) for x in load],
            "mode": "quick" if quick else "full", "seconds": round(seconds, 1), "benchmarks": results}


def append_history(path: Path, line: dict) -> None:
    with path.open("a") as out:
        out.write(json.dumps(line, sort_keys=True) + "\n")


def read_history(path: Path) -> list[dict]:
    """Every run in path, oldest first ([] without the file); ValueError naming the line if one is not JSON."""
    if not path.exists():
        return []
    runs = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if text.strip():
            try:
                runs.append(json.loads(text))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line ({exc})") from None
    return runs


def cell(run: dict, column: Column) -> str:
    """The column's figure in run, formatted; "-" where the benchmark did not run or gave no such figure."""
    value = run["benchmarks"].get(column.benchmark, {}).get("figures", {}).get(column.figure)
    return "-" if value is None else column.form.format(value)


def row(run: dict) -> str:
    failed = [f"{name} ({record['exit_code'] if record['exit_code'] is not None else record['status']})"
              for name, record in run["benchmarks"].items() if record["status"] != "ok"]
    host = run["machine"]
    cells = [run["date"][:16].replace("T", " "), f"`{run['commit']}`{'+' if run.get('dirty') else ''}", run["mode"],
             f"{host['hostname']}, {host['cores']} cores", "-".join(f"{x:.1f}" for x in run["load"]),
             f"{run['seconds'] / 60:.1f}",
             f"{len(run['benchmarks']) - len(failed)}/{len(run['benchmarks'])}", ", ".join(failed) or "-",
             *(cell(run, column) for column in COLUMNS)]
    return "| " + " | ".join(cells) + " |"


def history_section(runs: list[dict], rows: int = ROWS) -> list[str]:
    """The Markdown of the section: how to run, the table of the last ``rows`` runs (oldest first), the legend."""
    header = ["run (UTC)", "commit", "mode", "machine", "load", "min", "ok", "failed (exit)",
              *(c.header for c in COLUMNS)]
    legend = "; ".join(f"**{c.header}**: `{c.benchmark}.py`, {c.means}" for c in COLUMNS)
    return [
        "Run every benchmark with `.venv/bin/python benchmarks/run_all.py` as root (`--quick`: fewer rounds and "
        "smaller cases; `--skip-testbed`: only those that need neither GlusterFS nor Slurm; `--only NAME ...`). "
        "Each run appends its figures to `benchmarks/history.jsonl` and rewrites this table "
        "(`--table-only` rewrites it alone). Compare a row with rows of the same mode and machine.",
        "",
        f"The last {min(rows, len(runs))} of {len(runs)} runs, newest last (commit `+`: with uncommitted changes; "
        "load: 1-min load average before and after, the machine may be shared; min: minutes for the whole run; "
        "-: not run, or no such figure):",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *(row(run) for run in runs[-rows:]),
        "",
        f"Columns: {legend}.",
    ]


def write_table(history: Path, doc: Path) -> list[str]:
    """Rewrite the section of doc from history; its lines."""
    lines = history_section(read_history(history))
    results_doc.write_section(BEGIN, END, lines, HEADING, doc)
    return lines


# --- the command ----------------------------------------------------------------------------------

def parse(argv: list[str] | None, registry: tuple[Benchmark, ...]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick options (a few minutes locally)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[b.name for b in registry],
                        help="run only these benchmarks")
    parser.add_argument("--skip-testbed", action="store_true",
                        help="leave out the benchmarks that need GlusterFS or Slurm (no test bed brought up)")
    parser.add_argument("--no-history", action="store_true",
                        help="neither append to benchmarks/history.jsonl nor rewrite the table")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the table in docs/BENCHMARKS.md from the history; run nothing")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds a benchmark may take (default 7200)")
    parser.add_argument("--log-dir", type=Path, help="where each benchmark's output goes (default: a new directory "
                                                     "under /var/tmp)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, registry: tuple[Benchmark, ...] = REGISTRY, history: Path = HISTORY,
         doc: Path = results_doc.BENCHMARKS_MD) -> int:
    args = parse(argv, registry)
    if args.table_only:
        print("\n".join(write_table(history, doc)))
        return 0
    chosen = [b for b in registry if (not args.only or b.name in args.only)
              and not (args.skip_testbed and b.group != LOCAL)]
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bb-run-all-logs-", dir="/var/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    started, start, load_before = datetime.now(UTC), time.monotonic(), os.getloadavg()[0]
    results = run_benchmarks(chosen, args.quick, log_dir, args.timeout)
    line = history_line(results, args.quick, started, time.monotonic() - start, (load_before, os.getloadavg()[0]))
    failed = [name for name, record in results.items() if record["status"] != "ok"]
    print(f"\n{len(results) - len(failed)} of {len(results)} benchmarks ok in {line['seconds']:.0f} s"
          f"{'; failed: ' + ', '.join(failed) if failed else ''}; logs in {log_dir}")
    if not args.no_history:
        append_history(history, line)
        print(f"appended to {history}; the table in {doc}:\n")
        print("\n".join(write_table(history, doc)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
