"""A cache buffer against a plain one: the same job, with the same directory, both ways.

Run as root: ``.venv/bin/python benchmarks/cache.py [--buffer-root DIR] [--pfs-root DIR] [--quick]``

The job (as bbuser, uid 1001) reads every file of a directory, appends to a tenth of its small
files, renames a tenth, deletes a tenth, creates half as many new small files and writes one new
large file. It runs

- on a plain buffer: stage-in of the whole directory (copy_engine.stage_as_user), the job in the
  buffer, stage-out of the directory back (changed and new files; a plain stage-out never deletes);
- in a cache buffer: cache_overlay mounts fuse-overlayfs (lower = the directory, upper in the
  buffer, its daemon as bbuser), the job in the mount, unmount, cache_writeback as bbuser.

The buffer is a directory under ``--buffer-root``: by default a local directory, so what is measured
is FUSE (fuse-overlayfs) against the local file system; give the FUSE mount of a GlusterFS volume
owned by bbuser to measure the real case (docs/BENCHMARKS.md, "Cache buffers", says how on the
test bed). Rounds alternate plain and cache; every round starts from a fresh copy of the
directory. Prints medians of each phase; ``--write`` puts them into docs/BENCHMARKS.md between
its markers. Everything it made is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_doc  # benchmarks/, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.hpc.burstbuffer.plugins.module_utils import (  # noqa: E402
    cache_overlay,
    cache_writeback,
    copy_engine,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_rules import StageRequest  # noqa: E402

USER = "bbuser"
BEGIN, END = "<!-- cache-results:begin -->", "<!-- cache-results:end -->"
MiB = 1024 * 1024

JOB = """
set -eu
cd "$0"
find . -type f -exec cat {} + > /dev/null
i=0
for f in small/*; do
    i=$((i + 1))
    case $((i % 10)) in
        1) echo more >> "$f" ;;
        2) mv "$f" "$f.renamed" ;;
        3) rm "$f" ;;
    esac
done
for n in $(seq 1 "$1"); do echo "new $n" > "new-$n"; done
head -c "$2" /dev/zero | tr '\\0' x > result.dat
"""


def as_user(*argv: str) -> None:
    subprocess.run(["runuser", "-u", USER, "--", *argv], check=True)


def make_pfs(root: Path, files: int, size: int, big: int, owner: pwd.struct_passwd) -> Path:
    pfs = root / "pfs"
    (pfs / "small").mkdir(parents=True)
    payload = b"y" * size
    for n in range(files):
        (pfs / "small" / f"f{n:06d}").write_bytes(payload)
    (pfs / "input.dat").write_bytes(b"z" * big)
    for path in [pfs, *pfs.rglob("*")]:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return pfs


def fresh_copy(pfs: Path, where: Path) -> Path:
    if where.exists():
        shutil.rmtree(where)
    subprocess.run(["cp", "-a", str(pfs), str(where)], check=True)
    return where


def timed(phases: dict[str, float], name: str, action) -> None:
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    action()
    phases[name] = time.monotonic() - start


def run_plain(directory: Path, buffer: Path, args, owner) -> dict[str, float]:
    phases: dict[str, float] = {}
    work = buffer / "work"
    ids = (owner.pw_uid, owner.pw_gid)
    timed(phases, "stage-in", lambda: copy_engine.stage_as_user(
        StageRequest("in", "directory", str(directory), str(work), str(buffer)), *ids))
    timed(phases, "job", lambda: as_user("bash", "-c", JOB, str(work), str(args.files // 2), str(args.big)))
    timed(phases, "stage-out", lambda: copy_engine.stage_as_user(
        StageRequest("out", "directory", str(work), str(directory), str(buffer)), *ids))
    return phases


def run_cache(directory: Path, buffer: Path, mountpoint: Path, args, owner) -> dict[str, float]:
    phases: dict[str, float] = {}
    ids = (owner.pw_uid, owner.pw_gid)

    def mount() -> None:
        cache_overlay.prepare_as_user(str(directory), str(buffer), *ids)
        cache_overlay.mount_overlay(str(directory), str(buffer), str(mountpoint), *ids)

    timed(phases, "mount", mount)
    try:
        timed(phases, "job", lambda: as_user("bash", "-c", JOB, str(mountpoint), str(args.files // 2),
                                             str(args.big)))
    finally:
        timed(phases, "unmount", lambda: cache_overlay.unmount_overlay(str(mountpoint), True))
    timed(phases, "write-back", lambda: cache_writeback.writeback_as_user(
        str(buffer / cache_overlay.UPPER), str(directory), *ids, since_file=str(buffer / cache_overlay.SINCE)))
    return phases


def user_dir(parent: Path, owner) -> Path:
    path = Path(tempfile.mkdtemp(prefix="bb-cache-bench-", dir=str(parent)))
    path.chmod(0o755)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buffer-root", type=Path, default=Path("/var/tmp"),
                        help="where the buffers go (a GlusterFS mount for the real case)")
    parser.add_argument("--pfs-root", type=Path, default=Path("/var/tmp"), help="where the cached directory goes")
    parser.add_argument("--files", type=int, default=2000, help="small files in the directory")
    parser.add_argument("--size", type=int, default=4096, help="bytes of each small file")
    parser.add_argument("--big", type=int, default=64 * MiB, help="bytes of the large input and result files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500 files, 8 MiB, 2 rounds")
    parser.add_argument("--write", action="store_true", help="write the results into docs/BENCHMARKS.md")
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.files, args.big, args.rounds = 500, 8 * MiB, 2
    owner = pwd.getpwnam(USER)
    pfs_top, buffer_top = user_dir(args.pfs_root, owner), user_dir(args.buffer_root, owner)
    mount_top = Path(tempfile.mkdtemp(prefix="bb-cache-bench-mnt-", dir="/var/tmp"))
    mount_top.chmod(0o755)  # the job's user reaches its cache through it
    mountpoint = mount_top / "cache"
    mountpoint.mkdir()
    results: dict[str, list[dict[str, float]]] = {"plain": [], "cache": []}
    try:
        pristine = make_pfs(pfs_top, args.files, args.size, args.big, owner)
        for round_number in range(args.rounds):
            order = ["plain", "cache"] if round_number % 2 == 0 else ["cache", "plain"]
            for kind in order:
                directory = fresh_copy(pristine, pfs_top / "dir")
                buffer = buffer_top / f"{kind}-{round_number}"
                buffer.mkdir(mode=0o700)
                os.chown(buffer, owner.pw_uid, owner.pw_gid)
                if kind == "plain":
                    results[kind].append(run_plain(directory, buffer, args, owner))
                else:
                    results[kind].append(run_cache(directory, buffer, mountpoint, args, owner))
                shutil.rmtree(buffer)
                print(kind, {k: round(v, 2) for k, v in results[kind][-1].items()}, flush=True)
    finally:
        if cache_overlay.is_mounted(str(mountpoint)):
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        for path in (pfs_top, buffer_top, mount_top):
            shutil.rmtree(path, ignore_errors=True)
    results_doc.publish(report(results, args), figures(results), args.json,
                        (BEGIN, END, "Cache buffers against plain ones") if args.write else None)
    return 0


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each phase's median seconds over the rounds."""
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def figures(results: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Medians in s: {plain_job_s, plain_total_s, cache_job_s, cache_total_s}, and cache_total_ratio
    (cache / plain, whole job: below 1 the cache wins)."""
    found = {}
    for kind, runs in results.items():
        phases = medians(runs)
        found |= {f"{kind}_job_s": phases["job"], f"{kind}_total_s": sum(phases.values())}
    found["cache_total_ratio"] = found["cache_total_s"] / found["plain_total_s"]
    return found


def report(results: dict[str, list[dict[str, float]]], args) -> list[str]:
    lines = [f"{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}: {args.files} files of "
             f"{args.size} B and one of {args.big // MiB} MiB; buffers under {args.buffer_root}, the directory "
             f"under {args.pfs_root}; medians of {args.rounds} rounds (seconds)", "",
             "| buffer | phases | job | total |", "| --- | --- | --- | --- |"]
    for kind, runs in results.items():
        phases = medians(runs)
        shown = ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items() if name != "job")
        lines.append(f"| {kind} | {shown} | {phases['job']:.2f} | {sum(phases.values()):.2f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
