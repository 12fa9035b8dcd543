"""nvme_brick planners: (state read, params) -> commands, refusals, fstab lines."""

from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils.block_devices import (
    parse_blkid_export,
    signature_from_probe,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import CommandError
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import parse_mountinfo_line
from ansible_collections.hpc.burstbuffer.plugins.modules import nvme_brick as nb

BLKID = Path(__file__).resolve().parents[3] / "fixtures" / "blkid"
DEV = "/dev/loop9"
PATH = "/srv/bricks/nvme0"
MKFS = ["mkfs.xfs", "-i", "size=512", DEV]
MKFS_FORCE = ["mkfs.xfs", "-f", "-i", "size=512", DEV]
MOUNT = ["mount", "-t", "xfs", "-o", "noatime,inode64,allocsize=64k", DEV, PATH]
WIPE = ["wipefs", "-a", DEV]
UMOUNT = ["umount", "--no-canonicalize", PATH]


def signature(name):
    """A signature as probe_signature returns it for a recorded device."""
    text = (BLKID / f"{name}.export").read_text()
    return signature_from_probe(2 if not text else 0, text, "", DEV)


def mount(target, source=DEV, numbers="7:9", fstype="xfs"):
    return parse_mountinfo_line(f"60 27 {numbers} / {target} rw - {fstype} {source} rw")


def state(sig="empty", mounts=(), path_mount=None, holders=(), swap=False, path_exists=True,
          path_is_dir=True, gluster_dirs=()):
    """A BrickState for /dev/loop9 (7:9) as read_state would build it."""
    reasons = [f"{m.source} is mounted at {m.target} ({m.fstype})" for m in mounts]
    reasons += ["/dev/loop9 is active swap"] * swap
    reasons += [f"held by {', '.join(holders)}"] * bool(holders)
    usage = {"name": "loop9", "numbers": (7, 9), "partitions": [], "holders": list(holders),
             "mounts": list(mounts), "swap": swap, "reasons": reasons}
    return nb.BrickState(
        device=DEV, path=PATH, is_block=True, usage=usage,
        signature=signature(sig) if isinstance(sig, str) else sig, path_mount=path_mount,
        path_exists=path_exists, path_is_dir=path_is_dir,
        root=(0, 0, 0o755) if path_mount else None, gluster_dirs=list(gluster_dirs))


def params(**overrides):
    base = {"force": False, "mkfs_options": ["-i", "size=512"], "mount_options": "noatime,inode64,allocsize=64k"}
    return {**base, **overrides}


MOUNTED_HERE = {"mounts": [mount(PATH)], "path_mount": mount(PATH)}

PRESENT_CASES = {
    "blank device: mkfs then mount": (state(), params(), [MKFS, MOUNT]),
    "blank device, no brick root yet": (state(path_exists=False, path_is_dir=False), params(),
                                        [MKFS, ["mkdir", "-p", PATH], MOUNT]),
    "blank device with force: -f": (state(), params(force=True), [MKFS_FORCE, MOUNT]),
    "XFS not mounted: mount only": (state("xfs"), params(), [MOUNT]),
    "XFS with force is never reformatted": (state("xfs"), params(force=True), [MOUNT]),
    "XFS mounted at path: nothing": (state("xfs", **MOUNTED_HERE), params(), []),
    "XFS mounted here and bound elsewhere: nothing": (
        state("xfs", mounts=[mount(PATH), mount("/bind")], path_mount=mount(PATH)), params(), []),
    "ext4 with force: wipe, mkfs -f, mount": (state("ext4"), params(force=True),
                                              [WIPE, MKFS_FORCE, MOUNT]),
    "partition table with force": (state("dos"), params(force=True), [WIPE, MKFS_FORCE, MOUNT]),
    "own mkfs and mount options": (
        state(), params(mkfs_options=["-i", "size=512", "-L", "brick0"], mount_options="noatime"),
        [["mkfs.xfs", "-i", "size=512", "-L", "brick0", DEV],
         ["mount", "-t", "xfs", "-o", "noatime", DEV, PATH]]),
}


@pytest.mark.parametrize(("brick", "options", "commands"), PRESENT_CASES.values(),
                         ids=PRESENT_CASES)
def test_plan_present(brick, options, commands):
    assert nb.plan_present(brick, options) == commands


NOT_BLOCK = nb.BrickState(device="/var/tmp/x.img", path=PATH, is_block=False,
                          not_block="is a regular file", path_exists=True, path_is_dir=True)

REFUSED_PRESENT = {
    "ext4 without force": (state("ext4"), params(),
                           r"carries ext4 filesystem \(UUID c9a91e14.*force: true"),
    "partition table": (state("dos"), params(), "carries dos partition table; refusing"),
    "swap signature": (state("swap"), params(), "carries swap space"),
    "ambivalent XFS": (state({"TYPE": "xfs", "AMBIVALENT": "1"}), params(), "several conflicting"),
    "not a block device": (NOT_BLOCK, params(force=True),
                           "x.img is a regular file: not a block device"),
    "mounted elsewhere, even with force": (
        state("xfs", mounts=[mount("/mnt/other")]), params(force=True),
        "in use: /dev/loop9 is mounted at /mnt/other.*give path: /mnt/other"),
    "held by device-mapper, even with force": (state(holders=["dm-0"]), params(force=True),
                                               "held by dm-0"),
    "active swap, even with force": (state("swap", swap=True), params(force=True), "active swap"),
    "another device at path": (
        state(path_mount=mount(PATH, source="/dev/loop1", numbers="7:1")), params(force=True),
        f"{PATH} has /dev/loop1 \\(xfs\\) mounted, not {DEV}"),
    "mounted here as ext4": (
        state("ext4", mounts=[mount(PATH, fstype="ext4")], path_mount=mount(PATH, fstype="ext4")),
        params(force=True), "mounted at .* as ext4, not XFS"),
    "brick root is a file": (state(path_is_dir=False), params(), "not a directory"),
}


@pytest.mark.parametrize(("brick", "options", "message"), REFUSED_PRESENT.values(),
                         ids=REFUSED_PRESENT)
def test_plan_present_refuses(brick, options, message):
    with pytest.raises(nb.BrickError, match=message):
        nb.plan_present(brick, options)


ABSENT_CASES = {
    "mounted XFS: umount and wipe": (state("xfs", **MOUNTED_HERE), params(), [UMOUNT, WIPE]),
    "unmounted XFS: wipe": (state("xfs"), params(), [WIPE]),
    "blank and unmounted: nothing": (state(), params(), []),
    "device gone: nothing": (nb.BrickState(device="/dev/gone", path=PATH, is_block=False,
                                           not_block="does not exist"), params(), []),
    "gluster data with force": (state("xfs", gluster_dirs=[PATH + "/vol"], **MOUNTED_HERE),
                                params(force=True), [UMOUNT, WIPE]),
}


@pytest.mark.parametrize(("brick", "options", "commands"), ABSENT_CASES.values(), ids=ABSENT_CASES)
def test_plan_absent(brick, options, commands):
    assert nb.plan_absent(brick, options) == commands


REFUSED_ABSENT = {
    "gluster brick data": (state("xfs", gluster_dirs=[PATH + "/vol"], **MOUNTED_HERE), params(),
                           f"holds GlusterFS brick data \\({PATH}/vol\\)"),
    "not a block device": (NOT_BLOCK, params(force=True), "not a block device"),
    "mounted elsewhere": (state("xfs", mounts=[mount("/mnt/other")]), params(force=True), "in use"),
    "active swap": (state("swap", swap=True), params(force=True), "active swap"),
}


@pytest.mark.parametrize(("brick", "options", "message"), REFUSED_ABSENT.values(),
                         ids=REFUSED_ABSENT)
def test_plan_absent_refuses(brick, options, message):
    with pytest.raises(nb.BrickError, match=message):
        nb.plan_absent(brick, options)


def test_gluster_brick_dirs(tmp_path):
    assert nb.gluster_brick_dirs(str(tmp_path)) == []
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "vol1" / ".glusterfs").mkdir(parents=True)
    assert nb.gluster_brick_dirs(str(tmp_path)) == [str(tmp_path / "vol1")]
    (tmp_path / ".glusterfs").mkdir()
    assert nb.gluster_brick_dirs(str(tmp_path)) == [str(tmp_path), str(tmp_path / "vol1")]


LINE = "UUID=u1 /srv/bricks/nvme0 xfs noatime,inode64,allocsize=64k 0 0"
FSTAB_CASES = {
    "empty fstab": ([], [LINE]),
    "already there": (["/dev/vda / ext4 defaults 0 1", LINE],
                      ["/dev/vda / ext4 defaults 0 1", LINE]),
    "old line for the mount point replaced": (
        ["/dev/loop9 /srv/bricks/nvme0 xfs defaults 0 0", "tmpfs /tmp tmpfs defaults 0 0"],
        ["tmpfs /tmp tmpfs defaults 0 0", LINE]),
    "old line for the UUID replaced": (["UUID=u1 /old xfs defaults 0 0"], [LINE]),
    "duplicates collapse to one": ([LINE, LINE], [LINE]),
    "comments are kept": (["# UUID=u1 /srv/bricks/nvme0 xfs", ""],
                          ["# UUID=u1 /srv/bricks/nvme0 xfs", "", LINE]),
}


@pytest.mark.parametrize(("lines", "expected"), FSTAB_CASES.values(), ids=FSTAB_CASES)
def test_fstab_with(lines, expected):
    assert nb.fstab_with(lines, PATH, "u1", LINE) == expected


def test_fstab_line_escapes_and_removal():
    line = nb.fstab_line("u2", "/srv/my bricks/n0", "noatime")
    assert line == "UUID=u2 /srv/my\\040bricks/n0 xfs noatime 0 0"
    lines = ["/dev/vda / ext4 defaults 0 1", line, LINE]
    root_line = "/dev/vda / ext4 defaults 0 1"
    assert nb.fstab_without(lines, "/srv/my bricks/n0", None) == [root_line, LINE]
    assert nb.fstab_without(lines, "/elsewhere", "u1") == ["/dev/vda / ext4 defaults 0 1", line]


# The module's runner (module_utils.command_runner): a failed command raises its CommandError.

def test_executor_in_check_mode_records_and_runs_nothing(fake_module):
    module = fake_module(check_mode=True)  # any run_command call would fail the test
    runner = nb.brick_runner(module)
    nb.run_commands(runner, [MKFS, MOUNT])
    assert runner.commands == [MKFS, MOUNT]
    assert module.calls == []


def test_executor_never_runs_mkfs_on_a_file(fake_module, tmp_path):
    image = tmp_path / "nvme.img"
    image.write_bytes(b"\0" * 4096)
    module = fake_module()
    with pytest.raises(nb.BrickError, match="no longer a block device"):
        nb.run_commands(nb.brick_runner(module), [["mkfs.xfs", "-i", "size=512", str(image)]])
    assert module.calls == []


def test_executor_retries_a_busy_umount(fake_module, monkeypatch):
    monkeypatch.setattr(nb, "UMOUNT_DELAY", 0.001)
    module = fake_module([(32, "", "umount: x: target is busy."), (0, "", "")])
    nb.run_commands(nb.brick_runner(module), [UMOUNT])
    assert [argv for argv, _env in module.calls] == [UMOUNT, UMOUNT]


def test_executor_reports_failure(fake_module):
    module = fake_module([(1, "", "mkfs.xfs: cannot open /dev/loop9: Device or resource busy")])
    with pytest.raises(CommandError, match=r"wipefs -a /dev/loop9 failed \(rc 1\)"):
        nb.run_commands(nb.brick_runner(module), [WIPE])


def test_recorded_fixtures_are_what_the_planner_sees():
    # Guards the table above: the recorded XFS really reads as plain XFS, ext4 does not.
    assert nb.carries_plain_xfs(parse_blkid_export((BLKID / "xfs.export").read_text()))
    assert not nb.carries_plain_xfs(parse_blkid_export((BLKID / "ext4.export").read_text()))
