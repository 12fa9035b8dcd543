"""buffer_swap through real ansible-playbook: real loop devices, mkswap, swapon, swapoff.

No test bed: a temporary directory in /var/tmp stands in for the buffer's mount (a small
tmpfs mounted on one for the full-buffer case). A finalizer turns off and detaches every
loop device backed by a file under that directory, by the device names losetup shows for
it, unmounts what the test mounted and removes the directory, whatever the test did
(tests/integration/swap_scratch.py). No other loop device or swap area is touched.
"""

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.integration.module_task import ModuleTask
from tests.integration.swap_scratch import loops_under, scratch_dir, sh

SIZE = 64 * 1024**2

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("losetup", "mkswap", "swapon", "fallocate")),
    reason="needs root and util-linux (losetup, mkswap, swapon, fallocate)")


def active_swaps():
    """Device names `swapon --show` lists (the question the job asks)."""
    return sh("swapon", "--show=NAME", "--noheadings", "--raw").stdout.split()


class FakeBuffer:
    """A directory standing in for a buffer's mount, and buffer_swap runs on it."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.mount = self.dir / "bb-job42"
        self.mount.mkdir()
        self.swap_file = str(self.mount / ".swap" / "node1")
        self.task = ModuleTask("hpc.burstbuffer.buffer_swap", self.dir)

    def run(self, check=False, **args):
        return self.task(check, **{"path": self.swap_file, **args})

    def mount_tmpfs(self, size):
        sh("mount", "-t", "tmpfs", "-o", f"size={size}", "bb-swap-test", str(self.mount))  # released with dir


@pytest.fixture
def buffer():
    with scratch_dir("bb-swap-") as directory:
        yield FakeBuffer(directory)


def test_present_makes_an_active_swap_area_and_a_second_run_changes_nothing(buffer):
    first = buffer.run(size=f"{SIZE}")
    assert not first.get("failed"), first.get("msg")
    assert first["changed"] is True
    device = first["device"]
    assert device.startswith("/dev/loop")
    assert loops_under(buffer.dir) == [device]
    assert device in active_swaps()
    attach = ["losetup", "--find", "--show", "--direct-io=on", buffer.swap_file]
    assert first["commands"][-3:] == [attach, ["mkswap", device], ["swapon", device]]
    assert first["diff"]["before"]["active"] is False and first["diff"]["after"]["active"] is True
    info, folder = os.stat(buffer.swap_file), os.stat(os.path.dirname(buffer.swap_file))
    assert (info.st_size, info.st_uid, stat.S_IMODE(info.st_mode)) == (SIZE, 0, 0o600)
    assert info.st_blocks * 512 >= SIZE  # allocated, not sparse
    dio = sh("losetup", "--list", "--noheadings", "--output", "DIO", device).stdout.split()
    assert dio == ["1"]  # swapped-out pages are not cached again above the file
    assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (0, 0o700)

    second = buffer.run(size=f"{SIZE}")
    assert (second["changed"], second["commands"], second["device"]) == (False, [], device)
    assert loops_under(buffer.dir) == [device]
    assert active_swaps().count(device) == 1


def test_absent_turns_it_off_detaches_and_removes_everything(buffer):
    device = buffer.run(size="64MiB")["device"]
    assert device in active_swaps()

    check = buffer.run(check=True, state="absent")
    assert check["changed"] is True and device in active_swaps()  # check mode ran nothing

    gone = buffer.run(state="absent")
    assert not gone.get("failed"), gone.get("msg")
    assert gone["changed"] is True
    assert gone["commands"][:2] == [["swapoff", device], ["losetup", "--detach", device]]
    assert device not in active_swaps()
    assert loops_under(buffer.dir) == []
    assert not os.path.lexists(os.path.dirname(buffer.swap_file))
    assert os.listdir(buffer.mount) == []

    again = buffer.run(state="absent")
    assert (again["changed"], again["commands"]) == (False, [])


def test_check_mode_predicts_and_leaves_nothing(buffer):
    result = buffer.run(check=True, size="64MiB")
    assert result["changed"] is True
    assert result["commands"][-2:] == [["mkswap", "<new loop device>"], ["swapon", "<new loop device>"]]
    assert os.listdir(buffer.mount) == []
    assert loops_under(buffer.dir) == []


def test_a_setup_that_fails_says_why_and_leaves_nothing(buffer):
    buffer.mount_tmpfs("16m")  # a full buffer: the swap file cannot be allocated
    failed = buffer.run(size="64MiB")
    assert failed.get("failed") is True
    assert "swap area on the buffer at" in failed["msg"] and "not set up" in failed["msg"]
    assert "No space left on device" in failed["msg"]
    assert loops_under(buffer.dir) == []
    assert os.listdir(buffer.mount) == []  # the file and the directory it made are gone


def test_a_symlink_planted_by_the_user_is_refused(buffer):
    victim = buffer.dir / "victim"
    victim.write_text("keep me\n")
    os.symlink(buffer.dir, buffer.mount / ".swap")  # .swap -> a directory holding 'victim'
    os.symlink(victim, buffer.dir / "node1")
    refused = buffer.run(size="64MiB")
    assert refused.get("failed") is True
    assert "symbolic link" in refused["msg"]
    assert refused["commands"] == []
    assert victim.read_text() == "keep me\n"
    assert loops_under(buffer.dir) == []


def test_absent_finds_a_swap_file_the_user_moved_within_the_buffer(buffer):
    device = buffer.run(size="64MiB")["device"]
    os.rename(buffer.mount / ".swap", buffer.mount / ".moved")  # the buffer root is the user's
    gone = buffer.run(state="absent")
    assert not gone.get("failed"), gone.get("msg")
    assert gone["commands"][:2] == [["swapoff", device], ["losetup", "--detach", device]]
    assert device not in active_swaps() and loops_under(buffer.dir) == []
    assert os.listdir(buffer.mount / ".moved") == []  # the moved file went too
