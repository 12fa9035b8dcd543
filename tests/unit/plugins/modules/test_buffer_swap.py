"""buffer_swap: losetup/proc parsers, the present/absent planners, apply, undo, arguments."""

import json
import os

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import swap_areas as sa
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import CommandError, CommandRunner
from ansible_collections.hpc.burstbuffer.plugins.modules import buffer_swap as bs

PATH = "/mnt/bb/bb-job42/.swap/node1"
DIRECTORY = "/mnt/bb/bb-job42/.swap"
GIB = 1024 ** 3
IDENTITY = (2147809, (0, 61))
# What losetup printed on this machine (util-linux 2.38), with the padding it gives BACK-MAJ:MIN.
LOSETUP_JSON = json.dumps({"loopdevices": [
    {"name": "/dev/loop9", "back-file": PATH, "back-ino": 2147809, "back-maj:min": "     0:61  "},
    {"name": "/dev/loop3", "back-file": "/var/tmp/other.img", "back-ino": 12, "back-maj:min": "254:0"},
    {"name": "/dev/loop4", "back-file": None, "back-ino": None, "back-maj:min": None},
]})
LOOP9 = sa.LoopDevice("/dev/loop9", PATH, IDENTITY)


def facts(exists=True, regular=True, size=4 * GIB, uid=0, mode=0o600, identity=IDENTITY, is_dir=False):
    if not exists:
        return sa.SwapFile(False, False, False, None, None, None, None)
    return sa.SwapFile(True, regular, is_dir, size, uid, mode, identity)


def directory(exists=True, uid=0, mode=0o700, is_dir=True):
    return facts(exists=exists, regular=False, is_dir=is_dir, size=4096, uid=uid, mode=mode, identity=(5, (0, 61)))


def state(file=None, folder=None, loops=(), active=(), signatures=None, strays=()):
    return sa.SwapState(path=PATH, directory=directory() if folder is None else folder,
                        file=facts(exists=False) if file is None else file, loops=list(loops),
                        active=set(active), signatures=signatures or {}, strays=list(strays))


def test_parse_losetup_list_reads_names_and_backing_identity():
    loops = sa.parse_losetup_list(LOSETUP_JSON)
    assert loops == [LOOP9, sa.LoopDevice("/dev/loop3", "/var/tmp/other.img", (12, (254, 0))),
                     sa.LoopDevice("/dev/loop4", None, None)]
    assert sa.parse_losetup_list("") == []


def test_backing_matches_by_inode_and_device_not_by_name():
    loops = sa.parse_losetup_list(LOSETUP_JSON)
    assert sa.backing(loops, facts()) == [LOOP9]
    renamed = sa.LoopDevice("/dev/loop5", PATH, (99, (0, 61)))  # same name, another file
    assert sa.backing([renamed], facts()) == []
    assert sa.backing(loops, facts(exists=False)) == []


ALLOCATE = [["fallocate", "--length", str(4 * GIB), PATH], ["chmod", "0600", PATH]]
ATTACH = [["losetup", "--find", "--show", "--direct-io=on", PATH], ["mkswap", sa.NEW_LOOP], ["swapon", sa.NEW_LOOP]]

PRESENT_CASES = {
    "nothing there: directory, file, loop, signature, on": (
        state(folder=directory(exists=False)), None,
        [["mkdir", "--mode", "0700", DIRECTORY], *ALLOCATE, *ATTACH]),
    "directory there": (state(), None, [*ALLOCATE, *ATTACH]),
    "directory too open: tightened": (state(folder=directory(mode=0o755)), None,
                                      [["chmod", "0700", DIRECTORY], *ALLOCATE, *ATTACH]),
    "file left by a failed run, right size: reused": (state(file=facts()), None, ATTACH),
    "file of another size, not in use: replaced": (
        state(file=facts(size=GIB)), None, [["rm", "--force", PATH], *ALLOCATE, *ATTACH]),
    "attached, no signature": (state(file=facts(), loops=[LOOP9]), None,
                               [["mkswap", "/dev/loop9"], ["swapon", "/dev/loop9"]]),
    "attached with signature, off": (state(file=facts(), loops=[LOOP9], signatures={"/dev/loop9": "swap"}),
                                      None, [["swapon", "/dev/loop9"]]),
    "with a priority": (state(file=facts(), loops=[LOOP9], signatures={"/dev/loop9": "swap"}), 5,
                        [["swapon", "--priority", "5", "/dev/loop9"]]),
    "on already: nothing to do": (
        state(file=facts(), loops=[LOOP9], active=["/dev/loop9"], signatures={"/dev/loop9": "swap"}), None, []),
    "file mode loosened: tightened only": (
        state(file=facts(mode=0o644), loops=[LOOP9], active=["/dev/loop9"], signatures={"/dev/loop9": "swap"}),
        None, [["chmod", "0600", PATH]]),
}


@pytest.mark.parametrize(("swap", "priority", "commands"), PRESENT_CASES.values(), ids=PRESENT_CASES)
def test_plan_present(swap, priority, commands):
    assert sa.plan_present(swap, 4 * GIB, priority=priority) == commands


REFUSED_PRESENT = {
    "file is the user's": (state(file=facts(uid=1001)), "belongs to uid 1001, not 0"),
    "directory is the user's": (state(folder=directory(uid=1001)),
                                "directory /mnt/bb/bb-job42/.swap belongs to uid 1001"),
    "a symlink or device at the path": (state(file=facts(regular=False)), "not a regular file"),
    "a file where the directory goes": (state(folder=directory(is_dir=False)), "is not a directory"),
    "in use with another size": (state(file=facts(size=GIB), loops=[LOOP9], active=["/dev/loop9"]),
                                 "is in use \\(/dev/loop9\\) with 1073741824 bytes"),
}


@pytest.mark.parametrize(("swap", "message"), REFUSED_PRESENT.values(), ids=REFUSED_PRESENT)
def test_plan_present_refuses(swap, message):
    with pytest.raises(sa.SwapError, match=message):
        sa.plan_present(swap, 4 * GIB)


@pytest.mark.parametrize("size", [0, 1000, sa.MIB + 1, 3 * sa.MIB // 2])
def test_sizes_that_are_not_whole_mib_are_refused(size):
    with pytest.raises(sa.SwapError, match="whole number of MiB"):
        sa.plan_present(state(), size)


def test_paths_through_symlinks_or_not_normalised_are_refused():
    with pytest.raises(sa.SwapError, match="symbolic link"):
        sa.check_path(PATH, "/etc/node1")
    with pytest.raises(sa.SwapError, match="absolute, normalised"):
        sa.check_path("/mnt/bb/../etc/x", "/mnt/etc/x")
    sa.check_path(PATH, PATH)


ABSENT_CASES = {
    "on: off, detached, removed, directory gone": (
        state(file=facts(), loops=[LOOP9], active=["/dev/loop9"]), [],
        [["swapoff", "/dev/loop9"], ["losetup", "--detach", "/dev/loop9"], ["rm", "--force", PATH],
         ["rmdir", "--ignore-fail-on-non-empty", DIRECTORY]]),
    "attached, off": (state(file=facts(), loops=[LOOP9]), [],
                      [["losetup", "--detach", "/dev/loop9"], ["rm", "--force", PATH],
                       ["rmdir", "--ignore-fail-on-non-empty", DIRECTORY]]),
    "other nodes' files stay, and their directory": (
        state(file=facts()), ["node2"], [["rm", "--force", PATH]]),
    "nothing there": (state(folder=directory(exists=False)), [], []),
    "empty directory left": (state(), [], [["rmdir", "--ignore-fail-on-non-empty", DIRECTORY]]),
}


@pytest.mark.parametrize(("swap", "others", "commands"), ABSENT_CASES.values(), ids=ABSENT_CASES)
def test_plan_absent(swap, others, commands):
    assert sa.plan_absent(swap, others_in_dir=others) == commands


def test_plan_absent_keeps_the_directory_when_told():
    assert sa.plan_absent(state(file=facts()), remove_dir=False, others_in_dir=[]) == [["rm", "--force", PATH]]


def test_plan_absent_refuses_a_file_not_made_by_it():
    with pytest.raises(sa.SwapError, match="belongs to uid 1001"):
        sa.plan_absent(state(file=facts(uid=1001)), others_in_dir=[])


def test_undo_removes_only_what_the_failed_run_made():
    before = state(folder=directory(exists=False))
    after = state(file=facts(), loops=[LOOP9], active=["/dev/loop9"])
    assert sa.undo_commands(before, after) == [
        ["swapoff", "/dev/loop9"], ["losetup", "--detach", "/dev/loop9"], ["rm", "--force", PATH],
        ["rmdir", "--ignore-fail-on-non-empty", DIRECTORY]]
    kept = state(file=facts(), loops=[LOOP9])
    assert sa.undo_commands(kept, kept) == []


def test_apply_puts_the_new_loop_device_in_later_commands(fake_module):
    module = fake_module(answers=[(0, "", ""), (0, "", ""), (0, "/dev/loop9\n", ""), (0, "", ""), (0, "", "")])
    runner = CommandRunner(module)
    device = sa.apply(runner, [*ALLOCATE, *ATTACH], 4 * GIB)
    assert device == "/dev/loop9"
    assert [argv for argv, _env in module.calls][-2:] == [["mkswap", "/dev/loop9"], ["swapon", "/dev/loop9"]]
    assert runner.commands[-1] == ["swapon", "/dev/loop9"]


def test_apply_in_check_mode_runs_nothing_and_names_the_new_device(fake_module):
    module = fake_module(check_mode=True)
    runner = CommandRunner(module)
    assert sa.apply(runner, [*ALLOCATE, *ATTACH], 4 * GIB) == sa.NEW_LOOP
    assert module.calls == []
    assert runner.commands == [*ALLOCATE, *ATTACH]


def test_apply_writes_zeros_where_fallocate_is_not_supported(fake_module):
    module = fake_module(answers=[(1, "", "fallocate: fallocate failed: Operation not supported\n"),
                                  (0, "", ""), (0, "", "")])
    runner = CommandRunner(module)
    sa.apply(runner, ALLOCATE, 4 * GIB)
    assert runner.commands == [
        ["dd", "if=/dev/zero", f"of={PATH}", "bs=1M", "count=4096", "conv=fsync", "status=none"],
        ["chmod", "0600", PATH]]


def test_apply_fails_on_other_fallocate_errors(fake_module):
    module = fake_module(answers=[(1, "", "fallocate: fallocate failed: Disk quota exceeded\n")])
    with pytest.raises(CommandError, match="Disk quota exceeded"):
        sa.apply(CommandRunner(module), ALLOCATE, 4 * GIB)


def test_apply_accepts_rmdir_of_a_directory_another_node_removed(fake_module):
    module = fake_module(answers=[(1, "", "rmdir: failed to remove: No such file or directory")])
    sa.apply(CommandRunner(module), [["rmdir", "--ignore-fail-on-non-empty", DIRECTORY]])


def test_size_option_is_read_with_units_and_refused_when_bad():
    assert bs.wanted_size({"size": "4GiB"}) == 4 * GIB
    assert bs.wanted_size({"size": "512M"}) == 512 * sa.MIB
    with pytest.raises(sa.SwapError, match="size: cannot read size '4 gigs'"):
        bs.wanted_size({"size": "4 gigs"})
    with pytest.raises(sa.SwapError, match="whole number of MiB"):
        bs.wanted_size({"size": "100KiB"})



def test_apply_attaches_without_direct_io_when_losetup_refuses_it(fake_module):
    module = fake_module(answers=[(1, "", "losetup: failed to set up loop device: Invalid argument\n"),
                                  (0, "/dev/loop7\n", "")])
    runner = CommandRunner(module)
    assert sa.apply(runner, [ATTACH[0]]) == "/dev/loop7"
    assert runner.commands == [["losetup", "--find", "--show", PATH]]
    assert module.warnings == [f"losetup --find --show --direct-io=on {PATH} failed; attached without direct I/O"]


MOVED = sa.LoopDevice("/dev/loop6", "/mnt/bb/bb-job42/.swap2/node1", (777, (0, 61)))


def test_plan_absent_also_takes_down_a_swap_file_the_user_moved():
    moved = state(folder=directory(exists=False), active=["/dev/loop6"],
                  strays=[(MOVED, facts(identity=(777, (0, 61))))])
    assert sa.plan_absent(moved, others_in_dir=[]) == [
        ["swapoff", "/dev/loop6"], ["losetup", "--detach", "/dev/loop6"],
        ["rm", "--force", "/mnt/bb/bb-job42/.swap2/node1"]]


def test_a_moved_file_that_is_no_longer_ours_is_detached_but_not_removed():
    replaced = state(folder=directory(exists=False), strays=[(MOVED, facts(uid=1001, identity=(777, (0, 61))))])
    assert sa.plan_absent(replaced, others_in_dir=[]) == [["losetup", "--detach", "/dev/loop6"]]


def test_strays_are_loops_over_other_files_under_the_same_buffer(tmp_path):
    buffer_root = tmp_path / "bb-job42"
    buffer_root.mkdir()
    info = buffer_root.stat()
    device = (os.major(info.st_dev), os.minor(info.st_dev))
    path = str(buffer_root / ".swap" / "node1")
    loops = [sa.LoopDevice("/dev/loop6", f"{buffer_root}/.swap2/node1", (5, device)),
             sa.LoopDevice("/dev/loop7", f"{tmp_path}/elsewhere.img", (6, device)),
             sa.LoopDevice("/dev/loop8", f"{buffer_root}/x", (7, (device[0], device[1] + 1))),
             sa.LoopDevice("/dev/loop9", path, (8, device))]
    assert sa.strays(loops, facts(identity=(8, device)), path) == [loops[0]]
