"""Trees as users have them, at scale: bb_stage's engine against ``cp -a`` and ``rsync -aH``.

Run as root: ``.venv/bin/python benchmarks/tree_scale.py --root DIR [--files 10000 200000] [--rounds 3]``

DIR is a directory on the filesystem to measure (for the local figures in docs/BENCHMARKS.md, an
XFS image of our own on a loop device; for a GlusterFS buffer, a directory of its FUSE mount:
then the engine writes small files through libgfapi, as a stage-in does). For each size it
generates one tree with ``tree_gen.py`` (1 KiB files, every feature, owned by bbuser) in
SRC/src-N (``--source-root``, default DIR: the parallel filesystem's side), then copies it to
DIR/dst as bbuser, the tools alternating and their order rotating
each round: the engine through ``copy_engine.stage_as_user`` (its forked worker reports how long
planning took and its peak RSS), ``cp -a`` and ``rsync -aH`` through ``setpriv``. Sources are read
once beforehand (warm page cache for all) and ``sync`` runs before each copy, whose time includes
nothing but the copy. Each tool's last copy is checked with ``tree_check.py`` against the source
(cp -a keeps hard links too; the checker fails the run on any difference). A plan-only run (check
mode) gives the worker's peak RSS for planning alone.

``--gluster LAYOUT`` (distribute or disperse, as ``staging.py --layout``): DIR is made a scratch
GlusterFS volume on the test bed's bricks (``bbctl testbed up`` first), mounted, given to bbuser and
destroyed afterwards; ``--source-root`` is then needed (the parallel filesystem's side).
``--direction out``: the tree is first put in DIR (``cp -a`` as bbuser, not timed) and each tool
copies it from there to SRC/dst, as a stage-out does.

Prints a Markdown table (medians) and the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "collections"))
sys.path.insert(0, str(REPO / "benchmarks"))

import results_doc  # noqa: E402
import staging  # noqa: E402
import tree_check  # noqa: E402
import tree_gen  # noqa: E402
from ansible_collections.hpc.burstbuffer.plugins.module_utils import copy_engine  # noqa: E402
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_rules import StageRequest  # noqa: E402

USER = "bbuser"


def as_user(*argv: object) -> list[str]:
    return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", *[str(a) for a in argv]]


def engine(source: Path, destination: Path, workers: int, dry_run: bool = False, direction: str = "in",
           gfapi_reads_from: int = copy_engine.GFAPI_READS_FROM) -> dict:
    """The stage's result: seconds, plan_seconds, peak_rss_kib (the worker's), files, hardlinks."""
    owner = pwd.getpwnam(USER)
    buffer_root = destination.parent if direction == "in" else source.parent
    request = StageRequest(direction, "directory", str(source), str(destination), str(buffer_root))
    result = copy_engine.stage_as_user(request, owner.pw_uid, owner.pw_gid, workers=workers, dry_run=dry_run,
                                       gfapi_reads_from=gfapi_reads_from)
    if result["failed_files"]:
        raise RuntimeError(f"the engine failed: {result['failed_files'][:3]}")
    return result


def run_tool(tool: str, source: Path, destination: Path, workers: int, direction: str = "in") -> dict:
    """{seconds, ...} of one copy of source to destination (which must not exist)."""
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    if tool in READS_FROM:
        result = engine(source, destination, workers, direction=direction, gfapi_reads_from=READS_FROM[tool])
        return {"seconds": time.monotonic() - start, "plan_seconds": result["plan_seconds"],
                "peak_rss_kib": result["peak_rss_kib"]}
    argv = {"cp -a": ["cp", "-a", source, destination],
            "rsync -aH": ["rsync", "-aH", f"{source}/", f"{destination}/"]}[tool]
    subprocess.run(as_user(*argv), check=True)
    return {"seconds": time.monotonic() - start}


def warm(source: Path) -> None:
    subprocess.run(["tar", "-cf", "/dev/null", "-C", str(source), "."], check=True)  # reads everything


# the engine as it ships, and (a stage-out's contenders) with every small file read through the mount or
# through libgfapi, whatever their count
READS_FROM = {"bb_stage": copy_engine.GFAPI_READS_FROM, "bb_stage, mount reads": 2**62, "bb_stage, gfapi reads": 0}
TOOLS = [*READS_FROM, "cp -a", "rsync -aH"]
DEFAULT_TOOLS = ["bb_stage", "cp -a", "rsync -aH"]


def measure(root: Path, files: int, rounds: int, workers: int, per_dir: int, sources: Path,
            direction: str = "in", tools: list[str] = DEFAULT_TOOLS) -> dict:
    owner = pwd.getpwnam(USER)
    source = sources / f"src-{files}-{per_dir}"
    if not source.exists():
        tree_gen.generate(source, files, size=1024, seed=1, per_dir=per_dir, owner=(owner.pw_uid, owner.pw_gid))
    destination = root / "dst"
    if direction == "out":  # the tree starts in the buffer and goes to the parallel filesystem's side
        in_buffer = root / source.name
        if not in_buffer.exists():
            subprocess.run(as_user("cp", "-a", source, in_buffer), check=True)
        source, destination = in_buffer, sources / "dst"
    warm(source)
    runs: dict[str, list[dict]] = {tool: [] for tool in tools}
    shutil.rmtree(destination, ignore_errors=True)
    plan_only = engine(source, destination, workers, dry_run=True, direction=direction)
    for number in range(rounds):
        for tool in tools[number % len(tools):] + tools[:number % len(tools)]:
            shutil.rmtree(destination, ignore_errors=True)
            runs[tool].append(run_tool(tool, source, destination, workers, direction))
            if number == rounds - 1:
                differences = tree_check.compare(tree_check.snapshot(source), tree_check.snapshot(destination))
                if differences:
                    raise RuntimeError(f"{tool}: {len(differences)} differences, first {differences[0]}")
    shutil.rmtree(destination, ignore_errors=True)
    entries = sum(1 for _ in tree_check.walk(str(source)))
    return {"files": files, "per_dir": per_dir, "direction": direction, "entries": entries,
            "plan_only": {k: plan_only[k] for k in ("plan_seconds", "peak_rss_kib", "files", "hardlinks")},
            "runs": runs}


def table(results: list[dict]) -> list[str]:
    lines = ["| files (per dir) | tool | median s | entries/s | vs bb_stage | plan s | worker peak RSS |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for case in results:
        ours = statistics.median(r["seconds"] for r in case["runs"]["bb_stage"])
        for tool, runs in case["runs"].items():
            seconds = statistics.median(r["seconds"] for r in runs)
            plan = statistics.median(r["plan_seconds"] for r in runs) if "plan_seconds" in runs[0] else None
            rss = max(r["peak_rss_kib"] for r in runs) if "peak_rss_kib" in runs[0] else None
            plan_text = "" if plan is None else f"{plan:.2f}"
            rss_text = "" if rss is None else f"{rss / 1024:.0f} MiB"
            lines.append(f"| {case['files']:,} ({case['per_dir']}) | {tool} | {seconds:.2f} | "
                         f"{case['entries'] / seconds:,.0f} | {seconds / ours:.2f}x | {plan_text} | {rss_text} |")
        only = case["plan_only"]
        lines.append(f"| {case['files']:,} ({case['per_dir']}) | bb_stage, plan only (check mode) | "
                     f"{only['plan_seconds']:.2f} | | | {only['plan_seconds']:.2f} | "
                     f"{only['peak_rss_kib'] / 1024:.0f} MiB |")
    return lines


def figures(results: list[dict]) -> dict[str, float]:
    """Per tree, medians: {f10000_bb_stage_s, f10000_cp_a_ratio, f10000_rsync_ratio, f10000_peak_rss_mib}
    (a ratio is the tool's seconds / bb_stage's: above 1 the engine is faster; ``_d50`` after the file
    count when a leaf directory holds other than 100 files)."""
    found = {}
    for case in results:
        slug = f"f{case['files']}" + ("" if case["per_dir"] == 100 else f"_d{case['per_dir']}")
        seconds = {tool: statistics.median(r["seconds"] for r in runs) for tool, runs in case["runs"].items()}
        found |= {f"{slug}_bb_stage_s": seconds["bb_stage"],
                  f"{slug}_peak_rss_mib": max(r["peak_rss_kib"] for r in case["runs"]["bb_stage"]) / 1024}
        found |= {f"{slug}_{name}_ratio": seconds[tool] / seconds["bb_stage"]
                  for tool, name in (("cp -a", "cp_a"), ("rsync -aH", "rsync")) if tool in seconds}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="a directory on the filesystem to measure")
    parser.add_argument("--source-root", type=Path, help="where the sources are made (default: --root)")
    parser.add_argument("--files", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--per-dir", type=int, nargs="+", default=[100], help="files per leaf directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=copy_engine.DEFAULT_WORKERS)
    parser.add_argument("--keep", action="store_true", help="keep the generated sources")
    parser.add_argument("--gluster", choices=["distribute", "disperse"],
                        help="measure on a scratch GlusterFS volume of this layout made under --root")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=DEFAULT_TOOLS,
                        help="the tools to compare (bb_stage always runs)")
    parser.add_argument("--direction", choices=["in", "out"], default="in",
                        help="out: copy from --root (the buffer) to --source-root")
    parser.add_argument("--mount-options", default="", help="with --gluster: the FUSE mount's -o (e.g. lru-limit=0)")
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    if args.gluster and not args.source_root:
        parser.error("--gluster needs --source-root: the parallel filesystem's side, off the volume")
    with ExitStack() as stack:
        root = args.root
        if args.gluster:
            root.mkdir(parents=True, exist_ok=True)
            root = stack.enter_context(staging.volume(root, args.gluster, args.mount_options)).mount
        results = run(args, root, args.source_root or root)
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}, workers {args.workers}, {args.rounds} rounds, direction {args.direction}"
          f"{f', GlusterFS {args.gluster} volume' if args.gluster else ''}"
          f"{f', mounted -o {args.mount_options}' if args.mount_options else ''}\n")
    print("\n".join(table(results)))
    results_doc.write_figures(args.json, figures(results))


def run(args: argparse.Namespace, root: Path, sources: Path) -> list[dict]:
    """Every tree size of args measured on root, sources made under sources (removed unless --keep)."""
    owner = pwd.getpwnam(USER)
    for directory in {root, sources}:
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    tools = ["bb_stage", *(tool for tool in args.tools if tool != "bb_stage")]
    results = []
    try:
        for files in args.files:
            for per_dir in args.per_dir:
                results.append(measure(root, files, args.rounds, args.workers, per_dir, sources, args.direction,
                                       tools))
                print(json.dumps(results[-1]), flush=True)
    finally:
        if not args.keep:
            for path in [*sources.glob("src-*"), *root.glob("src-*"), sources / "dst"]:
                shutil.rmtree(path, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
