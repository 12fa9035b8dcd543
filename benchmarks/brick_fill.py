"""Filling a dispersed volume to its quota: brick mount options side by side.

Run (as root): ``.venv/bin/python benchmarks/brick_fill.py [--rounds 3] [--quota-share 0.92] [--write-doc]``,
or with ``--no-quota`` (below).

Why: the layouts benchmark saw writers of dispersed volumes get EIO before the quota's EDQUOT.
A dispersed file is written to every brick of its set, so a volume only fails cleanly when its
quota trips before any brick is full. XFS's dynamic speculative preallocation keeps blocks
beyond what was written on some bricks and not others, so one brick fills first and the
erasure code, short of fragments, answers EIO. This benchmark shows it and the mount option
that prevents it: on the layouts benchmark's private bed (127.1.2.x, 1 GiB bricks), a
``disperse 4 redundancy 1`` volume with a quota of ``--quota-share`` of its three data bricks'
usable space is filled with 64 MiB files (dd, fsync) until the writer gets an error, with the
bricks mounted first with ``noatime,inode64`` (the old default) and then with
block_devices.BRICK_MOUNT_OPTIONS (``allocsize=64k`` added), alternating, ``--rounds`` times each.

Reported per fill: bytes in files as a share of the quota, the writer's error, and each
brick's used MiB (a clean fill leaves them equal). Like layouts.py, run it while no other
GlusterFS cluster on this machine holds a volume with quota (they share one quotad socket).

``--no-quota`` asks the next question (docs/RELIABILITY.md, the privileged-port budget: every
quota enable and delete restarts every server's quotad): does a dispersed volume on bricks
mounted with BRICK_MOUNT_OPTIONS fail cleanly when it has no quota and its bricks fill? Each
round fills a volume without quota, once with one file and once with 64 MiB files, and then
reads every file back; reported: bytes in files as a share of the data bricks' free space, the
writer's error, the files that could not be read whole, and the bricks' used MiB.

``--quorum`` tries the exact-limit defect (issue 10: filled to its quota, a dispersed volume may answer EIO
and lose the file written last, because each brick judges the crossing write against quotad by itself).
``disperse.quorum-count`` is how many bricks must take a write for the client to call it done (default:
the data bricks). Set to every brick, a write some brick refused should fail as a whole, before the bricks
drift apart. Each round fills two volumes with quota (``--quota-mib``), one with the default and one with
``quorum-count`` = all bricks, alternating one file and 64 MiB files, and reads every file back; then a
write to each while one brick process is killed (what the stricter quorum costs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import layouts  # benchmarks/, beside this script
import results_doc
from layouts import Bed, Layout, MiB, sh

from bbctl.collection import block_devices

BEGIN, END = "<!-- brick-fill-results:begin -->", "<!-- brick-fill-results:end -->"
NOQ_BEGIN, NOQ_END = "<!-- brick-fill-no-quota:begin -->", "<!-- brick-fill-no-quota:end -->"
QUO_BEGIN, QUO_END = "<!-- brick-fill-quorum:begin -->", "<!-- brick-fill-quorum:end -->"
OLD_OPTIONS = "noatime,inode64"
LAYOUT = Layout("disperse 3+1", 4, 3, ("disperse", "4", "redundancy", "1"))


def remount_bricks(bed: Bed, options: str) -> None:
    for _address, mount in bed.bricks:
        device = sh("findmnt", "-n", "-o", "SOURCE", mount).stdout.strip()
        sh("umount", mount)
        sh("mount", "-t", "xfs", "-o", options, device, mount)


def brick_used_mib(bed: Bed) -> list[int]:
    used = []
    for _address, mount in bed.bricks[:LAYOUT.bricks]:
        st = os.statvfs(mount)
        used.append((st.f_blocks - st.f_bfree) * st.f_frsize // MiB)
    return used


@contextlib.contextmanager
def scratch_volume(bed: Bed, volume: str, quota: int | None, extra: dict[str, str] | None = None) -> Iterator[Path]:
    """LAYOUT as ``volume`` (quota in bytes or None, more options), mounted; gone afterwards."""
    mount = layouts.WORK / f"mnt-{volume}"
    layouts.create(bed, LAYOUT, volume, quota, extra=extra)
    try:
        layouts.mount_volume(bed, volume, mount)
        yield mount
    finally:
        sh("umount", "-l", mount, check=False)
        layouts.destroy(bed, volume, mount)


def fill_and_read(bed: Bed, mount: Path, many: bool, space: int) -> dict:
    """Fill ``mount`` (one file or 64 MiB files) and read every file back; the bricks' used MiB tell a
    file cut back (bricks full) from writes refused."""
    result = layouts.fill(bed, mount, many=many)
    bad = [] if result.hung else unreadable(mount)
    return {"files": "64 MiB files" if many else "one file", "share": result.written / space,
            "error": result.error, "stall_s": result.stall_s, "unreadable": bad, "bricks": brick_used_mib(bed)}


def one_fill(bed: Bed, index: int, quota: int) -> dict:
    with scratch_volume(bed, f"fill{index}", quota) as mount:
        result = layouts.fill(bed, mount, many=True)
        return {"share": result.written / quota, "error": result.error, "bricks": brick_used_mib(bed)}


def unreadable(mount) -> list[str]:
    """Files under ``mount`` that cannot be read to their end (a dispersed file short of fragments: EIO)."""
    bad = []
    for entry in sorted(os.scandir(mount), key=lambda e: e.name):
        done = sh("cat", entry.path, check=False, timeout=300) if entry.is_file() else None
        if done is not None and done.returncode != 0:
            bad.append(f"{entry.name}: {layouts.first_error(done.stderr)}")
    return bad


def fill_without_quota(bed: Bed, index: int, many: bool, space: int) -> dict:
    with scratch_volume(bed, f"noq{index}", None) as mount:
        return fill_and_read(bed, mount, many, space)


def render_without_quota(rows: list[dict], space: int, started: str) -> list[str]:
    lines = [f"Measured {started} by `benchmarks/brick_fill.py --no-quota`: {LAYOUT.name} over four 1 GiB XFS "
             f"loop bricks mounted `{block_devices.BRICK_MOUNT_OPTIONS}`, no quota, data bricks' free space "
             f"{space // MiB} MiB, dd (4 MiB blocks, fsync) until the writer's error, then every file read "
             f"back; {layouts.machine()}.", "",
             "| fill | written / free space | writer's error | s from last progress to the error | files not readable "
             "| bricks' used MiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['files']} | {row['share']:.1%} | {row['error']} | {row['stall_s']:.1f} | "
                     f"{'; '.join(row['unreadable']) or 'none'} | {' / '.join(map(str, row['bricks']))} |")
    return lines


def figures_without_quota(rows: list[dict]) -> dict[str, float]:
    """{noquota_fills, noquota_clean_fills, noquota_min_fill_pct, noquota_unreadable_files}: a clean fill ends
    in ENOSPC with every file readable."""
    return {"noquota_fills": len(rows),
            "noquota_clean_fills": sum(row["error"] == "No space left on device" and not row["unreadable"]
                                       for row in rows),
            "noquota_min_fill_pct": min((row["share"] * 100 for row in rows), default=None),
            "noquota_unreadable_files": sum(len(row["unreadable"]) for row in rows)}


def usable_quota(bed: Bed, share: float) -> int:
    """share of the data bricks' free space, in whole MiB (what gluster's limit-usage takes)."""
    st = os.statvfs(bed.bricks[0][1])
    return int(st.f_bavail * st.f_frsize * LAYOUT.data_bricks * share) // MiB * MiB


QUORUMS = (("default (data bricks)", None), ("all bricks", str(LAYOUT.bricks)))


def quorum_options(count: str | None) -> dict[str, str]:
    return {"disperse.quorum-count": count} if count else {}


def quorum_fill(bed: Bed, index: int, count: str | None, many: bool, quota: int) -> dict:
    """Fill a volume with quota ``quota`` and disperse.quorum-count ``count``; its error, unreadable files."""
    with scratch_volume(bed, f"quo{index}", quota, quorum_options(count)) as mount:
        return fill_and_read(bed, mount, many, quota)


def quorum_brick_loss(bed: Bed, index: int, count: str | None, source: Path) -> str:
    """What a writer and a read-back see when one brick process dies mid-write (layouts.brick_killed)."""
    volume = f"qbl{index}"
    with scratch_volume(bed, volume, None, quorum_options(count)) as mount:
        return layouts.brick_killed(bed, volume, mount, source)


def quorum(args: argparse.Namespace) -> None:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows: list[dict] = []
    source = layouts.WORK / "source"
    with private_bed() as bed:
        remount_bricks(bed, block_devices.BRICK_MOUNT_OPTIONS)
        layouts.WORK.mkdir(parents=True, exist_ok=True)
        sh("dd", "if=/dev/urandom", f"of={source}", "bs=1M", "count=256", "status=none")
        for index in range(2 * args.rounds):
            for name, count in QUORUMS:
                row = quorum_fill(bed, len(rows), count, many=bool(index % 2), quota=args.quota_mib * MiB)
                rows.append({"quorum": name, **row})
                print(rows[-1], flush=True)
        losses = {name: quorum_brick_loss(bed, 100 + k, count, source) for k, (name, count) in enumerate(QUORUMS)}
        print(losses, flush=True)
    publish(args, render_quorum(rows, losses, args.quota_mib, started), figures_quorum(rows),
            (QUO_BEGIN, QUO_END, "Filling a dispersed buffer: disperse.quorum-count"))


def render_quorum(rows: list[dict], losses: dict[str, str], quota_mib: int, started: str) -> list[str]:
    lines = [f"Measured {started} by `benchmarks/brick_fill.py --quorum`: {LAYOUT.name} over four 1 GiB XFS "
             f"loop bricks mounted `{block_devices.BRICK_MOUNT_OPTIONS}`, quota {quota_mib} MiB (with the "
             f"role's quota timeouts), dd (4 MiB blocks, fsync) until the writer's error, then every file read "
             f"back; {layouts.machine()}.", "",
             "| disperse.quorum-count | fill | written / quota | writer's error | files not readable "
             "| bricks' used MiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['quorum']} | {row['files']} | {row['share']:.1%} | {row['error']} | "
                     f"{'; '.join(row['unreadable']) or 'none'} | {' / '.join(map(str, row['bricks']))} |")
    lines += ["", "| disperse.quorum-count | a 256 MiB write while one brick process is killed |", "| --- | --- |"]
    lines += [f"| {name} | {seen} |" for name, seen in losses.items()]
    return lines


def figures_quorum(rows: list[dict]) -> dict[str, float]:
    """Per quorum (default, all): fills, fills that ended in EDQUOT with every file readable, files lost."""
    found = {}
    for (name, _count), slug in zip(QUORUMS, ("default", "all"), strict=True):
        fills = [row for row in rows if row["quorum"] == name]
        found |= {f"quorum_{slug}_fills": len(fills),
                  f"quorum_{slug}_clean_fills": sum("quota exceeded" in row["error"] and not row["unreadable"]
                                                    for row in fills),
                  f"quorum_{slug}_unreadable_files": sum(len(row["unreadable"]) for row in fills)}
    return found


def render(rows: list[tuple[str, dict]], quota: int, started: str) -> list[str]:
    lines = [f"Measured {started} by `benchmarks/brick_fill.py`: {LAYOUT.name} over four 1 GiB XFS loop bricks, "
             f"quota {quota // MiB} MiB, 64 MiB files (dd, fsync) until the writer's error; "
             f"{layouts.machine()}.", "",
             "| brick mount options | written / quota | writer's error | bricks' used MiB |",
             "| --- | --- | --- | --- |"]
    for options, row in rows:
        lines.append(f"| `{options}` | {row['share']:.1%} | {row['error']} | {' / '.join(map(str, row['bricks']))} |")
    return lines


def figures(rows: list[tuple[str, dict]]) -> dict[str, float]:
    """Per brick mount options (old: OLD_OPTIONS, new: BRICK_MOUNT_OPTIONS): {old_fills, old_edquot_fills,
    old_min_fill_pct, new_...}; a clean fill ends in EDQUOT ("Disk quota exceeded"), near 100 %."""
    found = {}
    for slug, options in (("old", OLD_OPTIONS), ("new", block_devices.BRICK_MOUNT_OPTIONS)):
        fills = [row for used, row in rows if used == options]
        found |= {f"{slug}_fills": len(fills),
                  f"{slug}_edquot_fills": sum("quota exceeded" in row["error"] for row in fills),
                  f"{slug}_min_fill_pct": min((row["share"] * 100 for row in fills), default=None)}
    return found


@contextlib.contextmanager
def private_bed() -> Iterator[Bed]:
    """The layouts benchmark's bed of 1 GiB bricks, up for the block and gone after it, whatever happened."""
    bed = Bed(1024**3)
    layouts.manager.up(bed.config, print)
    try:
        yield bed
    finally:
        for mount in layouts.WORK.glob("mnt*"):
            subprocess.run(["umount", "-l", str(mount)], check=False)
        layouts.manager.down(layouts.ROOT, print)
        shutil.rmtree(layouts.ROOT, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quota-share", type=float, default=0.92, help="of the data bricks' free space")
    parser.add_argument("--no-quota", action="store_true",
                        help="fill volumes without quota (bricks as BRICK_MOUNT_OPTIONS mounts them) and read back")
    parser.add_argument("--quorum", action="store_true",
                        help="fill volumes with quota, disperse.quorum-count default against all bricks (issue 10)")
    parser.add_argument("--quota-mib", type=int, default=256, help="with --quorum: each volume's quota")
    parser.add_argument("--write-doc", action="store_true", help="replace the results in docs/BENCHMARKS.md")
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    if args.no_quota:
        without_quota(args)
        return
    if args.quorum:
        quorum(args)
        return
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    with private_bed() as bed:
        quota = usable_quota(bed, args.quota_share)
        for index in range(2 * args.rounds):
            options = (OLD_OPTIONS, block_devices.BRICK_MOUNT_OPTIONS)[index % 2]
            remount_bricks(bed, options)
            rows.append((options, one_fill(bed, index, quota)))
            print(rows[-1], flush=True)
    publish(args, render(rows, quota, started), figures(rows),
            (BEGIN, END, "Filling a dispersed buffer: brick mount options"))


def without_quota(args: argparse.Namespace) -> None:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows: list[dict] = []
    with private_bed() as bed:
        remount_bricks(bed, block_devices.BRICK_MOUNT_OPTIONS)
        space = usable_quota(bed, 1.0)
        for index in range(2 * args.rounds):
            rows.append(fill_without_quota(bed, index, many=bool(index % 2), space=space))
            print(rows[-1], flush=True)
    publish(args, render_without_quota(rows, space, started), figures_without_quota(rows),
            (NOQ_BEGIN, NOQ_END, "Filling a dispersed buffer without quota"))


def publish(args: argparse.Namespace, lines: list[str], found: dict, section: tuple[str, str, str]) -> None:
    """Print the table, write the figures (--json) and, with --write-doc, the (begin, end, heading) section."""
    results_doc.publish(lines, found, args.json, section if args.write_doc else None)


if __name__ == "__main__":
    main()
