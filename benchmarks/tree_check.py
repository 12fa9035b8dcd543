"""Compare two directory trees as ``rsync -aH`` would leave a copy: exit 0 when they match.

``.venv/bin/python benchmarks/tree_check.py A B [--mtime-resolution-ns N] [--no-owner] [--limit N]``

What is compared, entry by entry (paths relative to each root, the roots themselves as ``.``):

- type (file, dir, symlink, fifo, socket, char, block), permission bits (``S_IMODE``: set-uid,
  set-gid and sticky included; not for symlinks, whose mode Linux fixes at 0777);
- owner and group (``--no-owner`` leaves them out: a copy made as another user);
- mtime at ``--mtime-resolution-ns`` (default 1: exact nanoseconds; 1000 for a filesystem that keeps
  microseconds), for every type, symlinks included (rsync -a sets them with lutimes);
- a symlink's target, as text, never followed;
- a regular file's content (BLAKE2b, read once per inode);
- hard links: the names of one inode inside the tree form a group; the two trees must partition
  their regular files into the same groups (a name whose other names are outside its tree is a
  group of one). A difference is reported once per group.

Not compared: atime (reading changes it), ctime, sizes on disk (holes: ``rsync -aH`` without ``-S``
fills them), extended attributes and ACLs (``-aH`` has no ``-X``/``-A``). Names are compared as the
bytes they are (str with surrogateescape); in output they are ``repr``-quoted, so a newline or a
non-UTF-8 byte shows as an escape.

Importable: ``snapshot(root)`` -> {relative path: Entry}, ``compare(a, b)`` -> [Difference].
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass

KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"),
         (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"))
READ = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One name of a tree: its attributes as compared (mtime already rounded down to the resolution)."""
    kind: str
    mode: int  # S_IMODE; 0 for a symlink
    uid: int
    gid: int
    mtime: int  # ns // resolution
    target: str | None  # a symlink's target
    digest: str | None  # a regular file's content
    links: frozenset[str]  # the other names of this inode in the tree (regular files only)


@dataclass(frozen=True)
class Difference:
    """What differs at ``path`` (relative): ``what`` is one of missing, extra, type, mode, owner, mtime,
    target, content, links; ``a`` and ``b`` are the two sides' values."""
    what: str
    path: str
    a: object
    b: object

    def __str__(self) -> str:
        return f"{self.what:8} {self.path!r}: {self.a!r} | {self.b!r}"


def kind_of(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "unknown")


def walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of the root ('.') and every entry below it; never follows a symlink.

    Iterative and one directory at a time: a tree of 200,000 names costs the snapshot, not a
    listing of it."""
    yield ".", os.lstat(root)
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(root, relative) if relative else root) as entries:
            for entry in entries:
                path = os.path.join(relative, entry.name) if relative else entry.name
                info = entry.stat(follow_symlinks=False)
                yield path, info
                if stat.S_ISDIR(info.st_mode):
                    pending.append(path)


def content_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(READ):
            digest.update(block)
    return digest.hexdigest()


def snapshot(root: str | os.PathLike, mtime_resolution_ns: int = 1) -> dict[str, Entry]:
    """{relative path: Entry} of the tree at ``root``. Raises OSError when it cannot be read."""
    root = os.fspath(root)
    raw, inodes = {}, {}
    for path, info in walk(root):
        raw[path] = info
        if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
            inodes.setdefault((info.st_dev, info.st_ino), []).append(path)
    digests: dict[tuple[int, int], str] = {}
    entries = {}
    for path, info in raw.items():
        entries[path] = entry_of(root, path, info, mtime_resolution_ns, inodes, digests)
    return entries


def entry_of(root: str, path: str, info: os.stat_result, resolution: int,
             inodes: dict[tuple[int, int], list[str]], digests: dict[tuple[int, int], str]) -> Entry:
    kind = kind_of(info.st_mode)
    full = os.path.join(root, path)
    target = os.readlink(full) if kind == "symlink" else None
    digest, links = None, frozenset()
    if kind == "file":
        key = (info.st_dev, info.st_ino)
        if key not in digests:
            digests[key] = content_digest(full)
        digest = digests[key]
        links = frozenset(inodes.get(key, [path])) - {path}
    mode = 0 if kind == "symlink" else stat.S_IMODE(info.st_mode)
    return Entry(kind, mode, info.st_uid, info.st_gid, info.st_mtime_ns // resolution, target, digest, links)


def compare_entry(path: str, a: Entry, b: Entry, owners: bool = True) -> list[Difference]:
    """The differences of one name present in both trees (links: see compare)."""
    if a.kind != b.kind:
        return [Difference("type", path, a.kind, b.kind)]
    found = []
    checks = [("mode", oct(a.mode), oct(b.mode)), ("mtime", a.mtime, b.mtime),
              ("target", a.target, b.target), ("content", a.digest, b.digest)]
    if owners:
        checks.insert(1, ("owner", (a.uid, a.gid), (b.uid, b.gid)))
    for what, left, right in checks:
        if left != right:
            found.append(Difference(what, path, left, right))
    return found


def compare(a: dict[str, Entry], b: dict[str, Entry], owners: bool = True) -> list[Difference]:
    """Every difference between two snapshots, in path order; a hard-link group that differs is
    reported once, at its first name (the groups as sorted lists of names)."""
    found = []
    reported_groups = set()
    for path in sorted(a.keys() | b.keys()):
        if path not in b:
            found.append(Difference("missing", path, a[path].kind, None))
        elif path not in a:
            found.append(Difference("extra", path, None, b[path].kind))
        else:
            found.extend(compare_entry(path, a[path], b[path], owners))
            left, right = a[path].links | {path}, b[path].links | {path}
            if a[path].kind == b[path].kind == "file" and left != right and \
                    frozenset(left) not in reported_groups:
                reported_groups.add(frozenset(left))
                reported_groups.add(frozenset(right))
                found.append(Difference("links", path, sorted(left), sorted(right)))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", help="the reference tree (e.g. what rsync -aH made, or the source)")
    parser.add_argument("b", help="the tree to check")
    parser.add_argument("--mtime-resolution-ns", type=int, default=1, metavar="N",
                        help="compare mtimes in units of N ns (default 1: exact)")
    parser.add_argument("--no-owner", action="store_true", help="leave owner and group out")
    parser.add_argument("--limit", type=int, default=50, help="print at most this many differences")
    args = parser.parse_args(argv)
    differences = compare(snapshot(args.a, args.mtime_resolution_ns),
                          snapshot(args.b, args.mtime_resolution_ns), owners=not args.no_owner)
    for difference in differences[:args.limit]:
        print(difference)
    if len(differences) > args.limit:
        print(f"... and {len(differences) - args.limit} more")
    print(f"{len(differences)} difference(s); mtime resolution {args.mtime_resolution_ns} ns"
          f"{'' if args.no_owner else ', owners compared'}", file=sys.stderr)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
