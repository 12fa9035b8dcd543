"""Cache write-back (cache_writeback.py) and the cache overlay (cache_overlay.py) on real directories.

The planner is checked on hand-made upper directories (both whiteout forms, opaque
directories, type changes, the ``since`` rule), and end to end on a real fuse-overlayfs
mount run as the job's user (bbuser; needs root to mount): a job that reads, modifies,
creates, renames, deletes, chmods and replaces files runs once directly on a copy of DIR
and once in the cache; after the write-back DIR must equal the copy in every path, kind,
mode, owner, size, checksum, symlink target and mtime.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import cache_overlay as co
from ansible_collections.hpc.burstbuffer.plugins.module_utils import cache_writeback as cw
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_errors as se

from tests.cache_job import OLD, T_DIR, T_FILE, differences, make_dir, run_job, snapshot, write

# --- the planner on hand-made upper directories (no root needed) ----------------------------------------

@pytest.fixture
def trees(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    write(lower / "keep", b"untouched")
    write(lower / "gone", b"deleted by the job")
    write(lower / "d" / "old", b"old")
    write(lower / "d" / "stays", b"stays")
    write(lower / "tree" / "deep" / "f", b"f")
    for directory in (lower / "d", lower / "tree" / "deep", lower / "tree", lower):
        os.utime(directory, (OLD, OLD))
    upper.mkdir()
    return lower, upper


def test_a_dot_wh_whiteout_deletes_only_that_name(trees):
    lower, upper = trees
    write(upper / ".wh.gone", b"")
    result = cw.writeback(str(upper), str(lower))
    assert not (lower / "gone").exists()
    assert (lower / "keep").read_bytes() == b"untouched"
    assert result["deleted"] == 1 and result["whiteouts"] == 1 and result["failed_files"] == []
    assert not (lower / ".wh.gone").exists()


def test_a_whiteout_of_a_directory_deletes_the_tree(trees):
    lower, upper = trees
    write(upper / ".wh.tree", b"")
    result = cw.writeback(str(upper), str(lower))
    assert not (lower / "tree").exists() and result["deleted"] == 3


def test_a_whiteout_of_a_name_dir_does_not_have_deletes_nothing(trees):
    lower, upper = trees
    before = snapshot(lower)
    write(upper / ".wh.never-there", b"")
    cw.writeback(str(upper), str(lower))
    assert snapshot(lower) == before


@pytest.mark.skipif(os.geteuid() != 0 and os.uname().release < "5.8", reason="mknod 0/0 needs root before 5.8")
def test_a_character_device_whiteout_deletes_the_name(trees):
    lower, upper = trees
    os.mknod(upper / "gone", stat.S_IFCHR | 0o000, 0)
    cw.writeback(str(upper), str(lower))
    assert not (lower / "gone").exists() and (lower / "keep").exists()


def test_an_opaque_directory_replaces_what_dir_had_there(trees):
    lower, upper = trees
    write(upper / "d" / "new", b"new", mtime=T_FILE)
    write(upper / "d" / ".wh..wh..opq", b"", mode=0o700)
    os.utime(upper / "d", (T_DIR, T_DIR))
    cw.writeback(str(upper), str(lower))
    assert sorted(p.name for p in (lower / "d").iterdir()) == ["new"]
    assert os.stat(lower / "d").st_mtime == T_DIR


def test_a_new_or_changed_file_arrives_whole_with_mode_and_mtime(trees):
    lower, upper = trees
    write(upper / "keep", b"changed by the job", mode=0o600, mtime=T_FILE)
    write(upper / "sub" / "made", b"made", mode=0o640, mtime=T_FILE)
    os.utime(upper / "sub", (T_DIR, T_DIR))
    result = cw.writeback(str(upper), str(lower))
    assert (lower / "keep").read_bytes() == b"changed by the job"
    info = os.stat(lower / "keep")
    assert (stat.S_IMODE(info.st_mode), info.st_mtime) == (0o600, T_FILE)
    assert (lower / "sub" / "made").read_bytes() == b"made" and os.stat(lower / "sub").st_mtime == T_DIR
    assert result["files"] == 2 and result["failed_files"] == []
    assert not [p for p in lower.rglob("*") if p.name.endswith(".bb-stage.tmp")]


def test_a_directory_the_job_did_not_change_keeps_its_mtime(trees):
    lower, upper = trees
    write(upper / "tree" / "deep" / "f", b"rewritten", mtime=T_FILE)  # copied up: parents in upper, new times
    cw.writeback(str(upper), str(lower))
    assert os.stat(lower / "tree").st_mtime == OLD and os.stat(lower / "tree" / "deep").st_mtime == OLD
    assert os.stat(lower).st_mtime == OLD
    assert (lower / "tree" / "deep" / "f").read_bytes() == b"rewritten"


def test_a_file_that_became_a_directory_and_back(trees):
    lower, upper = trees
    write(upper / "gone" / "inside", b"now a directory", mtime=T_FILE)  # was a file
    write(upper / "tree", b"now a file", mtime=T_FILE)  # was a directory tree
    result = cw.writeback(str(upper), str(lower))
    assert (lower / "gone" / "inside").read_bytes() == b"now a directory"
    assert (lower / "tree").read_bytes() == b"now a file"
    assert result["failed_files"] == []


def test_symlinks_are_written_as_links_never_followed(trees, tmp_path):
    lower, upper = trees
    outside = write(tmp_path / "outside", b"not the job's")
    upper.joinpath("link").symlink_to(outside)
    cw.writeback(str(upper), str(lower))
    assert os.readlink(lower / "link") == str(outside) and outside.read_bytes() == b"not the job's"


def test_since_keeps_what_someone_else_changed_on_dir_during_the_job(trees):
    lower, upper = trees
    since = time.time_ns()
    time.sleep(0.01)
    write(lower / "gone", b"rewritten on DIR by another process during the job")
    write(upper / ".wh.gone", b"")
    write(upper / ".wh.keep", b"")
    result = cw.writeback(str(upper), str(lower), since_ns=since)
    assert (lower / "gone").exists() and not (lower / "keep").exists()
    assert result["kept"] == [{"path": str(lower / "gone"), "reason": "changed on the cached directory during the job"}]


def test_a_rerun_after_success_changes_nothing_and_copies_nothing(trees):
    lower, upper = trees
    since = time.time_ns() - 1
    write(upper / "keep", b"changed", mtime=T_FILE)
    write(upper / ".wh.gone", b"")
    cw.writeback(str(upper), str(lower), since_ns=since)
    before = snapshot(lower)
    again = cw.writeback(str(upper), str(lower), since_ns=since)
    assert again["files"] == 0 and again["complete"] == 1 and snapshot(lower) == before


def test_a_changed_file_with_its_old_size_and_mtime_is_still_written(trees):
    lower, upper = trees
    info = os.stat(lower / "keep")
    write(upper / "keep", b"UNTOUCHED", mtime=OLD)  # same size, old mtime given back
    assert os.stat(upper / "keep").st_size == info.st_size
    cw.writeback(str(upper), str(lower), since_ns=time.time_ns())
    assert (lower / "keep").read_bytes() == b"UNTOUCHED"


def test_a_failed_copy_deletes_nothing(trees, monkeypatch):
    lower, upper = trees
    write(upper / "keep", b"changed", mtime=T_FILE)
    write(upper / ".wh.gone", b"")
    (lower / "keep").chmod(0o644)
    lower.chmod(0o555)  # renames into DIR fail (unless root)
    try:
        if os.geteuid() == 0:
            monkeypatch.setattr(cw.Copier, "finalise", lambda self, copy: "cannot rename: injected")
        result = cw.writeback(str(upper), str(lower))
    finally:
        lower.chmod(0o755)
    assert result["failed_files"] and (lower / "gone").exists()


@pytest.mark.parametrize("dry_run", [False, True])
def test_discard_removes_only_the_write_backs_temporaries_and_writes_nothing(trees, dry_run):
    """What a killed write-back leaves on DIR, removed before a teardown with hurry: its temporaries only,
    not a user's file of a like name, and nothing is written back or deleted."""
    lower, upper = trees
    write(upper / "keep", b"changed", mtime=T_FILE)
    write(upper / "d" / "new", b"new")
    write(upper / ".wh.gone", b"")
    write(lower / ".keep.bb-stage.tmp", b"chan")  # a copy cut short
    write(lower / "d" / ".new.bb-stage.tmp", b"")
    write(lower / ".mine.bb-stage.tmp", b"the user's own")  # no copy of the plan writes through it
    result = cw.writeback(str(upper), str(lower), discard=True, dry_run=dry_run)
    assert result["discarded"] == 2 and result["failed_files"] == [] and result["files"] == 0
    for temporary in (lower / ".keep.bb-stage.tmp", lower / "d" / ".new.bb-stage.tmp"):
        assert temporary.exists() is dry_run
    assert (lower / ".mine.bb-stage.tmp").read_bytes() == b"the user's own"
    assert (lower / "keep").read_bytes() == b"untouched" and (lower / "gone").exists()
    assert not (lower / "d" / "new").exists()


def test_plan_only_reads(trees):
    lower, upper = trees
    write(upper / ".wh.gone", b"")
    write(upper / "new", b"n")
    before = snapshot(lower)
    result = cw.writeback(str(upper), str(lower), dry_run=True)
    assert snapshot(lower) == before
    assert result["planned"]["deletions"] == [{"path": str(lower / "gone"), "why": "whiteout"}]
    assert [c["destination"] for c in result["planned"]["copies"]] == [str(lower / "new")]


def test_missing_roots_are_a_stage_error(tmp_path):
    with pytest.raises(se.StageError, match="cannot reach the cache's upper directory"):
        cw.plan_writeback(str(tmp_path / "no-upper"), str(tmp_path))


def test_overlay_options_refuse_commas_and_colons():
    assert co.overlay_options("/pfs/a", "/b/upper", "/b/work") == "lowerdir=/pfs/a,upperdir=/b/upper,workdir=/b/work"
    for bad in ("/pfs/a,b", "/pfs/a:b"):
        with pytest.raises(co.OverlayError, match="cannot take in a path"):
            co.overlay_options(bad, "/b/upper", "/b/work")
    assert co.mount_data(5, 1001, 1002) == "fd=5,rootmode=40000,user_id=1001,group_id=1002"
    assert co.daemon_argv("fuse-overlayfs", "lowerdir=/a", 3) == ["fuse-overlayfs", "-f", "-o", "lowerdir=/a",
                                                                   "/dev/fd/3"]


# --- a real job in a real fuse-overlayfs mount, as the job's user -----------------------------------------

def can_mount_overlay() -> str:
    if os.geteuid() != 0:
        return "mounting needs root"
    if shutil.which("fuse-overlayfs") is None or not os.path.exists(co.FUSE_DEVICE):
        return "no fuse-overlayfs or /dev/fuse"
    try:
        pwd.getpwnam("bbuser")
    except KeyError:
        return "no user bbuser"
    return ""


needs_overlay = pytest.mark.skipif(bool(can_mount_overlay()), reason=can_mount_overlay() or "-")


@pytest.fixture
def job_tree():
    owner = pwd.getpwnam("bbuser") if not can_mount_overlay() else None
    top = Path(tempfile.mkdtemp(prefix="bb-cache-", dir="/tmp"))
    top.chmod(0o755)
    yield top, owner
    mountpoint = top / "mnt"
    if co.is_mounted(str(mountpoint)):  # root cannot stat it: os.path.ismount would say no
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
    shutil.rmtree(top, ignore_errors=True)


@needs_overlay
def test_a_real_job_in_the_cache_leaves_dir_as_a_direct_run_would(job_tree):
    top, owner = job_tree
    pfs = make_dir(top, owner)
    direct = top / "direct"
    subprocess.run(["cp", "-a", str(pfs), str(direct)], check=True)
    assert snapshot(direct) == snapshot(pfs)
    run_job(direct, owner)

    buffer, mountpoint = top / "buffer", top / "mnt"
    for path in (buffer, mountpoint):
        path.mkdir(mode=0o700)
        os.chown(path, owner.pw_uid, owner.pw_gid)
    prepared = co.prepare_as_user(str(pfs), str(buffer), owner.pw_uid, owner.pw_gid)
    co.mount_overlay(str(pfs), str(buffer), str(mountpoint), owner.pw_uid, owner.pw_gid)
    try:
        with pytest.raises(PermissionError):  # only the job's user enters it, not even root
            os.listdir(mountpoint)
        run_job(mountpoint, owner)
        assert (pfs / "d1" / "b").exists(), "the job's changes must stay in the buffer until the write-back"
    finally:
        co.unmount_overlay(str(mountpoint), mounted=True)
    assert not co.is_mounted(str(mountpoint)) and co.daemon_pid(str(mountpoint)) is None

    result = cw.writeback_as_user(str(buffer / "upper"), str(pfs), owner.pw_uid, owner.pw_gid,
                                  since_ns=prepared["since_ns"], workers=4)
    assert result["failed_files"] == [] and result["kept"] == [] and result["not_copied"] == []
    assert differences(snapshot(pfs), snapshot(direct)) == []
    assert not [p for p in pfs.rglob("*") if p.name.startswith(".wh.") or p.name.endswith(".bb-stage.tmp")]


@needs_overlay
def test_the_overlay_reads_dir_with_the_users_rights_only(job_tree):
    top, owner = job_tree
    pfs = make_dir(top, owner)
    secret = write(pfs / "root-only", b"root's", mode=0o600)  # root's file in the user's DIR
    buffer, mountpoint = top / "buffer", top / "mnt"
    for path in (buffer, mountpoint):
        path.mkdir(mode=0o700)
        os.chown(path, owner.pw_uid, owner.pw_gid)
    co.prepare_as_user(str(pfs), str(buffer), owner.pw_uid, owner.pw_gid)
    co.mount_overlay(str(pfs), str(buffer), str(mountpoint), owner.pw_uid, owner.pw_gid)
    try:
        read = subprocess.run(["runuser", "-u", "bbuser", "--", "cat", str(mountpoint / secret.name)],
                              capture_output=True, text=True)
        assert read.returncode != 0 and "Permission denied" in read.stderr
        daemon = co.daemon_pid(str(mountpoint))
        assert os.stat(f"/proc/{daemon}").st_uid == owner.pw_uid
    finally:
        co.unmount_overlay(str(mountpoint), mounted=True)


@needs_overlay
def test_prepare_refuses_a_dir_the_user_cannot_read(job_tree):
    top, owner = job_tree
    closed = top / "closed"
    closed.mkdir(mode=0o700)  # root's
    (top / "buffer").mkdir(mode=0o700)
    os.chown(top / "buffer", owner.pw_uid, owner.pw_gid)
    with pytest.raises(se.StageError, match=rf"cannot read the cached directory {closed}: Permission denied"):
        co.prepare_as_user(str(closed), str(top / "buffer"), owner.pw_uid, owner.pw_gid)


def test_a_failed_copy_deletes_nothing_not_even_what_a_new_kind_replaces(trees, monkeypatch):
    lower, upper = trees
    write(upper / "keep", b"changed", mtime=T_FILE)
    write(upper / "tree", b"now a file", mtime=T_FILE)  # replaces a directory of DIR
    write(upper / ".wh.gone", b"")
    real = cw.Copier.finalise
    monkeypatch.setattr(cw.Copier, "finalise",
                        lambda self, copy: "injected" if copy.plan.destination.endswith("keep") else real(self, copy))
    result = cw.writeback(str(upper), str(lower))
    assert [f["path"] for f in result["failed_files"]] == [str(upper / "keep")]
    assert (lower / "tree" / "deep" / "f").exists() and (lower / "gone").exists()
    assert (lower / "keep").read_bytes() == b"untouched"


def test_the_since_file_is_read_only_as_a_small_regular_file(tmp_path):
    since = tmp_path / "since"
    since.write_text("1700000000000000000\n")
    assert co.read_since(str(since)) == 1_700_000_000_000_000_000
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(since)
    assert co.read_since(str(fifo)) is None  # and it did not wait for a writer
    assert co.read_since(str(link)) is None
    assert co.read_since(str(tmp_path / "missing")) is None
    since.write_text("not a number")
    assert co.read_since(str(since)) is None


def test_an_entry_of_another_kind_someone_put_on_dir_during_the_job_fails_the_write_back(trees):
    lower, upper = trees
    since = time.time_ns()
    time.sleep(0.01)
    shutil.rmtree(lower / "d")
    write(lower / "d", b"in the way")  # put there during the job: not the job's to delete
    write(upper / "d" / "new", b"new", mtime=T_FILE)
    write(upper / ".wh.gone", b"")
    result = cw.writeback(str(upper), str(lower), since_ns=since)
    assert [f["path"] for f in result["failed_files"]] == [str(lower / "d")]
    assert result["kept"] == [{"path": str(lower / "d"), "reason": "changed on the cached directory during the job"}]
    assert (lower / "d").read_bytes() == b"in the way" and (lower / "gone").exists()
    (lower / "d").unlink()
    again = cw.writeback(str(upper), str(lower), since_ns=since)
    assert again["failed_files"] == [] and (lower / "d" / "new").read_bytes() == b"new"
    assert not (lower / "gone").exists()


@needs_overlay
def test_a_mount_the_user_cannot_reach_is_undone_with_its_pid_file(job_tree):
    top, owner = job_tree
    pfs = make_dir(top, owner)
    buffer, hidden = top / "buffer", top / "hidden"
    buffer.mkdir(mode=0o700)
    os.chown(buffer, owner.pw_uid, owner.pw_gid)
    hidden.mkdir(mode=0o700)  # root's: the user cannot reach a mount point inside
    mountpoint = hidden / "mnt"
    mountpoint.mkdir()
    co.prepare_as_user(str(pfs), str(buffer), owner.pw_uid, owner.pw_gid)
    with pytest.raises(co.OverlayError, match=r"does not answer .*Permission denied.*it was unmounted"):
        co.mount_overlay(str(pfs), str(buffer), str(mountpoint), owner.pw_uid, owner.pw_gid)
    assert not co.is_mounted(str(mountpoint)) and co.daemon_pid(str(mountpoint)) is None


def test_a_file_both_the_job_and_someone_else_changed_ends_as_the_job_wrote_it(trees):
    lower, upper = trees
    since = time.time_ns()
    time.sleep(0.01)
    write(lower / "keep", b"someone else's change during the job", mtime=T_DIR)
    write(upper / "keep", b"the job's version", mtime=T_FILE)
    result = cw.writeback(str(upper), str(lower), since_ns=since)
    assert (lower / "keep").read_bytes() == b"the job's version" and os.stat(lower / "keep").st_mtime == T_FILE
    assert result["kept"] == [] and result["files"] == 1
