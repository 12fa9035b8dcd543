"""The test bed's own gluster daemons found at `bbctl testbed down` (bbctl.testbed.storage)."""

from __future__ import annotations

from pathlib import Path

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
