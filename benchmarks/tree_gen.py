"""Generate a tree as users have them, deterministically from a seed: ``tree_check.py``'s test input.

``.venv/bin/python benchmarks/tree_gen.py ROOT --files 200000 [--size 1024] [--seed 1] [--owner UID:GID]``

ROOT must not exist. ``--files`` regular files (inodes) of ``--size`` bytes each, ``--per-dir`` to
a leaf directory, the leaves under a balanced tree of directories (``--fanout`` a level), and in
among them, each in proportion to the files (at least one of each):

- hard links: groups of two names in one directory and of three names across directories;
- symlinks: relative to a file in the tree, absolute out of it (/etc/passwd), ``..`` out of it,
  dangling, and to a directory;
- names with a space, a newline, a non-UTF-8 byte (0xff), and a long one (200 bytes);
- modes 0644 (most), 0600, 0755, 0444, 04755, 01644; directories 0755, 0750, 0700, 02775 and a
  read-only 0555 with files in it; empty directories, nested and alone;
- sparse files (a hole of ``--hole`` bytes, then the file's data);
- an mtime with nanoseconds on every entry (files, directories and symlinks).

The same arguments give the same tree (names, contents, modes, times). Owners are whoever runs
this, or ``--owner`` (as root): a copy made as a user cannot vary them, so neither does this.
Prints a summary (JSON) of what it made.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass, field

BASE_MTIME = 1_600_000_000_000_000_000  # ns: 2020-09-13
FEATURE_EVERY = 50  # one file in this many carries an extra feature (links, symlinks)
FILE_MODES = [(0o644, 90), (0o600, 3), (0o755, 3), (0o444, 2), (0o4755, 1), (0o1644, 1)]
DIR_MODES = [(0o755, 90), (0o750, 5), (0o700, 3), (0o2775, 2)]
ODD_NAMES = ["with space {}", "with\nnewline {}", "latin1 \udcff {}", "{}" + "L" * 190]


@dataclass
class Made:
    """What generate made, by kind (the summary)."""
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


def weighted(rng: random.Random, choices: list[tuple[int, int]]) -> int:
    values, weights = zip(*choices, strict=True)
    return rng.choices(values, weights)[0]


def leaf_path(index: int, fanout: int, depth: int) -> str:
    """The directory of leaf ``index``: one level per digit in base ``fanout`` (d03/d0a/...)."""
    parts = []
    for _level in range(depth):
        index, digit = divmod(index, fanout)
        parts.append(f"d{digit:02x}")
    return os.path.join(*reversed(parts)) if parts else "."


def depth_for(leaves: int, fanout: int) -> int:
    depth, capacity = 1, fanout
    while capacity < leaves:
        depth, capacity = depth + 1, capacity * fanout
    return depth


def mtime(rng: random.Random) -> int:
    return BASE_MTIME + rng.randrange(10**9 * 10**7)  # within ~115 days, with nanoseconds


def write_file(path: str, data: bytes, mode: int, when: int, hole: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.pwrite(fd, data, hole)
        if hole and not data:
            os.ftruncate(fd, hole)
    finally:
        os.close(fd)
    os.chmod(path, mode)  # O_CREAT's mode passes through the umask, and set-uid needs chmod
    os.utime(path, ns=(when, when))


def file_name(rng: random.Random, number: int) -> str:
    if rng.random() < 0.02:
        return rng.choice(ODD_NAMES).format(number)
    return f"f{number:07d}"


class Generator:
    """One tree: files first, then links and symlinks, then directories' modes and times (deepest
    first: writing into a directory changes its mtime, and a 0555 one could not be written)."""

    def __init__(self, root: str, files: int, size: int, seed: int, per_dir: int, fanout: int, hole: int):
        self.root, self.files, self.size, self.per_dir, self.fanout, self.hole = \
            root, files, size, per_dir, fanout, hole
        self.rng = random.Random(seed)
        self.made = Made()
        self.dirs: list[str] = []  # relative, parents before children
        self.known: set[str] = set()
        self.linkable: list[str] = []  # files a later hard link may name

    def run(self) -> dict[str, int]:
        os.makedirs(os.path.dirname(os.path.abspath(self.root)), exist_ok=True)
        os.mkdir(self.root)
        leaves = max(1, -(-self.files // self.per_dir))
        depth = depth_for(leaves, self.fanout)
        for number in range(self.files):
            directory = leaf_path(number // self.per_dir, self.fanout, depth)
            self.ensure_dir(directory)
            self.add_file(directory, number)
        self.add_fixed_features()
        self.finish_dirs()
        return self.made.counts

    def ensure_dir(self, relative: str) -> None:
        if relative in self.known or relative == ".":
            return
        full = os.path.join(self.root, relative)
        if not os.path.isdir(full):
            parent = os.path.dirname(relative)
            if parent:
                self.ensure_dir(parent)
            os.mkdir(full)
            self.dirs.append(relative)
            self.known.add(relative)
            self.made.add("dirs")

    def add_file(self, directory: str, number: int) -> None:
        rng = self.rng
        name = os.path.join(directory, file_name(rng, number))
        hole = self.hole if number % (FEATURE_EVERY * 40) == 7 else 0
        write_file(os.path.join(self.root, name), rng.randbytes(self.size), weighted(rng, FILE_MODES),
                   mtime(rng), hole)
        self.made.add("files")
        self.made.add("sparse files" if hole else "plain files")
        if number % FEATURE_EVERY == 0:
            self.add_feature(directory, name, number)

    def add_feature(self, directory: str, name: str, number: int) -> None:
        """One extra entry next to file ``name``: a hard link or a symlink of some kind."""
        rng, full = self.rng, os.path.join(self.root, directory)
        which = (number // FEATURE_EVERY) % 6
        if which == 0:
            os.link(os.path.join(self.root, name), os.path.join(full, f"hard{number}"))
            self.made.add("hard-link groups of 2")
        elif which == 1 and self.elsewhere(directory):
            other = self.elsewhere(directory)
            os.link(os.path.join(self.root, other), os.path.join(full, f"hard{number}a"))
            os.link(os.path.join(self.root, other), os.path.join(full, f"hard{number}b"))
            self.made.add("hard-link groups of 3 across directories")
        else:
            targets = {2: os.path.basename(name), 3: "/etc/passwd", 4: "../" * 12 + "outside",
                       5: "no such file"}
            target = targets.get(which, os.path.basename(name))
            link = os.path.join(full, f"sym{number}")
            os.symlink(target, link)
            when = mtime(rng)
            os.utime(link, ns=(when, when), follow_symlinks=False)
            self.made.add({2: "symlinks inside", 3: "symlinks out (absolute)", 4: "symlinks out (..)",
                           5: "symlinks dangling"}.get(which, "symlinks inside"))
        self.linkable.append(name)
        del self.linkable[:-4]

    def elsewhere(self, directory: str) -> str | None:
        """A recent feature file in another directory than ``directory``, if any."""
        return next((name for name in reversed(self.linkable) if os.path.dirname(name) != directory), None)

    def add_fixed_features(self) -> None:
        """Empty directories (alone and nested), a read-only directory with files in it, and a
        symlink to a directory: one of each whatever the size."""
        for relative in ("empty", "nested-empty/a/b/c", "read-only"):
            self.ensure_dir(relative)
        self.made.add("empty dirs", 2)
        write_file(os.path.join(self.root, "read-only", "inside"), b"in a 0555 directory", 0o644,
                   mtime(self.rng))
        os.symlink("nested-empty/a", os.path.join(self.root, "to-a-dir"))
        when = mtime(self.rng)
        os.utime(os.path.join(self.root, "to-a-dir"), ns=(when, when), follow_symlinks=False)
        self.made.add("symlinks to a directory")

    def finish_dirs(self) -> None:
        for relative in reversed(self.dirs):
            mode = 0o555 if relative == "read-only" else weighted(self.rng, DIR_MODES)
            full = os.path.join(self.root, relative)
            os.chmod(full, mode)
            when = mtime(self.rng)
            os.utime(full, ns=(when, when))
        when = mtime(self.rng)
        os.utime(self.root, ns=(when, when))


def chown_tree(root: str, uid: int, gid: int) -> None:
    for directory, dirnames, filenames in os.walk(root):
        os.lchown(directory, uid, gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(directory, name), uid, gid)


def generate(root: str | os.PathLike, files: int, size: int = 1024, seed: int = 1, per_dir: int = 100,
             fanout: int = 16, hole: int = 1 << 20, owner: tuple[int, int] | None = None) -> dict[str, int]:
    """Make the tree at ``root`` (must not exist); returns {kind: count} of what it made.

    Owner changes (``owner``: uid, gid; needs root) keep every mode: lchown clears set-uid, so
    modes are set again afterwards."""
    root = os.fspath(root)
    umask = os.umask(0)
    try:
        made = Generator(root, files, size, seed, per_dir, fanout, hole).run()
    finally:
        os.umask(umask)
    if owner is not None:
        keep = {}
        for directory, _dirnames, filenames in os.walk(root):
            for name in filenames:
                path = os.path.join(directory, name)
                info = os.lstat(path)
                if info.st_mode & 0o6000:
                    keep[path] = info.st_mode & 0o7777
        chown_tree(root, *owner)
        for path, mode in keep.items():
            os.chmod(path, mode)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per file")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-dir", type=int, default=100)
    parser.add_argument("--fanout", type=int, default=16)
    parser.add_argument("--hole", type=int, default=1 << 20, help="bytes of hole before a sparse file's data")
    parser.add_argument("--owner", help="UID:GID of every entry (as root)")
    args = parser.parse_args(argv)
    owner = tuple(int(part) for part in args.owner.split(":")) if args.owner else None
    made = generate(args.root, args.files, args.size, args.seed, args.per_dir, args.fanout, args.hole, owner)
    print(json.dumps(made, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
