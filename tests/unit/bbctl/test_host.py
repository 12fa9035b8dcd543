import os
import subprocess
from pathlib import Path

from bbctl import host


def test_mountinfo_parsing_finds_root_and_unescapes():
    sample = (
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "40 22 0:50 / /mnt/with\\040space rw - fuse.glusterfs 127.1.1.1:/vol rw,user_id=0\n"
    )
    found = host.mounts(sample)
    assert found[0] == host.Mount("/dev/vda", Path("/"), "ext4")
    assert found[1].target == Path("/mnt/with space")
    assert found[1].source == "127.1.1.1:/vol"
    assert found[1].fstype == "fuse.glusterfs"


def test_pid_alive_sees_running_exited_and_zombie_processes():
    assert host.pid_alive(os.getpid())
    child = subprocess.Popen(["true"])
    # Not yet reaped: a zombie, which must count as dead.
    for _attempt in range(200):
        if not host.pid_alive(child.pid):
            break
        subprocess.run(["sleep", "0.01"], check=True)
    assert not host.pid_alive(child.pid)
    child.wait()
    assert not host.pid_alive(child.pid)


def test_stop_pid_file_stops_only_that_process(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    bystander = subprocess.Popen(["sleep", "60"])
    pid_file = tmp_path / "s.pid"
    pid_file.write_text(f"{sleeper.pid}\n")
    try:
        assert host.stop_pid_file(pid_file) is True
        sleeper.wait(timeout=5)
        assert bystander.poll() is None
        assert not pid_file.exists()
        assert host.stop_pid_file(pid_file) is False
    finally:
        bystander.kill()
        bystander.wait()


def test_run_failure_is_one_line_with_the_command():
    try:
        host.run(["ls", "/definitely/not/here"])
    except host.BBError as exc:
        assert "ls /definitely/not/here" in str(exc)
        assert "\n" not in str(exc)
    else:
        raise AssertionError("expected BBError")


def test_the_test_beds_fuse_abort_runs_the_collections_steps_through_host_run(monkeypatch, tmp_path):
    """One set of fusectl steps for modules and test bed: mount fusectl, write 1 to the
    connection's abort, unmount fusectl; here each command goes through host.run."""
    fusectl = tmp_path / "connections"
    (fusectl / "47").mkdir(parents=True)
    (fusectl / "47" / "abort").write_text("")
    ran = []

    def fake_run(argv, *, check=True, timeout=120, env=None):
        ran.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    monkeypatch.setattr(host, "run", fake_run)
    monkeypatch.setattr(host, "FUSECTL", fusectl)
    host.abort_fuse_connection(47)
    assert ran == [["mount", "-t", "fusectl", "fusectl", str(fusectl)],
                   ["umount", "--no-canonicalize", str(fusectl)]]
    assert (fusectl / "47" / "abort").read_text() == "1"
