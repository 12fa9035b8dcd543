"""A scratch directory in /var/tmp for tests that make swap areas on loop devices, and its clean-up.

Clean-up (``release``) turns off and detaches every loop device backed by a file under the
directory, by the device names losetup shows for it, unmounts what is mounted under it and
removes it, whatever the test did. No other loop device, swap area or mount is touched.
Shared by test_buffer_swap (the module) and test_buffer_client_swap (the role's playbooks).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run argv with LANG=C (its output is parsed); CalledProcessError when it fails and check."""
    return subprocess.run(argv, capture_output=True, text=True, check=check,
                          env=dict(os.environ, LANG="C", LC_ALL="C"))


def loops_under(directory: Path | str) -> list[str]:
    """Names (/dev/loopN) of the loop devices whose backing file is under directory."""
    out = sh("losetup", "--list", "--json", "--output", "NAME,BACK-FILE").stdout
    entries = json.loads(out)["loopdevices"] if out.strip() else []
    return [entry["name"] for entry in entries if (entry.get("back-file") or "").startswith(f"{directory}/")]


def mounts_under(directory: Path) -> list[str]:
    """Mount points under directory, last mounted first (the order to unmount them in)."""
    targets = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [target for target in reversed(targets) if target.startswith(f"{directory}/")]


def release(directory: Path) -> None:
    """Swap off and detach directory's loop devices, unmount what is mounted under it, remove it."""
    for device in loops_under(directory):
        sh("swapoff", device, check=False)
        sh("losetup", "--detach", device, check=False)
    for target in mounts_under(directory):
        sh("umount", target, check=False)
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A new directory /var/tmp/PREFIXxxxxxxxx, released (``release``) when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        yield path
    finally:
        release(path)
