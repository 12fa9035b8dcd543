"""The copy engine (module_utils/copy_engine.py and the stage_*.py and user_worker.py it is made
of): path rules, list parsing, planning, chunking, the skip rule, temporary names and rename,
failure reporting; the filesystem parts on tmp dirs, in-process.

Dropping privileges needs root: those tests are skipped for other users (the integration
tests run them for real against GlusterFS).
"""

import ctypes
import errno
import os
import pwd
import re
import signal
import socket
import stat
import threading
import time
import types
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import copy_engine as ce
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gfapi, mounts
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_copy as sc
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_errors as se
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_gfapi as sg
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_hardlinks as sh
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_plan as sp
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_progress as pr
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_rules as sr
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_threads as st
from ansible_collections.hpc.burstbuffer.plugins.module_utils import user_worker as uw

MiB = 1024 * 1024
OLD = 1_600_000_000_123_456_789  # an mtime in the past, with nanoseconds


def request(direction, kind, source, destination, buffer_root):
    return sr.StageRequest(direction, kind, str(source), None if destination is None else str(destination),
                           str(buffer_root))


def write(path, data=b"x", mode=0o644, mtime_ns=OLD):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def attributes(path):
    info = os.lstat(path)
    return stat.S_IMODE(info.st_mode), info.st_mtime_ns, info.st_size


def tree_of(root):
    """{relative path: (kind, mode, mtime_ns, content or link target)} of a tree."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", stat.S_IMODE(info.st_mode), info.st_mtime_ns)
            else:
                found[rel] = ("file", stat.S_IMODE(info.st_mode), info.st_mtime_ns, path.read_bytes())
    return found


@pytest.fixture
def source(tmp_path):
    """A mixed tree: small and chunked files, odd modes, an empty file, a symlink, a read-only dir."""
    root = tmp_path / "pfs" / "input"
    write(root / "a.txt", b"alpha\n")
    write(root / "empty", b"")
    write(root / "run.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
    write(root / "ro.dat", b"read only", mode=0o444)
    write(root / "private", b"mine", mode=0o600)
    write(root / "big.bin", os.urandom(3 * MiB + 12345))
    write(root / "sub" / "deeper" / "c.txt", b"gamma")
    write(root / "locked" / "inside", b"in a read-only directory")
    os.symlink("a.txt", root / "link-to-a")
    os.symlink("/etc/passwd", root / "link-out")
    for directory, mode in ((root / "sub" / "deeper", 0o750), (root / "sub", 0o755),
                            (root / "locked", 0o555), (root, 0o755)):
        directory.chmod(mode)
        os.utime(directory, ns=(OLD, OLD + 1000))
    yield root
    (root / "locked").chmod(0o755)


@pytest.fixture
def buffer(tmp_path):
    root = tmp_path / "buffer"
    root.mkdir(mode=0o700)
    yield root
    for dirpath, _dirnames, _filenames in os.walk(root):
        os.chmod(dirpath, 0o755)


def stage_in(source, buffer, name="input", **options):
    options.setdefault("chunk_size", MiB)
    return ce.stage(request("in", "directory", source, buffer / name, buffer), **options)


# --- path rules --------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "normal"), [
    ("/a/b", "/a/b"), ("/a//b/./c/", "/a/b/c"), ("//x", "/x"), ("/", "/")])
def test_check_path_normalises(path, normal):
    assert sr.check_path(path, "source") == normal


@pytest.mark.parametrize(("path", "message"), [
    ("relative/path", "is relative"), ("./x", "is relative"), ("", "is empty"),
    ("/a/../etc", "contains '..'"), ("/a/..", "contains '..'"), ("/a\0b", "NUL")])
def test_check_path_refuses(path, message):
    with pytest.raises(se.StageError, match=message):
        sr.check_path(path, "source")


@pytest.mark.parametrize(("root", "path", "inside"), [
    ("/bb/job1", "/bb/job1", True), ("/bb/job1", "/bb/job1/x", True),
    ("/bb/job1", "/bb/job10", False), ("/bb/job1", "/bb", False), ("/bb/job1/", "/bb/job1/y", True)])
def test_is_inside(root, path, inside):
    assert sr.is_inside(root, path) is inside


REFUSED_REQUESTS = {
    "stage-in destination outside the buffer": (
        ("in", "directory", "/pfs/in", "/pfs/elsewhere", "/bb/job1"), "not inside the buffer /bb/job1"),
    "stage-in destination in a sibling buffer": (
        ("in", "file", "/pfs/a", "/bb/job10/a", "/bb/job1"), "not inside the buffer"),
    "stage-out source outside the buffer": (
        ("out", "directory", "/etc", "/pfs/out", "/bb/job1"), "stage-out source /etc is not inside"),
    "dot-dot escape": (("in", "file", "/pfs/a", "/bb/job1/../job2/a", "/bb/job1"), "contains '..'"),
    "relative source": (("in", "file", "pfs/a", "/bb/job1/a", "/bb/job1"), "is relative"),
    "relative buffer root": (("in", "file", "/pfs/a", "/bb/job1/a", "bb/job1"), "buffer_root .* relative"),
    "buffer root /": (("in", "file", "/pfs/a", "/a", "/"), "buffer_root is /"),
    "no destination": (("in", "directory", "/pfs/a", None, "/bb/job1"), "destination is required"),
    "unknown direction": (("sideways", "file", "/a", "/b", "/bb"), "direction 'sideways'"),
    "unknown type": (("in", "tree", "/a", "/bb/a", "/bb"), "type 'tree'"),
}


@pytest.mark.parametrize(("fields", "message"), REFUSED_REQUESTS.values(), ids=REFUSED_REQUESTS)
def test_check_request_refuses(fields, message):
    with pytest.raises(se.StageError, match=message):
        sr.check_request(sr.StageRequest(*fields))


def test_check_request_keeps_a_trailing_slash_and_a_lists_base():
    checked = sr.check_request(sr.StageRequest("in", "file", "/pfs//a", "/bb/job1/dir/", "/bb/job1/"))
    assert checked == sr.StageRequest("in", "file", "/pfs/a", "/bb/job1/dir/", "/bb/job1")
    listed = sr.check_request(sr.StageRequest("out", "list", "/bb/job1/list", "/pfs//results", "/bb/job1",
                                              {"DW_JOB_STRIPED": "/bb/job1/"}))
    assert (listed.destination, listed.buffer_variables) == ("/pfs/results", {"DW_JOB_STRIPED": "/bb/job1"})
    with pytest.raises(se.StageError, match="stage-in destination /elsewhere is not inside the buffer"):
        sr.check_request(sr.StageRequest("in", "list", "/pfs/list", "/elsewhere", "/bb/job1"))


# --- the list format -------------------------------------------------------------------------

def test_parse_stage_list():
    text = ("# inputs for run 42\n\n/pfs/a /bb/job1/a\n  /pfs/b\t/bb/job1/sub/  # into sub\n"
            "'/pfs/with space' \"/bb/job1/with space\"\n")
    assert sr.parse_stage_list(text, "/bb/job1", "in") == [
        ("/pfs/a", "/bb/job1/a"), ("/pfs/b", "/bb/job1/sub/"),
        ("/pfs/with space", "/bb/job1/with space")]


@pytest.mark.parametrize(("text", "message"), [
    ("/pfs/a /bb/job1/a\n/pfs/b\n", "list line 2 has 1 fields"),
    ("/pfs/a /bb/job1/a extra\n", "line 1 has 3 fields"),
    ("/pfs/a /elsewhere/a\n", "line 1: stage-in destination /elsewhere/a is not inside the buffer"),
    ("pfs/a /bb/job1/a\n", "line 1: source 'pfs/a' is relative"),
    ("/pfs/a /bb/job1/../x\n", "line 1: destination .* contains '..'"),
    ("'/pfs/a /bb/job1/a\n", "line 1: No closing quotation"),
    ("# nothing\n\n", "names no files"),
])
def test_parse_stage_list_refuses(text, message):
    with pytest.raises(se.StageError, match=message):
        sr.parse_stage_list(text, "/bb/job1", "in", "the list")


JOB_VARIABLES = {"DW_JOB_STRIPED": "/bb/job1", "BB_JOB_STRIPED": "/bb/job1"}


def test_list_lines_name_the_buffer_as_directives_do_and_relative_destinations_go_under_the_base():
    """Issue 9: a user cannot know the buffer's path on the stage host when writing the list."""
    text = ("/pfs/u/a $DW_JOB_STRIPED/listed/a\n/pfs/u/b $BB_JOB_STRIPED\n/pfs/u/c sub/c\n"
            "/pfs/u/d $DW_JOB_STRIPED//x/./d\n")
    assert sr.parse_stage_list(text, "/bb/job1", "in", variables=JOB_VARIABLES, base="/bb/job1/in") == [
        ("/pfs/u/a", "/bb/job1/listed/a"), ("/pfs/u/b", "/bb/job1"), ("/pfs/u/c", "/bb/job1/in/sub/c"),
        ("/pfs/u/d", "/bb/job1/x/d")]


def test_a_stage_out_list_reads_buffer_sources_by_variable_or_under_the_root_and_pfs_destinations_under_base():
    text = "$DW_JOB_STRIPED/out/a /pfs/u/a\nout/b b\n"
    assert sr.parse_stage_list(text, "/bb/job1", "out", variables=JOB_VARIABLES, base="/pfs/u/results") == [
        ("/bb/job1/out/a", "/pfs/u/a"), ("/bb/job1/out/b", "/pfs/u/results/b")]


@pytest.mark.parametrize(("text", "message"), [
    ("/pfs/a $DW_PERSISTENT_STRIPED_other/a\n",
     r"names \$DW_PERSISTENT_STRIPED_other, which is not this "
     r"directive's buffer \(here: \$BB_JOB_STRIPED, \$DW_JOB_STRIPED\)"),
    ("/pfs/a $DW_JOB_PRIVATE/a\n", r"names \$DW_JOB_PRIVATE"),
    ("/pfs/a $DW_JOB_STRIPED/../../etc/x\n", "contains '..'"),
    ("/pfs/a ../x\n", "contains '..'"),
    ("$DW_JOB_STRIPED/a /bb/job1/a\n", "this side of the line is on the parallel filesystem"),
])
def test_list_lines_with_variables_still_stay_inside_the_buffer(text, message):
    with pytest.raises(se.StageError, match=message):
        sr.parse_stage_list(text, "/bb/job1", "in", "the list", variables=JOB_VARIABLES, base="/bb/job1/in")


def test_parse_stage_list_stage_out_checks_sources():
    with pytest.raises(se.StageError, match="stage-out source /pfs/a is not inside"):
        sr.parse_stage_list("/pfs/a /pfs/b\n", "/bb/job1", "out")


# --- decisions ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "same"), [
    (OLD, OLD, True), (OLD, OLD + 1, False),
    (1_600_000_000_123_456_000, 1_600_000_000_123_456_789, True),  # a filesystem keeping us
    (1_600_000_000_000_000_000, 1_600_000_000_123_456_789, True),  # ... or whole seconds
    (1_600_000_000_123_000_000, 1_600_000_000_124_000_000, False),
    (1_600_000_001_000_000_000, 1_600_000_000_999_999_999, False)])
def test_same_mtime(a, b, same):
    assert sp.same_mtime(a, b) is same
    assert sp.same_mtime(b, a) is same


@pytest.mark.parametrize(("existing", "complete"), [
    (None, False),
    (sp.DestEntry("file", 100, OLD, None), True),
    (sp.DestEntry("file", 100, OLD + 1, None), False),   # interrupted: pre-sized, mtime not yet set
    (sp.DestEntry("file", 99, OLD, None), False),
    (sp.DestEntry("link", 100, OLD, "x"), False),
    (sp.DestEntry("dir", 0, OLD, None), False)])
def test_skip_rule(existing, complete):
    assert sp.is_complete(100, OLD, existing) is complete


@pytest.mark.parametrize(("size", "chunk", "pieces"), [
    (0, 4, [(0, 0)]), (3, 4, [(0, 3)]), (4, 4, [(0, 4)]), (8, 4, [(0, 4), (4, 4)]),
    (10, 4, [(0, 4), (4, 4), (8, 2)])])
def test_chunk_ranges(size, chunk, pieces):
    assert sc.chunk_ranges(size, chunk) == pieces


def test_chunk_ranges_refuses_a_zero_chunk():
    with pytest.raises(ValueError, match="positive"):
        sc.chunk_ranges(10, 0)


def test_temp_name_is_hidden_next_to_the_file_and_fits_name_max():
    assert sp.temp_name("/pfs/out/result.h5") == "/pfs/out/.result.h5.bb-stage.tmp"
    long = "/pfs/out/" + "n" * 250
    temp = sp.temp_name(long)
    assert temp.startswith("/pfs/out/.") and temp.endswith(".bb-stage.tmp")
    assert len(os.path.basename(temp)) <= 255
    assert temp == sp.temp_name(long)  # the same every run: a rerun replaces a leftover


def test_temp_name_avoids_a_file_of_that_name_being_staged_too():
    temp = sp.temp_name("/pfs/out/x", taken={"x", ".x.bb-stage.tmp"})
    assert temp.startswith("/pfs/out/.x.") and temp.endswith(".bb-stage.tmp")
    assert temp != "/pfs/out/.x.bb-stage.tmp"


def test_stage_out_of_a_file_named_like_anothers_temporary_name(buffer, tmp_path):
    write(buffer / "results" / "x", b"x's content")
    write(buffer / "results" / ".x.bb-stage.tmp", b"a file that happens to have this name")
    out = tmp_path / "out"
    result = ce.stage(request("out", "directory", buffer / "results", out, buffer))
    assert result["failed_files"] == [] and result["files"] == 2
    assert (out / "x").read_bytes() == b"x's content"
    assert (out / ".x.bb-stage.tmp").read_bytes() == b"a file that happens to have this name"


def plan(destination, size=1):
    return sp.FilePlan("/src" + destination, destination, size, False, None, False)


def test_interleave_by_directory_round_robins():
    files = [plan("/b/a/1"), plan("/b/a/2"), plan("/b/a/3"), plan("/b/c/1"), plan("/b/d/1"), plan("/b/d/2")]
    order = [f.destination for f in sc.interleave_by_directory(files)]
    assert order == ["/b/a/1", "/b/c/1", "/b/d/1", "/b/a/2", "/b/d/2", "/b/a/3"]


def test_chunk_tasks_put_pieces_of_large_files_first_and_round_robin():
    files = sc.order_files([plan("/b/s1", 5), plan("/b/big", 30), plan("/b/mid", 20), plan("/b/s2", 0)], 10)
    tasks = sc.chunk_tasks(files, 10)
    pieces = [t for t in tasks if isinstance(t, sc.Piece)]
    assert [(t.copy.plan.destination, t.offset, t.length) for t in pieces] == [
        ("/b/big", 0, 10), ("/b/mid", 0, 10), ("/b/big", 10, 10), ("/b/mid", 10, 10), ("/b/big", 20, 10)]
    assert tasks[len(pieces):] == [files[2], files[3]]  # small files whole, their FileCopy made when run
    big = [t for t in pieces if t.copy.plan.destination == "/b/big"]
    assert len({id(t.copy) for t in big}) == 1 and big[0].copy.remaining == 3


def test_failure_message_names_files_and_counts_the_rest():
    failed = [{"path": f"/p/{i}", "reason": "Permission denied"} for i in range(12)]
    message = se.failure_message("out", failed, 100)
    assert message.startswith("stage-out failed for 12 of 100 entries: /p/0: Permission denied; /p/1:")
    assert "/p/9: Permission denied (and 2 more, see failed_files)" in message
    assert "/p/10" not in message


def test_progress_reports_at_most_twice_a_second():
    now = [100.0]
    reports = []
    progress = pr.Progress(10, 1000, reports.append, clock=lambda: now[0])
    for step in range(10):
        now[0] = 100.0 + step * 0.2
        progress.add(files=1, nbytes=100)
    assert [r["files_done"] for r in reports] == [4, 7, 10]
    assert reports[0] == {"files_done": 4, "files_total": 10, "bytes_done": 400, "bytes_total": 1000,
                          "rate": 667, "elapsed": 0.6}


def test_progress_file_throttles_and_writes_the_final_line_once(tmp_path):
    now = [0.0]
    target = tmp_path / "progress.jsonl"
    progress = pr.ProgressFile(str(target), clock=lambda: now[0])
    for step in range(5):
        now[0] = step * 0.2
        progress({"files_done": step})
    progress.final({"files_done": 4})
    progress.final({"files_done": 4})
    lines = target.read_text().splitlines()
    assert lines == ['{"files_done": 0}', '{"files_done": 3}', '{"files_done": 4}']


# --- staging a tree (in this process, as whoever runs the tests) ---------------------------------

def test_stage_in_copies_content_modes_times_and_symlinks(source, buffer):
    result = stage_in(source, buffer, workers=4)
    assert result["failed_files"] == [] and result["not_copied"] == []
    assert (result["files"], result["links"], result["directories"]) == (8, 2, 4)
    assert result["bytes"] == sum(p.stat().st_size for p in source.rglob("*")
                                  if p.is_file() and not p.is_symlink())
    assert tree_of(buffer / "input") == tree_of(source)
    assert attributes(buffer / "input")[:2] == attributes(source)[:2]
    assert os.readlink(buffer / "input" / "link-out") == "/etc/passwd"  # copied as a link, not followed


def test_second_run_skips_everything_and_resumes_what_changed(source, buffer):
    stage_in(source, buffer)
    again = stage_in(source, buffer)
    assert (again["files"], again["complete"], again["bytes"], again["directories"]) == (0, 10, 0, 0)
    write(source / "a.txt", b"alpha, longer\n")               # size differs
    copy = buffer / "input" / "sub" / "deeper" / "c.txt"
    os.utime(copy, ns=(OLD, OLD + 5))                          # as left by an interrupted copy
    resumed = stage_in(source, buffer)
    assert (resumed["files"], resumed["complete"]) == (2, 8)
    assert tree_of(buffer / "input") == tree_of(source)


def test_a_read_only_old_copy_is_replaced(source, buffer):
    stage_in(source, buffer)
    write(source / "ro.dat", b"read only, new", mode=0o444)
    assert stage_in(source, buffer)["files"] == 1
    assert (buffer / "input" / "ro.dat").read_bytes() == b"read only, new"


def test_check_mode_plans_and_writes_nothing(source, buffer):
    result = stage_in(source, buffer, dry_run=True)
    assert (result["files"], result["links"], result["directories"]) == (8, 2, 4)
    assert {p["destination"] for p in result["planned"]} >= {str(buffer / "input" / "a.txt")}
    assert list(buffer.iterdir()) == []


def test_large_files_are_split_into_chunks(source, buffer, monkeypatch):
    offsets = []
    real = sc.Copier.copy_range

    def spy(self, copy, offset, length):
        offsets.append((os.path.basename(copy.plan.source), offset, length))
        return real(self, copy, offset, length)

    monkeypatch.setattr(sc.Copier, "copy_range", spy)
    stage_in(source, buffer)
    assert sorted(o for o in offsets if o[0] == "big.bin") == [
        ("big.bin", 0, MiB), ("big.bin", MiB, MiB), ("big.bin", 2 * MiB, MiB), ("big.bin", 3 * MiB, 12345)]
    assert (buffer / "input" / "big.bin").read_bytes() == (source / "big.bin").read_bytes()


def test_large_pieces_go_through_splice(source, buffer, monkeypatch):
    spliced = []
    real = os.splice

    def spy(src, dst, count, offset_src=None, offset_dst=None, flags=0):
        moved = real(src, dst, count, offset_src=offset_src, offset_dst=offset_dst, flags=flags)
        if offset_dst is not None:
            spliced.append(moved)
        return moved

    monkeypatch.setattr(sc.os, "splice", spy)
    stage_in(source, buffer)
    assert sum(spliced) == 3 * MiB  # the three whole MiB pieces of big.bin; its tail and small files pwrite
    assert (buffer / "input" / "big.bin").read_bytes() == (source / "big.bin").read_bytes()


def test_a_filesystem_without_splice_falls_back_to_pread_pwrite(source, buffer, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(sc.os, "splice", refuse)
    result = stage_in(source, buffer)
    assert result["failed_files"] == []
    assert tree_of(buffer / "input") == tree_of(source)


def test_verify_compares_every_piece(source, buffer, monkeypatch):
    checked = []
    real = sc.verify_range

    def spy(src, dst, offset, length, view):
        checked.append(length)
        return real(src, dst, offset, length, view)

    monkeypatch.setattr(sc, "verify_range", spy)
    result = stage_in(source, buffer, verify=True)
    assert result["failed_files"] == []
    assert sum(checked) == result["bytes"]


def test_verify_catches_a_destination_that_differs(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "d"
    src.write_bytes(b"a" * 5000)
    dst.write_bytes(b"a" * 4999 + b"b")
    fds = [os.open(src, os.O_RDONLY), os.open(dst, os.O_RDONLY)]
    try:
        with pytest.raises(OSError, match="verification failed"):
            sc.verify_range(fds[0], fds[1], 0, 5000, memoryview(bytearray(sc.BLOCK)))
        sc.verify_range(fds[0], fds[1], 0, 4999, memoryview(bytearray(sc.BLOCK)))
    finally:
        for fd in fds:
            os.close(fd)


def test_file_into_an_existing_directory_and_with_a_trailing_slash(source, buffer):
    (buffer / "dir").mkdir()
    ce.stage(request("in", "file", source / "a.txt", buffer / "dir", buffer))
    ce.stage(request("in", "file", source / "run.sh", str(buffer / "new") + "/", buffer))
    ce.stage(request("in", "file", source / "private", buffer / "deep" / "er" / "renamed", buffer))
    assert (buffer / "dir" / "a.txt").read_bytes() == b"alpha\n"
    assert attributes(buffer / "new" / "run.sh")[:2] == (0o755, OLD)
    assert (buffer / "deep" / "er" / "renamed").read_bytes() == b"mine"
    assert stat.S_IMODE(os.stat(buffer / "deep").st_mode) == 0o755


def test_directory_into_the_buffer_root_keeps_the_roots_mode(source, buffer):
    ce.stage(request("in", "directory", source, buffer, buffer), chunk_size=MiB)
    assert stat.S_IMODE(os.stat(buffer).st_mode) == 0o700
    assert (buffer / "sub" / "deeper" / "c.txt").read_bytes() == b"gamma"


def test_list_stages_each_pair(source, buffer, tmp_path):
    listing = tmp_path / "stage.list"
    listing.write_text(f"# DataWarp style\n{source / 'a.txt'} {buffer}/one\n\n{source / 'sub'} {buffer}/tree\n")
    result = ce.stage(request("in", "list", listing, None, buffer))
    assert result["files"] == 2 and result["failed_files"] == []
    assert (buffer / "one").read_bytes() == b"alpha\n"
    assert (buffer / "tree" / "deeper" / "c.txt").read_bytes() == b"gamma"


def test_special_files_are_listed_not_copied(source, buffer):
    os.mkfifo(source / "fifo")
    result = stage_in(source, buffer)
    assert result["not_copied"] == [{"path": str(source / "fifo"),
                                     "reason": "not a regular file, directory or symlink"}]
    assert not os.path.lexists(buffer / "input" / "fifo")


def test_a_directory_where_a_file_belongs_is_a_named_failure(source, buffer):
    (buffer / "input" / "a.txt").mkdir(parents=True)
    result = stage_in(source, buffer)
    assert result["failed_files"] == [{"path": str(source / "a.txt"),
                                       "reason": "destination %s is a directory" % (buffer / "input" / "a.txt")}]
    assert result["files"] == 7


# --- symlinks and the buffer's boundary -------------------------------------------------------------

def test_stage_in_through_a_symlink_out_of_the_buffer_is_refused(source, buffer, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, buffer / "escape")
    with pytest.raises(se.StageError, match=f"resolves to {outside}, outside the buffer"):
        ce.stage(request("in", "directory", source, buffer / "escape" / "data", buffer))
    with pytest.raises(se.StageError, match="outside the buffer"):
        ce.stage(request("in", "file", source / "a.txt", buffer / "escape", buffer))
    assert list(outside.iterdir()) == []


def test_stage_in_does_not_write_through_a_symlink_in_the_tree(source, buffer, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (buffer / "input").mkdir()
    os.symlink(outside, buffer / "input" / "sub")
    result = stage_in(source, buffer)
    assert result["failed_files"] == [{"path": str(source / "sub"), "reason": "destination %s exists and is "
                                       "not a directory" % (buffer / "input" / "sub")}]
    assert list(outside.iterdir()) == []


def test_stage_out_source_resolving_out_of_the_buffer_is_refused(buffer, tmp_path):
    os.symlink("/etc", buffer / "etc")
    os.symlink("/etc/passwd", buffer / "passwd")
    out = tmp_path / "out"
    for name, kind in (("etc", "directory"), ("passwd", "file")):
        with pytest.raises(se.StageError, match=r"resolves to /etc.*outside the buffer"):
            ce.stage(request("out", kind, buffer / name, out / name, buffer))
    assert not out.exists()


def test_stage_out_copies_a_planted_symlink_as_a_link(buffer, tmp_path):
    write(buffer / "results" / "data.out", b"result")
    os.symlink("/etc", buffer / "results" / "etc")
    os.symlink("/etc/passwd", buffer / "results" / "passwd")
    out = tmp_path / "pfs" / "results"
    result = ce.stage(request("out", "directory", buffer / "results", out, buffer))
    assert result["failed_files"] == []
    assert (os.readlink(out / "etc"), os.readlink(out / "passwd")) == ("/etc", "/etc/passwd")
    assert sorted(os.listdir(out)) == ["data.out", "etc", "passwd"]


def test_stage_out_refuses_files_on_another_filesystem(buffer, tmp_path, monkeypatch):
    write(buffer / "results" / "data.out", b"result")
    monkeypatch.setattr(ce, "buffer_device", lambda root: -1)  # as if the tree were elsewhere
    result = ce.stage(request("out", "directory", buffer / "results", tmp_path / "out", buffer))
    assert result["failed_files"] == [{"path": str(buffer / "results" / "data.out"),
                                       "reason": "not on the buffer's filesystem; not copied"}]
    assert not (tmp_path / "out" / "data.out").exists()


def test_stage_out_of_a_file_on_another_filesystem_is_not_copied(buffer, tmp_path, monkeypatch):
    write(buffer / "data.out", b"result")
    monkeypatch.setattr(ce, "buffer_device", lambda root: -1)
    result = ce.stage(request("out", "file", buffer / "data.out", tmp_path / "out", buffer))
    assert result["failed_files"][0]["reason"].startswith("not on the buffer's filesystem")
    assert not (tmp_path / "out").exists()


# --- stage-out: temporary names, rename, failures ---------------------------------------------------

def stage_out(buffer, out, **options):
    options.setdefault("chunk_size", MiB)
    return ce.stage(request("out", "directory", buffer / "results", out, buffer), **options)


@pytest.fixture
def results(buffer):
    write(buffer / "results" / "small.out", b"small result")
    write(buffer / "results" / "large.out", os.urandom(2 * MiB + 7))
    write(buffer / "results" / "logs" / "run.log", b"log")
    return buffer / "results"


def test_stage_out_renames_complete_files_into_place(results, buffer, tmp_path, monkeypatch):
    renames = []
    real = os.rename

    def spy(src, dst):
        assert os.path.basename(src) == "." + os.path.basename(dst) + sp.TEMP_SUFFIX
        assert os.path.getsize(src) == os.path.getsize(str(dst).replace(str(tmp_path / "out"), str(results)))
        renames.append(dst)
        return real(src, dst)

    monkeypatch.setattr(sc.os, "rename", spy)
    out = tmp_path / "out"
    result = stage_out(buffer, out, verify=True)
    assert result["failed_files"] == [] and result["files"] == 3
    assert sorted(renames) == sorted(str(out / p) for p in ("small.out", "large.out", "logs/run.log"))
    assert tree_of(out) == tree_of(results)
    assert not [p for p in out.rglob("*") if p.name.endswith(sp.TEMP_SUFFIX)]


def test_failed_write_leaves_nothing_under_the_final_name(results, buffer, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "large.out").write_bytes(b"the previous run's complete result")
    real = os.pwrite

    def full_disk(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("large.out" + sp.TEMP_SUFFIX) and offset >= MiB:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(sc.os, "pwrite", full_disk)
    result = stage_out(buffer, out)
    assert result["failed_files"] == [{"path": str(results / "large.out"),
                                       "reason": "copy failed: No space left on device"}]
    assert (out / "large.out").read_bytes() == b"the previous run's complete result"
    assert (out / "small.out").read_bytes() == b"small result"
    assert sorted(p.name for p in out.iterdir()) == ["large.out", "logs", "small.out"]
    assert result["files"] == 2


def test_verification_failure_keeps_the_file_out_of_place(results, buffer, tmp_path, monkeypatch):
    def corrupt(src, dst, offset, length, view):
        raise OSError(errno.EIO, "verification failed: destination differs from source")

    monkeypatch.setattr(sc, "verify_range", corrupt)
    out = tmp_path / "out"
    result = stage_out(buffer, out, verify=True)
    assert len(result["failed_files"]) == 3
    assert {f["reason"] for f in result["failed_files"]} == {
        "copy failed: verification failed: destination differs from source"}
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_failed_stage_in_removes_the_partial_file(source, buffer, monkeypatch):
    real = os.pwrite

    def failing(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("big.bin") and offset >= 2 * MiB:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real(fd, data, offset)

    monkeypatch.setattr(sc.os, "pwrite", failing)
    result = stage_in(source, buffer)
    assert result["failed_files"] == [{"path": str(source / "big.bin"), "reason": "copy failed: Disk quota exceeded"}]
    assert not os.path.lexists(buffer / "input" / "big.bin")
    assert (buffer / "input" / "a.txt").exists()


def test_a_stale_temporary_file_is_replaced(results, buffer, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = Path(sp.temp_name(str(out / "small.out")))
    stale.write_bytes(b"left by a killed run")
    stale.chmod(0o400)
    assert stage_out(buffer, out)["failed_files"] == []
    assert not stale.exists() and (out / "small.out").read_bytes() == b"small result"


def test_a_file_that_changes_after_planning_is_a_named_failure(results, buffer, tmp_path):
    req = sr.check_request(request("out", "directory", results, tmp_path / "out", buffer))
    with st.Crew(2) as crew:
        plan = sp.Planner(req, crew).run()
        write(results / "small.out", b"small result, grown")
        sc.Copier(plan, crew, outward=True, chunk_size=MiB).run()
    assert plan.failed == [{"path": str(results / "small.out"),
                            "reason": "changed while staging (19 bytes, 12 when planned); stage again"}]
    assert not (tmp_path / "out" / "small.out").exists()


def test_a_file_swapped_for_a_symlink_after_planning_is_not_followed(results, buffer, tmp_path):
    secret = write(tmp_path / "elsewhere" / "secret", b"not the job's")
    req = sr.check_request(request("out", "directory", results, tmp_path / "out", buffer))
    with st.Crew(2) as crew:
        plan = sp.Planner(req, crew).run()
        os.unlink(results / "small.out")
        os.symlink(secret, results / "small.out")  # the race a hostile job would try
        sc.Copier(plan, crew, outward=True, chunk_size=MiB).run()
    assert plan.failed == [{"path": str(results / "small.out"),
                            "reason": "cannot read: Too many levels of symbolic links"}]
    assert not (tmp_path / "out" / "small.out").exists()


def test_unreadable_directory_is_named(source, buffer, monkeypatch):
    real = sp.scan_source

    def scan(path):
        if path.endswith("/sub"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path)

    monkeypatch.setattr(sp, "scan_source", scan)
    result = stage_in(source, buffer)
    assert result["failed_files"] == [{"path": str(source / "sub"),
                                       "reason": "cannot read directory: Permission denied"}]


def test_missing_source_is_refused(buffer, tmp_path):
    with pytest.raises(se.StageError, match="cannot read source %s: No such file" % (tmp_path / "nope")):
        ce.stage(request("in", "file", tmp_path / "nope", buffer / "x", buffer))


def test_stage_refuses_bad_numbers(source, buffer):
    with pytest.raises(se.StageError, match="workers is 0"):
        stage_in(source, buffer, workers=0)
    with pytest.raises(se.StageError, match="at least 1MiB"):
        stage_in(source, buffer, chunk_size=4096)


# --- as the job's user (needs root) -------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def test_root_is_refused_before_forking():
    with pytest.raises(se.StageError, match="never as root"):
        ce.stage_as_user(sr.StageRequest("in", "file", "/a", "/b/a", "/b"), 0, 1001)
    with pytest.raises(se.StageError, match="never as root"):
        ce.stage_as_user(sr.StageRequest("in", "file", "/a", "/b/a", "/b"), 1001, 0)


def test_user_groups_without_a_name_is_the_gid():
    unused = max(p.pw_uid for p in pwd.getpwall()) + 1000
    assert uw.user_groups(unused, 4242) == [4242]


@pytest.fixture
def user_tree(user_dir):
    """A PFS directory and a 0700 buffer, both the job owner's (bbuser), in a directory it can reach."""
    owner = pwd.getpwnam("bbuser")
    write(user_dir / "pfs" / "in" / "data", b"user data")
    (user_dir / "buffer").mkdir(mode=0o700)
    for path in user_dir.rglob("*"):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return user_dir, owner


@needs_root
def test_stage_as_user_writes_as_the_user_and_reports_progress(user_tree):
    top, owner = user_tree
    reports = []
    result = ce.stage_as_user(request("in", "directory", top / "pfs" / "in", top / "buffer" / "in", top / "buffer"),
                              owner.pw_uid, owner.pw_gid, workers=2, report=reports.append)
    assert result["files"] == 1 and result["failed_files"] == []
    info = os.stat(top / "buffer" / "in" / "data")
    assert (info.st_uid, info.st_gid) == (owner.pw_uid, owner.pw_gid)
    assert reports[-1]["files_done"] == 1


@needs_root
def test_stage_as_user_cannot_read_what_the_user_cannot(user_tree):
    top, owner = user_tree
    secret = write(top / "root-only" / "secret", b"root only", mode=0o600)  # root's, in a 0755 dir
    with pytest.raises(se.StageError, match=rf"cannot read source {secret}: Permission denied \(as uid {owner.pw_uid}"):
        ce.stage_as_user(request("in", "file", secret, top / "buffer" / "secret", top / "buffer"),
                         owner.pw_uid, owner.pw_gid)
    assert list((top / "buffer").iterdir()) == []


@needs_root
def test_the_worker_cannot_become_root_again(user_tree, monkeypatch):
    top, owner = user_tree
    outcome = {}

    def probe(*_args, **_kwargs):
        try:
            os.setuid(0)
            outcome["setuid"] = "worked"
        except PermissionError:
            outcome["setuid"] = "refused"
        return {"ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()], "setuid": outcome["setuid"],
                "groups": os.getgroups()}

    monkeypatch.setattr(ce, "stage", probe)
    result = ce.stage_as_user(request("in", "file", "/x", top / "buffer" / "x", top / "buffer"),
                              owner.pw_uid, owner.pw_gid)
    assert result["ids"] == [owner.pw_uid, owner.pw_uid, owner.pw_gid, owner.pw_gid]
    assert result["setuid"] == "refused"
    assert result["groups"] == uw.user_groups(owner.pw_uid, owner.pw_gid)


@needs_root
def test_the_worker_resets_its_tcp_connections_as_it_exits(user_tree, monkeypatch):
    """A libgfapi worker's connections hold ports below 1024: reset, not left in TIME-WAIT for 60 s."""
    top, owner = user_tree
    "127.0.0.1".encode("idna")  # the worker (the job's user) may not read the codec's module: import it here
    with socket.create_server(("127.0.0.1", 0)) as listener:
        connections = []

        def connect(*_args, **_kwargs):
            connections.append(socket.create_connection(listener.getsockname()))  # still open at exit
            return {"connected": True}

        monkeypatch.setattr(ce, "stage", connect)
        assert ce.stage_as_user(request("in", "file", "/x", top / "buffer" / "x", top / "buffer"),
                                owner.pw_uid, owner.pw_gid) == {"connected": True}
        accepted, _address = listener.accept()
        with accepted, pytest.raises(ConnectionResetError):
            accepted.recv(1)  # FIN would read b""


@needs_root
def test_a_worker_killed_by_a_signal_is_reported(user_tree, monkeypatch):
    top, owner = user_tree

    def die(*_args, **_kwargs):
        os.kill(os.getpid(), 9)

    monkeypatch.setattr(ce, "stage", die)
    with pytest.raises(se.StageError, match="died of signal SIGKILL without a result"):
        ce.stage_as_user(request("in", "file", "/x", top / "buffer" / "x", top / "buffer"),
                         owner.pw_uid, owner.pw_gid)


@needs_root
def test_a_worker_that_crashes_in_c_code_names_the_python_frames_it_was_in(user_tree, monkeypatch):
    top, owner = user_tree

    def crash_in_c(*_args, **_kwargs):
        ctypes.string_at(0)  # a NULL read in C: SIGSEGV, as a fault inside libgfapi would be

    monkeypatch.setattr(ce, "stage", crash_in_c)
    with pytest.raises(uw.WorkerDied, match=r"died of signal SIGSEGV without a result \(in string_at at "
                                            r"__init__\.py:\d+, crash_in_c at test_copy_engine\.py:\d+") as died:
        ce.stage_as_user(request("in", "file", "/x", top / "buffer" / "x", top / "buffer"),
                         owner.pw_uid, owner.pw_gid)
    assert died.value.signal == signal.SIGSEGV


@needs_root
def test_a_gfapi_worker_that_crashes_is_followed_by_a_stage_through_the_mount(user_tree, monkeypatch):
    top, owner = user_tree
    monkeypatch.setattr(ce, "gfapi_target", lambda _request, _use: ("127.1.1.1", "bbjob-1", str(top / "buffer")))

    def crash_with_gfapi(*_args, gfapi_via=None, **_kwargs):
        if gfapi_via is not None:
            ctypes.string_at(0)
        return {"via": gfapi_via, "caps": capabilities()}

    monkeypatch.setattr(ce, "stage", crash_with_gfapi)
    result = ce.stage_as_user(request("in", "file", "/x", top / "buffer" / "x", top / "buffer"),
                              owner.pw_uid, owner.pw_gid)
    assert result["via"] is None and result["caps"] == [0, 0, 0]
    assert "died of signal SIGSEGV" in result["gfapi_unused"]
    assert result["gfapi_unused"].endswith("staged again through the mount")


@needs_root
def test_a_worker_killed_without_gfapi_is_not_run_again(user_tree, monkeypatch):
    top, owner = user_tree
    runs = top / "runs"

    def die(*_args, **_kwargs):
        with open(runs, "a") as log:
            log.write("run\n")
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(ce, "stage", die)
    with pytest.raises(uw.WorkerDied, match="SIGSEGV"):
        ce.stage_as_user(request("in", "file", "/x", top / "buffer" / "x", top / "buffer"),
                         owner.pw_uid, owner.pw_gid, use_gfapi=False)
    assert runs.read_text() == "run\n"


def test_crash_frames_quotes_the_innermost_frames_of_the_crashing_thread():
    dump = (b"Fatal Python error: Segmentation fault\n\nThread 0x7f01 (most recent call first):\n"
            b'  File "/usr/lib/python3.11/threading.py", line 324 in wait\n\n'
            b"Current thread 0x7f02 (most recent call first):\n"
            b'  File "/x/module_utils/gfapi.py", line 223 in create_file\n'
            b'  File "/x/module_utils/stage_gfapi.py", line 58 in write\n'
            b'  File "/x/module_utils/stage_copy.py", line 90 in copy_small\n'
            b'  File "/x/module_utils/stage_copy.py", line 70 in run\n\nExtension modules: x (total: 1)\n')
    assert uw.crash_frames(dump) == (" (in create_file at gfapi.py:223, write at stage_gfapi.py:58, "
                                     "copy_small at stage_copy.py:90)")
    assert uw.crash_frames(b"") == ""
    assert uw.crash_frames(b"Fatal Python error: Segmentation fault\n\n<no Python frame>\n") == ""


@needs_root
def test_the_worker_dies_with_its_parent(user_tree, monkeypatch, tmp_path):
    """A module killed by a timeout (SIGKILL) must not leave its copier running as the user."""
    top, owner = user_tree
    pid_file = top / "worker.pid"

    def linger(*_args, **_kwargs):
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)

    monkeypatch.setattr(ce, "stage", linger)
    module = os.fork()
    if module == 0:  # the "module": forks the worker, then is killed
        try:
            ce.stage_as_user(request("in", "file", "/x", top / "buffer" / "x", top / "buffer"),
                             owner.pw_uid, owner.pw_gid)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    os.kill(module, signal.SIGKILL)
    os.waitpid(module, 0)
    while time.monotonic() < deadline and alive(worker):
        time.sleep(0.05)
    assert not alive(worker)


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def capabilities():
    """(effective, permitted, inheritable) capability masks of this process."""
    status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("Cap"))
    return tuple(int(status[key], 16) for key in ("CapEff", "CapPrm", "CapInh"))


@needs_root
def test_a_gfapi_worker_keeps_only_the_privileged_port_capability(user_tree, monkeypatch):
    top, owner = user_tree
    target = ("127.1.1.1", "bbjob-1", str(top / "buffer"))
    monkeypatch.setattr(ce, "gfapi_target", lambda _request, _use: target)

    def probe(*_args, gfapi_via=None, **_kwargs):
        try:
            os.setuid(0)
            regained = True
        except PermissionError:
            regained = False
        return {"ids": [os.getuid(), os.geteuid(), os.getgid()], "caps": capabilities(),
                "regained": regained, "via": list(gfapi_via)}

    monkeypatch.setattr(ce, "stage", probe)
    result = ce.stage_as_user(request("in", "file", "/x", top / "buffer" / "x", top / "buffer"),
                              owner.pw_uid, owner.pw_gid)
    assert result["ids"] == [owner.pw_uid, owner.pw_uid, owner.pw_gid]
    assert result["caps"] == [1 << uw.CAP_NET_BIND_SERVICE, 1 << uw.CAP_NET_BIND_SERVICE, 0]
    assert result["regained"] is False
    assert result["via"] == list(target)


@needs_root
def test_a_worker_without_gfapi_keeps_no_capability(user_tree, monkeypatch):
    top, owner = user_tree
    monkeypatch.setattr(ce, "stage", lambda *_a, **_k: {"caps": capabilities()})
    result = ce.stage_as_user(request("in", "file", "/x", top / "buffer" / "x", top / "buffer"),
                              owner.pw_uid, owner.pw_gid)
    assert result["caps"] == [0, 0, 0]


def mount_entry(target, fstype, source):
    return mounts.MountEntry(mount_id=1, parent_id=0, major=0, minor=0, root="/", target=target, options="rw",
                             fstype=fstype, source=source, super_options="")


GLUSTER_MOUNTS = [mount_entry("/", "ext4", "/dev/vda1"),
                  mount_entry("/mnt/bb", "fuse.glusterfs", "127.1.1.1:/bbjob-42"),
                  mount_entry("/mnt/bb/sub", "xfs", "/dev/loop9")]


@pytest.mark.parametrize(("direction", "use", "root", "target"), [
    ("in", True, "/mnt/bb", ("127.1.1.1", "bbjob-42", "/mnt/bb")),
    ("in", True, "/mnt/bb/job/dir", ("127.1.1.1", "bbjob-42", "/mnt/bb")),
    ("in", True, "/mnt/bb/sub/x", None),   # another filesystem mounted inside the buffer
    ("in", True, "/mnt/bbother", None),    # a sibling whose name merely starts alike
    ("in", False, "/mnt/bb", None),        # asked not to
    ("out", True, "/mnt/bb", ("127.1.1.1", "bbjob-42", "/mnt/bb")),  # stage-out reads small files so
])
def test_gfapi_is_used_for_a_stage_to_or_from_a_glusterfs_mount_only(direction, use, root, target):
    asked = sr.StageRequest(direction, "directory", "/pfs/in", root + "/in", root)
    assert sg.gfapi_target(asked, use, mountinfo=GLUSTER_MOUNTS) == target


@pytest.mark.parametrize(("path", "inside"), [
    ("/mnt/bb", "/"), ("/mnt/bb/", "/"), ("/mnt/bb/a", "/a"), ("/mnt/bb/a/b c", "/a/b c")])
def test_volume_path_is_the_part_below_the_mount(path, inside):
    assert gfapi.volume_path("/mnt/bb", path) == inside


def test_without_the_library_the_mount_is_used_and_says_why():
    with pytest.raises(gfapi.GfapiError, match=r"cannot load libgfapi-missing\.so\.0"):
        gfapi.Api("libgfapi-missing.so.0")
    assert sg.open_gfapi(None, False) == (None, "the buffer is not a GlusterFS mount, or gfapi is off")
    assert sg.open_gfapi(("127.1.1.1", "v", "/mnt/bb"), True) == (None, "verify reads back through the mount")


def test_only_new_small_files_of_a_stage_in_take_the_gfapi_path():
    plan = sp.FilePlan("/pfs/a", "/mnt/bb/a", sc.BLOCK, False, None, False)
    assert sg.GfapiWriter.takes(plan)
    assert not sg.GfapiWriter.takes(plan._replace(size=sc.BLOCK + 1))      # large: chunks via the mount
    assert not sg.GfapiWriter.takes(plan._replace(replace=True))           # a partial copy to replace
    assert not sg.GfapiWriter.takes(plan._replace(temp="/mnt/bb/.a.tmp"))  # stage-out's temporary names


def test_a_stage_without_small_files_says_why_gfapi_was_not_needed(monkeypatch):
    large = types.SimpleNamespace(files=[sp.FilePlan("/pfs/a", "/mnt/bb/a", sc.BLOCK + 1, False, None, False)])
    outward = sr.StageRequest("out", "directory", "/mnt/bb/out", "/pfs/out", "/mnt/bb")
    inward = sr.StageRequest("in", "directory", "/pfs/in", "/mnt/bb/in", "/mnt/bb")
    target = ("127.1.1.1", "v", "/mnt/bb")
    assert sg.gfapi_side(outward, large, target, False) == (None, sg.NO_SMALL_FILES)
    assert sg.gfapi_side(inward, large, target, False) == (None, sg.NO_SMALL_FILES)
    opened = []
    monkeypatch.setattr(sg, "open_gfapi", lambda target, verify, root, side: opened.append((root, side)) or (None, "x"))
    small_out = types.SimpleNamespace(files=[sp.FilePlan("/mnt/bb/a", "/pfs/a", 10, False, "/pfs/.a.tmp", False)])
    small_in = types.SimpleNamespace(files=[sp.FilePlan("/pfs/a", "/mnt/bb/a", 10, False, None, False)])
    sg.gfapi_side(outward, small_out, target, False, reads_from=1)
    sg.gfapi_side(inward, small_in, target, False, reads_from=2)  # a stage-in writes whatever the count
    assert opened == [("/mnt/bb", sg.GfapiReader), ("/mnt/bb", sg.GfapiWriter)]


def test_a_stage_out_of_fewer_small_files_than_gfapi_reads_from_reads_through_the_mount_and_says_why(monkeypatch):
    monkeypatch.setattr(sg, "open_gfapi", lambda *args: pytest.fail("gfapi opened for too few files"))
    outward = sr.StageRequest("out", "directory", "/mnt/bb/out", "/pfs/out", "/mnt/bb")
    small = [sp.FilePlan(f"/mnt/bb/{i}", f"/pfs/{i}", 10, False, None, False) for i in range(3)]
    large = sp.FilePlan("/mnt/bb/big", "/pfs/big", sc.BLOCK + 1, False, None, False)
    plan = types.SimpleNamespace(files=[*small, large])
    assert sg.gfapi_side(outward, plan, ("127.1.1.1", "v", "/mnt/bb"), False, reads_from=4) == (
        None, "3 file(s) of at most 1 MiB to read, fewer than 4: the mount reads them faster")
    assert sg.GFAPI_READS_FROM == ce.GFAPI_READS_FROM > 10000  # the measured crossover, one definition


def test_a_negative_gfapi_reads_from_is_refused(tmp_path):
    with pytest.raises(se.StageError, match="gfapi_reads_from is -1: use 0 or more"):
        ce.stage(request("out", "directory", str(tmp_path / "b"), str(tmp_path / "p"), str(tmp_path)),
                 gfapi_reads_from=-1)


def test_a_stage_out_reads_every_small_file_the_planner_found_whatever_its_destination_holds():
    plan = sp.FilePlan("/mnt/bb/a", "/pfs/a", sc.BLOCK, True, "/pfs/.a.tmp", True)
    assert sg.GfapiReader.takes(plan) and sg.GfapiReader.takes(plan._replace(replace=False, temp=None))
    assert not sg.GfapiReader.takes(plan._replace(size=sc.BLOCK + 1))  # large: chunks via the mount
    assert not sg.GfapiReader.takes_link(sh.HardLinkPlan("/bb/b", "/pfs/b", "/pfs/a", 1, (1, 2), False, None))


class LocalReadVolume:
    """Stands in for gfapi.Volume on a stage-out: reads the volume's files from a local directory, as
    read_file does (regular files of the planned size only), and records what it was asked."""

    def __init__(self, root, refuse=()):
        self.root = root
        self.refuse = set(refuse)
        self.calls = []

    def use_identity(self, uid, gid, groups):
        self.calls.append(("identity", uid, gid))

    def directory(self, path):
        return self.root + path

    def read_file(self, parent, name, size):
        self.calls.append(("read", parent, name))
        path = os.path.join(parent, name)
        if name in self.refuse:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), name)
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            raise gfapi.SourceChanged("no longer a regular file")
        if info.st_size != size:
            raise gfapi.SourceChanged(f"changed while staging ({info.st_size} bytes, {size} when planned); stage again")
        with open(path, "rb") as handle:
            data = handle.read()
        return gfapi.FileInfo(info.st_mode, info.st_size, info.st_atime_ns, info.st_mtime_ns), data


def test_a_stage_out_through_gfapi_writes_each_file_whole_under_its_temporary_name_then_renames_it(
        tmp_path, monkeypatch):
    buffer, pfs = tmp_path / "bb", tmp_path / "pfs"
    (buffer / "out" / "deep").mkdir(parents=True)
    pfs.mkdir()
    for name, data, mode in (("a", b"alpha", 0o640), ("deep/b", b"", 0o600), ("deep/c", b"c" * sc.BLOCK, 0o2755),
                             ("big", b"L" * (sc.BLOCK + 1), 0o644)):
        path = buffer / "out" / name
        path.write_bytes(data)
        path.chmod(mode)
        os.utime(path, ns=(OLD, OLD))
    volume = LocalReadVolume(str(buffer))
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(sc.os, "rename", lambda a, b: renames.append((a, b)) or real_rename(a, b))
    monkeypatch.setattr(sg, "open_gfapi", lambda target, verify, root, side: (side(volume, root, "/"), None))
    result = ce.stage(request("out", "directory", str(buffer / "out"), str(pfs / "out"), str(buffer)),
                      gfapi_via=("127.1.1.1", "v", str(buffer)), gfapi_reads_from=0)
    assert (result["failed_files"], result["files"], result["gfapi_files"], result["gfapi_unused"]) == ([], 4, 3, None)
    assert sorted(call[2] for call in volume.calls if call[0] == "read") == ["a", "b", "c"]  # "big": the mount
    for name, mode in (("a", 0o640), ("deep/b", 0o600), ("deep/c", 0o2755), ("big", 0o644)):
        copied, source = pfs / "out" / name, buffer / "out" / name
        assert copied.read_bytes() == source.read_bytes(), name
        assert (stat.S_IMODE(copied.stat().st_mode), copied.stat().st_mtime_ns) == (mode, OLD), name
    assert sorted(b for _a, b in renames) == sorted(str(pfs / "out" / n) for n in ("a", "deep/b", "deep/c", "big"))
    assert not [p for p in pfs.rglob("*") if p.name.endswith(sp.TEMP_SUFFIX)]


def test_a_stage_out_file_gfapi_cannot_read_or_that_changed_fails_alone_and_leaves_no_temporary(
        tmp_path, monkeypatch):
    buffer, pfs = tmp_path / "bb", tmp_path / "pfs"
    (buffer / "out").mkdir(parents=True)
    pfs.mkdir()
    for name in ("kept", "secret", "grew"):
        (buffer / "out" / name).write_bytes(b"x" * 10)
    volume = LocalReadVolume(str(buffer), refuse={"secret"})
    monkeypatch.setattr(sg, "open_gfapi", lambda target, verify, root, side: (side(volume, root, "/"), None))
    real_read = volume.read_file

    def growing(parent, name, size):
        if name == "grew":
            (buffer / "out" / "grew").write_bytes(b"x" * 20)  # written to after it was planned
        return real_read(parent, name, size)

    volume.read_file = growing
    result = ce.stage(request("out", "directory", str(buffer / "out"), str(pfs / "out"), str(buffer)),
                      gfapi_via=("127.1.1.1", "v", str(buffer)), gfapi_reads_from=0)
    failed = {f["path"]: f["reason"] for f in result["failed_files"]}
    assert set(failed) == {str(buffer / "out" / "secret"), str(buffer / "out" / "grew")}
    assert "cannot read" in failed[str(buffer / "out" / "secret")]
    assert "Permission denied" in failed[str(buffer / "out" / "secret")]
    assert failed[str(buffer / "out" / "grew")] == "changed while staging (20 bytes, 10 when planned); stage again"
    assert sorted(p.name for p in (pfs / "out").iterdir()) == ["kept"]


class RecordingVolume:
    """Stands in for gfapi.Volume: records what the writer asks of it."""

    def __init__(self):
        self.calls = []

    def use_identity(self, uid, gid, groups):
        self.calls.append(("identity", uid, gid))

    def directory(self, path):
        return "handle of " + path

    def create_file(self, parent, name, data, mode, atime_ns, mtime_ns):
        self.calls.append(("create", parent, name, data, mode, mtime_ns))


def test_the_gfapi_writer_names_directories_as_the_volume_sees_them():
    volume = RecordingVolume()
    # the request names the buffer through a symlink; the volume knows it as /job-7
    writer = sg.GfapiWriter(volume, "/scratch/link", "/job-7")
    info = types.SimpleNamespace(st_mode=0o100640, st_atime_ns=OLD, st_mtime_ns=OLD)
    local = threading.local()
    writer.write("/scratch/link/in/deep/f.txt", b"abc", info, local)
    writer.write("/scratch/link/top.txt", b"", info, local)
    assert volume.calls == [
        ("identity", os.geteuid(), os.getegid()),  # once per thread
        ("create", "handle of /job-7/in/deep", "f.txt", b"abc", 0o640, OLD),
        ("create", "handle of /job-7", "top.txt", b"", 0o640, OLD)]



class ClientApi:
    """Stands in for gfapi.Api for one client: records calls; the volfile and errors are scripted."""

    def __init__(self, volfile=b"volume v-client-0\n    type protocol/client\nend-volume\n", fail=None):
        self.calls, self.volfile, self.fail = [], volfile, fail or {}

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, args[0]) if name == "close" else (name,))  # close: which fd
            if name in self.fail:
                ctypes.set_errno(self.fail[name])
                return -1 if name not in ("h_creat_open", "h_creat") else None
            if name == "h_creat_open":  # its last argument points at the fd it opens
                ctypes.cast(args[-1], ctypes.POINTER(ctypes.c_void_p))[0] = 0xFD
            return {"new": 0xF5, "h_creat": 0xF11E, "h_creat_open": 0xF11E, "h_lookupat": 0xD1}.get(name, 0)
        return call

    def get_volfile(self, fs, buffer, size):
        """As GlusterFS 10's glfs_get_volfile: too short a buffer gets len minus the volfile's length;
        otherwise it copies ``len`` bytes, however long the volfile is (past its end: a crash)."""
        self.calls.append(("get_volfile", size))
        if size < len(self.volfile):
            return size - len(self.volfile)
        if size > len(self.volfile):
            raise AssertionError(f"glfs_get_volfile would read {size - len(self.volfile)} bytes past the volfile")
        ctypes.memmove(buffer, self.volfile, size)
        return size

    def write(self, fd, start, count, flags):
        self.calls.append(("write", ctypes.string_at(start, count)))
        return count


DISPERSED = b"volume v-disperse-0\n    type cluster/disperse\n" + b"#" * 100_000 + b"\nend-volume\n"


@pytest.mark.parametrize("volfile, each", [
    (b"volume v-dht\n    type cluster/distribute\nend-volume\n", False),
    (DISPERSED, True),  # larger than the first buffer offered: asked again with the size it needs
    (b"volume v-replicate-0\n    type cluster/replicate\nend-volume\n", True),
])
def test_files_are_closed_one_by_one_only_where_translators_delay_their_post_op(volfile, each):
    api = ClientApi(volfile)
    assert gfapi.Volume("127.1.1.1", "v", api=api).close_each_file is each
    # glfs_get_volfile copies as many bytes as it is offered: it is asked its length, then exactly that
    assert [c for c in api.calls if c[0] == "get_volfile"] == [("get_volfile", 0), ("get_volfile", len(volfile))]


class LateVolfileApi(ClientApi):
    """glfs_init returned before gfapi stored its volfile: the first ``empty`` asks get length 0."""

    def __init__(self, volfile, empty):
        super().__init__(volfile)
        self.empty = empty

    def get_volfile(self, fs, buffer, size):
        if self.empty:
            self.empty -= 1
            self.calls.append(("get_volfile", size))
            return 0 if size == 0 else -1  # what glfs_get_volfile answers while it holds no volfile
        return super().get_volfile(fs, buffer, size)


@pytest.mark.parametrize("volfile, each", [(DISPERSED, True),
                                           (b"volume v-dht\n    type cluster/distribute\nend-volume\n", False)])
def test_a_volfile_not_stored_yet_is_waited_for(volfile, each, monkeypatch):
    monkeypatch.setattr(gfapi, "VOLFILE_PAUSE", 0.001)
    api = LateVolfileApi(volfile, empty=3)
    assert gfapi.Volume("127.1.1.1", "v", api=api).close_each_file is each  # the distributed one proves it waited
    assert [c for c in api.calls if c[0] == "get_volfile"] == [("get_volfile", 0)] * 4 + [("get_volfile", len(volfile))]


def test_without_a_volfile_each_file_is_closed_which_is_right_on_every_volume(monkeypatch):
    monkeypatch.setattr(gfapi, "VOLFILE_PAUSE", 0.001)
    monkeypatch.setattr(gfapi, "VOLFILE_WAIT", 0.02)
    api = LateVolfileApi(b"volume v-dht\n    type cluster/distribute\nend-volume\n", empty=10**6)
    assert gfapi.Volume("127.1.1.1", "v", api=api).close_each_file is True


def test_a_volfile_that_grows_between_asking_its_length_and_copying_it_is_asked_for_again():
    api = ClientApi(b"short volfile\n")

    def grow(*_args):
        api.volfile = DISPERSED
    volume = gfapi.Volume.__new__(gfapi.Volume)
    volume.api, volume.fs, volume.name = api, 0xF5, "v"
    real = api.get_volfile

    def first_then_grow(fs, buffer, size):
        answer = real(fs, buffer, size)
        if size == 0:
            grow()
        return answer
    api.get_volfile = first_then_grow
    assert volume._volfile() == DISPERSED


def test_on_a_dispersed_volume_each_file_is_written_through_an_fd_and_closed_before_its_times():
    api = ClientApi(DISPERSED)
    volume = gfapi.Volume("127.1.1.1", "v", api=api)
    api.calls.clear()
    volume.create_file(0xD1, "f.txt", b"abc", 0o640, OLD, OLD)
    assert [c[0] for c in api.calls] == ["h_creat_open", "write", "close", "h_setattrs", "h_close"]
    assert ("write", b"abc") in api.calls and ("close", 0xFD) in api.calls


def test_a_file_whose_close_fails_is_removed_and_named():
    api = ClientApi(DISPERSED, fail={"close": errno.EDQUOT})
    volume = gfapi.Volume("127.1.1.1", "v", api=api)
    api.calls.clear()
    with pytest.raises(OSError, match="Disk quota exceeded") as raised:
        volume.create_file(0xD1, "f.txt", b"abc", 0o640, OLD, OLD)
    assert raised.value.filename == "f.txt"
    assert [c[0] for c in api.calls] == ["h_creat_open", "write", "close", "h_unlink", "h_close"]


class ReadingApi(ClientApi):
    """A volume holding one file: its lookup fills the stat, its reads come in pieces of at most ``piece``
    bytes from ``content`` (which may differ from the size the lookup reports)."""

    def __init__(self, mode, size, content, piece=4, fail=None):
        super().__init__(fail=fail)
        self.mode, self.size, self.content, self.piece, self.offset = mode, size, content, piece, 0

    def h_lookupat(self, fs, parent, raw, attributes, follow):
        self.calls.append(("h_lookupat", raw, follow))
        info = gfapi.Stat.from_address(attributes)
        info.st_mode, info.st_size = self.mode, self.size
        info.st_mtim.tv_sec, info.st_mtim.tv_nsec = 1_600_000_000, 5
        return 0xF11E

    def h_open(self, fs, handle, flags):
        self.calls.append(("h_open", handle, flags))
        if "h_open" in self.fail:
            ctypes.set_errno(self.fail["h_open"])
            return None
        return 0xFD

    def read(self, fd, start, count, flags):
        self.calls.append(("read", fd, count))
        piece = self.content[self.offset:self.offset + min(count, self.piece)]
        ctypes.memmove(start, piece, len(piece))
        self.offset += len(piece)
        return len(piece)


def reading_volume(api):
    volume = gfapi.Volume.__new__(gfapi.Volume)
    volume.api, volume.fs, volume.name = api, 0xF5, "v"
    return volume


def test_a_file_is_opened_read_only_read_whole_without_following_a_symlink_and_closed():
    api = ReadingApi(0o100640, 10, b"0123456789")
    info, data = reading_volume(api).read_file(0xD1, "f.txt", 10)
    assert data == b"0123456789"
    assert (stat.S_IMODE(info.st_mode), info.st_size, info.st_mtime_ns) == (0o640, 10, 1_600_000_000 * 10**9 + 5)
    assert api.calls[0] == ("h_lookupat", b"f.txt", 0)  # 0: a symlink is not followed
    assert ("h_open", 0xF11E, os.O_RDONLY) in api.calls  # the open is what the bricks check the user at
    assert [c[2] for c in api.calls if c[0] == "read"] == [11, 7, 3, 1]  # to one byte past the end
    assert api.calls[-2:] == [("close", 0xFD), ("h_close",)]


@pytest.mark.parametrize(("mode", "size", "content", "said"), [
    (0o120777, 10, b"", "no longer a regular file"),                       # a symlink put in its place
    (0o100644, 12, b"0123456789ab", "changed while staging (12 bytes, 10 when planned)"),
    (0o100644, 10, b"0123456789 and more", "changed while staging (11 bytes read, 10 when planned)"),
    (0o100644, 10, b"01234", "changed while staging (5 bytes read, 10 when planned)"),
])
def test_a_file_that_is_no_longer_what_was_planned_is_refused_and_its_handle_closed(mode, size, content, said):
    api = ReadingApi(mode, size, content)
    with pytest.raises(gfapi.SourceChanged, match=re.escape(said)):
        reading_volume(api).read_file(0xD1, "f.txt", 10)
    assert api.calls[-1] == ("h_close",)


def test_an_open_the_bricks_refuse_is_an_oserror_naming_the_file():
    api = ReadingApi(0o100600, 10, b"0123456789", fail={"h_open": errno.EACCES})
    with pytest.raises(OSError, match="Permission denied") as raised:
        reading_volume(api).read_file(0xD1, "secret", 10)
    assert raised.value.filename == "secret" and api.calls[-1] == ("h_close",)
    assert not [c for c in api.calls if c[0] == "read"]


# --- discard: what an interrupted stage-out left, removed before a teardown with hurry ------------

@pytest.fixture
def interrupted(buffer, tmp_path):
    """A stage-out killed mid-way: results in the buffer, its temporaries (and a user's look-alike) in out."""
    write(buffer / "results" / "a", b"new a")
    write(buffer / "results" / "sub" / "b", b"new b")
    os.link(buffer / "results" / "a", buffer / "results" / "a2")  # a hard-link group: a2 goes through a temp
    out = tmp_path / "out"
    write(out / "a", b"the old a")  # not yet replaced
    write(out / ".a.bb-stage.tmp", b"new")  # part of a copy
    write(out / "sub" / ".b.bb-stage.tmp", b"n")
    write(out / ".a2.bb-stage.tmp", b"new a")
    write(out / ".mine.bb-stage.tmp", b"the user's own file, named like ours: no file of the stage is 'mine'")
    return out


def test_discard_removes_only_the_stages_temporaries_and_copies_nothing(buffer, interrupted):
    before = tree_of(interrupted)
    result = ce.stage(request("out", "directory", buffer / "results", interrupted, buffer), discard=True)
    assert result["discarded"] == 3 and result["failed_files"] == []
    assert (result["files"], result["bytes"], result["directories"]) == (0, 0, 0)
    left = tree_of(interrupted)
    assert set(before) - set(left) == {".a.bb-stage.tmp", "sub/.b.bb-stage.tmp", ".a2.bb-stage.tmp"}
    files = {k: v for k, v in left.items() if v[0] != "dir"}  # (removing a name touches its directory)
    assert {k: v for k, v in before.items() if k in files} == files, "nothing else changed"


def test_discard_in_a_dry_run_counts_and_removes_nothing(buffer, interrupted):
    before = tree_of(interrupted)
    result = ce.stage(request("out", "directory", buffer / "results", interrupted, buffer), discard=True,
                      dry_run=True)
    assert result["discarded"] == 3 and tree_of(interrupted) == before


def test_discard_is_for_stage_out_only(buffer, tmp_path):
    with pytest.raises(se.StageError, match="direction must be out"):
        ce.stage(request("in", "directory", tmp_path, buffer / "in", buffer), discard=True)
