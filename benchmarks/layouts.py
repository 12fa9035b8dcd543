"""GlusterFS layouts for a striped buffer, side by side on nine loopback bricks.

Run (as root): ``.venv/bin/python benchmarks/layouts.py [--quick] [--brick-size 2GiB] [--write-doc]``

Builds its own small test bed (three glusterd on 127.1.2.1-3, three XFS loop
bricks each, no Slurm) under /var/lib/bbctl-layouts, so it never touches the
main test bed, and removes it afterwards. For each layout it creates a volume
over the first bricks it needs with the raw gluster CLI, sets quota to the capacity a job
would be booked for (data bricks x brick size, as Slurm books granules), mounts
it with FUSE and measures:

- setup and teardown seconds (create, options, start, quota; stop, delete, rm);
- one writer's MB/s for one file (dd, fsync) and its read-back after dropping caches;
- four writers' aggregate MB/s, one file each;
- many small files: ``cp -r`` of N x 4 KiB (the staging benchmark's case);
- fill with one file, then with many 64 MiB files, until the writer gets an
  error: bytes as a fraction of the quota capacity, the error, and how long the
  writer was stuck between its last progress and the error. A writer with no
  progress for STALL seconds is a hang: it is killed and the mount lazily
  unmounted (GlusterFS's sharding hangs here; see docs/BENCHMARKS.md);
- one brick process killed (SIGKILL) while a file is written: does the write
  finish, and does the file read back with the right checksum.

Run it while no other GlusterFS cluster on this machine (the main test bed) holds a volume with quota:
every quotad listens on /var/run/gluster/quotad.socket, and bricks that ask another cluster's quotad refuse
creates (EINVAL). Three glusterd of one cluster share it harmlessly (they answer for the same volumes).

Progress is read from the bricks' own XFS usage (statvfs of local mounts), never
through the FUSE mount, which may be the thing that hangs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import results_doc  # benchmarks/, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bbctl.collection import sizes  # noqa: E402
from bbctl.testbed import manager  # noqa: E402
from bbctl.testbed.config import TestbedConfig  # noqa: E402

ROOT = Path("/var/lib/bbctl-layouts")
WORK = ROOT / "work"
PREFIX = "127.1.2"
BEGIN, END = "<!-- layouts-results:begin -->", "<!-- layouts-results:end -->"
MiB = 1024**2
STALL = 30.0  # seconds without progress that count as a hang
QUOTA_OPTIONS = {"features.soft-timeout": "1", "features.hard-timeout": "0"}  # as roles/gluster_buffer sets them


@dataclass(frozen=True)
class Layout:
    """A volume over the first ``bricks`` bricks: ``create`` words after the name, options, data bricks."""

    name: str
    bricks: int
    data_bricks: int
    create: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)


SHARD = {"features.shard": "on", "features.shard-block-size": "64MB"}
# Four granules of capacity each (what bbctl gives a job of 4 bricks' capacity), then the shapes bbctl
# ships for three and six granules, and a power of two (eight) beside them.
LAYOUTS = (
    Layout("distribute", 4, 4),
    Layout("shard 64MB", 4, 4, options=SHARD),
    Layout("disperse 4+1 (shipped)", 5, 4, ("disperse", "5", "redundancy", "1")),
    Layout("disperse 4+2", 6, 4, ("disperse", "6", "redundancy", "2")),
    Layout("2 x disperse 2+1", 6, 4, ("disperse", "3", "redundancy", "1")),
    Layout("disperse 3+1 (shipped)", 4, 3, ("disperse", "4", "redundancy", "1")),
    Layout("disperse 6+1 (shipped)", 7, 6, ("disperse", "7", "redundancy", "1")),
    Layout("disperse 8+1 (shipped)", 9, 8, ("disperse", "9", "redundancy", "1")),
)


def sh(*argv: object, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check, timeout=timeout,
                          env=dict(os.environ, LANG="C", LC_ALL="C"))


class Bed:
    """The private test bed: its glusterd socket, bricks and brick mounts."""

    def __init__(self, brick_size: int) -> None:
        self.config = TestbedConfig(root=ROOT, bricks_per_server=3, brick_size=brick_size, address_prefix=PREFIX,
                                    slurm="none")
        self.socket = self.config.nodes[0].socket
        # brick order puts consecutive bricks on different servers, as bbctl's allocator does
        self.bricks = [(node.address, node.brick_mount(k)) for k in (1, 2, 3) for node in self.config.nodes]

    def gluster(self, *args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("gluster", "--mode=script", f"--glusterd-sock={self.socket}", *args, check=check)

    def used(self) -> int:
        total = 0
        for _address, mount in self.bricks:
            st = os.statvfs(mount)
            total += (st.f_blocks - st.f_bfree) * st.f_frsize
        return total

    def brick_pids(self, volume: str) -> list[int]:
        """The brick processes of ``volume``, in brick order (``volume status`` also lists its daemons)."""
        nodes = ElementTree.fromstring(self.gluster("volume", "status", volume, "--xml").stdout).iter("node")
        return [int(node.findtext("pid")) for node in nodes if (node.findtext("path") or "").startswith("/")]


@dataclass
class Fill:
    written: int
    error: str
    stall_s: float
    hung: bool


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def watch(bed: Bed, proc: subprocess.Popen, mount: Path) -> tuple[bool, float]:
    """Wait for ``proc``; (hung, seconds from its last progress on the bricks to its end)."""
    last, last_change = bed.used(), time.monotonic()
    while proc.poll() is None:
        time.sleep(0.5)
        now_used = bed.used()
        if now_used != last:
            last, last_change = now_used, time.monotonic()
        elif time.monotonic() - last_change > STALL:
            os.killpg(proc.pid, signal.SIGKILL)  # bash and its dd
            abort_fuse(mount)
            sh("umount", "-l", mount, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            return True, time.monotonic() - last_change
    return False, time.monotonic() - last_change


def abort_fuse(mount: Path) -> None:
    """Abort the FUSE connection under ``mount``, so a writer stuck in it gets an error (no stat of the mount)."""
    connections = Path("/sys/fs/fuse/connections")
    mounted_here = not os.path.ismount(connections)
    if mounted_here:
        sh("mount", "-t", "fusectl", "fusectl", connections)
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields[4] == str(mount):
                (connections / fields[2].split(":")[1] / "abort").write_text("1\n")
    finally:
        if mounted_here:
            sh("umount", connections, check=False)


def first_error(text: str) -> str:
    for known in ("No space left on device", "Disk quota exceeded", "Input/output error",
                  "Transport endpoint is not connected", "Stale file handle"):
        if known in text:
            return known
    return text.strip().splitlines()[-1] if text.strip() else "none"


def fill(bed: Bed, mount: Path, many: bool) -> Fill:
    if many:
        script = ('i=0; while dd if=/dev/zero of="$1/f$i" bs=4M count=16 conv=fsync status=none; '
                  'do i=$((i+1)); done')
    else:
        script = 'dd if=/dev/zero of="$1/big" bs=4M conv=fsync status=none'
    start = bed.used()
    proc = subprocess.Popen(["bash", "-c", script, "fill", str(mount)], stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    hung, stall = watch(bed, proc, mount)
    reader.join(timeout=5)
    # what the files hold (bricks also hold redundancy); a hung mount is not asked again
    error = "hang" if hung else first_error("".join(stderr))
    try:
        written = bed.used() - start if hung else sum(entry.stat().st_size for entry in os.scandir(mount)
                                                      if entry.is_file())
    except OSError as exc:  # a dispersed file whose bricks filled unevenly can no longer be read
        written, error = bed.used() - start, f"{error}, then {exc.strerror} on stat (bricks' bytes)"
    return Fill(written, error, stall, hung)


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds


def write_read(mount: Path, count: int, each: int) -> tuple[float, float]:
    """MB/s of ``count`` concurrent dd writers of ``each`` bytes (fsync), then of reading them back."""
    start = time.perf_counter()
    writers = [subprocess.Popen(["dd", "if=/dev/zero", f"of={mount}/w{i}", "bs=4M", f"count={each // (4 * MiB)}",
                                 "conv=fsync", "status=none"]) for i in range(count)]
    if any(w.wait() for w in writers):
        raise RuntimeError("a writer failed")
    written = time.perf_counter() - start
    drop_caches()
    start = time.perf_counter()
    readers = [subprocess.Popen(["dd", f"if={mount}/w{i}", "of=/dev/null", "bs=4M", "status=none"])
               for i in range(count)]
    if any(r.wait() for r in readers):
        raise RuntimeError("a reader failed")
    read = time.perf_counter() - start
    for i in range(count):
        os.unlink(f"{mount}/w{i}")
    return rate(count * each, written), rate(count * each, read)


def small_files(mount: Path, source: Path) -> float:
    start = time.perf_counter()
    sh("cp", "-r", source, mount / "small")
    seconds = time.perf_counter() - start
    shutil.rmtree(mount / "small")
    return seconds


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def brick_killed(bed: Bed, volume: str, mount: Path, source: Path) -> str:
    """Write ``source`` while one brick process is killed; what the writer and a read-back saw."""
    proc = subprocess.Popen(["dd", f"if={source}", f"of={mount}/k", "bs=1M", "conv=fsync", "status=none"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(1.0)
    os.kill(bed.brick_pids(volume)[1], 9)
    hung, _ = watch(bed, proc, mount)
    if hung:
        return "writer hung"
    error = first_error(proc.stderr.read()) if proc.returncode else ""
    drop_caches()
    try:
        same = sha256(mount / "k") == sha256(source)
    except OSError as exc:
        return f"write: {error or 'ok'}; read: {exc.strerror}"
    return f"write: {error or 'ok'}; read back {'identical' if same else 'DIFFERENT'}"


def create(bed: Bed, layout: Layout, volume: str, capacity: int | None, extra: dict[str, str] | None = None) -> float:
    """Seconds to create and start ``volume``, with a quota of ``capacity`` bytes unless it is None, and the
    layout's options plus ``extra``."""
    start = time.perf_counter()
    bed.gluster("volume", "create", volume, *layout.create, "transport", "tcp",
                *[f"{address}:{root / volume}" for address, root in bed.bricks[:layout.bricks]], "force")
    options = {**layout.options, **(QUOTA_OPTIONS if capacity is not None else {}), **(extra or {})}
    for key, value in options.items():
        bed.gluster("volume", "set", volume, key, value)
    bed.gluster("volume", "start", volume)
    if capacity is not None:
        bed.gluster("volume", "quota", volume, "enable")
        bed.gluster("volume", "quota", volume, "limit-usage", "/", f"{capacity // MiB}MB")
    return time.perf_counter() - start


def destroy(bed: Bed, volume: str, mount: Path) -> float:
    if os.path.ismount(mount):
        sh("umount", mount, check=False)
    start = time.perf_counter()
    bed.gluster("volume", "stop", volume, "force", check=False)
    bed.gluster("volume", "delete", volume, check=False)
    for _address, root in bed.bricks:
        shutil.rmtree(root / volume, ignore_errors=True)
    return time.perf_counter() - start


def mount_volume(bed: Bed, volume: str, mount: Path) -> None:
    """Mount, then wait until a file can be made: a fresh mount briefly refused creates (EINVAL) here while
    the client switched to the graph with quota."""
    mount.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "glusterfs", f"{bed.bricks[0][0]}:/{volume}", mount)
    probe = mount / ".probe"
    for _ in range(40):
        try:
            probe.touch()
            probe.unlink()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{volume}: no file can be created on its fresh mount")


def measure(bed: Bed, layout: Layout, index: int, args: argparse.Namespace, sources: dict[str, Path]) -> dict:
    volume, mount = f"lay{index}", WORK / f"mnt{index}"
    capacity = layout.data_bricks * args.brick_size
    row: dict[str, object] = {"layout": layout.name, "bricks": layout.bricks, "capacity": capacity}
    row["setup_s"] = create(bed, layout, volume, capacity)
    try:
        mount_volume(bed, volume, mount)
        row["df"] = shutil.disk_usage(mount).total
        one = args.brick_size // 2 // (4 * MiB) * 4 * MiB  # fits whole on one brick, so distribute can take it
        row["write1"], row["read1"] = write_read(mount, 1, one)
        row["write4"], row["read4"] = write_read(mount, 4, one // 4 // (4 * MiB) * 4 * MiB)
        row["small_s"] = statistics.median(small_files(mount, sources["small"]) for _ in range(args.rounds))
        row["killed"] = brick_killed(bed, volume, mount, sources["random"])
        bed.gluster("volume", "start", volume, "force")  # bring the killed brick back before filling
        for kind in ("one file", "many files"):
            sh("umount", "-l", mount, check=False)
            destroy(bed, volume, mount)
            create(bed, layout, volume, capacity)
            mount_volume(bed, volume, mount)
            row[kind] = fill(bed, mount, many=kind == "many files")
    finally:
        row["teardown_s"] = destroy(bed, volume, mount)
    left = sum(1 for _a, root in bed.bricks if (root / volume).exists())
    row["left"] = left
    return row


def make_sources(count: int, random_size: int) -> dict[str, Path]:
    small = WORK / "src-small"
    small.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (small / f"f{i:05d}").write_bytes(os.urandom(4096))
    random_file = WORK / "src-random"
    with open(random_file, "wb") as handle:
        for _ in range(random_size // MiB):
            handle.write(os.urandom(MiB))
    return {"small": small, "random": random_file}


def gib(nbytes: int) -> str:
    return f"{nbytes / 1024**3:.2f}"


def figures(rows: list[dict]) -> dict[str, float]:
    """Per layout ("disperse 4+1 (shipped)" becomes disperse_4_1): {..._write1_mb_s, ..._read1_mb_s, ..._small_s,
    ..._fill_many_pct} (one writer's MB/s, cp -r of the small files in s, the many-file fill's bytes as % of
    the quota)."""
    found = {}
    for r in rows:
        slug = re.sub(r"\W+", "_", r["layout"].replace(" (shipped)", "")).strip("_").lower()
        found |= {f"{slug}_write1_mb_s": r["write1"], f"{slug}_read1_mb_s": r["read1"], f"{slug}_small_s": r["small_s"],
                  f"{slug}_fill_many_pct": r["many files"].written / r["capacity"] * 100}
    return found


def render(rows: list[dict], args: argparse.Namespace, started: str) -> list[str]:
    brick = sizes.format_size(args.brick_size)
    lines = [f"Measured {started} by `benchmarks/layouts.py{' --quick' if args.quick else ''}` on {brick} "
             f"bricks (XFS loop images 4 % + 64 MiB larger, as the test bed makes them; three glusterd on "
             f"loopback), {machine()}.", "",
             "| layout | bricks | quota = booked GiB | df GiB | setup s | teardown s | 1 writer MB/s | read MB/s "
             "| 4 writers MB/s | read MB/s | cp -r small files s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['bricks']} | {gib(r['capacity'])} | {gib(r['df'])} | {r['setup_s']:.2f} | "
                     f"{r['teardown_s']:.2f} | {r['write1']:.0f} | {r['read1']:.0f} | {r['write4']:.0f} | "
                     f"{r['read4']:.0f} | {r['small_s']:.2f} |")
    lines += ["", "| layout | fill, one file: written / booked, error, stuck s | fill, 64 MiB files | "
              "brick process killed mid-write | brick dirs left |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [f"{r[k].written / r['capacity']:.1%}, {r[k].error}, {r[k].stall_s:.1f}"
                 for k in ("one file", "many files")]
        lines.append(f"| {r['layout']} | {cells[0]} | {cells[1]} | {r['killed']} | {r['left']} |")
    return lines


def machine() -> str:
    version = sh("glusterfs", "--version").stdout.splitlines()[0]
    return f"{os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // 1024**3} GiB, " \
           f"{version}"


def write_section(lines: list[str]) -> None:
    results_doc.write_section(BEGIN, END, lines, "Layouts for striped buffers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 GiB bricks, 2,000 small files, one round")
    parser.add_argument("--brick-size", type=sizes.parse_size, default=None, help="default 2GiB (1GiB with --quick)")
    parser.add_argument("--only", action="append", help="measure only this layout (repeatable)")
    parser.add_argument("--write-doc", action="store_true", help="replace the results in docs/BENCHMARKS.md")
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    args.brick_size = args.brick_size or (1024**3 if args.quick else 2 * 1024**3)
    args.rounds = 1 if args.quick else 3
    layouts = [lay for lay in LAYOUTS if not args.only or lay.name in args.only]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    bed = Bed(args.brick_size)
    manager.up(bed.config, print)
    try:
        sources = make_sources(2000 if args.quick else 10000, 256 * MiB)
        rows = []
        for index, layout in enumerate(layouts):
            print(f"--- {layout.name}", flush=True)
            rows.append(measure(bed, layout, index, args, sources))
            print(rows[-1], flush=True)
    finally:
        for mount in WORK.glob("mnt*"):
            sh("umount", "-l", mount, check=False)
        manager.down(ROOT, print)
        shutil.rmtree(ROOT, ignore_errors=True)
    lines = render(rows, args, started)
    print("\n".join(lines))
    results_doc.write_figures(args.json, figures(rows))
    if args.write_doc:
        write_section(lines)


if __name__ == "__main__":
    main()
