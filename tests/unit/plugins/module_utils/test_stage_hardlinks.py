"""Hard links kept as links (module_utils/stage_hardlinks.py): the rule for a group, both
directions through the file system, the gfapi side against a recording libgfapi, and the failures
(a first name that failed, a source changed after planning, a link the kernel cannot make)."""

import ctypes
import errno
import os
import threading
import types
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import copy_engine as ce
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gfapi
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_copy as sc
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_gfapi as sg
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_hardlinks as sh
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_plan as sp
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_rules as sr
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_threads as st

from tests.unit.plugins.module_utils.test_copy_engine import OLD, write

MiB = 1024 * 1024


def groups_of(root):
    """The hard-link groups of a tree: sorted lists of relative names, one per inode with two or more."""
    inodes = {}
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            info = path.lstat()
            inodes.setdefault((info.st_dev, info.st_ino), []).append(str(path.relative_to(root)))
    return sorted(sorted(names) for names in inodes.values() if len(names) > 1)


@pytest.fixture
def linked(tmp_path):
    """A tree with a pair in one directory, a triple across directories (one large, chunked) and a plain file."""
    root = tmp_path / "pfs" / "input"
    write(root / "a" / "one", b"pair data", mode=0o640)
    os.link(root / "a" / "one", root / "a" / "two")
    write(root / "a" / "big", os.urandom(3 * MiB + 5))
    (root / "b").mkdir()
    os.link(root / "a" / "big", root / "b" / "big-again")
    os.link(root / "a" / "big", root / "c big")
    write(root / "plain", b"alone")
    return root


@pytest.fixture
def buffer(tmp_path):
    root = tmp_path / "buffer"
    root.mkdir(mode=0o700)
    return root


def stage(direction, source, destination, buffer, **options):
    options.setdefault("chunk_size", MiB)
    return ce.stage(sr.StageRequest(direction, "directory", str(source), str(destination), str(buffer)), **options)


PAIR, TRIPLE = ["a/one", "a/two"], ["a/big", "b/big-again", "c big"]
GROUPS = sorted([PAIR, TRIPLE])


# --- the rule, pure ---------------------------------------------------------------------------------

def member(destination, existing=None, size=1, mtime_ns=OLD):
    return sh.LinkMember("/src" + destination, destination, size, mtime_ns, existing, None, False)


def complete_if_mtime(m):
    return m.existing is not None and m.existing.mtime_ns == m.mtime_ns


def test_the_first_name_by_destination_is_copied_and_the_others_linked_to_it():
    leaders, links, complete = sh.plan_groups({(1, 7): [member("/d/z"), member("/d/a"), member("/d/m")]},
                                              complete_if_mtime)
    assert [leader.destination for leader in leaders] == ["/d/a"]
    assert [(link.destination, link.leader, link.inode) for link in links] == [("/d/m", "/d/a", (1, 7)),
                                                                               ("/d/z", "/d/a", (1, 7))]
    assert complete == 0


def test_a_group_of_one_name_is_a_plain_copy():
    leaders, links, complete = sh.plan_groups({(1, 7): [member("/d/only")]}, complete_if_mtime)
    assert ([leader.destination for leader in leaders], links, complete) == (["/d/only"], [], 0)


def test_names_already_linked_to_a_complete_copy_are_complete_and_a_separate_copy_is_relinked():
    done = sp.DestEntry("file", 1, OLD, None, 5, 100)
    separate = sp.DestEntry("file", 1, OLD, None, 5, 101)
    leaders, links, complete = sh.plan_groups(
        {(1, 7): [member("/d/a"), member("/d/b", done), member("/d/c", done), member("/d/d", separate)]},
        complete_if_mtime)
    # /d/a has nothing yet, so the complete /d/b leads; /d/c is its link already; /d/a and /d/d are linked
    assert leaders == []
    assert sorted((link.destination, link.leader, link.replace) for link in links) == [
        ("/d/a", "/d/b", False), ("/d/d", "/d/b", True)]
    assert complete == 2


# --- through the file system ------------------------------------------------------------------------

def test_stage_in_keeps_hard_links_and_a_rerun_has_nothing_to_do(linked, buffer):
    result = stage("in", linked, buffer / "in", buffer)
    assert result["failed_files"] == []
    assert (result["files"], result["hardlinks"], result["hardlinks_copied"]) == (3, 3, 0)
    assert result["bytes"] == len(b"pair data") + 3 * MiB + 5 + len(b"alone")  # each inode once
    assert groups_of(buffer / "in") == groups_of(linked) == GROUPS
    assert (buffer / "in" / "c big").read_bytes() == (linked / "a" / "big").read_bytes()
    info = os.stat(buffer / "in" / "a" / "two")
    assert (oct(info.st_mode & 0o7777), info.st_mtime_ns, info.st_nlink) == ("0o640", OLD, 2)
    again = stage("in", linked, buffer / "in", buffer)
    assert (again["files"], again["hardlinks"], again["complete"]) == (0, 0, 6)


def test_stage_out_links_through_temporary_names_and_relinks_an_old_separate_copy(linked, buffer, tmp_path):
    stage("in", linked, buffer / "results", buffer)
    out = tmp_path / "out"
    write(out / "b" / "big-again", b"an older stage's separate copy")
    result = stage("out", buffer / "results", out, buffer, verify=True)
    assert result["failed_files"] == []
    assert (result["files"], result["hardlinks"]) == (3, 3)
    assert groups_of(out) == GROUPS
    assert not [p for p in out.rglob("*") if p.name.endswith(sp.TEMP_SUFFIX)]
    again = stage("out", buffer / "results", out, buffer)
    assert (again["files"], again["hardlinks"], again["complete"]) == (0, 0, 6)


def test_names_outside_the_request_are_neither_copied_nor_linked_to(tmp_path, buffer):
    """The rule for a group partly outside: the names inside are one file, a name alone is a file."""
    tree = tmp_path / "pfs" / "tree"
    write(tmp_path / "pfs" / "outside", b"shared with a name outside the tree")
    tree.mkdir(parents=True)
    os.link(tmp_path / "pfs" / "outside", tree / "in1")
    os.link(tmp_path / "pfs" / "outside", tree / "in2")
    write(tmp_path / "pfs" / "other-outside", b"one name inside only")
    os.link(tmp_path / "pfs" / "other-outside", tree / "alone")
    result = stage("in", tree, buffer / "t", buffer)
    assert (result["failed_files"], result["files"], result["hardlinks"]) == ([], 2, 1)
    assert groups_of(buffer / "t") == [["in1", "in2"]]
    assert os.stat(buffer / "t" / "in1").st_nlink == 2  # not 3: nothing links to the outside name
    assert os.stat(buffer / "t" / "alone").st_nlink == 1
    assert not (buffer / "outside").exists() and not (buffer / "t" / "outside").exists()


def test_a_list_links_the_names_its_pairs_share(linked, buffer, tmp_path):
    listing = write(tmp_path / "list", f"{linked / 'a' / 'one'} {buffer}/x/first\n"
                                       f"{linked / 'a' / 'two'} {buffer}/y/second\n".encode())
    result = ce.stage(sr.StageRequest("in", "list", str(listing), None, str(buffer)))
    assert (result["failed_files"], result["files"], result["hardlinks"]) == ([], 1, 1)
    assert os.stat(buffer / "x" / "first").st_ino == os.stat(buffer / "y" / "second").st_ino


def test_where_the_kernel_cannot_link_the_name_is_copied_and_counted(linked, buffer, tmp_path):
    """A stage-out list whose pairs land on two filesystems (tmpfs and this one): EXDEV."""
    stage("in", linked, buffer / "results", buffer)
    shm = Path(os.environ.get("BB_TEST_OTHER_FS", "/dev/shm"))
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to stage onto")
    other = Path(os.path.realpath(shm)) / f"bb-hardlinks-{os.getpid()}"
    try:
        listing = write(tmp_path / "list", f"results/a/one {tmp_path}/out/first\n"
                                           f"results/a/two {other}/second\n".encode())
        result = ce.stage(sr.StageRequest("out", "list", str(listing), None, str(buffer)))
        assert (result["failed_files"], result["hardlinks"], result["hardlinks_copied"]) == ([], 0, 1)
        assert (other / "second").read_bytes() == (tmp_path / "out" / "first").read_bytes() == b"pair data"
        assert os.stat(other / "second").st_mtime_ns == OLD
    finally:
        if other.exists():
            for path in other.iterdir():
                path.unlink()
            other.rmdir()


def test_links_of_a_first_name_that_failed_fail_with_it(linked, buffer, monkeypatch):
    real = os.pwrite

    def full_disk(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/a/big") and offset >= MiB:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(sc.os, "pwrite", full_disk)
    result = stage("in", linked, buffer / "in", buffer)
    reasons = {entry["path"]: entry["reason"] for entry in result["failed_files"]}
    leader = str(buffer / "in" / "a" / "big")
    assert reasons == {str(linked / "a" / "big"): "copy failed: No space left on device",
                       str(linked / "b" / "big-again"): f"not linked: its first name {leader} was not staged",
                       str(linked / "c big"): f"not linked: its first name {leader} was not staged"}
    assert not (buffer / "in" / "b" / "big-again").exists() and not (buffer / "in" / "c big").exists()
    assert groups_of(buffer / "in") == [PAIR]


def test_a_name_that_stops_being_a_link_after_planning_is_a_named_failure(linked, buffer):
    req = sr.check_request(sr.StageRequest("in", "directory", str(linked), str(buffer / "in"), str(buffer)))
    with st.Crew(2) as crew:
        plan = sp.Planner(req, crew).run()
        os.unlink(linked / "a" / "two")
        write(linked / "a" / "two", b"another file now")
        sc.Copier(plan, crew, outward=False, chunk_size=MiB).run()
    assert plan.failed == [{"path": str(linked / "a" / "two"), "reason":
                            f"changed while staging (no longer a hard link of {buffer / 'in' / 'a' / 'one'}); "
                            "stage again"}]
    assert not (buffer / "in" / "a" / "two").exists()


def test_a_first_name_swapped_for_a_symlink_is_not_linked_through(linked, buffer, tmp_path):
    secret = write(tmp_path / "elsewhere" / "secret", b"not the job's")
    req = sr.check_request(sr.StageRequest("in", "directory", str(linked), str(buffer / "in"), str(buffer)))
    with st.Crew(2) as crew:
        plan = sp.Planner(req, crew).run()
        copier = sc.Copier(plan, crew, outward=False, chunk_size=MiB)
        failed_dirs = copier.make_directories()
        copier.crew.map_unordered(copier.run_chunk, sc.chunk_tasks(plan.files, MiB))
        os.unlink(buffer / "in" / "a" / "one")
        os.symlink(secret, buffer / "in" / "a" / "one")  # a job's race on the first name
        copier.hardlinker.run(plan.hardlinks, failed_dirs)
    assert [entry["path"] for entry in plan.failed] == [str(linked / "a" / "two")]
    assert "is no longer the file staged" in plan.failed[0]["reason"]
    assert os.stat(secret).st_nlink == 1 and not (buffer / "in" / "a" / "two").exists()


# --- through libgfapi -----------------------------------------------------------------------------------

class LinkApi:
    """Stands in for gfapi.Api: records calls; lookups report the inode ``inodes`` gives a name."""

    def __init__(self, inodes, fail=None):
        self.calls, self.inodes, self.fail = [], inodes, fail or {}

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, *[a for a in args if isinstance(a, bytes)]))
            if name in self.fail:
                ctypes.set_errno(self.fail[name])
                return -1
            return 0
        return call

    def h_lookupat(self, fs, parent, raw, stat_address, follow):
        self.calls.append(("h_lookupat", raw, follow))
        if raw not in self.inodes:
            ctypes.set_errno(errno.ENOENT)
            return None
        found = ctypes.cast(stat_address, ctypes.POINTER(gfapi.Stat)).contents
        found.st_ino, found.st_mode = self.inodes[raw], 0o100644
        return 0xAB


def volume_with(api):
    volume = gfapi.Volume.__new__(gfapi.Volume)  # a client without a connection: only link() is used
    volume.api, volume.fs, volume.name = api, 0xF5, "v"
    return volume


def test_gfapi_links_by_handle_and_checks_the_new_name_is_the_same_inode():
    api = LinkApi({b"first": 42, b"second \xff": 42})
    volume_with(api).link(0xD1, "first", 0xD2, "second \udcff")
    assert api.calls == [("h_lookupat", b"first", 0), ("h_link", b"second \xff"),
                         ("h_lookupat", b"second \xff", 0), ("h_close",), ("h_close",)]


def test_a_gfapi_link_to_another_inode_is_removed_and_fails():
    api = LinkApi({b"first": 42, b"second": 43})
    with pytest.raises(OSError, match="verification failed") as raised:
        volume_with(api).link(0xD1, "first", 0xD2, "second")
    assert raised.value.errno == errno.EIO
    assert ("h_unlink", b"second") in api.calls


def test_a_gfapi_link_the_bricks_refuse_raises_their_errno():
    api = LinkApi({b"first": 42}, fail={"h_link": errno.EMLINK})
    with pytest.raises(OSError) as raised:
        volume_with(api).link(0xD1, "first", 0xD2, "second")
    assert (raised.value.errno, raised.value.filename) == (errno.EMLINK, "second")
    assert [call[0] for call in api.calls] == ["h_lookupat", "h_link", "h_close"]


class LocalVolume:
    """Stands in for gfapi.Volume on a local directory (its root is the volume's '/'): directory
    handles are paths; create_file and link do what the bricks would, with the same checks."""

    def __init__(self, root):
        self.root, self.calls = root, []

    def use_identity(self, uid, gid, groups):
        self.calls.append(("identity",))

    def directory(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def create_file(self, parent, name, data, mode, atime_ns, mtime_ns):
        self.calls.append(("create", name))
        fd = os.open(os.path.join(parent, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.write(fd, data)
        os.close(fd)
        os.utime(os.path.join(parent, name), ns=(atime_ns, mtime_ns))

    def link(self, leader_parent, leader_name, parent, name):
        self.calls.append(("link", os.path.join(leader_parent, leader_name), os.path.join(parent, name)))
        os.link(os.path.join(leader_parent, leader_name), os.path.join(parent, name), follow_symlinks=False)


def test_a_stage_in_through_gfapi_makes_its_new_links_there_too(linked, buffer, monkeypatch):
    volume = LocalVolume(str(buffer))
    monkeypatch.setattr(sg, "open_gfapi", lambda target, verify, root, side: (sg.GfapiWriter(volume, root, "/"), None))
    result = stage("in", linked, buffer / "in", buffer, gfapi_via=("127.1.1.1", "v", str(buffer)))
    assert (result["failed_files"], result["hardlinks"], result["gfapi_files"]) == ([], 3, 2)
    assert groups_of(buffer / "in") == GROUPS
    links = sorted(call[2] for call in volume.calls if call[0] == "link")
    assert links == [str(buffer / "in" / "a" / "two"), str(buffer / "in" / "b" / "big-again"),
                     str(buffer / "in" / "c big")]  # the large first name went through the mount, its links not


class SlowLinks(LocalVolume):
    """LocalVolume whose links take a while and that notes two links of one first name made at once."""

    def __init__(self, root):
        super().__init__(root)
        self.busy, self.overlaps, self.guard = set(), [], threading.Lock()

    def link(self, leader_parent, leader_name, parent, name):
        leader = os.path.join(leader_parent, leader_name)
        with self.guard:
            if leader in self.busy:
                self.overlaps.append(leader)
            self.busy.add(leader)
        threading.Event().wait(0.02)
        try:
            super().link(leader_parent, leader_name, parent, name)
        finally:
            with self.guard:
                self.busy.discard(leader)


def test_the_names_of_one_inode_are_linked_one_after_another_and_inodes_in_parallel(tmp_path, buffer, monkeypatch):
    """Two links of one inode at once through GlusterFS's distribute translator failed now and then
    (ENODATA, ENOENT): each inode's links are one task, in order."""
    root = tmp_path / "pfs" / "many"
    for index in range(12):
        write(root / "d0" / f"f{index}", b"%d" % index)
        for other in (1, 2, 3):
            (root / f"d{other}").mkdir(exist_ok=True)
            os.link(root / "d0" / f"f{index}", root / f"d{other}" / f"f{index}")
    volume = SlowLinks(str(buffer))
    monkeypatch.setattr(sg, "open_gfapi", lambda target, verify, root, side: (sg.GfapiWriter(volume, root, "/"), None))
    result = stage("in", root, buffer / "in", buffer, workers=8, gfapi_via=("127.1.1.1", "v", str(buffer)))
    assert (result["failed_files"], result["hardlinks"]) == ([], 36)
    assert volume.overlaps == []
    assert len(groups_of(buffer / "in")) == 12


def test_only_new_links_of_a_stage_in_take_the_gfapi_path():
    new = sh.HardLinkPlan("/pfs/b", "/bb/b", "/bb/a", 1, (1, 2), False, None)
    assert sg.GfapiWriter.takes_link(new)
    assert not sg.GfapiWriter.takes_link(new._replace(replace=True))
    assert not sg.GfapiWriter.takes_link(new._replace(temp="/bb/.b.bb-stage.tmp"))


def test_the_gfapi_writer_names_link_directories_as_the_volume_sees_them():
    volume = types.SimpleNamespace(calls=[])
    volume.use_identity = lambda *ids: volume.calls.append("identity")
    volume.directory = lambda path: "handle of " + path
    volume.link = lambda *args: volume.calls.append(args)
    writer = sg.GfapiWriter(volume, "/scratch/link", "/job-7")
    writer.link("/scratch/link/in/a", "/scratch/link/in/deep/b", threading.local())
    assert volume.calls == ["identity", ("handle of /job-7/in", "a", "handle of /job-7/in/deep", "b")]
