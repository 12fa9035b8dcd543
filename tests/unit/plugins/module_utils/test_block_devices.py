"""module_utils/block_devices.py: blkid parsing (recorded from real devices), usage detection."""

import os
import stat
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import block_devices as bd
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import CommandRunner
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import parse_mountinfo

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"


def recorded(name):
    return (FIXTURES / "blkid" / f"{name}.export").read_text()


@pytest.mark.parametrize(("name", "expected"), [
    ("xfs", {"TYPE": "xfs", "USAGE": "filesystem", "UUID": "9170bc37-e4be-403a-aaec-936a1212c08a"}),
    ("ext4", {"TYPE": "ext4", "USAGE": "filesystem", "VERSION": "1.0"}),
    ("swap", {"TYPE": "swap", "USAGE": "other", "UUID": "ab8b3860-2147-482b-b1c9-23d4295ee2fe"}),
    ("dos", {"PTTYPE": "dos", "PTUUID": "1234abcd"}),
])
def test_parse_recorded_blkid_output(name, expected):
    info = bd.parse_blkid_export(recorded(name))
    assert expected.items() <= info.items()
    assert info["DEVNAME"].startswith("/dev/loop")


def test_parse_blkid_unescapes_values():
    info = bd.parse_blkid_export("DEVNAME=/dev/loop3\nLABEL=my\\ brick\\\\1\nTYPE=xfs\n")
    assert info["LABEL"] == "my brick\\1"


@pytest.mark.parametrize(("name", "rc", "fstype", "table"), [
    ("xfs", 0, "xfs", None),
    ("ext4", 0, "ext4", None),
    ("swap", 0, "swap", None),
    ("dos", 0, None, "dos"),
    ("empty", 2, None, None),
])
def test_signature_from_recorded_probe(name, rc, fstype, table):
    signature = bd.signature_from_probe(rc, recorded(name), "", "/dev/loop3")
    assert bd.filesystem_type(signature) == fstype
    assert signature.get("PTTYPE") == table
    assert (signature == {}) is (name == "empty")


def test_ambivalent_probe_is_marked():
    signature = bd.signature_from_probe(8, "", "", "/dev/loop3")
    assert signature == {"AMBIVALENT": "1"}
    assert "several conflicting signatures" in bd.describe_signature(signature)


def test_probe_failure_raises():
    with pytest.raises(bd.DeviceError, match=r"blkid -p /dev/loop3 failed \(rc 4\): bad usage"):
        bd.signature_from_probe(4, "", "bad usage", "/dev/loop3")


def test_probe_signature_runs_blkid_low_level_in_c_locale(fake_module):
    module = fake_module([(0, recorded("ext4"), "")])
    assert bd.probe_signature(CommandRunner(module), "/dev/loop7")["TYPE"] == "ext4"
    ((argv, env),) = module.calls
    assert argv == ["blkid", "-p", "-o", "export", "/dev/loop7"]
    assert env["LANG"] == "C"


@pytest.mark.parametrize(("name", "words"), [
    ("xfs", "xfs filesystem (UUID 9170bc37-e4be-403a-aaec-936a1212c08a)"),
    ("ext4", "ext4 filesystem (UUID c9a91e14-ba73-4194-9ea6-a9ccbc705f25)"),
    ("swap", "swap space (UUID ab8b3860-2147-482b-b1c9-23d4295ee2fe)"),
    ("dos", "dos partition table"),
    ("empty", "no signature"),
])
def test_describe_recorded_signatures(name, words):
    assert bd.describe_signature(bd.parse_blkid_export(recorded(name))) == words


def test_describe_raid_member():
    words = bd.describe_signature({"TYPE": "LVM2_member", "USAGE": "raid", "UUID": "x"})
    assert words == "LVM2_member RAID/LVM member (UUID x)"


def test_parse_recorded_proc_swaps():
    assert bd.parse_proc_swaps((FIXTURES / "proc" / "swaps_active").read_text()) == ["/dev/loop8"]
    header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    assert bd.parse_proc_swaps(header) == []
    assert bd.parse_proc_swaps(header + "/swap\\040file file 10 0 -2\n") == ["/swap file"]


def test_is_block_device(tmp_path):
    regular = tmp_path / "disk.img"
    regular.write_bytes(b"")
    assert not bd.is_block_device(str(regular))
    assert not bd.is_block_device(str(tmp_path / "missing"))
    assert not bd.is_block_device(str(tmp_path))
    assert not bd.is_block_device("/dev/null")
    assert bd.describe_non_block(str(regular)) == "is a regular file"
    assert bd.describe_non_block(str(tmp_path)) == "is a directory"
    assert bd.describe_non_block(str(tmp_path / "missing")) == "does not exist"
    assert bd.describe_non_block("/dev/null") == "is a character device"


def test_is_block_device_on_a_real_one():
    candidates = [os.path.join("/dev", n) for n in sorted(os.listdir("/dev"))]
    real = [p for p in candidates if stat.S_ISBLK(os.lstat(p).st_mode)]
    if not real:
        pytest.skip("no block device node in /dev on this machine")
    assert bd.is_block_device(real[0])
    major, minor = bd.device_numbers(real[0])
    assert os.makedev(major, minor) == os.stat(real[0]).st_rdev


def fake_sysfs(root, name, dev, holders=(), partitions=()):
    base = root / name
    (base / "holders").mkdir(parents=True)
    (base / "dev").write_text(dev + "\n")
    for holder in holders:
        (base / "holders" / holder).mkdir()
    for part, part_dev in partitions:
        (base / part).mkdir()
        (base / part / "partition").write_text("1\n")
        fake_sysfs(root, part, part_dev)
    (base / "queue").mkdir()  # a subdirectory that is not a partition


def test_partitions_and_holders_from_sysfs(tmp_path):
    fake_sysfs(tmp_path, "nvme0n1", "259:0", holders=["dm-0"], partitions=[("nvme0n1p1", "259:1")])
    assert bd.partitions("nvme0n1", str(tmp_path)) == ["nvme0n1p1"]
    assert bd.holders("nvme0n1", str(tmp_path)) == ["dm-0"]
    assert bd.holders("nvme0n1p1", str(tmp_path)) == []
    assert bd.partitions("nosuch", str(tmp_path)) == []


MOUNTINFO = parse_mountinfo(
    "42 27 7:3 / /srv/bricks/nvme0 rw - xfs /dev/loop3 rw\n"
    "43 27 259:1 / /data rw - ext4 /dev/nvme0n1p1 rw\n")


@pytest.mark.parametrize(("devices", "swaps", "holders", "reasons"), [
    ([("loop4", (7, 4))], set(), set(), []),
    ([("loop3", (7, 3))], set(), set(), ["/dev/loop3 is mounted at /srv/bricks/nvme0 (xfs)"]),
    ([("loop4", (7, 4))], {(7, 4)}, set(), ["/dev/loop4 is active swap"]),
    ([("nvme0n1", (259, 0)), ("nvme0n1p1", (259, 1))], set(), {"dm-0"},
     ["/dev/nvme0n1p1 is mounted at /data (ext4)",
      "held by dm-0 (device-mapper, RAID or bcache stacked on it)"]),
])
def test_usage_reasons(devices, swaps, holders, reasons):
    assert bd.usage_reasons(devices, MOUNTINFO, swaps, holders) == reasons
