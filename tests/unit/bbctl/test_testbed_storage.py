"""The test bed's own gluster daemons found at `bbctl testbed down` (bbctl.testbed.storage)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from bbctl import host
from bbctl.testbed import storage


def process(proc: Path, pid: int, *argv: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_a_daemon_whose_pid_file_under_the_root_is_gone_is_the_test_beds_and_nothing_else_is(tmp_path):
    """GlusterFS 10.3 forgets a self-heal daemon it started for a volume it missed the stop of: when the
    volume is deleted the pid file goes and the daemon stays (found by the storage-server-down fault)."""
    root, proc = tmp_path / "bed", tmp_path / "proc"
    kept = root / "node1" / "run" / "vols" / "v" / "brick.pid"
    kept.parent.mkdir(parents=True)
    kept.write_text("12\n")
    shd = ["/usr/sbin/glusterfs", "-s", "127.1.1.3", "--volfile-id", "shd/bbjob-11", "-p"]
    process(proc, 11, *shd, str(root / "node3" / "run" / "shd" / "bbjob-11" / "bbjob-11-shd.pid"))
    process(proc, 12, "/usr/sbin/glusterfsd", "-p", str(kept))  # its pid file is there: stopped by it
    process(proc, 13, *shd, "/var/run/gluster/other-site.pid")  # not under this test bed's root
    process(proc, 14, "/usr/bin/python3", "-p", str(root / "gone.pid"))  # not gluster
    (proc / "self").mkdir()
    assert storage.forgotten_daemons(root, proc) == [11]


def test_the_client_of_a_hung_mount_is_found_by_its_mount_point_only(tmp_path):
    proc = tmp_path / "proc"
    target = Path("/var/lib/bbctl-testbed/mnt/bbjob-7")
    client = ["/usr/sbin/glusterfs", "--process-name", "fuse", "--volfile-server=127.1.1.3", "--volfile-id=/bbjob-7"]
    process(proc, 21, *client, str(target))
    process(proc, 22, *client, str(target) + "-private")  # another mount of the job's
    process(proc, 23, "/usr/sbin/glusterfsd", "-s", "127.1.1.3", str(target))  # not a client
    process(proc, 24, "/usr/bin/sleep", str(target))
    assert storage.fuse_clients(target, proc) == [21]


def test_a_hung_unmount_is_made_lazily_and_its_fuse_connection_aborted(monkeypatch, tmp_path):
    """A FUSE mount whose daemon no longer answers blocks `umount` in the kernel for good (seen after a
    load run stopped mid-job): `testbed down` waited 120 s, failed, and left the mount."""
    ran, aborted = [], []

    def run(argv, **kwargs):
        ran.append(argv)
        if argv == ["umount", "/mnt/hung"]:
            raise host.BBError("umount /mnt/hung: no answer within 20 s")
        return subprocess.CompletedProcess(argv, 0 if "/mnt/ok" in argv else 32, "", "")

    monkeypatch.setattr(host, "run", run)
    monkeypatch.setattr(host, "abort_fuse_connection", aborted.append)
    assert host.umount(Path("/mnt/ok"), fuse_connection=57) is False
    assert host.umount(Path("/mnt/busy"), fuse_connection=58) is False  # busy: lazily, nothing aborted
    assert host.umount(Path("/mnt/hung"), fuse_connection=59) is True
    assert ran == [["umount", "/mnt/ok"], ["umount", "/mnt/busy"], ["umount", "-l", "/mnt/busy"],
                   ["umount", "/mnt/hung"], ["umount", "-l", "/mnt/hung"]]
    assert aborted == [59]


def test_down_removes_unbound_sockets_and_dead_pid_files_made_since_up_and_nothing_else(tmp_path, monkeypatch):
    """Every glusterd here shares /var/run/gluster; brick sockets and quota pid files stay after
    their process (1,248 sockets had piled up in a few test-bed days)."""
    run_dir, since = tmp_path / "gluster", 1_000_000.0
    run_dir.mkdir()

    def made(name: str, *, at: float, kind: str = "socket", content: str = "") -> Path:
        path = run_dir / name
        if kind == "socket":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(str(path))
        else:
            path.write_text(content)
        os.utime(path, (at, at))
        return path

    stale_socket = made("0a1b.socket", at=since + 5)
    listening = made("2c3d.socket", at=since + 5)
    older = made("4e5f.socket", at=since - 5)  # before the bed came up: not ours to judge
    dead_pid = made("bbjob-7_quota_list.pid", at=since + 5, kind="file", content="999999999\n")
    live_pid = made("bbjob-8_quota_list.pid", at=since + 5, kind="file", content=f"{os.getpid()}\n")
    not_socket = made("odd.socket", at=since + 5, kind="file")
    other = made("quotad.vol", at=since + 5, kind="file")
    aux_dir = run_dir / "bbjob-9_quota_list"  # an aux mount's directory, the mount gone
    aux_dir.mkdir()
    os.utime(aux_dir, (since + 5, since + 5))
    kept_dir = run_dir / "bbjob-10_quota_limit"  # not empty: not ours to judge
    (kept_dir / "x").mkdir(parents=True)
    net_unix = tmp_path / "unix"
    net_unix.write_text("Num       RefCount Protocol Flags    Type St Inode Path\n"
                        f"0000000000000000: 00000002 00000000 00010000 0001 01 1234 {listening}\n"
                        "0000000000000000: 00000002 00000000 00000000 0002 01 1235\n")

    mounted_dir = run_dir / "bbjob-11_quota_list"  # still a mount point: never looked at
    mounted_dir.mkdir()
    os.utime(mounted_dir, (since + 5, since + 5))
    real_run_dir = tmp_path / "real-gluster"
    real_run_dir.symlink_to(run_dir)  # as /var/run -> /run: mountinfo has the real spelling
    monkeypatch.setattr(host, "mounts", lambda: [host.Mount("127.1.1.1:bbjob-11", Path(mounted_dir),
                                                            "fuse.glusterfs", 41)])

    removed = storage.remove_run_dir_leftovers(since, real_run_dir, net_unix)

    assert removed == [str(real_run_dir / p.name) for p in (stale_socket, dead_pid, aux_dir)]
    assert {p.name for p in run_dir.iterdir()} == {
        listening.name, older.name, live_pid.name, not_socket.name, other.name, kept_dir.name, mounted_dir.name}
