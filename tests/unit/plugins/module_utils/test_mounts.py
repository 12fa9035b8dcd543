"""module_utils/mounts.py: mountinfo parsing, mount lookup, busy retries, root attributes."""

import os
import signal
import subprocess
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import mounts

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "proc"
BUSY = (32, "", "umount: /mnt/bb: target is busy.\n")
OK = (0, "", "")


@pytest.fixture(scope="module")
def entries():
    return mounts.parse_mountinfo((FIXTURES / "mountinfo").read_text())


@pytest.mark.parametrize(("field", "text"), [
    (r"/mnt/with\040space", "/mnt/with space"),
    (r"tab\011and\012newline", "tab\tand\nnewline"),
    (r"back\134slash", "back\\slash"),
    ("/plain/path", "/plain/path"),
    (r"\0401", " 1"),  # only three octal digits belong to an escape
])
def test_unescape(field, text):
    assert mounts.unescape(field) == text


def test_parse_mountinfo_reads_every_line(entries):
    assert len(entries) == 9
    root = entries[1]
    assert (root.mount_id, root.parent_id, root.major, root.minor) == (27, 1, 254, 0)
    assert (root.target, root.fstype, root.source) == ("/", "ext4", "/dev/vda")


def test_parse_mountinfo_keeps_optional_fields_apart(entries):
    devpts = entries[2]
    assert (devpts.target, devpts.fstype, devpts.source) == ("/dev/pts", "devpts", "devpts")
    assert devpts.super_options == "rw,mode=600,ptmxmode=000"
    assert devpts.optional == ("shared:5", "master:1")
    assert entries[1].optional == ()


@pytest.mark.parametrize(("optional", "shared"), [
    ("shared:5 master:1", True), ("shared:12", True), ("master:3", False), ("", False),
    ("propagate_from:2 master:3", False), ("unbindable", False)])
def test_is_shared(optional, shared):
    line = f"60 27 0:50 / /mnt/bb rw {optional} - tmpfs tmpfs rw".replace("  ", " ")
    assert mounts.is_shared(mounts.parse_mountinfo_line(line)) is shared


def test_parse_mountinfo_unescapes_targets_and_keeps_bind_root(entries):
    spaced = entries[5]
    assert spaced.target == "/var/tmp/bbfix/mnt with space"
    bind = entries[6]
    assert (bind.root, bind.major, bind.minor) == ("/vol1", 7, 1)
    assert bind.target == "/srv/bind\\of\tbrick"


def test_parse_gluster_line_recorded_from_a_real_mount():
    (entry,) = mounts.parse_mountinfo((FIXTURES / "mountinfo_gluster_line").read_text())
    assert entry.fstype == "fuse.glusterfs"
    assert entry.source == "127.1.1.1:/bm-probe"
    assert entry.target == "/var/tmp/bbfix/gm"
    assert entry.major == 0


def test_mount_at_returns_the_top_of_a_stack(entries):
    assert mounts.mount_at(entries, "/var/tmp/bbfix/gm").source == "127.1.1.2:/bm-other"
    assert mounts.mount_at(entries, "/var/tmp/bbfix/mnt with space").source == "/dev/loop6"
    assert mounts.mount_at(entries, "/var/tmp/bbfix") is None


def test_mounts_of_device_finds_bind_mounts_by_numbers(entries):
    found = mounts.mounts_of_device(entries, "/dev/disk/by-id/whatever", (7, 1))
    assert [m.target for m in found] == [
        "/var/lib/bbctl-testbed/node1/bricks/nvme2", "/srv/bind\\of\tbrick"]


def test_mounts_of_device_falls_back_to_source_name(entries):
    # btrfs and similar show an anonymous 0:N in mountinfo: the name is all there is.
    found = mounts.mounts_of_device(entries, "/dev/loop0", (0, 99))
    assert [m.target for m in found] == ["/var/lib/bbctl-testbed/node1/bricks/nvme1"]
    assert mounts.mounts_of_device(entries, "/dev/loop9", (7, 9)) == []


@pytest.mark.parametrize(("stderr", "busy"), [
    ("umount: /mnt/bb: target is busy.", True),
    ("mount: /mnt/bb: /dev/loop3 already mounted or mount point busy.", False),
    ("umount: /dev/loop3: device is busy", True),
    ("wipefs: error: /dev/loop3: probing initialization failed: Device or resource busy", True),
    ("umount: /mnt/bb: not mounted.", False),
    ("", False),
    (None, False),
])
def test_is_busy(stderr, busy):
    assert mounts.is_busy(stderr) is busy


@pytest.mark.parametrize(("args", "argv"), [
    (("h:/v", "/mnt/x"), ["mount", "h:/v", "/mnt/x"]),
    (("h:/v", "/mnt/x", "glusterfs"), ["mount", "-t", "glusterfs", "h:/v", "/mnt/x"]),
    (("/dev/loop3", "/b", "xfs", "noatime"),
     ["mount", "-t", "xfs", "-o", "noatime", "/dev/loop3", "/b"]),
])
def test_mount_argv(args, argv):
    assert mounts.mount_argv(*args) == argv


def test_backoff_doubles_and_caps():
    assert mounts.backoff_delays(4, 1.0) == [1.0, 2.0, 4.0, 8.0]
    assert mounts.backoff_delays(0, 1.0) == []
    assert mounts.backoff_delays(7, 2.0)[-2:] == [30.0, 30.0]


def test_retry_until_not_busy(fake_module):
    module = fake_module([BUSY, BUSY, OK])
    slept = []
    rc, _out, _err, attempts = mounts.run_with_busy_retry(
        module, ["umount", "/mnt/bb"], retries=5, delay=0.5, sleep=slept.append)
    assert (rc, attempts) == (0, 3)
    assert slept == [0.5, 1.0]
    assert all(env["LANG"] == "C" and env["LC_ALL"] == "C" for _argv, env in module.calls)


def test_retry_stops_at_once_on_other_errors(fake_module):
    module = fake_module([(32, "", "umount: /mnt/bb: not mounted.")])
    slept = []
    rc, _out, _err, attempts = mounts.run_with_busy_retry(
        module, ["umount", "/mnt/bb"], retries=5, delay=0.5, sleep=slept.append)
    assert (rc, attempts, slept) == (32, 1, [])


def test_unmount_names_the_cause_when_still_busy(fake_module):
    module = fake_module([BUSY] * 3)
    with pytest.raises(mounts.MountError, match=r"still busy after 3 attempts.*fuser -vm /mnt/bb"):
        mounts.unmount(module, "/mnt/bb", retries=2, delay=0.1, sleep=lambda _s: None)


def test_unmount_and_mount_report_failures(fake_module):
    with pytest.raises(mounts.MountError, match="not mounted"):
        mounts.unmount(fake_module([(32, "", "umount: /x: not mounted.")]), "/x", sleep=None)
    with pytest.raises(mounts.MountError, match=r"mount -t glusterfs h:/v /x failed \(rc 1\)"):
        failing = fake_module([(1, "", "Mounting glusterfs on /x failed.")])
        mounts.mount(failing, "h:/v", "/x", "glusterfs")
    assert mounts.mount(fake_module([OK]), "h:/v", "/x", "glusterfs") == 1


@pytest.mark.parametrize(("mode", "bits"), [
    ("0700", 0o700), ("755", 0o755), ("2775", 0o2775), (448, 0o700), (None, None),
])
def test_parse_mode(mode, bits):
    assert mounts.parse_mode(mode) == bits


@pytest.mark.parametrize("mode", ["u+rwx", "0800", "rwx", "", "077777", 0o17777, True])
def test_parse_mode_refuses(mode):
    with pytest.raises(mounts.MountError, match="mode"):
        mounts.parse_mode(mode)


def test_resolve_ids():
    assert mounts.resolve_uid("root") == 0
    assert mounts.resolve_uid("4242") == 4242  # a job's uid need not be in passwd
    assert mounts.resolve_uid(None) is None
    assert mounts.resolve_gid("root") == 0
    assert mounts.resolve_gid("77") == 77
    with pytest.raises(mounts.MountError, match="no such user"):
        mounts.resolve_uid("no-such-user-bb")
    with pytest.raises(mounts.MountError, match="no such group"):
        mounts.resolve_gid("no-such-group-bb")


@pytest.mark.parametrize(("current", "wanted", "commands"), [
    ((0, 0, 0o755), {}, []),
    ((0, 0, 0o755), {"uid": 0, "gid": 0, "mode": 0o755}, []),
    ((0, 0, 0o755), {"uid": 1001}, [["chown", "1001", "/b"]]),
    ((0, 0, 0o755), {"gid": 1001}, [["chown", ":1001", "/b"]]),
    ((0, 0, 0o755), {"uid": 1001, "gid": 1001, "mode": 0o700},
     [["chown", "1001:1001", "/b"], ["chmod", "0700", "/b"]]),
    ((1001, 0, 0o700), {"uid": 1001, "gid": 1001, "mode": 0o700}, [["chown", ":1001", "/b"]]),
])
def test_attribute_commands(current, wanted, commands):
    assert mounts.attribute_commands("/b", current, **wanted) == commands


def test_root_attributes_reads_a_real_directory(tmp_path):
    tmp_path.chmod(0o710)
    uid, _gid, mode = mounts.root_attributes(str(tmp_path))
    assert (uid, mode) == (tmp_path.stat().st_uid, 0o710)


def test_an_aux_mount_left_by_a_timed_out_quota_list_is_unmounted_lazily(fake_module, tmp_path):
    run = tmp_path / "run"
    (run / "bbjob-61_quota_list").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to(run)  # /var/run -> /run, as on Debian
    target = str(run / "bbjob-61_quota_list")
    table = [mounts.parse_mountinfo_line(
        f"90 27 0:77 / {target} rw - fuse.glusterfs localhost:bbjob-61 rw")]
    runner = mounts.CommandRunner(fake_module([OK, OK]))
    removed = mounts.release_aux_mounts(runner, "bbjob-61", directory=str(tmp_path / "var" / "run"),
                                        mountinfo=table)
    assert runner.commands == [["umount", "--no-canonicalize", "--lazy", target], ["rmdir", target]]
    assert removed == [target]
    assert mounts.aux_mount_volume(target, directory=str(tmp_path / "var" / "run")) == "bbjob-61"
    assert mounts.aux_mount_volume(str(run / "bbjob-61_quota_limit"), str(run)) == "bbjob-61"
    assert mounts.aux_mount_volume(str(run / "bbjob-61"), str(run)) is None
    assert mounts.aux_mount_volume("/elsewhere/bbjob-61_quota_list", str(run)) is None


def test_aux_mounts_in_check_mode_are_planned_not_removed(fake_module, tmp_path):
    (tmp_path / "bbp-x_quota_limit").mkdir()
    (tmp_path / "bbp-x_quota_limit.pid").write_text("1")
    runner = mounts.CommandRunner(fake_module([], check_mode=True))
    removed = mounts.release_aux_mounts(runner, "bbp-x", directory=str(tmp_path), mountinfo=[])
    assert removed == [str(tmp_path / "bbp-x_quota_limit"), str(tmp_path / "bbp-x_quota_limit.pid")]
    assert (tmp_path / "bbp-x_quota_limit.pid").exists() and (tmp_path / "bbp-x_quota_limit").is_dir()


def test_an_aux_mount_that_no_longer_answers_has_its_fuse_connection_aborted(fake_module, tmp_path):
    """glusterd's own `umount -l` of such a mount blocks for good and holds the pool's lock
    (2026-12-07: 11 teardowns waited 12 minutes until the connection was aborted by hand)."""
    run, fusectl = tmp_path / "run", tmp_path / "connections"
    run.mkdir()
    (fusectl / "41").mkdir(parents=True)
    (fusectl / "41" / "abort").write_text("")
    dead, alive = str(run / "bbjob-35_quota_list"), str(run / "bbjob-39_quota_limit")  # no pid file: old
    young = str(run / "bbjob-40_quota_list")
    table = [mounts.parse_mountinfo_line(f"70 27 0:41 / {dead} rw - fuse.glusterfs 127.1.1.2:bbjob-35 rw"),
             mounts.parse_mountinfo_line(f"72 27 0:43 / {alive} rw - fuse.glusterfs 127.1.1.1:bbjob-39 rw"),
             mounts.parse_mountinfo_line(f"74 27 0:45 / {run}/other rw - fuse.glusterfs 127.1.1.1:x rw"),
             mounts.parse_mountinfo_line(f"76 27 0:47 / {young} rw - fuse.glusterfs 127.1.1.1:bbjob-40 rw")]
    (run / "bbjob-40_quota_list.pid").write_text("4711")  # its quota command began 30 s ago: not asked
    os.utime(run / "bbjob-40_quota_list.pid", (1031.0, 1031.0))
    (run / "bbjob-35_quota_list.pid").write_text("4712")
    os.utime(run / "bbjob-35_quota_list.pid", (1000.0, 1000.0))
    killed = (-9, "", "")
    module = fake_module([killed, OK, OK, OK])  # stat of dead: killed; fusectl mount; stat of alive; umount
    runner = mounts.CommandRunner(module)
    aborted = mounts.release_dead_aux_mounts(runner, timeout=5, directory=str(run), mountinfo=table,
                                             fusectl=str(fusectl), clock=lambda: 1000.0 + 61)
    assert aborted == [dead]
    assert (fusectl / "41" / "abort").read_text() == "1"
    # "other" is no aux mount; young is 30 s old
    assert [argv[-1] for argv, _env in module.calls if argv[0] == "timeout"] == [dead, alive]
    assert mounts.release_dead_aux_mounts(mounts.CommandRunner(fake_module([], check_mode=True)),
                                          directory=str(run), mountinfo=table) == []


def test_glusterfs_clients_of_a_mount_point_are_found_by_their_last_word(tmp_path):
    def process(pid, *argv):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    process(101, "/usr/sbin/glusterfs", "--process-name", "fuse", "--volfile-id=/bbjob-7", "/mnt/bb/bbjob-7")
    process(102, "/usr/sbin/glusterfs", "--volfile-id=/bbjob-70", "/mnt/bb/bbjob-70")  # another mount point
    process(103, "/usr/bin/stat", "/mnt/bb/bbjob-7")  # not a client
    (tmp_path / "self").mkdir()  # not a pid
    (tmp_path / "104").mkdir()  # ended meanwhile: no cmdline
    assert mounts.glusterfs_clients_of("/mnt/bb/bbjob-7", proc=str(tmp_path)) == [101]


def test_end_processes_terminates_those_alive_and_skips_those_gone():
    alive = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    mounts.end_processes([gone.pid, alive.pid])  # the ended one raises nothing
    assert alive.wait(timeout=10) == -signal.SIGTERM
