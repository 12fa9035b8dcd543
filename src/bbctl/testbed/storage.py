"""The storage half of the test bed: "NVMe" bricks and glusterd "servers".

A brick is a sparse image on a loop device, formatted XFS as a real NVMe brick
would be (``mkfs.xfs -i size=512``) and mounted under its node's directory. A
server is a glusterd bound to its own loopback alias with its own working
directory, run directory and socket, as GlusterFS's regression tests do it.
"""

from __future__ import annotations

import stat
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bbctl import collection, host
from bbctl.collection import block_devices
from bbctl.errors import BBError, TestbedError
from bbctl.testbed.config import Node, TestbedConfig

# glusterd's run directory for brick sockets and quota pid files, shared by every glusterd here.
RUN_DIR = Path(collection.mounts.AUX_MOUNT_DIR)

# --- bricks ------------------------------------------------------------------

def ensure_brick(node: Node, k: int, size: int) -> str:
    """Image -> loop device -> XFS -> mounted; reuses whatever already exists."""
    image, mountpoint = node.brick_image(k), node.brick_mount(k)
    image.parent.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        with image.open("wb") as fh:
            fh.truncate(size)
    device = host.loop_for(image) or host.run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    mounted = host.mount_at(mountpoint)
    if mounted is not None:
        if mounted.source != device:
            raise TestbedError(f"{mounted.source} is mounted at {mountpoint}, where brick {image.name} belongs: "
                               "unmount it or run `bbctl testbed down`")
        return device
    # -p probes the device itself: blkid's cache may remember a previous user of this loop number.
    probe = host.run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], check=False)
    if probe.stdout.strip() != "xfs":
        host.run(["mkfs.xfs", "-q", "-f", "-i", "size=512", device])
    mountpoint.mkdir(parents=True, exist_ok=True)
    host.run(["mount", "-t", "xfs", "-o", block_devices.BRICK_MOUNT_OPTIONS, device, str(mountpoint)])
    return device


# --- glusterd ------------------------------------------------------------------

def gluster(node: Node, *args: str, check: bool = True, timeout: float = 120):
    """The gluster CLI aimed at one test-bed node through its socket."""
    return host.run(["gluster", "--mode=script", f"--glusterd-sock={node.socket}", *args],
                    check=check, timeout=timeout)


def glusterd_running(node: Node) -> bool:
    return host.running_pid(node.pid_file) is not None


def start_glusterd(node: Node) -> None:
    if glusterd_running(node):
        return
    for directory in (node.glusterd_dir, node.run_dir, node.log_file.parent):
        directory.mkdir(parents=True, exist_ok=True)
    node.pid_file.unlink(missing_ok=True)
    host.run([
        "glusterd",
        "--xlator-option", f"management.working-directory={node.glusterd_dir}",
        "--xlator-option", f"management.transport.socket.bind-address={node.address}",
        "--xlator-option", f"management.run-directory={node.run_dir}",
        "--xlator-option", f"management.glusterd-sockfile={node.socket}",
        "-p", str(node.pid_file), "-l", str(node.log_file),
    ])
    _wait_for_glusterd(node)


def _wait_for_glusterd(node: Node, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.socket.exists() and gluster(node, "pool", "list", check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise TestbedError(f"glusterd for {node.name} did not answer within {timeout:.0f} s; "
                       f"see {node.log_file}")


def _xml(node: Node, *args: str) -> ET.Element:
    out = gluster(node, *args, "--xml").stdout
    return ET.fromstring(out)


def peers(node: Node) -> dict[str, bool]:
    """Peers node 'node' knows: hostname -> connected."""
    root = _xml(node, "pool", "list")
    return {p.findtext("hostname", ""): p.findtext("connected") == "1"
            for p in root.iter("peer") if p.findtext("hostname") != "localhost"}


def ensure_peers(nodes: list[Node], timeout: float = 60) -> None:
    """Probe every other node from the first, then wait until all are connected."""
    first, others = nodes[0], nodes[1:]
    for node in others:
        if node.address not in peers(first):
            gluster(first, "peer", "probe", node.address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        known = peers(first)
        if all(known.get(n.address) for n in others):
            return
        time.sleep(0.3)
    raise TestbedError(f"peers did not all connect within {timeout:.0f} s: {peers(first)}")


def volumes(node: Node) -> list[str]:
    return [v.findtext("name", "") for v in _xml(node, "volume", "info").iter("volume")
            if v.findtext("name")]


# --- teardown ------------------------------------------------------------------

def stop_gluster_processes(config: TestbedConfig) -> list[str]:
    """Stop every glusterd, brick, self-heal and quota daemon of the test bed.

    They all write pid files under the test bed's root (the glusterd ones we ask
    for, the others glusterd puts in its run directory): stop by those pids.
    glusterd goes first so it does not restart what we stop next.
    """
    stopped = []
    for node in config.nodes:
        if host.stop_pid_file(node.pid_file):
            stopped.append(f"glusterd {node.name}")
    if config.root.exists():
        for pid_file in sorted(config.root.glob("node*/run/**/*.pid")):
            if host.stop_pid_file(pid_file, grace=5):
                stopped.append(f"{pid_file.stem} of {pid_file.relative_to(config.root).parts[0]}")
    for pid in forgotten_daemons(config.root):
        host.stop_pid(pid, grace=5)
        stopped.append(f"glusterfs {pid} (its pid file under {config.root} was removed)")
    return stopped


def forgotten_daemons(root: Path, proc: Path = Path("/proc")) -> list[int]:
    """Gluster processes started with a pid file under the test bed's root that no longer exists.

    A glusterd that comes back after missing a volume's stop starts that volume's self-heal
    daemon, and when the volume is then deleted it removes the pid file but leaves the daemon
    running (GlusterFS 10.3). Its command line still names the pid file it was given: that
    path, under this test bed's root, is what marks it as the test bed's."""
    found = []
    for pid, argv in gluster_processes(proc, ("glusterfs", "glusterfsd")):
        pid_file = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-p"), None)
        if pid_file and Path(pid_file).is_relative_to(root) and not Path(pid_file).exists():
            found.append(pid)
    return found


def gluster_processes(proc: Path, programs: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the processes in proc whose program is one of programs (by file name)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [arg.decode(errors="replace") for arg in (entry / "cmdline").read_bytes().split(b"\0") if arg]
        except OSError:
            continue
        if argv and Path(argv[0]).name in programs:
            found.append((int(entry.name), argv))
    return found


def remove_run_dir_leftovers(since: float, run_dir: Path = RUN_DIR,
                             net_unix: Path = Path("/proc/net/unix")) -> list[str]:
    """Remove what the test bed's daemons left in glusterd's shared run directory.

    Every glusterd on a machine uses /var/run/gluster whatever its own run directory
    (GlusterFS 10.3): a brick process binds ``<hash>.socket`` there and nobody removes it when
    the brick stops, and each quota command leaves ``<volume>_quota_*.pid``. One test-bed
    day left over a thousand; a quota command's aux mount leaves its directory. Removed:
    entries modified at or after since (epoch seconds, when the bed came up) that are a socket
    no process has bound (/proc/net/unix), a pid file whose process has ended, or an empty
    ``<volume>_quota_*`` directory; never a mount point. Returns what was removed."""
    if not run_dir.is_dir():
        return []
    # Never stat a mount point (a dead FUSE mount blocks): mountinfo spells /run, not /var/run.
    real_dir = run_dir.resolve()
    mounted = {str(m.target) for m in host.mounts()}
    entries = [e for e in run_dir.iterdir() if str(real_dir / e.name) not in mounted
               and (e.suffix in (".socket", ".pid") or "_quota_" in e.name)]
    # Read after listing (a socket made since is in both), in either spelling of the directory.
    bound = {Path(path).name for path in bound_sockets(net_unix)
             if Path(path).parent in (run_dir, real_dir)}
    removed = []
    for entry in sorted(entries):
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue
        if info.st_mtime >= since and _stale(entry, info.st_mode, bound):
            if stat.S_ISDIR(info.st_mode):
                entry.rmdir()
            else:
                entry.unlink(missing_ok=True)
            removed.append(str(entry))
    return removed


def _stale(entry: Path, mode: int, bound: set[str]) -> bool:
    """An empty aux-mount directory, a socket no process has bound (bound: names), or a pid file
    whose process has ended."""
    if stat.S_ISDIR(mode):
        return not any(entry.iterdir())
    if entry.suffix == ".socket":
        return stat.S_ISSOCK(mode) and entry.name not in bound
    return entry.suffix == ".pid" and stat.S_ISREG(mode) and host.running_pid(entry) is None


def bound_sockets(net_unix: Path = Path("/proc/net/unix")) -> set[str]:
    """Paths of the Unix sockets bound by any process (the Path column of /proc/net/unix)."""
    paths = set()
    for line in net_unix.read_text(errors="replace").splitlines()[1:]:
        fields = line.split(maxsplit=7)
        if len(fields) == 8:
            paths.add(fields[7])
    return paths


def unmount_clients(config: TestbedConfig) -> list[str]:
    """Unmount every glusterfs client mount served by a test-bed address, wherever it is; the client
    of a mount that hung is ended (by its pid: the glusterfs process started for that mount point)."""
    prefix = config.address_prefix + "."
    done = []
    for mount in reversed(host.mounts()):
        if mount.fstype.startswith("fuse.glusterfs") and mount.source.startswith(prefix):
            if host.umount(mount.target, fuse_connection=mount.minor):
                for pid in fuse_clients(mount.target):
                    host.stop_pid(pid, grace=5)
                done.append(f"{mount.target} (hung: unmounted lazily, its FUSE connection aborted)")
            else:
                done.append(str(mount.target))
    return done


def fuse_clients(target: Path, proc: Path = Path("/proc")) -> list[int]:
    """Pids of the glusterfs clients whose command line ends with mount point target."""
    return [pid for pid, argv in gluster_processes(proc, ("glusterfs",)) if argv[-1] == str(target)]


def remove_bricks(config: TestbedConfig) -> list[str]:
    """Unmount brick file systems under root and detach their loop devices."""
    done = []
    root = str(config.root).rstrip("/") + "/"
    for mount in reversed(host.mounts()):
        if str(mount.target).startswith(root):
            host.umount(mount.target)
            done.append(f"umount {mount.target}")
    for loop in host.loops_backed_under(config.root):
        try:
            host.run(["losetup", "--detach", loop.device])
        except BBError:
            time.sleep(0.5)  # the lazy unmount above may still hold it for a moment
            host.run(["losetup", "--detach", loop.device])
        done.append(f"detach {loop.device}")
    return done


def brick_devices(node: Node) -> list[str]:
    return [host.loop_for(node.brick_image(k)) or "" for k in range(1, node.brick_count + 1)]


def describe(node: Node) -> dict[str, object]:
    """What is up on one node, for ``bbctl testbed status``."""
    bricks = []
    for k in range(1, node.brick_count + 1):
        mount = host.mount_at(node.brick_mount(k))
        bricks.append({"path": str(node.brick_mount(k)), "device": mount.source if mount else None,
                       "mounted": mount is not None})
    return {"name": node.name, "address": node.address, "glusterd": glusterd_running(node),
            "socket": str(node.socket), "bricks": bricks}
