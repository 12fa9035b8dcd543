"""nvme_brick through real ansible-playbook on real loop devices, real XFS, real mounts.

Every test makes its own sparse images under a temporary directory in /var/tmp and
attaches them with ``losetup -f --show``; a finalizer unmounts whatever is mounted from
those devices or under that directory, turns off swap on them, detaches them and removes
the directory, whatever the test did. The test bed's own bricks are never touched.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.module_task import ModuleTask

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
IMAGE_SIZE = 320 * 1024**2  # XFS wants at least 300 MiB

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mkfs.xfs"),
    reason="needs root, losetup and mkfs.xfs for loop-device bricks")


def sh(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check,
                          env=dict(os.environ, LANG="C", LC_ALL="C"))


def mountinfo():
    """(major:minor, target) of every mount, targets unescaped."""
    rows = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        target = fields[4].encode().decode("unicode_escape")
        rows.append((fields[2], target))
    return rows


def numbers(device):
    rdev = os.stat(device).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def mount_targets(device):
    return [target for dev, target in mountinfo() if dev == numbers(device)]


def blkid(device):
    """blkid -p as a dict; {} when the device carries no signature (exit status 2)."""
    done = sh("blkid", "-p", "-o", "export", device, check=False)
    assert done.returncode in (0, 2), done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


class Bricks:
    """Loop devices over sparse images in one /var/tmp directory, and module runs on them."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="bb-nvme-brick-", dir="/var/tmp"))
        self.devices = []
        self.task = ModuleTask("hpc.burstbuffer.nvme_brick", self.dir)

    def device(self):
        image = self.dir / f"nvme{len(self.devices)}.img"
        with open(image, "wb") as handle:
            handle.truncate(IMAGE_SIZE)
        device = sh("losetup", "-f", "--show", str(image)).stdout.strip()
        self.devices.append(device)
        return device

    def run(self, check=False, **args):
        """The registered result of one nvme_brick task run by ansible-playbook."""
        return self.task(check, **args)

    def cleanup(self):
        ours = {numbers(device) for device in self.devices if os.path.exists(device)}
        prefix = str(self.dir) + "/"
        for dev, target in reversed(mountinfo()):
            ours_or_under = dev in ours or target.startswith(prefix)
            if ours_or_under and sh("umount", target, check=False).returncode != 0:
                sh("umount", "-l", target, check=False)
        for device in self.devices:
            sh("swapoff", device, check=False)
            sh("losetup", "-d", device, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def bricks():
    made = Bricks()
    try:
        yield made
    finally:
        made.cleanup()


def test_first_run_formats_and_mounts_second_run_changes_nothing(bricks):
    device, path = bricks.device(), str(bricks.dir / "brick0")

    first = bricks.run(device=device, path=path, owner="65534", mode="0750")
    assert not first.get("failed"), first.get("msg")
    assert first["changed"] is True
    assert ["mkfs.xfs", "-i", "size=512", device] in first["commands"]
    assert ["chown", "65534", path] in first["commands"]
    uuid = blkid(device)["UUID"]
    assert blkid(device)["TYPE"] == "xfs"
    assert first["uuid"] == uuid
    assert mount_targets(device) == [path]
    stat = os.stat(path)
    assert (stat.st_uid, stat.st_mode & 0o7777) == (65534, 0o750)

    second = bricks.run(device=device, path=path, owner="65534", mode="0750")
    assert (second["changed"], second["commands"]) == (False, [])
    assert second["uuid"] == uuid == blkid(device)["UUID"]
    assert mount_targets(device) == [path]


def test_check_mode_on_a_fresh_device_changes_nothing(bricks):
    device, path = bricks.device(), str(bricks.dir / "brick0")

    result = bricks.run(check=True, device=device, path=path)

    assert result["changed"] is True
    assert result["commands"] == [
        ["mkfs.xfs", "-i", "size=512", device], ["mkdir", "-p", path],
        ["mount", "-t", "xfs", "-o", "noatime,inode64,allocsize=64k", device, path]]
    assert result["diff"]["after"] == {"fstype": "xfs", "mounted": True, "mount_point": path}
    assert blkid(device) == {}
    assert not os.path.exists(path)
    assert mount_targets(device) == []


def test_ext4_device_is_refused_without_force_and_reformatted_with_it(bricks):
    device, path = bricks.device(), str(bricks.dir / "brick0")
    sh("mkfs.ext4", "-q", device)
    ext4_uuid = blkid(device)["UUID"]

    refused = bricks.run(device=device, path=path)
    assert refused["failed"] is True
    assert f"carries ext4 filesystem (UUID {ext4_uuid})" in refused["msg"]
    assert "force: true" in refused["msg"]
    assert (blkid(device)["TYPE"], blkid(device)["UUID"]) == ("ext4", ext4_uuid)

    forced = bricks.run(device=device, path=path, force=True)
    assert forced["changed"] is True
    assert forced["commands"][:2] == [["wipefs", "-a", device],
                                      ["mkfs.xfs", "-f", "-i", "size=512", device]]
    assert blkid(device)["TYPE"] == "xfs"
    assert mount_targets(device) == [path]


def test_partition_table_is_refused(bricks):
    device, path = bricks.device(), str(bricks.dir / "brick0")
    mbr = bytearray(512)
    mbr[446 + 4] = 0x83  # one Linux partition entry ...
    mbr[446 + 8:446 + 16] = (2048).to_bytes(4, "little") + (204800).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"  # ... in a valid MBR
    with open(device, "r+b") as handle:
        handle.write(mbr)

    refused = bricks.run(device=device, path=path)

    assert refused["failed"] is True
    assert "dos partition table" in refused["msg"]
    assert blkid(device)["PTTYPE"] == "dos"


def test_a_path_that_is_not_a_block_device_is_refused(bricks):
    image = bricks.dir / "not-a-device.img"
    with open(image, "wb") as handle:
        handle.truncate(IMAGE_SIZE)

    refused = bricks.run(device=str(image), path=str(bricks.dir / "brick0"), force=True)

    assert refused["failed"] is True
    assert "is a regular file: not a block device" in refused["msg"]
    assert refused["commands"] == []
    assert blkid(str(image)) == {}  # mkfs never ran on the file


def test_a_device_mounted_elsewhere_is_refused_even_with_force(bricks):
    device = bricks.device()
    elsewhere = bricks.dir / "elsewhere"
    elsewhere.mkdir()
    sh("mkfs.xfs", "-q", device)
    sh("mount", device, str(elsewhere))

    refused = bricks.run(device=device, path=str(bricks.dir / "brick0"), force=True)

    assert refused["failed"] is True
    assert f"is mounted at {elsewhere}" in refused["msg"]
    assert mount_targets(device) == [str(elsewhere)]


def test_active_swap_is_refused_even_with_force(bricks):
    device = bricks.device()
    sh("mkswap", device)
    sh("swapon", device)

    refused = bricks.run(device=device, path=str(bricks.dir / "brick0"), force=True)

    assert refused["failed"] is True
    assert "active swap" in refused["msg"]
    assert blkid(device)["TYPE"] == "swap"


def test_absent_refuses_gluster_data_then_unmounts_and_wipes(bricks):
    device, path = bricks.device(), str(bricks.dir / "brick0")
    assert bricks.run(device=device, path=path)["changed"] is True
    os.makedirs(os.path.join(path, "bb-job1", ".glusterfs"))

    refused = bricks.run(device=device, path=path, state="absent")
    assert refused["failed"] is True
    assert "holds GlusterFS brick data" in refused["msg"]
    assert mount_targets(device) == [path]

    removed = bricks.run(device=device, path=path, state="absent", force=True)
    assert removed["changed"] is True
    assert removed["commands"] == [["umount", "--no-canonicalize", path], ["wipefs", "-a", device]]
    assert mount_targets(device) == []
    assert blkid(device) == {}

    again = bricks.run(device=device, path=path, state="absent")
    assert (again["changed"], again["commands"]) == (False, [])


def test_persist_writes_one_fstab_line_by_uuid(bricks):
    device, path = bricks.device(), str(bricks.dir / "brick0")
    fstab = bricks.dir / "fstab"
    fstab.write_text("/dev/vda / ext4 defaults 0 1\n")

    first = bricks.run(device=device, path=path, persist=True, fstab=str(fstab))
    line = f"UUID={blkid(device)['UUID']} {path} xfs noatime,inode64,allocsize=64k 0 0"
    assert first["fstab_line"] == line
    assert fstab.read_text() == f"/dev/vda / ext4 defaults 0 1\n{line}\n"

    second = bricks.run(device=device, path=path, persist=True, fstab=str(fstab))
    assert second["changed"] is False
    assert fstab.read_text() == f"/dev/vda / ext4 defaults 0 1\n{line}\n"

    bricks.run(device=device, path=path, state="absent", persist=True, fstab=str(fstab))
    assert fstab.read_text() == "/dev/vda / ext4 defaults 0 1\n"
