"""Facts about this host read from the kernel: processes, mounts, loop devices.

Everything here reads /proc or asks util-linux; nothing guesses by process
name. Processes are only ever signalled by pid from a pid file we wrote or a
daemon we started wrote.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bbctl import collection
from bbctl.errors import BBError

# System tools are run from the system's directories only: a test's fake
# (tests/fakes/lustre puts a blkid first in PATH) must never decide whether
# bbctl formats a device.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
C_LOCALE = {**os.environ, "LANG": "C", "LC_ALL": "C", "PATH": SYSTEM_PATH}


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv (never through a shell) in the C locale; raise BBError on failure."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=env or C_LOCALE, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError as exc:
        raise BBError(f"command not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise BBError(f"{' '.join(argv)}: no answer within {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        raise BBError(f"{' '.join(argv)}: {reason}")
    return proc


def missing_commands(commands: Sequence[str]) -> list[str]:
    return [cmd for cmd in commands if shutil.which(cmd) is None]


# --- processes -------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (PID 1 here may be slow to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(pid_file: Path) -> int | None:
    """The pid in pid_file if that process still runs, else None."""
    pid = read_pid(pid_file)
    return pid if pid is not None and pid_alive(pid) else None


def stop_pid(pid: int, *, grace: float = 10.0) -> None:
    """SIGTERM, wait up to grace seconds, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    raise BBError(f"process {pid} survived SIGKILL")


def stop_pid_file(pid_file: Path, *, grace: float = 10.0) -> bool:
    """Stop the process named by pid_file; True if one was running."""
    pid = running_pid(pid_file)
    if pid is not None:
        stop_pid(pid, grace=grace)
    pid_file.unlink(missing_ok=True)
    return pid is not None


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an flock on lock (made 0600 if missing) for the block, waiting as long as another holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def address_in_use(host: str, port: int) -> bool:
    """True if nothing of ours could listen on host:port (someone holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: connections of a dead listener in TIME_WAIT must not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# --- mounts ----------------------------------------------------------------

@dataclass(frozen=True)
class Mount:
    source: str
    target: Path
    fstype: str
    minor: int = 0  # of its device: a FUSE mount's connection number under /sys/fs/fuse/connections


def mounts(mountinfo: str | None = None) -> list[Mount]:
    """Current mounts from /proc/self/mountinfo (the kernel's own truth), or those in the
    mountinfo text given; parsed by the collection's module_utils (one parser)."""
    entries = (collection.mounts.read_mountinfo() if mountinfo is None
               else collection.mounts.parse_mountinfo(mountinfo))
    return [Mount(entry.source, Path(entry.target), entry.fstype, int(entry.minor)) for entry in entries]


def mount_at(target: Path) -> Mount | None:
    found = [m for m in mounts() if m.target == target]
    return found[-1] if found else None


FUSE_UMOUNT_WAIT = 20.0  # s: a FUSE unmount takes well under a second unless its daemon hangs
UMOUNT_WAIT = 120.0  # s: any other (a brick's XFS may flush for a while)
FUSECTL = Path(collection.mounts.FUSECTL)


def umount(target: Path, fuse_connection: int | None = None) -> bool:
    """Unmount target, lazily if busy: the test bed must never be left mounted. True when the
    mount's FUSE daemon no longer answered.

    Such a mount blocks umount in the kernel (fuse_get_req) for good (seen after a load run was
    stopped mid-job, 2026-12-06): given its connection (the mount's device minor), it is unmounted
    lazily after FUSE_UMOUNT_WAIT s and that FUSE connection is aborted, so that nothing stays
    blocked on it. Other file systems get UMOUNT_WAIT."""
    wait = FUSE_UMOUNT_WAIT if fuse_connection is not None else UMOUNT_WAIT
    try:
        if run(["umount", str(target)], check=False, timeout=wait).returncode == 0:
            return False
        hung = False
    except BBError:
        hung = True
    run(["umount", "-l", str(target)])
    if hung and fuse_connection is not None:
        abort_fuse_connection(fuse_connection)
    return hung


def abort_fuse_connection(number: int) -> None:
    """Abort FUSE connection ``number``, by the collection's own steps (fusectl mounted for the
    purpose when it is not, as here)."""
    runner = collection.command_runner.CommandRunner(_HostModule())
    collection.mounts.abort_fuse_connection(runner, number, str(FUSECTL))


class _HostModule:
    """What the collection's CommandRunner asks of an Ansible module, served by run() here."""

    check_mode = False

    @staticmethod
    def run_command(argv: Sequence[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        done = run(argv, check=False, env={**C_LOCALE, **(environ_update or {})})
        return done.returncode, done.stdout, done.stderr


# --- loop devices ------------------------------------------------------------

@dataclass(frozen=True)
class LoopDevice:
    device: str
    backing_file: str


def loop_devices() -> list[LoopDevice]:
    out = run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"]).stdout
    if not out.strip():
        return []
    return [LoopDevice(d["name"], (d.get("back-file") or "").removesuffix(" (deleted)"))
            for d in json.loads(out)["loopdevices"]]


def loops_backed_under(directory: Path) -> Iterator[LoopDevice]:
    prefix = str(directory).rstrip("/") + "/"
    return (loop for loop in loop_devices() if loop.backing_file.startswith(prefix))


def loop_for(image: Path) -> str | None:
    for loop in loop_devices():
        if loop.backing_file == str(image):
            return loop.device
    return None
