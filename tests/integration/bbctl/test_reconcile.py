"""bbctl reconcile on the real test bed: drift made for real behind bbctl's back, found, repaired.

Five kinds of drift are made at once with the tools an operator (or a crash) would
use: a persistent buffer whose volume is deleted with the gluster CLI; a volume made
with the gluster CLI that no record holds, FUSE-mounted under the mount root; brick
directories a `gluster volume delete` left behind; a record that never got its volume
(a setup that died after allocating); the aux mount a `gluster volume quota list` that timed
out leaves on the storage server. `bbctl reconcile` must report each, change
nothing, and with `--repair` remove them, so that a second survey finds none, the
pool's free bricks equal the bricks no volume or brick directory uses, and the
machine holds nothing of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from bbctl import site as sitecfg
from bbctl.lifecycle import Lifecycle
from bbctl.reconcile import EXIT_DRIFT
from bbctl.state import BufferSpec, BufferState
from tests.conftest import TESTBED_ROOT
from tests.integration.bbctl.slurmjobs import BBCTL_CONFIG, GLUSTERD_SOCKET, bbctl, leftovers, volumes
from tests.integration.bbctl.storage_servers import glusterd_pid, restart_glusterd

pytestmark = pytest.mark.testbed
GIB = 1024**3


def gluster(*args: str) -> None:
    subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={GLUSTERD_SOCKET}", *args], check=True,
                   capture_output=True, text=True, timeout=120)


def brick(node: int, k: int, name: str) -> str:
    return f"127.1.1.{node}:{TESTBED_ROOT}/node{node}/bricks/nvme{k}/{name}"


def reconcile(*flags: str, exit_code: int = 0) -> dict:
    """The report of bbctl reconcile --json, which exits 0 without drift left, EXIT_DRIFT with some."""
    done = bbctl("reconcile", "--json", "--older-than", "0", *flags)
    assert done.returncode == exit_code, done.stderr[-3000:] + done.stdout[-3000:]
    return json.loads(done.stdout)


def free_bricks() -> int:
    return json.loads(bbctl("pools").stdout)["pools"][0]["free"]


@pytest.fixture
def life(testbed):
    return Lifecycle(sitecfg.load(BBCTL_CONFIG))


def test_drift_is_reported_then_repaired(life, testbed):
    tag = uuid.uuid4().hex[:6]
    deleted, orphan, stray, never = f"rcdel{tag}", f"bbp-rcorphan{tag}", f"bbp-rcstray{tag}", f"rcnever{tag}"
    mount = Path(life.site.mount_root) / orphan
    aux = Path("/run/gluster") / f"{sitecfg.volume_name(deleted)}_quota_list"
    assert reconcile()["drift"] == [], "the test bed had drift before the test"
    free_before = free_bricks()
    try:
        # 1. A persistent buffer whose volume an operator deleted with the gluster CLI.
        made = bbctl("create-persistent", "--name", deleted, "--uid", "1001", "--gid", "1001",
                     "--capacity", "4GiB")
        assert made.returncode == 0, made.stderr[-2000:]
        # 5. ... whose `quota list` had timed out, leaving its aux mount where glusterd makes it.
        aux.mkdir()
        subprocess.run(["mount", "-t", "glusterfs", f"127.1.1.1:/{sitecfg.volume_name(deleted)}", str(aux)],
                       check=True, timeout=60)
        gluster("volume", "stop", sitecfg.volume_name(deleted), "force")
        gluster("volume", "delete", sitecfg.volume_name(deleted))
        # 2. A volume of our name that no record holds, mounted under the mount root.
        gluster("volume", "create", orphan, brick(1, 1, orphan), brick(2, 1, orphan), "force")
        gluster("volume", "start", orphan)
        mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "glusterfs", f"127.1.1.1:/{orphan}", str(mount)], check=True, timeout=60)
        # 3. Brick directories left by a volume deleted without removing them.
        gluster("volume", "create", stray, brick(2, 2, stray), brick(3, 3, stray), "force")
        gluster("volume", "delete", stray)
        # 4. A setup that died after allocating its bricks: the record, no volume.
        life.store.allocate(BufferSpec(never, 1001, 1001, 4 * GIB), life.pool(None))
        life.store.transition(never, BufferState.ALLOCATING, BufferState.CREATING)
        time.sleep(0.1)

        report = reconcile(exit_code=EXIT_DRIFT)
        found = {(d["kind"], d["volume"]) for d in report["drift"]}
        assert found == {("volume_missing", sitecfg.volume_name(deleted)), ("orphan_volume", orphan),
                         ("stray_aux_mount", sitecfg.volume_name(deleted)),
                         ("stray_mount", orphan), ("stray_brick_dir", stray),
                         ("volume_missing", sitecfg.volume_name(never))}, report
        assert report["repaired"] == [] and orphan in volumes() and mount.is_mount()  # a report changes nothing
        # gc reports the same drift beside what it tears down itself (a dry run: nothing of either).
        gc = bbctl("gc", "--json", "--dry-run", "--older-than", "0")
        assert gc.returncode == EXIT_DRIFT, gc.stderr[-2000:]  # drift left: a dry run repairs nothing
        gc_report = json.loads(gc.stdout)
        assert {(d["kind"], d["volume"]) for d in gc_report["drift"]} == found
        assert gc_report["stale_buffers"] == [never] and gc_report["repaired"] == []
        strays = next(d for d in report["drift"] if d["kind"] == "stray_brick_dir")["where"]
        assert sorted(strays) == sorted(b.replace("127.1.1.2:", "bbnode2:").replace("127.1.1.3:", "bbnode3:")
                                        for b in (brick(2, 2, stray), brick(3, 3, stray)))

        repaired = reconcile("--repair")
        assert all(r["repaired"] for r in repaired["repaired"]), repaired["repaired"]
        # One outcome per drift found (the test bed's stage host is also its compute node: both report the mount).
        assert len(repaired["repaired"]) == len(repaired["drift"]) >= 6
    finally:
        for target in (mount, aux):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        aux.rmdir() if aux.exists() and not aux.is_mount() else None
        mount.rmdir() if mount.exists() and not mount.is_mount() else None
        for key in (deleted, never):
            if life.store.get(key) is not None:
                life.destroy(key, stage="test cleanup")
        for name in (orphan, stray):
            subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={GLUSTERD_SOCKET}", "volume", "stop",
                            name, "force"], capture_output=True, check=False)
            subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={GLUSTERD_SOCKET}", "volume", "delete",
                            name], capture_output=True, check=False)
        for path in TESTBED_ROOT.glob(f"node*/bricks/*/bbp-rc*{tag}"):
            subprocess.run(["rm", "-rf", str(path)], check=False)

    assert reconcile()["drift"] == []
    assert free_bricks() == free_before  # the two records' bricks are free again, nothing else is held
    for name in (sitecfg.volume_name(deleted), orphan, stray, sitecfg.volume_name(never)):
        assert not leftovers(name), leftovers(name)
    assert not mount.exists() and not aux.exists()


def test_repair_with_a_storage_server_down_leaves_its_pieces_and_finishes_once_it_is_back(life, testbed):
    """Server 3's glusterd killed: the survey names it unanswered; --repair removes what lies on the
    servers that answered (brick directories of a deleted volume on 1 and 2) and does not try a volume
    with a brick on server 3 (its delete could only fail: "Some of the peers are down"), saying why;
    a second --repair once server 3 is back removes the rest, including server 3's own stray brick
    directory, which the first survey could not see."""
    tag = uuid.uuid4().hex[:6]
    stray, orphan, hidden = f"bbp-rcup{tag}", f"bbp-rcorph{tag}", f"bbp-rchid{tag}"
    assert reconcile()["drift"] == [], "the test bed had drift before the test"
    free_before = free_bricks()
    try:
        gluster("volume", "create", stray, brick(1, 2, stray), brick(2, 2, stray), "force")
        gluster("volume", "delete", stray)
        gluster("volume", "create", hidden, brick(3, 2, hidden), "force")
        gluster("volume", "delete", hidden)
        gluster("volume", "create", orphan, brick(2, 3, orphan), brick(3, 3, orphan), "force")
        os.kill(glusterd_pid(3), signal.SIGKILL)
        try:
            first = reconcile("--repair", exit_code=EXIT_DRIFT)
            assert set(first["unanswered"]) == {"bbnode3"}, first["unanswered"]
            outcomes = {(r["kind"], r["volume"]): r for r in first["repaired"]}
            assert set(outcomes) == {("stray_brick_dir", stray), ("orphan_volume", orphan)}, first
            assert outcomes["stray_brick_dir", stray]["repaired"], outcomes
            left = outcomes["orphan_volume", orphan]
            assert not left["repaired"] and left["error"].startswith("not tried: bbnode3 did not answer"), left
            assert not leftovers(stray) and orphan in volumes()
            assert (TESTBED_ROOT / "node3" / "bricks" / "nvme2" / hidden).is_dir()  # not seen, not touched
        finally:
            restart_glusterd(3)
        second = reconcile("--repair")
        assert {(r["kind"], r["volume"], r["repaired"]) for r in second["repaired"]} == {
            ("orphan_volume", orphan, True), ("stray_brick_dir", hidden, True)}, second
    finally:
        assert bbctl("servers", "--resume", "bbnode3").returncode == 0  # the survey counted its silence
        subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={GLUSTERD_SOCKET}", "volume", "delete",
                        orphan], capture_output=True, check=False)
        for path in TESTBED_ROOT.glob(f"node*/bricks/*/bbp-rc*{tag}"):
            subprocess.run(["rm", "-rf", str(path)], check=False)
    assert reconcile()["drift"] == []
    assert free_bricks() == free_before
    for name in (stray, orphan, hidden):
        assert not leftovers(name), leftovers(name)
