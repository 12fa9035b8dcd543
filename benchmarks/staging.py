"""Staging throughput: bb_stage's copy engine against cp -r, rsync -a and dd on a real GlusterFS volume.

Run as root with the test bed up: ``.venv/bin/python benchmarks/staging.py [--quick]``

It builds its own 3-brick distributed volume (``stg-bench-<random>``, the nvme2 brick of
test-bed nodes 1-3), FUSE-mounts it under /var/tmp and gives it to the job owner bbuser
(uid 1001, 0700) as a buffer is. Every tool copies as bbuser: ``cp -r`` and ``rsync -a``
through ``setpriv``, bb_stage through ``copy_engine.stage_as_user`` (its forked worker drops
to uid 1001 before it opens a file). Runs alternate between tools (the order rotates every
round) so that load from other users of the machine falls on all of them alike; sources are
read once beforehand (warm page cache for all) and ``sync`` runs before every timed copy.
A stage-out's time ends when its copy is on the XFS's disk (``sync -f`` of the destination
within the timing: a stage-out is done when the data is safe on the parallel filesystem), and
it starts with the buffer's files out of the stage host's page cache (``posix_fadvise``
DONTNEED through the mount; the bricks keep theirs, as NVMe would serve them): otherwise a
tool reads what the previous one left in memory.

Cases: (a) 4 x 256 MiB files, (b) 10,000 x 4 KiB files in 40 directories, (c) a mixed tree,
each staged in; (d), (e), (f): (b), (c) and (a) staged back out of the buffer onto an XFS file
system of its own on a loop device (standing in for the parallel filesystem); plus ``dd`` of one
256 MiB file into the mount, and out of it onto the XFS, as the throughput references of (a)
and (f). The full run also measures
volume options and worker counts for the small-file case. The results go into
docs/BENCHMARKS.md, section "Staging", between its markers (``--no-write`` prints only).

Everything it creates is removed at the end: volume stopped and deleted, mount unmounted,
brick directories and source files removed, the XFS unmounted and its loop device detached.
"""

from __future__ import annotations

import argparse
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import results_doc  # benchmarks/, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.hpc.burstbuffer.plugins.module_utils import copy_engine  # noqa: E402
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_copy import DEFAULT_CHUNK_SIZE  # noqa: E402
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_gfapi import NO_SMALL_FILES  # noqa: E402
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_rules import StageRequest  # noqa: E402

TESTBED = Path("/var/lib/bbctl-testbed")
GLUSTERD_SOCKET = TESTBED / "node1" / "run" / "glusterd.socket"
BRICKS = [(f"127.1.1.{n}", TESTBED / f"node{n}" / "bricks" / "nvme2") for n in (1, 2, 3)]
BENCHMARKS_MD = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- staging-results:begin -->", "<!-- staging-results:end -->"
USER = "bbuser"
MiB = 1024 * 1024

# What a buffer's volume gets (recommended for gluster_buffer_options; see docs/BENCHMARKS.md).
# The negative-lookup cache with positive entries answers from the client the lookup that
# precedes every create; cache invalidation keeps it coherent with the other clients (the job's
# nodes; both timeouts stay at their equal defaults, 60 s). io-threads pass-through runs brick
# fops in the brick's network threads, saving a thread handoff per fop.
NL_CACHE = {
    "features.cache-invalidation": "on",
    "performance.cache-invalidation": "on",
    "performance.nl-cache": "on",
    "performance.nl-cache-positive-entry": "on",
}
RECOMMENDED = {**NL_CACHE, "performance.iot-pass-through": "on"}


def recommended(layout: str) -> dict[str, str]:
    """iot-pass-through made a dispersed volume drop its clients under writes (gluster_volume refuses it there)."""
    return RECOMMENDED if layout == "distribute" else NL_CACHE
# Volume options measured one set at a time against the defaults, on the small-file case.
STUDY = {
    "defaults": {},
    "nl-cache on, negative entries only (+ cache-invalidation)": {
        **NL_CACHE, "performance.nl-cache-positive-entry": "false"},
    "nl-cache with positive entries (+ cache-invalidation)": NL_CACHE,
    "iot-pass-through on": {"performance.iot-pass-through": "on"},
    "recommended: iot-pass-through + nl-cache with positive entries": RECOMMENDED,
    "event-threads 1 (client and server)": {"client.event-threads": "1", "server.event-threads": "1"},
    "client-io-threads off": {"performance.client-io-threads": "off"},
    "client caches off (quick-read, open-behind, read-ahead, io-cache, readdir-ahead)": {
        "performance.quick-read": "off", "performance.open-behind": "off", "performance.read-ahead": "off",
        "performance.io-cache": "off", "performance.readdir-ahead": "off"},
    "ctime off": {"features.ctime": "off"},
    "gfid2path off": {"storage.gfid2path": "off"},
    "write-behind off": {"performance.write-behind": "off"},
    "inode-lru-limit 200000, md-cache-timeout 600 (+ cache-invalidation)": {
        "network.inode-lru-limit": "200000", "performance.md-cache-timeout": "600",
        "features.cache-invalidation": "on", "performance.cache-invalidation": "on"},
}
WITH_CP = ("defaults", "recommended: iot-pass-through + nl-cache with positive entries")


# --- small helpers ----------------------------------------------------------------------------

def sh(*argv: object, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check, timeout=timeout,
                          env=dict(os.environ, LANG="C", LC_ALL="C"))


def gluster(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("gluster", "--mode=script", f"--glusterd-sock={GLUSTERD_SOCKET}", *args, check=check)


def as_user(*argv: object) -> list[str]:
    return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", *[str(a) for a in argv]]


def log(text: str) -> None:
    print(text, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- the volume -------------------------------------------------------------------------------

@dataclass
class Volume:
    name: str
    mount: Path
    options: dict[str, str] = field(default_factory=dict)  # the studied options as they are now
    defaults: dict[str, str] = field(default_factory=dict)  # ... and as a fresh volume has them

    def set_options(self, wanted: dict[str, str]) -> None:
        """Bring the studied options to ``wanted`` (others at their value on the fresh volume)."""
        for key, value in wanted.items():
            if self.options.get(key) != value:
                gluster("volume", "set", self.name, key, value)
                self.options[key] = value
        time.sleep(1)  # the client switches to the new graph
        settle(self.mount)  # ... whose brick connections may drop and come back

    def pids(self) -> list[int]:
        """The brick processes and the FUSE client of this volume."""
        out = sh("pgrep", "-f", f"volfile-id[ =]/?{self.name}[. ]|volfile-id=/{self.name}$", check=False).stdout
        return [int(pid) for pid in out.split()]


def option_values(name: str, keys: set[str]) -> dict[str, str]:
    values = {}
    for line in gluster("volume", "get", name, "all").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in keys:
            values[parts[0]] = parts[1]
    return values


# --layout: what the volume is. A striped buffer of two granules on these three bricks is
# disperse 2+1 (bbctl.layouts), with quota and its timeouts as roles/gluster_buffer sets them.
LAYOUT_WORDS = {"distribute": (), "disperse": ("disperse", "3", "redundancy", "1")}


@contextmanager
def volume(top: Path, layout: str = "distribute", mount_options: str = "") -> Iterator[Volume]:
    """A scratch volume on the test bed's bricks, mounted at top/buffer (``mount_options``: its -o)."""
    name = f"stg-bench-{uuid.uuid4().hex[:6]}"
    mount = top / "buffer"
    mount.mkdir()
    created = mounted = False
    try:
        gluster("volume", "create", name, *LAYOUT_WORDS[layout],
                *[f"{host}:{root / name}" for host, root in BRICKS], "force")
        created = True
        gluster("volume", "start", name)
        if layout == "disperse":
            gluster("volume", "set", name, "features.soft-timeout", "1")
            gluster("volume", "set", name, "features.hard-timeout", "0")
            gluster("volume", "quota", name, "enable")
            gluster("volume", "quota", name, "limit-usage", "/", "8GB")
        studied = {key for options in STUDY.values() for key in options}
        defaults = option_values(name, studied)
        sh("mount", "-t", "glusterfs", *(["-o", mount_options] if mount_options else []), f"127.1.1.1:/{name}",
           mount)
        mounted = True
        settle(mount)
        owner = pwd.getpwnam(USER)
        os.chown(mount, owner.pw_uid, owner.pw_gid)
        mount.chmod(0o700)
        yield Volume(name, mount, dict(defaults), dict(defaults))
    finally:
        if mounted and sh("umount", mount, check=False).returncode != 0:
            sh("umount", "-l", mount, check=False)
        if created:
            gluster("volume", "stop", name, check=False)
            gluster("volume", "delete", name, check=False)
        for _host, root in BRICKS:
            shutil.rmtree(root / name, ignore_errors=True)


@contextmanager
def xfs_scratch(top: Path, size: str = "6G") -> Iterator[Path]:
    """An XFS file system of its own on a loop device, mounted at top/pfs and given to the job owner:
    where stage-out writes, as the parallel filesystem would take it."""
    image, mount = top / "pfs.img", top / "pfs"
    mount.mkdir()
    sh("truncate", "-s", size, image)
    sh("mkfs.xfs", "-q", "-f", image)
    device = sh("losetup", "--find", "--show", image).stdout.strip()
    try:
        sh("mount", device, mount)
        try:
            os.chown(mount, *pwd_ids())
            yield mount
        finally:
            sh("umount", mount, check=False)
    finally:
        sh("losetup", "--detach", device, check=False)


def settle(mount: Path, timeout: float = 60.0) -> None:
    """Wait until the fresh mount takes writes twice, 2 s apart: glusterd sends the client the volfiles of
    the quota and options set just before (a graph switch) after the mount, and the new graph's first brick
    connections dropped here, failing the first copies with ENOTCONN (dispersed volume, 2026-11-29)."""
    probe, deadline, good = mount / ".settle", time.monotonic() + timeout, 0
    while good < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mount}: no write succeeded twice in a row within {timeout:g} s")
        try:
            with probe.open("wb") as handle:
                handle.write(b"\0" * MiB)
                os.fsync(handle.fileno())
            probe.unlink()
            good += 1
        except OSError:
            good = 0
        time.sleep(2.0)


# --- source data --------------------------------------------------------------------------------

def write_file(path: Path, size: int, seed: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = seed * (min(size, MiB) // len(seed) + 1)
    with path.open("wb") as handle:
        left = size
        while left > 0:
            handle.write(block[:min(left, len(block))])
            left -= min(left, len(block))


def make_sources(root: Path) -> dict[str, Path]:
    """(a) large, (b) small, (c) mixed; random content, owned by the job owner."""
    sources = {"large": root / "large", "small": root / "small", "mixed": root / "mixed"}
    for index in range(4):
        write_file(sources["large"] / f"file{index}", 256 * MiB, os.urandom(MiB))
    for index in range(10_000):
        write_file(sources["small"] / f"dir{index % 40:02d}" / f"file{index:05d}", 4096, os.urandom(4096))
    mixed = sources["mixed"]
    for index in range(2):
        write_file(mixed / f"big{index}", 128 * MiB, os.urandom(MiB))
    shapes = [(100, MiB), (2000, 16 * 1024), (3000, 1024)]
    for count, size in shapes:
        for index in range(count):
            leaf = mixed / f"top{index % 5}" / f"sub{index % 10}"
            write_file(leaf / f"f{size}-{index:05d}", size, os.urandom(min(size, 4096)))
    owner = pwd.getpwnam(USER)
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chown(dirpath, owner.pw_uid, owner.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), owner.pw_uid, owner.pw_gid)
    for source in sources.values():  # warm the page cache: every tool reads from memory
        sh("tar", "-cf", "/dev/null", "-C", source, ".")
    return sources


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- the contenders ------------------------------------------------------------------------------

def cp(source: Path, destination: Path) -> None:
    sh(*as_user("cp", "-r", source, destination))


def rsync(source: Path, destination: Path) -> None:
    sh(*as_user("rsync", "-a", f"{source}/", f"{destination}/"))


def bb_stage(buffer_root: Path, direction: str = "in", workers: int = copy_engine.DEFAULT_WORKERS,
             chunk_size: int = DEFAULT_CHUNK_SIZE, use_gfapi: bool = True,
             gfapi_reads_from: int = copy_engine.GFAPI_READS_FROM) -> Callable[[Path, Path], None]:
    owner = pwd.getpwnam(USER)

    def run(source: Path, destination: Path) -> None:
        request = StageRequest(direction, "directory", str(source), str(destination), str(buffer_root))
        result = copy_engine.stage_as_user(request, owner.pw_uid, owner.pw_gid, workers=workers,
                                           chunk_size=chunk_size, use_gfapi=use_gfapi,
                                           gfapi_reads_from=gfapi_reads_from)
        if result["failed_files"]:
            raise RuntimeError(f"bb_stage failed: {result['failed_files'][:3]}")
        if use_gfapi and direction == "in" and result["gfapi_unused"] not in (None, NO_SMALL_FILES):
            raise RuntimeError(f"bb_stage did not use libgfapi: {result['gfapi_unused']}")

    return run


def read_alone(source: Path, destination: Path) -> None:
    """Every file of source read through the mount by 32 parallel ``cat`` as the user, nothing written
    (destination stays empty): the read side's floor for a stage-out, which no copying tool goes below."""
    destination.mkdir()
    os.chown(destination, *pwd_ids())
    sh(*as_user("bash", "-c", 'find "$1" -type f -print0 | xargs -0 -P 32 -n 64 cat > /dev/null', "read",
                source))


READ_ALONE = "reading alone: 32 x `cat`, nothing written"
GFAPI_READS = "bb_stage, every small file read through libgfapi"


def dd(source: Path, destination: Path) -> None:
    destination.mkdir()
    os.chown(destination, *pwd_ids())
    sh(*as_user("dd", f"if={source / 'file0'}", f"of={destination / 'file0'}", "bs=1M"))


DD = "dd (1 file)"


def pwd_ids() -> tuple[int, int]:
    owner = pwd.getpwnam(USER)
    return owner.pw_uid, owner.pw_gid


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # gluster CPU seconds (bricks + client)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def evict(tree: Path) -> None:
    """Drop the pages of every file under tree from this host's page cache (for a tree in the FUSE
    mount: the stage host's cache only; the bricks' stay)."""
    for dirpath, _dirnames, filenames in os.walk(tree):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(vol: Volume, copy: Callable[[Path, Path], None], source: Path, destination: Path,
          timing: Timing, outward: bool = False) -> float:
    """Seconds of one copy; ``outward``: from a cold stage-host cache until it is on the destination's disk."""
    sh("sync")
    if outward and source.is_relative_to(vol.mount):
        evict(source)
    pids = vol.pids()
    cpu_before, start = cpu_seconds(pids), time.perf_counter()
    copy(source, destination)
    if outward:
        sh("sync", "-f", destination)
    elapsed = time.perf_counter() - start
    timing.seconds.append(elapsed)
    timing.cpu.append(cpu_seconds(pids) - cpu_before)
    return elapsed


class Bench:
    def __init__(self, vol: Volume, scratch: Path) -> None:
        self.vol = vol
        self.scratch = scratch
        self.runs = 0

    def target(self, inward: bool) -> Path:
        self.runs += 1
        return (self.vol.mount if inward else self.scratch) / f"run{self.runs:04d}"

    def compare(self, label: str, source: Path, tools: dict[str, Callable[[Path, Path], None]], rounds: int,
                inward: bool = True, keep: bool = False, only_first: dict[str, int] | None = None
                ) -> dict[str, Timing]:
        """Alternate the tools ``rounds`` times (order rotating); ``only_first`` caps slow tools' rounds."""
        timings = {name: Timing() for name in tools}
        names = list(tools)
        for round_number in range(rounds):
            order = names[round_number % len(names):] + names[:round_number % len(names)]
            for name in order:
                if only_first and round_number >= only_first.get(name, rounds):
                    continue
                destination = self.target(inward)
                if not inward:
                    destination.parent.mkdir(exist_ok=True)
                    os.chown(destination.parent, *pwd_ids())
                elapsed = timed(self.vol, tools[name], source, destination, timings[name], outward=not inward)
                log(f"  {label}: {name} {elapsed:.2f} s")
                if not keep:
                    shutil.rmtree(destination)
        return timings


# --- reporting -----------------------------------------------------------------------------------

def ratio(slow: float, fast: float) -> str:
    return f"{slow / fast:.2f}x"


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main_table(results: dict[str, dict[str, Timing]], sizes: dict[str, int], dd_rates: dict[str, float],
               limits: dict[str, float] | None = None) -> list[str]:
    """One row per case and tool; ``limits``: per case, the seconds of the physical limit (the same tree
    copied with ``cp -r`` straight onto XFS, no GlusterFS), each tool's time then also as % of it."""
    limits = limits or {}
    rows = ["| case | tool | runs | seconds, median (min-max) | MB/s | bb_stage is | % of the limit |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for case, timings in results.items():
        bb = median(timings["bb_stage"].seconds)
        for tool, timing in timings.items():
            seconds = median(timing.seconds)
            rate = sizes[case] / seconds / 1e6
            if tool == "bb_stage":
                versus = f"{rate / dd_rates[case] * 100:.0f}% of dd" if case in dd_rates else ""
            else:
                versus = f"{ratio(seconds, bb)} faster" if seconds >= bb else f"{ratio(bb, seconds)} slower"
            limit = f"{limits[case] / seconds * 100:.0f}%" if case in limits else ""
            rows.append(f"| {case} | {tool} | {len(timing.seconds)} | {spread(timing.seconds)} | {rate:.0f} | "
                        f"{versus} | {limit} |")
        if case in limits:
            rows.append(f"| {case} | the limit: `cp -r` straight onto XFS | | {limits[case]:.2f} | "
                        f"{sizes[case] / limits[case] / 1e6:.0f} | | 100% |")
    return rows


def study_table(results: dict[str, dict[str, Timing]]) -> list[str]:
    base = median(results["defaults"]["bb_stage"].seconds)
    rows = ["| volume options (small-file case) | bb_stage s | vs defaults | gluster CPU s | cp -r s | "
            "bb_stage vs cp |", "| --- | --- | --- | --- | --- | --- |"]
    for label, timings in results.items():
        bb = timings["bb_stage"]
        cp_cells = "| |"
        if "cp -r" in timings:
            cp_cells = (f"| {spread(timings['cp -r'].seconds)} | "
                        f"{ratio(median(timings['cp -r'].seconds), median(bb.seconds))} faster |")
        rows.append(f"| {label} | {spread(bb.seconds)} | {median(bb.seconds) / base * 100:.0f}% | "
                    f"{median(bb.cpu):.1f} {cp_cells}")
    return rows


def workers_table(results: dict[str, dict[int, Timing]]) -> list[str]:
    rows = ["| case | workers | seconds, median (min-max) | gluster CPU s |", "| --- | --- | --- | --- |"]
    for case, by_workers in results.items():
        for workers, timing in by_workers.items():
            rows.append(f"| {case} | {workers} | {spread(timing.seconds)} | {median(timing.cpu):.1f} |")
    return rows


def machine() -> str:
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024**2
    model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    gluster_version = sh("glusterfs", "--version").stdout.splitlines()[0]
    return (f"{os.cpu_count()} cores ({model.group(1) if model else 'unknown CPU'}), {memory} GiB RAM, "
            f"Linux {platform.release()}, {platform.freedesktop_os_release().get('PRETTY_NAME', 'Linux')}, "
            f"{gluster_version}, Python {platform.python_version()}")


def write_section(lines: list[str], layout: str) -> None:
    """Distribute results go under "Staging"; a dispersed (striped) buffer's in a section of their own."""
    if layout == "distribute":
        results_doc.write_section(BEGIN, END, lines, "Staging")
    else:
        results_doc.write_section(f"<!-- staging-{layout}-results:begin -->", f"<!-- staging-{layout}-results:end -->",
                                  lines, f"Staging into a {layout}d (striped) buffer")


# --- the run ------------------------------------------------------------------------------------

def figures(results: dict[str, dict[str, Timing]], sizes: dict[str, int], dd_rates: dict[str, float],
            limits: dict[str, float] | None = None) -> dict[str, float]:
    """Medians per case (a)-(f): {a_bb_stage_s, a_cp_ratio, a_rsync_ratio, ..., a_dd_pct, f_dd_pct, dd_mb_s,
    dd_out_mb_s, a_limit_pct, ...}; a ratio is the tool's seconds / bb_stage's (above 1 bb_stage is faster),
    X_dd_pct bb_stage's MB/s as % of dd's in the same direction, X_limit_pct the physical limit's seconds
    (``limits``) as % of bb_stage's."""
    found = {"dd_mb_s": dd_rates.get(LARGE_IN, 0.0), "dd_out_mb_s": dd_rates.get(LARGE_OUT, 0.0)}
    for case, timings in results.items():
        slug, bb = case[1], median(timings["bb_stage"].seconds)
        found[f"{slug}_bb_stage_s"] = bb
        if limits and case in limits:
            found[f"{slug}_limit_pct"] = limits[case] / bb * 100
        for tool, key in (("cp -r", "cp_ratio"), ("rsync -a", "rsync_ratio")):
            if tool in timings:
                found[f"{slug}_{key}"] = median(timings[tool].seconds) / bb
    for case, rate in dd_rates.items():
        found[f"{case[1]}_dd_pct"] = sizes[case] / found[f"{case[1]}_bb_stage_s"] / 1e6 / rate * 100
    return found


LARGE_IN, SMALL_IN, MIXED_IN = "(a) 4 x 256 MiB", "(b) 10,000 x 4 KiB in 40 dirs", "(c) mixed: 5,102 files, 390 MiB"
SMALL_OUT, MIXED_OUT, LARGE_OUT = "(d) (b) staged out to XFS", "(e) (c) staged out to XFS", "(f) (a) staged out to XFS"


def run(args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    """The report's lines and the headline figures (figures())."""
    rounds = 2 if args.quick else 5
    cases = set(args.cases or ("abcd" if args.quick else "abcdef"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="stg-bench-", dir="/var/tmp") as tmp:
        top = Path(tmp)
        top.chmod(0o755)
        log("making the source data ...")
        sources = make_sources(top / "src")
        sizes = {LARGE_IN: tree_bytes(sources["large"]), SMALL_IN: tree_bytes(sources["small"]),
                 MIXED_IN: tree_bytes(sources["mixed"]), SMALL_OUT: tree_bytes(sources["small"]),
                 MIXED_OUT: tree_bytes(sources["mixed"]), LARGE_OUT: tree_bytes(sources["large"])}
        with volume(top, args.layout) as vol, xfs_scratch(top) as pfs:
            vol.set_options(recommended(args.layout))
            bench = Bench(vol, pfs)
            tools = {"bb_stage": bb_stage(vol.mount), "bb_stage, FUSE mount only": bb_stage(vol.mount, use_gfapi=False),
                     "cp -r": cp, "rsync -a": rsync}
            results: dict[str, dict[str, Timing]] = {}
            dd_rates: dict[str, float] = {}
            if "a" in cases:
                log("(a) large files")
                results[LARGE_IN] = bench.compare("(a)", sources["large"], {**tools, DD: dd}, rounds)
                dd_rates[LARGE_IN] = 256 * MiB / median(results[LARGE_IN].pop(DD).seconds) / 1e6
            if "b" in cases:
                log("(b) small files")
                results[SMALL_IN] = bench.compare("(b)", sources["small"], tools, rounds, keep=True,
                                                  only_first={"rsync -a": 1 if args.quick else 3})
            if "c" in cases:
                log("(c) mixed tree")
                results[MIXED_IN] = bench.compare("(c)", sources["mixed"], tools, rounds,
                                                  only_first={"rsync -a": 1 if args.quick else 3})
            # Stage-out reads through the mount: libgfapi reads were slower (docs/BENCHMARKS.md).
            out_tools = {"bb_stage": bb_stage(vol.mount, "out"), "cp -r": cp, "rsync -a": rsync}
            out_rounds = 2 if args.quick else 3
            for case, kind, letter in ((SMALL_OUT, "small", "d"), (MIXED_OUT, "mixed", "e"), (LARGE_OUT, "large", "f")):
                if letter not in cases:
                    continue
                log(f"({letter}) {kind} staged out")
                staged = vol.mount / f"staged-{kind}"
                bb_stage(vol.mount)(sources[kind], staged)
                extra = {DD: dd} if kind == "large" else {
                    READ_ALONE: read_alone, GFAPI_READS: bb_stage(vol.mount, "out", gfapi_reads_from=0)}
                results[case] = bench.compare(f"({letter})", staged, {**out_tools, **extra}, out_rounds, inward=False)
                if kind == "large":
                    dd_rates[case] = 256 * MiB / median(results[case].pop(DD).seconds) / 1e6
            limits = physical_limits(bench, sources, results, out_rounds)
            study: dict[str, dict[str, Timing]] = {}
            by_workers: dict[str, dict[int, Timing]] = {}
            if not args.quick and not args.cases:
                study = run_study(bench, vol, sources["small"], 4)
                vol.set_options(recommended(args.layout))
                by_workers = run_workers(bench, vol, sources, 3)
    references = ", ".join(
        f"dd of one 256 MiB file (bs=1M) {where}: **{dd_rates[case]:.0f} MB/s**"
        for case, where in ((LARGE_IN, "into the mount"), (LARGE_OUT, "out of it onto the XFS, synced"))
        if case in dd_rates) or "no dd reference (cases (a) and (f) not run)"
    lines = [f"{started}; {machine()}.",
             f"Load average (1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f} at the "
             f"start, {os.getloadavg()[0]:.1f} at the end (the machine is shared). "
             f"{'Quick run' if args.quick else 'Full run'}: `.venv/bin/python benchmarks/staging.py"
             f"{' --quick' if args.quick else ''}{' --layout disperse' if args.layout == 'disperse' else ''}"
             f"{' --cases ' + ' '.join(args.cases) if args.cases else ''}`; "
             f"volume: {args.layout} over 3 bricks; stage-out onto XFS on a loop device; bb_stage with "
             f"{copy_engine.DEFAULT_WORKERS} workers, 64 MiB chunks; volume options "
             f"{', '.join(f'`{k} {v}`' for k, v in recommended(args.layout).items())}; {references}.",
             "", *main_table(results, sizes, dd_rates, limits)]
    if study:
        lines += ["", *study_table(study)]
    if by_workers:
        lines += ["", *workers_table(by_workers)]
    return lines, figures(results, sizes, dd_rates, limits)


KIND_OF = {LARGE_IN: "large", SMALL_IN: "small", MIXED_IN: "mixed", SMALL_OUT: "small", MIXED_OUT: "mixed",
           LARGE_OUT: "large"}


def physical_limits(bench: Bench, sources: dict[str, Path], results: dict[str, dict[str, Timing]],
                    rounds: int) -> dict[str, float]:
    """Per measured case, the median seconds of ``cp -r`` of the same tree from the page cache straight onto
    the XFS scratch (a loop device like each brick): what the disks and the kernel allow without GlusterFS,
    the limit every tool's figure is set beside (issue 15, item 7)."""
    by_kind = {}
    for kind in sorted({KIND_OF[case] for case in results}):
        log(f"the limit: {kind} straight onto XFS")
        by_kind[kind] = median(bench.compare(f"limit {kind}", sources[kind], {"cp -r": cp}, rounds,
                                             inward=False)["cp -r"].seconds)
    return {case: by_kind[KIND_OF[case]] for case in results}


def run_study(bench: Bench, vol: Volume, source: Path, rounds: int) -> dict[str, dict[str, Timing]]:
    """Each option set in turn, every round, so load drifts fall on all of them."""
    log("volume options study (small files)")
    defaults = vol.defaults
    results = {label: {"bb_stage": Timing()} for label in STUDY}
    for label in WITH_CP:
        results[label]["cp -r"] = Timing()
    for _round in range(rounds):
        for label, options in STUDY.items():
            vol.set_options({**defaults, **options})
            for tool, timing in results[label].items():
                copy = bb_stage(vol.mount) if tool == "bb_stage" else cp
                elapsed = timed(vol, copy, source, bench.target(True), timing)
                log(f"  {label}: {tool} {elapsed:.2f} s, gluster CPU {timing.cpu[-1]:.1f} s")
    vol.set_options(defaults)
    return results


def run_workers(bench: Bench, vol: Volume, sources: dict[str, Path], rounds: int) -> dict[str, dict[int, Timing]]:
    log("workers study")
    plan = {"(b) small files": (sources["small"], (8, 16, 32, 64), True),
            "(a) large files": (sources["large"], (4, 8, 16, 32), False)}
    results: dict[str, dict[int, Timing]] = {case: {w: Timing() for w in counts} for case, (_s, counts, _k)
                                             in plan.items()}
    for _round in range(rounds):
        for case, (source, counts, keep) in plan.items():
            for workers in counts:
                destination = bench.target(True)
                elapsed = timed(vol, bb_stage(vol.mount, workers=workers), source, destination,
                                results[case][workers])
                log(f"  {case}: {workers} workers {elapsed:.2f} s")
                if not keep:
                    shutil.rmtree(destination)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds, cases (a)-(d) only, no option or worker study (about 4 minutes)")
    parser.add_argument("--no-write", action="store_true", help="print the results, leave docs/BENCHMARKS.md")
    parser.add_argument("--cases", nargs="+", choices=list("abcdef"), metavar="LETTER",
                        help="only these cases (a-f; no option or worker study; docs/BENCHMARKS.md not "
                             "written), e.g. --cases d e f")
    parser.add_argument("--layout", choices=sorted(LAYOUT_WORDS), default="distribute",
                        help="the volume: plain distribute (default) or disperse 2+1 with quota, as a striped "
                             "buffer of two granules (bbctl.layouts)")
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it creates a GlusterFS volume and copies as the job owner")
    if not GLUSTERD_SOCKET.exists():
        sys.exit(f"the test bed is not up ({GLUSTERD_SOCKET} is missing): `bbctl testbed up` builds it")
    lines, found = run(args)
    print("\n".join(lines))
    results_doc.write_figures(args.json, found)
    if args.cases:
        log("--cases: docs/BENCHMARKS.md left as it is (its table holds every case)")
    elif not args.no_write:
        write_section(lines, args.layout)
        log(f"written to {BENCHMARKS_MD.relative_to(REPO)}")


if __name__ == "__main__":
    main()
