"""buffer_mount planners: (state read, params) -> commands, refusals, owner/mode steps."""

import os
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import mounts
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import CommandError
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import parse_mountinfo_line
from ansible_collections.hpc.burstbuffer.plugins.modules import buffer_mount as bm

PROC = Path(__file__).resolve().parents[3] / "fixtures" / "proc"
PATH = "/var/spool/bb/job42"
SRC = "127.1.1.1:/bb-job42"
GLUSTER = parse_mountinfo_line((PROC / "mountinfo_gluster_line").read_text()
                               .replace("/var/tmp/bbfix/gm", PATH)
                               .replace("/bm-probe", "/bb-job42"))
UMOUNT = ["umount", "--no-canonicalize", PATH]


def mounted(source, fstype):
    return parse_mountinfo_line(f"60 27 0:50 / {PATH} rw - {fstype} {source} rw")


def state(mount=None, exists=True, is_dir=True, empty=True):
    return bm.BufferState(path=PATH, mount=mount, exists=exists, is_dir=is_dir, empty=empty,
                          root=(0, 0, 0o755) if mount else None)


def params(**overrides):
    base = {"src": SRC, "fstype": "glusterfs", "opts": None, "backup_servers": [],
            "owner": None, "group": None, "mode": None, "remove_dir": False}
    return {**base, **overrides}


MOUNTED_CASES = {
    "fresh: mkdir then mount": (
        state(exists=False, is_dir=False, empty=False), params(),
        [["mkdir", "-p", PATH], ["mount", "-t", "glusterfs", SRC, PATH]]),
    "mount point exists": (state(), params(), [["mount", "-t", "glusterfs", SRC, PATH]]),
    "options and backup volfile servers": (
        state(), params(opts="acl,log-level=WARNING", backup_servers=["127.1.1.2", "127.1.1.3"]),
        [["mount", "-t", "glusterfs", "-o",
          "acl,log-level=WARNING,backup-volfile-servers=127.1.1.2:127.1.1.3", SRC, PATH]]),
    "backup servers only": (
        state(), params(backup_servers=["127.1.1.2"]),
        [["mount", "-t", "glusterfs", "-o", "backup-volfile-servers=127.1.1.2", SRC, PATH]]),
    "lustre": (
        state(), params(src="10.0.0.1@tcp:/bb42", fstype="lustre", opts="flock"),
        [["mount", "-t", "lustre", "-o", "flock", "10.0.0.1@tcp:/bb42", PATH]]),
    "already mounted (recorded gluster line)": (state(GLUSTER), params(), []),
    "already mounted, source spelt without slash": (state(GLUSTER),
                                                    params(src="127.1.1.1:bb-job42"), []),
    "lustre already mounted": (
        state(mounted("10.0.0.1@tcp:10.0.0.2@tcp:/bb42", "lustre")),
        params(src="10.0.0.1@tcp:10.0.0.2@tcp:/bb42/", fstype="lustre"), []),
}


@pytest.mark.parametrize(("buffer", "options", "commands"), MOUNTED_CASES.values(),
                         ids=MOUNTED_CASES)
def test_plan_mounted(buffer, options, commands):
    assert bm.plan_mounted(buffer, options) == commands


REFUSED_MOUNTED = {
    "another volume mounted there": (
        state(GLUSTER), params(src="127.1.1.1:/bb-job7"),
        f"{PATH} has 127.1.1.1:/bb-job42 \\(fuse.glusterfs\\) mounted, not 127.1.1.1:/bb-job7"),
    "same name from another server": (state(GLUSTER), params(src="127.1.1.2:/bb-job42"),
                                      "not mounting over it"),
    "a local filesystem mounted there": (state(mounted("/dev/loop3", "xfs")), params(),
                                         "has /dev/loop3 \\(xfs\\) mounted"),
    "mount point is a file": (state(is_dir=False), params(), "not a directory"),
    "backup servers with lustre": (
        state(), params(src="10.0.0.1@tcp:/bb42", fstype="lustre", backup_servers=["x"]),
        "backup_servers is for GlusterFS"),
}


@pytest.mark.parametrize(("buffer", "options", "message"), REFUSED_MOUNTED.values(),
                         ids=REFUSED_MOUNTED)
def test_plan_mounted_refuses(buffer, options, message):
    with pytest.raises(bm.BufferError, match=message):
        bm.plan_mounted(buffer, options)


UNMOUNTED_CASES = {
    "mounted: umount": (state(GLUSTER), params(src=None), [UMOUNT]),
    "mounted, source given and matching": (state(GLUSTER), params(), [UMOUNT]),
    "nothing mounted": (state(), params(src=None), []),
    "no mount point at all": (state(exists=False, is_dir=False), params(src=None), []),
}


@pytest.mark.parametrize(("buffer", "options", "commands"), UNMOUNTED_CASES.values(),
                         ids=UNMOUNTED_CASES)
def test_plan_unmounted(buffer, options, commands):
    assert bm.plan_unmounted(buffer, options) == commands


REFUSED_UNMOUNTED = {
    "a local filesystem": (state(mounted("/dev/vda", "ext4")), params(src=None),
                           "not a glusterfs buffer .*not unmounting it"),
    "another buffer than the one named": (state(GLUSTER), params(src="127.1.1.1:/bb-job7"),
                                          "not unmounting it"),
    "gluster mount when lustre asked": (state(GLUSTER), params(src=None, fstype="lustre"),
                                        "not a lustre buffer"),
}


@pytest.mark.parametrize(("buffer", "options", "message"), REFUSED_UNMOUNTED.values(),
                         ids=REFUSED_UNMOUNTED)
def test_plan_unmounted_refuses(buffer, options, message):
    with pytest.raises(bm.BufferError, match=message):
        bm.plan_unmounted(buffer, options)


@pytest.mark.parametrize(("src", "normal"), [
    ("127.1.1.1:/vol", "127.1.1.1:/vol"),
    ("127.1.1.1:vol", "127.1.1.1:/vol"),
    ("127.1.1.1://vol/", "127.1.1.1:/vol"),
    ("127.1.1.1:/vol/sub", "127.1.1.1:/vol/sub"),
    ("10.0.0.1@tcp:10.0.0.2@tcp:/fs", "10.0.0.1@tcp:10.0.0.2@tcp:/fs"),
])
def test_normalise_source(src, normal):
    assert bm.normalise_source(src) == normal


@pytest.mark.parametrize(("exists", "empty", "remove_dir", "commands"), [
    (True, True, True, [["rmdir", PATH]]),
    (True, False, True, []),
    (False, False, True, []),
    (True, True, False, []),
])
def test_rmdir_commands(exists, empty, remove_dir, commands):
    assert bm.rmdir_commands(PATH, exists, empty, remove_dir) == commands


@pytest.mark.parametrize(("root", "wanted", "commands"), [
    ((0, 0, 0o755), {"owner": "1001", "group": "1001", "mode": "0700"},
     [["chown", "1001:1001", PATH], ["chmod", "0700", PATH]]),
    ((1001, 1001, 0o700), {"owner": "1001", "group": "1001", "mode": "0700"}, []),
    ((0, 0, 0o755), {"owner": "root", "group": "root", "mode": 0o755}, []),
    ((1001, 0, 0o755), {"group": "1001"}, [["chown", ":1001", PATH]]),
    ((0, 0, 0o755), {}, []),
])
def test_root_commands(root, wanted, commands):
    assert bm.root_commands(PATH, root, params(**wanted)) == commands


def test_predicted_root_for_check_mode():
    assert bm._predicted_root((0, 0, 0o755), params(owner="1001", mode="0700")) == (1001, 0, 0o700)
    assert bm._predicted_root((5, 6, 0o750), params()) == (5, 6, 0o750)


# The module's runner (module_utils.command_runner): a failed command raises its CommandError.

def test_executor_check_mode_runs_nothing(fake_module):
    module = fake_module(check_mode=True)
    runner = bm.buffer_runner(module, retries=5, delay=1.0)
    runner.change_all([UMOUNT, ["rmdir", PATH]])
    assert runner.commands == [UMOUNT, ["rmdir", PATH]]
    assert module.calls == []


def test_executor_retries_busy_then_gives_up_with_advice(fake_module):
    busy = (32, "", f"umount: {PATH}: target is busy.")
    module = fake_module([busy] * 3)
    with pytest.raises(CommandError, match=r"still busy after 3 attempts.*fuser -vm"):
        bm.buffer_runner(module, retries=2, delay=0.001).change(UMOUNT)
    assert len(module.calls) == 3


GLUSTER_MOUNT = ["mount", "-t", "glusterfs", "127.1.1.1:/bbjob-2", PATH]
UNREACHED = (1, "", "Mount failed. Check the log file  for more details.")  # mount.glusterfs, all it says


def test_a_glusterfs_mount_whose_client_reached_no_brick_is_retried_until_it_mounts(fake_module):
    """Seen with 130 jobs at once (2026-12-06): every privileged source port taken, the bricks refused
    the client; a mount a few seconds later succeeds."""
    module = fake_module([UNREACHED, UNREACHED, (0, "", "")])
    done = bm.buffer_runner(module, retries=5, delay=0.001).change(GLUSTER_MOUNT)
    assert (done.rc, done.attempts, len(module.calls)) == (0, 3, 3)


def test_a_glusterfs_mount_that_never_reaches_a_brick_fails_in_its_own_words(fake_module):
    module = fake_module([UNREACHED] * 3)
    with pytest.raises(CommandError, match=r"bbjob-2 .* failed \(rc 1, 3 attempts\): Mount failed"):
        bm.buffer_runner(module, retries=2, delay=0.001).change(GLUSTER_MOUNT)
    assert len(module.calls) == 3


def test_executor_does_not_retry_other_commands(fake_module):
    module = fake_module([(1, "", "chown: invalid user")])
    with pytest.raises(CommandError, match="chown 1001 /x failed"):
        bm.buffer_runner(module, retries=5, delay=0.001).change(["chown", "1001", "/x"])
    assert len(module.calls) == 1


# --- a mount whose FUSE daemon no longer answers ------------------------------------------------

def at(path):
    return parse_mountinfo_line(f"79 27 0:50 / {path} rw - fuse.glusterfs 127.1.1.2:/bbjob-21 rw")


# Any lookup of such a mount point blocks in the kernel for good (fuse_get_req): unmounting must
# need nothing but the mount table (found on the test bed, a stage mount under 130 jobs at once).

def test_unmounting_reads_only_the_mount_table_never_the_mount_point(monkeypatch):
    gone = "/nonexistent/bb/stage/bbjob-21"  # any look at it would fail here, as it would hang there
    monkeypatch.setattr(bm, "read_mountinfo", lambda: [at(gone)])
    state = bm.read_state(gone, look_inside=False)
    assert (state.mount.target, state.exists, state.root) == (gone, True, None)
    with pytest.raises(FileNotFoundError):
        bm.read_state(gone)  # mounting must look inside: owner and mode are set on its root


def test_a_mount_point_is_normalised_without_being_looked_up(monkeypatch, tmp_path):
    mounted = str(tmp_path / "stage" / "bbjob-21")
    looked = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: looked.append(p) or real(p, **kw))
    assert mounts.normalise_path(mounted, mountinfo=[at(mounted)]) == mounted
    assert looked == [str(tmp_path / "stage")]
    assert mounts.normalise_path(mounted, mountinfo=[]) == mounted and looked[-1] == mounted


KILLED = (-9, "", "")  # the probe's timeout(1) died with it: the mount did not answer
ANSWERED = (0, "1\n", "")
PROBE = ["timeout", "--signal=KILL", "30", "stat", "--file-system", "--format=%i", "--", PATH]


def probe_params(**overrides):
    return params(**{"src": None, "state": "unmounted", "answer_timeout": 30.0, "retries": 0,
                     "delay": 0.001, **overrides})


@pytest.mark.parametrize(("answer", "alive"), [
    (ANSWERED, True), ((1, "", "stat: Transport endpoint is not connected"), True),
    (KILLED, False), ((-9, "", ""), False), ((124, "", ""), False)])
def test_a_mount_answers_when_its_stat_returns_even_with_an_error(fake_module, answer, alive):
    module = fake_module([answer])
    assert mounts.answers(bm.buffer_runner(module, 0, 1.0), PATH, 30.0) is alive
    assert module.calls[0][0] == PROBE


def fusectl_dir(tmp_path, minor):
    (tmp_path / str(minor)).mkdir()
    (tmp_path / str(minor) / "abort").write_text("")
    return str(tmp_path)


def test_a_dead_mount_is_aborted_then_unmounted_lazily_if_still_busy(fake_module, tmp_path):
    fusectl = fusectl_dir(tmp_path, 50)  # not a mount point: fusectl is mounted there first
    busy = (32, "", f"umount: {PATH}: target is busy.")
    module = fake_module([(0, "", ""), (0, "", ""), busy, (0, "", "")])
    runner = bm.buffer_runner(module, 0, 1.0)
    assert mounts.release_dead_fuse(runner, mounted(SRC, "fuse.glusterfs"), fusectl=fusectl) == 50
    assert (tmp_path / "50" / "abort").read_text() == "1"
    assert runner.commands == [
        ["mount", "-t", "fusectl", "fusectl", fusectl], ["umount", "--no-canonicalize", fusectl],
        UMOUNT, ["umount", "--no-canonicalize", "--lazy", PATH]]


def test_unmounting_a_dead_mount_releases_it_with_a_warning(fake_module, monkeypatch, tmp_path):
    table = [mounted(SRC, "fuse.glusterfs")]
    monkeypatch.setattr(bm, "read_mountinfo", lambda: list(table))
    monkeypatch.setattr(bm, "release_dead_fuse", lambda runner, entry: table.clear() or entry.minor)
    module = fake_module([KILLED])
    result = bm.run(bm.buffer_runner(module, 0, 1.0), dict(probe_params(), path=PATH))
    assert module.calls[0][0] == PROBE and len(module.calls) == 1  # no plain umount after it
    assert result["diff"]["before"]["mounted"] is True
    assert module.warnings == [f"{PATH}: its GlusterFS client did not answer a stat within 30 s; "
                               "aborted FUSE connection 50 and unmounted it."]


def test_a_live_mount_is_unmounted_plainly(fake_module, monkeypatch):
    monkeypatch.setattr(bm, "read_mountinfo", lambda: [mounted(SRC, "fuse.glusterfs")])
    module = fake_module([ANSWERED, (0, "", "")])
    bm.run(bm.buffer_runner(module, 0, 1.0), dict(probe_params(), path=PATH))
    assert [call[0] for call in module.calls] == [PROBE, UMOUNT] and module.warnings == []


def test_another_sources_dead_mount_is_never_released(fake_module, monkeypatch):
    monkeypatch.setattr(bm, "read_mountinfo", lambda: [mounted("127.1.1.9:/other", "fuse.glusterfs")])
    module = fake_module([])
    with pytest.raises(bm.BufferError, match="not unmounting it"):
        bm.run(bm.buffer_runner(module, 0, 1.0), dict(probe_params(src=SRC), path=PATH))
    assert module.calls == []  # not even probed


def test_a_new_mount_that_never_answers_is_released_and_retried_then_refused(fake_module, monkeypatch):
    table = []
    monkeypatch.setattr(bm, "read_mountinfo", lambda: list(table))
    monkeypatch.setattr(bm, "read_state", lambda path, look_inside=True: state(
        table[-1] if table else None))
    released = []
    monkeypatch.setattr(bm, "release_dead_fuse",
                        lambda runner, entry: released.append(entry.minor) or table.clear())
    mount = ["mount", "-t", "glusterfs", SRC, PATH]

    def answers(argv_answers):
        module = fake_module(argv_answers)
        original = module.run_command

        def run_command(argv, **kwargs):
            if argv[0] == "mount":
                table.append(mounted(SRC, "fuse.glusterfs"))
            return original(argv, **kwargs)
        module.run_command = run_command
        return module

    module = answers([(0, "", ""), KILLED, (0, "", ""), KILLED])
    with pytest.raises(bm.BufferError, match=r"did not answer a stat within 30 s, 2 times.*client log"):
        bm.mount_answering(bm.buffer_runner(module, 1, 0.001),
                           params(answer_timeout=30.0, retries=1, delay=0.001), state(),
                           sleep=lambda _s: None)
    assert [call[0] for call in module.calls] == [mount, PROBE, mount, PROBE] and released == [50, 50]

    table.clear()
    module = answers([(0, "", ""), KILLED, (0, "", ""), ANSWERED])
    bm.mount_answering(bm.buffer_runner(module, 1, 0.001),
                       params(answer_timeout=30.0, retries=1, delay=0.001), state(),
                       sleep=lambda _s: None)
    assert len(table) == 1  # the second mount answered and stays


def test_a_glusterfs_mount_is_given_twice_the_answer_timeout_and_others_no_deadline():
    assert bm.mount_deadline(params(answer_timeout=30.0)) == 60.0
    assert bm.mount_deadline(params(fstype="lustre", answer_timeout=30.0)) is None


def test_a_mount_killed_at_its_deadline_is_released_and_mounted_again(fake_module, monkeypatch):
    """A client whose only brick refused its handshake never answers mount.glusterfs's own stat
    (seen on the test bed with the privileged ports taken, 2026-12-07): mount never ends."""
    table = []
    monkeypatch.setattr(bm, "read_mountinfo", lambda: list(table))
    monkeypatch.setattr(bm, "read_state", lambda path, look_inside=True: state(table[-1] if table else None))
    released = []
    monkeypatch.setattr(bm, "release_dead_fuse",
                        lambda runner, entry: released.append(entry.minor) or table.clear())
    module = fake_module([KILLED, (0, "", ""), ANSWERED])
    real = module.run_command

    def run_command(argv, **kwargs):
        if "mount" in argv[:4]:
            table.append(mounted(SRC, "fuse.glusterfs"))  # the kernel shows the mount, hung or not
        return real(argv, **kwargs)
    module.run_command = run_command
    runner = bm.buffer_runner(module, 1, 0.001, mount_deadline=60.0)
    bm.mount_answering(runner, params(answer_timeout=30.0, retries=1, delay=0.001), state(), sleep=lambda _s: None)
    deadline_mount = ["timeout", "--signal=KILL", "60", "mount", "-t", "glusterfs", SRC, PATH]
    assert [call[0] for call in module.calls] == [deadline_mount, deadline_mount, PROBE]
    assert released == [50] and len(table) == 1  # the first released, the second answered and stays


def test_a_mount_killed_every_time_is_refused_naming_the_client_log(fake_module, monkeypatch):
    monkeypatch.setattr(bm, "read_mountinfo", lambda: [])  # killed before the kernel showed a mount
    monkeypatch.setattr(bm, "read_state", lambda path, look_inside=True: state())
    module = fake_module([KILLED, KILLED])
    with pytest.raises(bm.BufferError, match=r"did not answer a stat within 30 s, 2 times.*client log"):
        bm.mount_answering(bm.buffer_runner(module, 1, 0.001, mount_deadline=60.0),
                           params(answer_timeout=30.0, retries=1, delay=0.001), state(), sleep=lambda _s: None)
    assert len(module.calls) == 2


def test_a_failed_mount_that_was_not_killed_fails_as_before(fake_module):
    module = fake_module([(32, "", "mount: wrong fs type")])
    with pytest.raises(CommandError, match="wrong fs type"):
        bm.mount_answering(bm.buffer_runner(module, 0, 0.001, mount_deadline=60.0),
                           params(answer_timeout=30.0, retries=0, delay=0.001), state(), sleep=lambda _s: None)

