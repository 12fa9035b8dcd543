"""After converge: the job's buffer is a started 3-brick distributed volume over
three servers, quota-limited to its capacity, mounted on the client as the job
owner's private directory, and spreading files over all bricks."""

import os
import xml.etree.ElementTree as ET

import testinfra

ROOT = "/var/lib/bbctl-testbed"
VOLUME = "molecule-job1"
MOUNT = f"{ROOT}/mnt/{VOLUME}"
GLUSTER = f"gluster --mode=script --glusterd-sock={ROOT}/node1/run/glusterd.socket"
local = testinfra.get_host("local://")


def volume_info():
    root = ET.fromstring(local.check_output(f"{GLUSTER} volume info {VOLUME} --xml"))
    return root.find(".//volume")


def test_volume_is_started_and_spans_three_servers():
    volume = volume_info()
    assert volume.findtext("statusStr") == "Started"
    bricks = [b.text for b in volume.iter("brick")]
    assert bricks == [
        f"127.1.1.1:{ROOT}/node1/bricks/nvme1/{VOLUME}",
        f"127.1.1.2:{ROOT}/node2/bricks/nvme1/{VOLUME}",
        f"127.1.1.3:{ROOT}/node3/bricks/nvme2/{VOLUME}",
    ]


def test_quota_limits_the_volume_to_its_capacity():
    out = local.check_output(f"{GLUSTER} volume quota {VOLUME} list / --xml")
    limit = ET.fromstring(out).findtext(".//hard_limit")
    assert int(limit) == 2 * 1024**3


def test_bricks_accept_only_privileged_ports():
    options = {o.findtext("name"): o.findtext("value") for o in volume_info().iter("option")}
    assert options["server.allow-insecure"] == "off"
    assert options["client.bind-insecure"] == "off"


def test_buffer_is_mounted_private_to_the_job_owner():
    mount = local.mount_point(MOUNT)
    assert mount.exists and mount.filesystem == "fuse.glusterfs"
    assert mount.device == f"127.1.1.1:/{VOLUME}"
    root = local.file(MOUNT)
    assert root.user == "bbuser" and root.group == "bbuser" and root.mode == 0o700


def test_owner_can_write_and_files_spread_over_every_brick():
    names = [f"spread{i}" for i in range(24)]
    local.run_test("runuser -u bbuser -- touch" + " %s" * len(names), *[f"{MOUNT}/{n}" for n in names])
    per_brick = []
    for brick in (f"{ROOT}/node1/bricks/nvme1", f"{ROOT}/node2/bricks/nvme1", f"{ROOT}/node3/bricks/nvme2"):
        per_brick.append(len([n for n in os.listdir(f"{brick}/{VOLUME}") if n.startswith("spread")]))
    assert sum(per_brick) == len(names)
    assert all(count > 0 for count in per_brick), per_brick


def test_another_user_cannot_enter_the_buffer():
    assert local.run("runuser -u nobody -- ls %s", MOUNT).rc != 0
