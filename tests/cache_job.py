"""A cached directory and a job that changes it in every way a job can, shared by the unit test of
the write-back (a real fuse-overlayfs mount) and the integration tests (a real Slurm job).

The job runs twice: once directly on a copy of the directory, once in the cache; afterwards the
directory must equal the copy (``snapshot``: every path's kind, mode, owner, size, checksum or link
target, and mtime). The job gives what it writes fixed mtimes, so the two runs can be compared.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

OLD = 1_600_000_000  # the cached directory's files were last changed then
T_FILE = 1_700_000_000  # what the job gives the files it writes
T_DIR = 1_700_000_500  # and the directories it changes


def write(path: Path, data: bytes = b"x", mode: int = 0o644, mtime: int = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, (mtime, mtime))
    return path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (root itself as '.'): kind, mode, owner, size, checksum or target, mtime."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = os.lstat(path)
        rel = str(path.relative_to(root))
        if stat.S_ISREG(info.st_mode):
            what = ("file", info.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        elif stat.S_ISLNK(info.st_mode):
            what = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            what = ("dir",)
        else:
            what = ("other", info.st_rdev)
        found[rel] = (*what, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_mtime_ns)
    return found


def differences(got: dict, want: dict) -> list[str]:
    lines = []
    for rel in sorted(set(got) | set(want)):
        if got.get(rel) != want.get(rel):
            lines.append(f"{rel}: written back {got.get(rel)} / direct {want.get(rel)}")
    return lines


JOB = f"""
set -eu
cat a d1/sub/c > /dev/null                      # read
echo more >> a; touch -d @{T_FILE} a           # modify
printf 'new\\n' > created; touch -d @{T_FILE} created
mkdir -p nd/x; echo q > nd/x/q; touch -d @{T_FILE} nd/x/q
mv keep keep2                                   # rename a file
mv d2 d2new                                     # rename a directory
rm d1/b                                         # delete a file
rm -rf d3; mkdir d3; echo z > d3/z; touch -d @{T_FILE} d3/z   # delete a tree, make it again
rm -rf big                                      # delete a tree
chmod 600 d1/sub/c                              # change only a mode
ln -s created lnk2; touch -h -d @{T_FILE} lnk2
rm ftod; mkdir ftod; echo in > ftod/in; touch -d @{T_FILE} ftod/in   # a file becomes a directory
rm -rf dtof; echo f > dtof; touch -d @{T_FILE} dtof                 # a directory becomes a file
seq 1 400000 > blob; touch -d @{T_FILE} blob        # a file of 2.6 MB
for d in . d1 d2new d3 nd nd/x ftod; do touch -d @{T_DIR} "$d"; done
"""


def make_dir(top: Path, owner) -> Path:
    pfs = top / "pfs"
    write(pfs / "a", b"a\n", mode=0o640)
    write(pfs / "keep", b"keep\n")
    write(pfs / "d1" / "b", b"b\n")
    write(pfs / "d1" / "sub" / "c", b"c\n", mode=0o644)
    write(pfs / "d2" / "x", b"x\n")
    write(pfs / "d3" / "y", b"y\n")
    write(pfs / "ftod", b"file\n")
    write(pfs / "dtof" / "inner", b"inner\n")
    write(pfs / "untouched" / "u", b"u\n", mode=0o600)
    for i in range(20):
        write(pfs / "big" / f"f{i}", os.urandom(1000))
    (pfs / "lnk").symlink_to("a")
    for path in [pfs, *pfs.rglob("*")]:
        os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
    for path in sorted([pfs, *pfs.rglob("*")], key=lambda p: -len(p.parts)):
        os.utime(path, (OLD, OLD), follow_symlinks=False)
    return pfs


def run_job(where: Path, owner, job: str = JOB) -> None:
    # cd as the user: root cannot enter the overlay
    subprocess.run(["runuser", "-u", owner.pw_name, "--", "bash", "-c", 'cd "$0"' + job, str(where)], check=True)
