"""lustre_target through real Ansible, on real loop devices, against the recording fake.

No Lustre exists on this machine, so tests/fakes/lustre stands in for mkfs.lustre,
tunefs.lustre, mount/umount (-t lustre), blkid, findmnt and wipefs: it records every
command that changes something and remembers labels and mounts in a state file. The
devices are real block devices (sparse images on loop devices), so the module's
block-device check, blkid probes of foreign filesystems and the kernel's view of who
uses a device are the real ones. Every loop device is detached by a finalizer.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.module_task import LOCALHOST, run_tasks

REPO = Path(__file__).resolve().parents[2]
FAKE_DIR = REPO / "tests" / "fakes" / "lustre"
FSNAME = "bbfs"
MGSNODE = ["127.1.1.1@tcp"]  # loopback range only; real mkfs.lustre refuses 127.0.0.1 itself

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup"),
    reason="needs root and losetup for loop devices")


def fake(tool):
    return str(FAKE_DIR / tool)


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="lustre-target-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_loop(workdir, request):
    """Factory: a new loop device over a sparse 64 MiB image, detached after the test."""
    count = iter(range(100))

    def make():
        image = workdir / f"disk{next(count)}.img"
        with open(image, "wb") as handle:
            handle.truncate(64 * 1024 * 1024)
        device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                capture_output=True, text=True).stdout.strip()
        request.addfinalizer(lambda: subprocess.run(["losetup", "--detach", device], check=False))
        return device

    return make


class Play:
    """Runs tasks through ansible-playbook with the fake first in PATH; reads back results."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.log = workdir / "fake-log.jsonl"
        self.state = workdir / "fake-state.json"
        self.runs = 0

    def run(self, tasks):
        """Each task's registered result, in order (tasks never stop the play)."""
        self.runs += 1
        environment = {"PATH": f"{FAKE_DIR}:{os.environ['PATH']}", "LUSTRE_FAKE_LOG": str(self.log),
                       "LUSTRE_FAKE_STATE": str(self.state)}
        return run_tasks(self.workdir, f"play{self.runs}", tasks,
                         play={**LOCALHOST, "environment": environment})["localhost"]

    def recorded(self):
        """Every command the fake recorded as changing something, argv as run."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def targets(self):
        if not self.state.exists():
            return {}
        return json.loads(self.state.read_text())["targets"]


def target_task(**params):
    return {"hpc.burstbuffer.lustre_target": dict({"fsname": FSNAME}, **params)}


@pytest.fixture
def play(workdir):
    return Play(workdir)


@pytest.fixture
def filesystem(make_loop, workdir):
    """Devices and mount points of a small filesystem: MGS+MDT0 and two OSTs."""
    devices = {"mdt0": make_loop(), "ost0": make_loop(), "ost1": make_loop()}
    mounts = {name: str(workdir / "mnt" / name) for name in devices}
    return devices, mounts


def bring_up_tasks(devices, mounts, state="mounted", check_mode=False):
    tasks = [
        target_task(kind="mgs_mdt", index=0, device=devices["mdt0"], mountpoint=mounts["mdt0"],
                    state=state),
        target_task(kind="ost", index=0, device=devices["ost0"], mgsnode=MGSNODE,
                    mountpoint=mounts["ost0"], state=state),
        target_task(kind="ost", index=1, device=devices["ost1"], mgsnode=MGSNODE,
                    mountpoint=mounts["ost1"], state=state),
    ]
    return [dict(task, check_mode=True) for task in tasks] if check_mode else tasks


def expected_bring_up(devices, mounts):
    return [
        [fake("mkfs.lustre"), "--mgs", "--mdt", f"--fsname={FSNAME}", "--index=0",
         "--backfstype=ldiskfs", devices["mdt0"]],
        [fake("mount"), "-t", "lustre", devices["mdt0"], mounts["mdt0"]],
        [fake("mkfs.lustre"), "--ost", f"--fsname={FSNAME}", "--index=0",
         f"--mgsnode={MGSNODE[0]}", "--backfstype=ldiskfs", devices["ost0"]],
        [fake("mount"), "-t", "lustre", devices["ost0"], mounts["ost0"]],
        [fake("mkfs.lustre"), "--ost", f"--fsname={FSNAME}", "--index=1",
         f"--mgsnode={MGSNODE[0]}", "--backfstype=ldiskfs", devices["ost1"]],
        [fake("mount"), "-t", "lustre", devices["ost1"], mounts["ost1"]],
    ]


def test_check_mode_returns_the_plan_and_records_nothing(play, filesystem):
    devices, mounts = filesystem
    results = play.run(bring_up_tasks(devices, mounts, check_mode=True))

    assert [result.get("failed", False) for result in results] == [False] * 3, results
    assert all(result["changed"] for result in results)
    plan = [argv for result in results for argv in result["commands"]]
    assert plan == expected_bring_up(devices, mounts)
    assert [result["label"] for result in results] == [
        "bbfs-MDT0000", "bbfs-OST0000", "bbfs-OST0001"]
    assert results[0]["diff"]["before"] == {"label": None, "mounted": False, "mountpoint": None}
    assert results[0]["diff"]["after"] == {
        "label": "bbfs-MDT0000", "mounted": True, "mountpoint": mounts["mdt0"]}
    assert play.recorded() == []
    assert play.targets() == {}
    assert not os.path.exists(mounts["mdt0"])


def test_builds_a_filesystem_in_order_then_changes_nothing_then_tears_down(play, filesystem):
    devices, mounts = filesystem

    first = play.run(bring_up_tasks(devices, mounts))
    assert [result.get("failed", False) for result in first] == [False] * 3, first
    assert all(result["changed"] and result["mounted"] for result in first)
    assert play.recorded() == expected_bring_up(devices, mounts)
    # The first mount registered each target with the MGS: fs:OST0000 became fs-OST0000.
    labels = {name: play.targets()[os.path.realpath(dev)]["virgin"]
              for name, dev in devices.items()}
    assert labels == {"mdt0": False, "ost0": False, "ost1": False}

    recorded_before = len(play.recorded())
    second = play.run(bring_up_tasks(devices, mounts))
    assert [(result["changed"], result["commands"]) for result in second] == [(False, [])] * 3
    assert len(play.recorded()) == recorded_before

    down = play.run([
        target_task(kind="mgs_mdt", index=0, device=devices["mdt0"], state="absent", force=True),
        target_task(kind="ost", index=1, device=devices["ost1"], mgsnode=MGSNODE,
                    state="absent", force=True),
        target_task(kind="ost", index=0, device=devices["ost0"], mgsnode=MGSNODE,
                    state="absent", force=True),
    ])
    assert [result.get("failed", False) for result in down] == [False] * 3, down
    assert play.recorded()[recorded_before:] == [
        [fake("umount"), mounts["mdt0"]],
        [fake("wipefs"), "-a", devices["mdt0"]],
        [fake("umount"), mounts["ost1"]],
        [fake("wipefs"), "-a", devices["ost1"]],
        [fake("umount"), mounts["ost0"]],
        [fake("wipefs"), "-a", devices["ost0"]],
    ]
    assert play.targets() == {}


def test_unmounted_stops_a_target_and_keeps_its_label(play, filesystem):
    devices, mounts = filesystem
    play.run(bring_up_tasks(devices, mounts)[:2])
    results = play.run([target_task(kind="ost", index=0, device=devices["ost0"],
                                    mgsnode=MGSNODE, state="unmounted")])
    assert results[0]["changed"] and not results[0]["mounted"]
    assert play.recorded()[-1] == [fake("umount"), mounts["ost0"]]
    assert play.targets()[os.path.realpath(devices["ost0"])]["roles"] == ["OST"]


def test_an_ost_does_not_start_before_its_mgs(play, filesystem):
    devices, mounts = filesystem
    results = play.run(bring_up_tasks(devices, mounts)[1:2])
    assert results[0]["failed"]
    assert "Is the MGS running?" in results[0]["msg"]
    # It failed at the mount, after formatting: the plan ran in order and stopped there.
    assert results[0]["commands"] == [expected_bring_up(devices, mounts)[2]]


def test_a_device_with_another_label_is_refused_without_force(play, make_loop, workdir):
    device = make_loop()
    subprocess.run(["mkfs.ext4", "-q", "-L", "scratch", device], check=True)
    ost = target_task(kind="ost", index=2, device=device, mgsnode=MGSNODE)

    refused = play.run([ost])[0]
    assert refused["failed"]
    assert "label 'scratch'" in refused["msg"] and "force: true" in refused["msg"]
    assert play.recorded() == []

    forced = play.run([dict(ost, **{"hpc.burstbuffer.lustre_target": dict(
        ost["hpc.burstbuffer.lustre_target"], force=True)})])[0]
    assert forced.get("failed") is not True, forced
    assert play.recorded() == [
        [fake("mkfs.lustre"), "--ost", f"--fsname={FSNAME}", "--index=2",
         f"--mgsnode={MGSNODE[0]}", "--backfstype=ldiskfs", "--reformat", device]]
    assert forced["diff"]["before"]["label"] == "scratch"


def test_a_target_of_another_index_is_refused(play, make_loop):
    device = make_loop()
    results = play.run([
        target_task(kind="ost", index=1, device=device, mgsnode=MGSNODE),
        target_task(kind="ost", index=2, device=device, mgsnode=MGSNODE),
    ])
    assert results[0]["changed"]
    assert results[1]["failed"]
    assert "'bbfs:OST0001'" in results[1]["msg"]  # never mounted: the virgin label
    assert len(play.recorded()) == 1


def test_a_regular_file_is_never_formatted(play, workdir):
    image = workdir / "not-a-device.img"
    image.write_bytes(b"")
    result = play.run([target_task(kind="mgs", device=str(image), force=True)])[0]
    assert result["failed"]
    assert "is a regular file" in result["msg"]
    assert play.recorded() == []
