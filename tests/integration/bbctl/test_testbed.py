"""The test bed itself: the main one that CI brings up, and small private ones
built and destroyed here to prove up/down are idempotent and crash-tolerant."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from bbctl import host
from bbctl.pools import load_pools
from tests.conftest import BBCTL, VENV_BIN

pytestmark = pytest.mark.testbed


def bbctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([BBCTL, *args], capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def slurm(root: Path, *argv: str, user: str | None = None) -> str:
    env = {**os.environ, "SLURM_CONF": str(root / "slurm/etc/slurm.conf")}
    prefix = ["runuser", "-u", user, "--", "env", f"SLURM_CONF={env['SLURM_CONF']}"] if user else []
    proc = subprocess.run([*prefix, *argv], capture_output=True, text=True, env=env, timeout=60, check=False,
                          cwd="/tmp")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# --- the main test bed ---------------------------------------------------------

def test_status_reports_three_servers_with_three_xfs_bricks(testbed):
    report = json.loads(bbctl("testbed", "status", "--json").stdout)
    assert report["up"] is True
    assert [n["address"] for n in report["nodes"]] == ["127.1.1.1", "127.1.1.2", "127.1.1.3"]
    for node in report["nodes"]:
        assert len(node["bricks"]) == 3
        for brick in node["bricks"]:
            mount = host.mount_at(Path(brick["path"]))
            assert mount is not None and mount.fstype == "xfs"
            assert mount.source.startswith("/dev/loop")
            assert os.statvfs(brick["path"]).f_bavail * os.statvfs(brick["path"]).f_frsize >= 4 * 1024**3


def test_peers_are_connected_from_every_node(testbed):
    for n in (1, 2, 3):
        out = host.run(["gluster", "--mode=script",
                        f"--glusterd-sock={testbed}/node{n}/run/glusterd.socket",
                        "pool", "list"]).stdout
        assert out.count("Connected") == 3, out


def test_inventory_describes_servers_and_bricks_for_ansible(testbed):
    out = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(testbed / "inventory.yml"),
                          "--list"], capture_output=True, text=True, check=True).stdout
    inventory = json.loads(out)
    assert sorted(inventory["bb_storage"]["hosts"]) == ["bbnode1", "bbnode2", "bbnode3"]
    node2 = inventory["_meta"]["hostvars"]["bbnode2"]
    assert node2["bb_gluster_host"] == "127.1.1.2"
    assert Path(node2["bb_glusterd_socket"]).is_socket()
    assert [Path(b["device"]).name.startswith("loop") for b in node2["bb_bricks"]] == [True, True, True]
    assert host.mount_at(Path(node2["bb_bricks"][1]["path"])).source == node2["bb_bricks"][1]["device"]


def test_the_inventory_makes_one_pool_of_every_brick(testbed):
    pool = load_pools({"pools": {"nvme": {"granularity": "1GiB"}}}, testbed / "inventory.yml")["nvme"]
    assert pool.quantity == 9  # one granule per brick: three on each of three servers
    assert all(b.path.startswith(f"{testbed}/node") for b in pool.bricks)


def test_a_distributed_volume_spreads_files_over_all_servers(testbed, tmp_path):
    gluster = ["gluster", "--mode=script", f"--glusterd-sock={testbed}/node1/run/glusterd.socket"]
    bricks = [testbed / f"node{n}/bricks/nvme1/tb-spread" for n in (1, 2, 3)]
    host.run([*gluster, "volume", "create", "tb-spread",
              *[f"127.1.1.{n}:{b}" for n, b in zip((1, 2, 3), bricks, strict=True)]])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        host.run([*gluster, "volume", "start", "tb-spread"])
        host.run(["mount", "-t", "glusterfs", "127.1.1.1:/tb-spread", str(mountpoint)])
        for i in range(30):
            (mountpoint / f"f{i}").write_text(str(i))
        per_brick = [len([p for p in b.iterdir() if p.name.startswith("f")]) for b in bricks]
        assert sum(per_brick) == 30
        assert all(count > 0 for count in per_brick), per_brick
    finally:
        if host.mount_at(mountpoint):
            host.umount(mountpoint)
        host.run([*gluster, "volume", "stop", "tb-spread"], check=False)
        host.run([*gluster, "volume", "delete", "tb-spread"], check=False)
        for brick in bricks:
            subprocess.run(["rm", "-rf", str(brick)], check=True)


def test_slurm_runs_a_burst_buffer_job_for_the_unprivileged_user(testbed, user_dir):
    script = user_dir / "job.sh"
    out = user_dir
    script.write_text("#!/bin/bash\n#BB_LUA jobdw capacity=1GiB pool=nvme\nid -un\n")
    script.chmod(0o644)
    job = slurm(testbed, "sbatch", "--parsable", "-o", f"{out}/%j.out", str(script),
                user="bbuser").strip()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / f"{job}.out").exists():
        time.sleep(0.5)
    while time.monotonic() < deadline and slurm(testbed, "squeue", "-h", "-j", job).strip():
        time.sleep(0.5)
    assert (out / f"{job}.out").read_text().strip() == "bbuser"
    burst = slurm(testbed, "scontrol", "show", "burst")
    assert "PoolName[0]=nvme" in burst and "TotalSpace=36GiB" in burst


# --- private small test beds ----------------------------------------------------

SMALL = ("--servers", "2", "--bricks", "1", "--brick-size", "512MiB", "--slurm", "none")


@pytest.fixture
def small_root(tmp_path_factory):
    root = Path("/var/tmp") / f"bb-small-{os.getpid()}-{time.monotonic_ns()}"
    yield root
    bbctl("testbed", "down", "--root", str(root), check=False)


def assert_nothing_left(root: Path, prefix: str) -> None:
    assert not root.exists()
    assert list(host.loops_backed_under(root)) == []
    assert [m for m in host.mounts() if str(m.target).startswith(str(root))
            or m.source.startswith(prefix + ".")] == []


def test_up_twice_then_crash_then_up_repairs_then_down_leaves_nothing(small_root):
    args = ("testbed", "up", "--root", str(small_root), "--address-prefix", "127.1.9", *SMALL)
    first = json.loads(bbctl(*args, "--json").stdout)
    again = json.loads(bbctl(*args, "--json").stdout)
    assert first["up"] and again["up"]
    assert first["nodes"] == again["nodes"]  # same loop devices, nothing duplicated

    # Make the test bed carry a started volume and a client mount, then crash it:
    # glusterd killed hard, one brick unmounted behind its back.
    node1 = small_root / "node1"
    gluster = ["gluster", "--mode=script", f"--glusterd-sock={node1}/run/glusterd.socket"]
    host.run([*gluster, "volume", "create", "small", f"127.1.9.1:{node1}/bricks/nvme1/small",
              f"127.1.9.2:{small_root}/node2/bricks/nvme1/small"])
    host.run([*gluster, "volume", "start", "small"])
    client = small_root / "client"
    client.mkdir()
    host.run(["mount", "-t", "glusterfs", "127.1.9.1:/small", str(client)])
    os.kill(host.read_pid(node1 / "glusterd.pid"), signal.SIGKILL)
    host.umount(small_root / "node2/bricks/nvme1")

    repaired = json.loads(bbctl(*args, "--json").stdout)
    assert repaired["up"] is True
    assert repaired["nodes"][1]["bricks"][0]["mounted"] is True

    bbctl("testbed", "down", "--root", str(small_root))
    assert_nothing_left(small_root, "127.1.9")
    bbctl("testbed", "down", "--root", str(small_root))  # idempotent


def test_a_taken_address_is_refused_before_anything_is_built(small_root):
    with socket.socket() as squatter:
        squatter.bind(("127.1.8.1", 24007))
        squatter.listen()
        proc = bbctl("testbed", "up", "--root", str(small_root), "--address-prefix", "127.1.8",
                     *SMALL, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "bbctl testbed: error: 127.1.8.1:24007 is already taken by another process "
        "(a system glusterd?); stop it or choose another --address-prefix"]
    assert list(host.loops_backed_under(small_root)) == []


def test_another_shape_over_a_running_test_bed_is_refused(small_root):
    bbctl("testbed", "up", "--root", str(small_root), "--address-prefix", "127.1.7", *SMALL)
    proc = bbctl("testbed", "up", "--root", str(small_root), "--address-prefix", "127.1.7",
                 "--servers", "1", "--bricks", "1", "--brick-size", "512MiB", "--slurm", "none",
                 check=False)
    assert proc.returncode == 1
    assert "another shape" in proc.stderr and "Traceback" not in proc.stderr


def test_inventory_is_valid_yaml_with_loopback_hosts_only(testbed):
    inventory = yaml.safe_load((testbed / "inventory.yml").read_text())
    hosts = inventory["all"]["children"]["bb_storage"]["hosts"]
    assert all(h["ansible_host"].startswith("127.") for h in hosts.values())
