"""gluster_volume, gluster_brick_dir and gluster_peer through real ansible-playbook.

The volumes are real GlusterFS 10.3 volumes on the loopback test bed (``bbctl testbed up``):
three glusterd on 127.1.1.1-3, XFS loop bricks mounted under each node's brick roots. What
the modules did is checked with the gluster CLI and on the bricks themselves, never with
the modules' own answers alone.

Other people's tests share the test bed, so every volume here has a unique ``gv-`` name, and
a finalizer stops and deletes it and removes its brick directories whatever the test did.
The peer tests run two private glusterd of their own on 127.1.9.1-2, so the test bed's pool
is never changed.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from bbctl import host
from bbctl.testbed import storage
from bbctl.testbed.config import TestbedConfig
from tests.integration.module_task import run_tasks

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
TESTBED = Path("/var/lib/bbctl-testbed")
INVENTORY = TESTBED / "inventory.yml"
PRIVATE_ADDRESSES = ("127.1.9.1", "127.1.9.2")

pytestmark = pytest.mark.testbed


def testbed_down_reason():
    """Why the test bed cannot be used, or None when it is up."""
    if os.geteuid() != 0:
        return "needs root"
    bbctl = VENV_BIN / "bbctl"
    if not bbctl.exists():
        return f"{bbctl} is missing: run scripts/setup.sh"
    done = subprocess.run([str(bbctl), "testbed", "status"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0 or not INVENTORY.exists():
        return ("the loopback test bed is not up (`bbctl testbed status` exited "
                f"{done.returncode}); run `.venv/bin/bbctl testbed up --slurm none`")
    return None


def sh(*argv, check=False):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check,
                          env=dict(os.environ, LANG="C", LC_ALL="C"), timeout=180)


# --- the test bed as the inventory describes it --------------------------------------------------

class Node:
    def __init__(self, name, hostvars):
        self.name = name
        self.host = hostvars["bb_gluster_host"]
        self.socket = hostvars["bb_glusterd_socket"]
        self.brick_roots = [brick["path"] for brick in hostvars["bb_bricks"]]

    def gluster(self, *words):
        return sh("gluster", "--mode=script", f"--glusterd-sock={self.socket}", *words)

    def xml(self, *words):
        return ET.fromstring(self.gluster(*words, "--xml").stdout)


class Testbed:
    __test__ = False  # not a pytest test class

    def __init__(self):
        inventory = yaml.safe_load(INVENTORY.read_text())
        hosts = inventory["all"]["children"]["bb_storage"]["hosts"]
        self.nodes = [Node(name, hostvars) for name, hostvars in hosts.items()]
        self.first = self.nodes[0]

    def bricks(self, name, root=0, nodes=None):
        """One brick directory per node (or per node given) in brick root number ``root``."""
        return [f"{n.host}:{n.brick_roots[root]}/{name}" for n in (nodes or self.nodes)]

    def volume_info(self, name):
        """The <volume> element gluster prints for name; None if gluster has no such volume."""
        root = self.first.xml("volume", "info", name)
        return root.find("volInfo/volumes/volume")

    def volume_names(self):
        return [v.findtext("name") for v in self.first.xml("volume", "info").iter("volume")]

    def brick_dirs(self, name):
        """The directories named name that exist in any brick root of any node."""
        return [f"{root}/{name}" for node in self.nodes for root in node.brick_roots
                if os.path.lexists(f"{root}/{name}")]

    def remove_volume(self, name):
        """Stop and delete it (if it exists) and remove its brick directories."""
        if self.volume_info(name) is not None:
            self.first.gluster("volume", "stop", name, "force")
            self.first.gluster("volume", "delete", name)
        for path in self.brick_dirs(name):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def testbed():
    reason = testbed_down_reason()
    if reason:
        pytest.skip(reason)
    return Testbed()


@pytest.fixture
def volume_name(testbed):
    """A factory of unique gv- volume names; each one is removed after the test, whatever."""
    names = []

    def new(tag):
        name = f"gv-{tag}-{uuid.uuid4().hex[:6]}"
        names.append(name)
        return name

    yield new
    for name in names:
        testbed.remove_volume(name)


# --- running modules through ansible-playbook --------------------------------------------------

class Playbooks:
    """Runs one module task per play with ansible-playbook; returns the registered results."""

    def __init__(self, inventory=INVENTORY):
        self.inventory = str(inventory)
        self.dir = Path(tempfile.mkdtemp(prefix="bb-gluster-test-"))
        self.runs = 0

    def run(self, module, args, hosts="bbnode1", check=False, extra_vars=None):
        """The result of the task on each host, {host: result}; one host -> that result."""
        self.runs += 1
        found = run_tasks(self.dir, f"run{self.runs}",
                          [{"name": "module under test", f"hpc.burstbuffer.{module}": args}],
                          hosts=hosts, inventory=self.inventory, play={"vars": extra_vars or {}},
                          flags=["--check", "--diff"] if check else ["--diff"], timeout=600)
        found = {host: results[0] for host, results in found.items()}
        return found if len(found) > 1 or hosts not in found else found[hosts]

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def ansible():
    playbooks = Playbooks()
    try:
        yield playbooks
    finally:
        playbooks.cleanup()


def ok(result):
    assert not result.get("failed"), result.get("msg")
    return result


def g(socket, *words):
    """The argv the modules report for one gluster command."""
    return ["gluster", "--mode=script", f"--glusterd-sock={socket}", *words, "--xml"]


def option_value(testbed, name, key):
    root = testbed.first.xml("volume", "get", name, key)
    return root.findtext("volGetopts/Opt/Value")


def quota_hard_limit(testbed, name):
    root = testbed.first.xml("volume", "quota", name, "list", "/")
    return root.findtext("volQuota/limit/hard_limit")


# --- gluster_volume ------------------------------------------------------------------------------

def test_distributed_volume_started_from_absent_in_one_task_then_unchanged(
        testbed, volume_name, ansible):
    name = volume_name("dist")
    bricks = testbed.bricks(name)
    sock = testbed.first.socket
    args = {"name": name, "state": "started", "bricks": bricks, "glusterd_socket": sock}

    first = ok(ansible.run("gluster_volume", args))

    assert first["changed"] is True
    assert first["commands"] == [
        g(sock, "volume", "create", name, "transport", "tcp", *bricks),
        g(sock, "volume", "start", name)]
    info = testbed.volume_info(name)
    assert info.findtext("statusStr") == "Started"
    assert [b.findtext("name") for b in info.findall("bricks/brick")] == bricks
    assert info.findtext("typeStr") == "Distribute"
    assert first["volume"]["status"] == "started"
    assert [b["online"] for b in first["volume"]["bricks"]] == [True, True, True]
    assert first["diff"]["before"] == {"state": "absent"}
    assert first["diff"]["after"]["state"] == "started"
    volume_id = info.findtext("id")

    second = ok(ansible.run("gluster_volume", args))

    assert (second["changed"], second["commands"]) == (False, [])
    assert testbed.volume_info(name).findtext("id") == volume_id


def test_check_mode_on_a_fresh_name_plans_and_changes_nothing(testbed, volume_name, ansible):
    name = volume_name("check")
    bricks = testbed.bricks(name)
    sock = testbed.first.socket

    result = ok(ansible.run("gluster_volume", {
        "name": name, "state": "started", "bricks": bricks, "glusterd_socket": sock,
        "options": {"performance.readdir-ahead": "on"}, "quota": "1GiB"}, check=True))

    assert result["changed"] is True
    assert result["commands"] == [
        g(sock, "volume", "create", name, "transport", "tcp", *bricks),
        g(sock, "volume", "set", name, "performance.readdir-ahead", "on"),
        g(sock, "volume", "start", name),
        g(sock, "volume", "quota", name, "enable"),
        g(sock, "volume", "quota", name, "limit-usage", "/", "1073741824")]
    assert result["diff"] == {"before": {"state": "absent"}, "after": {
        "state": "started", "bricks": bricks, "options": {"performance.readdir-ahead": "on"},
        "quota": "1GiB"}}
    assert result["volume"] is None
    assert testbed.volume_info(name) is None
    assert testbed.brick_dirs(name) == []


def test_options_are_set_once_and_compared_by_meaning(testbed, volume_name, ansible):
    name = volume_name("opts")
    sock = testbed.first.socket
    base = {"name": name, "state": "started", "bricks": testbed.bricks(name),
            "glusterd_socket": sock}

    first = ok(ansible.run("gluster_volume", dict(base, options={
        "performance.readdir-ahead": "on", "cluster.min-free-disk": "5%"})))
    assert g(sock, "volume", "set", name, "cluster.min-free-disk", "5%") in first["commands"]
    assert option_value(testbed, name, "cluster.min-free-disk") == "5%"
    assert option_value(testbed, name, "performance.readdir-ahead") == "on"

    # the short name, another word for "on", and a default asked for explicitly: no change
    same = ok(ansible.run("gluster_volume", dict(base, options={
        "readdir-ahead": "enable", "cluster.min-free-disk": "5%",
        "performance.write-behind": True})))
    assert (same["changed"], same["commands"]) == (False, [])

    changed = ok(ansible.run("gluster_volume", dict(base, options={
        "readdir-ahead": "off", "cluster.min-free-disk": "5%"})))
    assert changed["commands"] == [
        g(sock, "volume", "set", name, "performance.readdir-ahead", "off")]
    assert option_value(testbed, name, "performance.readdir-ahead") == "off"
    assert changed["diff"]["before"]["options"] == {
        "cluster.min-free-disk": "5%", "performance.readdir-ahead": "on"}
    assert changed["diff"]["after"]["options"] == {
        "cluster.min-free-disk": "5%", "performance.readdir-ahead": "off"}


def test_quota_is_enabled_limited_and_then_left_alone(testbed, volume_name, ansible):
    name = volume_name("quota")
    sock = testbed.first.socket
    base = {"name": name, "state": "started", "bricks": testbed.bricks(name),
            "glusterd_socket": sock}

    first = ok(ansible.run("gluster_volume", dict(base, quota="1GiB")))
    assert first["commands"][-2:] == [
        g(sock, "volume", "quota", name, "enable"),
        g(sock, "volume", "quota", name, "limit-usage", "/", "1073741824")]
    assert quota_hard_limit(testbed, name) == "1073741824"

    again = ok(ansible.run("gluster_volume", dict(base, quota="1024MiB")))
    assert (again["changed"], again["commands"]) == (False, [])

    larger = ok(ansible.run("gluster_volume", dict(base, quota="2G")))
    assert larger["commands"] == [
        g(sock, "volume", "quota", name, "limit-usage", "/", "2147483648")]
    assert quota_hard_limit(testbed, name) == "2147483648"
    assert larger["diff"]["before"]["quota"] == "1GiB"
    assert larger["diff"]["after"]["quota"] == "2GiB"

    stopped = ok(ansible.run("gluster_volume", dict(base, state="stopped", quota="2G")))
    assert stopped["commands"] == [g(sock, "volume", "stop", name)]
    unchecked = ok(ansible.run("gluster_volume", dict(base, state="stopped", quota="2G")))
    assert unchecked["changed"] is False
    assert any("reads and sets quota only on a started volume" in warning
               for warning in unchecked.get("warnings", []))


@pytest.fixture
def mount_point():
    """An empty directory to mount a volume on; unmounted and removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bb-gluster-mnt-"))
    yield path
    if sh("mountpoint", "-q", path).returncode == 0 and sh("umount", path).returncode != 0:
        sh("umount", "-l", path)
    path.rmdir()


PRIVILEGED_PORTS = {"server.allow-insecure": "off", "client.bind-insecure": "off"}


@pytest.mark.parametrize("ports", ["any", "privileged"])
def test_the_quota_stops_writes_through_a_fuse_mount(testbed, volume_name, ansible, mount_point,
                                                     ports):
    name = volume_name("full")
    # enforce at once instead of after gluster's default 5 s (hard) / 60 s (soft) lag
    options = {"features.hard-timeout": 0, "features.soft-timeout": 0}
    options.update(PRIVILEGED_PORTS if ports == "privileged" else {})
    asked = {"name": name, "state": "started", "bricks": testbed.bricks(name),
             "glusterd_socket": testbed.first.socket, "quota": "10MiB", "options": options}
    created = ok(ansible.run("gluster_volume", asked))
    if ports == "privileged":
        # server.allow-insecure turns off last, once quota's crawler has accounted every brick (closed
        # first, the crawler is refused: quota reads N/A and 30 MiB go into 10 MiB).
        assert created["commands"][-1] == g(testbed.first.socket, "volume", "set", name,
                                            "server.allow-insecure", "off")
        assert all("trusted.glusterfs.quota.size.1" in xattrs(path)
                   for path in testbed.brick_dirs(name))
        assert ok(ansible.run("gluster_volume", asked))["changed"] is False
    assert quota_hard_limit(testbed, name) == str(10 * 1024**2)
    sh("mount", "-t", "glusterfs", f"{testbed.first.host}:/{name}", mount_point, check=True)

    written = sh("dd", "if=/dev/zero", f"of={mount_point}/big", "bs=1M", "count=30")

    assert written.returncode != 0
    assert "Disk quota exceeded" in written.stderr
    # Gluster's quota is approximate: writes already in flight (write-behind, the brick's io-threads)
    # land before the accounting catches up. Measured here 0.6-1.1 MiB past the limit on a quiet
    # machine, 2.1 MiB under CI load; the point is that it stops far short of the 30 MiB asked.
    assert os.path.getsize(mount_point / "big") <= (10 + 4) * 1024**2
    assert os.statvfs(mount_point).f_blocks * os.statvfs(mount_point).f_frsize == 10 * 1024**2


# Run as an ordinary user with no capabilities: a gfapi client that tells the bricks it is root and
# plants a file in a directory of the volume. argv: collections dir, host, volume, directory.
CLAIM_ROOT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gfapi import GfapiError, Volume
try:
    volume = Volume(sys.argv[2], sys.argv[3], timeout=5)
    volume.use_identity(0, 0, [])
    now = time.time_ns()
    volume.create_file(volume.directory(sys.argv[4]), "planted", b"x", 0o644, now, now)
except (GfapiError, OSError) as error:
    sys.exit(f"refused: {error}")
"""


@pytest.mark.parametrize("ports", ["any", "privileged"])
def test_only_allow_insecure_off_stops_a_user_who_claims_to_be_root(testbed, volume_name, ansible,
                                                               mount_point, ports):
    name = volume_name("insecure")
    ok(ansible.run("gluster_volume", {
        "name": name, "state": "started", "bricks": testbed.bricks(name),
        "glusterd_socket": testbed.first.socket,
        "options": PRIVILEGED_PORTS if ports == "privileged" else {}}))
    sh("mount", "-t", "glusterfs", f"{testbed.first.host}:/{name}", mount_point, check=True)
    (mount_point / "root-only").mkdir(mode=0o700)

    claimed = sh("setpriv", "--reuid=bbuser", "--regid=bbuser", "--clear-groups",
                 VENV_BIN / "python3", "-c", CLAIM_ROOT, REPO / "collections",
                 testbed.first.host, name, "/root-only")

    planted = mount_point / "root-only" / "planted"
    if ports == "any":  # GlusterFS's default: the brick believes the uid the client sends
        assert claimed.returncode == 0, claimed.stderr
        assert planted.stat().st_uid == 0
    else:
        assert "refused: glfs_init" in claimed.stderr
        assert not planted.exists()


def test_stopped_then_absent_straight_from_started(testbed, volume_name, ansible):
    name = volume_name("life")
    sock = testbed.first.socket
    base = {"name": name, "bricks": testbed.bricks(name), "glusterd_socket": sock}
    ok(ansible.run("gluster_volume", dict(base, state="started")))

    stopped = ok(ansible.run("gluster_volume", dict(base, state="stopped")))
    assert stopped["commands"] == [g(sock, "volume", "stop", name)]
    assert testbed.volume_info(name).findtext("statusStr") == "Stopped"
    assert ok(ansible.run("gluster_volume", dict(base, state="stopped")))["changed"] is False

    ok(ansible.run("gluster_volume", dict(base, state="started")))
    assert testbed.volume_info(name).findtext("statusStr") == "Started"

    absent = ok(ansible.run("gluster_volume", {"name": name, "state": "absent",
                                               "glusterd_socket": sock}))
    assert absent["commands"] == [g(sock, "volume", "stop", name),
                                  g(sock, "volume", "delete", name)]
    assert absent["volume"] is None
    assert testbed.volume_info(name) is None
    again = ok(ansible.run("gluster_volume", {"name": name, "state": "absent",
                                              "glusterd_socket": sock}))
    assert (again["changed"], again["commands"]) == (False, [])


def test_an_aux_mount_that_no_longer_answers_is_aborted_before_anything_else(testbed, volume_name, ansible):
    """glusterd unmounts a quota command's aux mount itself, holding the trusted pool's lock, and
    its umount blocked for good on a mount whose client never reached a brick: every gluster
    transaction then waited (12 minutes in a load run, 2026-12-07). A stopped client is such a
    mount; the stat left stuck on it stands for glusterd's umount."""
    name = volume_name("aux")
    sock = testbed.first.socket
    ok(ansible.run("gluster_volume", {"name": name, "state": "started", "bricks": testbed.bricks(name),
                                      "glusterd_socket": sock}))
    aux = Path("/run/gluster") / f"{name}_quota_list"
    aux.mkdir()
    subprocess.run(["mount", "-t", "glusterfs", f"127.1.1.1:/{name}", str(aux)], check=True, timeout=60)
    (pid,) = storage.fuse_clients(aux)
    os.kill(pid, signal.SIGSTOP)
    try:
        stuck = subprocess.Popen(["stat", str(aux)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        absent = ok(ansible.run("gluster_volume", {"name": name, "state": "absent", "glusterd_socket": sock}))
        assert absent["aux_mounts_aborted"] == [str(aux)], (absent["commands"], absent.get("warnings"))
        assert any("aborted the FUSE connection" in warning for warning in absent.get("warnings", []))
        assert stuck.wait(timeout=10) != 0  # let go, with an error
        assert testbed.volume_info(name) is None
        assert str(aux) not in [str(m.target) for m in host.mounts()] and not aux.exists()
    finally:
        os.kill(pid, signal.SIGCONT)
        if host.mount_at(aux) is not None:
            host.umount(aux)
        if aux.exists():
            aux.rmdir()


def xattrs(path):
    return {key: os.getxattr(path, key) for key in os.listxattr(path)}


def test_after_absent_and_brick_dir_cleanup_the_same_paths_make_a_new_volume(
        testbed, volume_name, ansible):
    name, reuse = volume_name("old"), volume_name("new")
    sock = testbed.first.socket
    roots = [node.brick_roots[1] for node in testbed.nodes]
    root_xattrs = {root: xattrs(root) for root in roots}
    bricks = testbed.bricks(name, root=1)
    ok(ansible.run("gluster_volume", {"name": name, "state": "started", "bricks": bricks,
                                      "glusterd_socket": sock}))
    brick_dir_args = {"path": "{{ bb_bricks[1].path }}/" + name,
                      "glusterd_socket": "{{ bb_glusterd_socket }}"}

    refused = ansible.run("gluster_brick_dir", brick_dir_args, hosts="bbnode1")
    assert refused["failed"] is True
    assert f"belongs to volume {name} (started)" in refused["msg"]

    ok(ansible.run("gluster_volume", {"name": name, "state": "absent", "glusterd_socket": sock}))
    left = f"{roots[0]}/{name}"
    assert os.getxattr(left, "trusted.glusterfs.volume-id")  # what blocks reuse ...
    assert os.path.isdir(f"{left}/.glusterfs")
    blocked = ansible.run("gluster_volume", {"name": reuse, "state": "started", "bricks": bricks,
                                             "glusterd_socket": sock})
    assert blocked["failed"] is True  # ... and the module says what to do about it
    assert (f"brick {bricks[0]} holds the brick directory of a deleted volume"
            in blocked["msg"])
    assert "hpc.burstbuffer.gluster_brick_dir" in blocked["msg"]

    checked = ansible.run("gluster_brick_dir", brick_dir_args, hosts="bb_storage", check=True)
    assert all(ok(result)["changed"] for result in checked.values())
    assert len(testbed.brick_dirs(name)) == 3

    cleaned = ansible.run("gluster_brick_dir", brick_dir_args, hosts="bb_storage")
    assert sorted(cleaned) == [node.name for node in testbed.nodes]
    assert all(ok(result)["changed"] for result in cleaned.values())
    assert testbed.brick_dirs(name) == []
    assert {root: xattrs(root) for root in roots} == root_xattrs
    again = ansible.run("gluster_brick_dir", brick_dir_args, hosts="bb_storage")
    assert not any(ok(result)["changed"] for result in again.values())

    new = ok(ansible.run("gluster_volume", {"name": reuse, "state": "started", "bricks": bricks,
                                            "glusterd_socket": sock}))
    assert new["volume"]["status"] == "started"
    assert [b["name"] for b in new["volume"]["bricks"]] == bricks


def test_teardown_in_parallel_the_others_wait_while_the_first_server_deletes(
        testbed, volume_name, ansible):
    """As gluster_buffer tears down: bbnode1 deletes the volume and its own brick directory in
    one task while bbnode2 and bbnode3 wait for the volume to go, then remove theirs."""
    name = volume_name("par")
    sock = testbed.first.socket
    ok(ansible.run("gluster_volume", {"name": name, "state": "started", "quota": "1GiB",
                                      "bricks": testbed.bricks(name, root=1),
                                      "glusterd_socket": sock}))
    (Path(testbed.nodes[1].brick_roots[1]) / name / "job-output").write_text("results")
    others = {}

    def wait_on_the_others():
        others.update(ansible.run("gluster_brick_dir", {
            "path": ["{{ bb_bricks[1].path }}/" + name], "wait_timeout": 120,
            "glusterd_socket": "{{ bb_glusterd_socket }}"}, hosts="bbnode2:bbnode3"))

    waiting = threading.Thread(target=wait_on_the_others)
    waiting.start()
    time.sleep(3)  # the others' module runs (ansible-playbook start-up is under a second)
    assert testbed.brick_dirs(name)[1:] == [f"{n.brick_roots[1]}/{name}" for n in testbed.nodes[1:]]
    first = ok(ansible.run("gluster_volume", {
        "name": name, "state": "absent", "glusterd_socket": sock,
        "remove_brick_dirs": [f"{testbed.first.brick_roots[1]}/{name}"]}))
    waiting.join(timeout=180)

    assert first["changed"] and first["volume"] is None
    assert [d["path"] for d in first["brick_dirs_removed"]] == [f"{testbed.first.brick_roots[1]}/{name}"]
    assert sorted(others) == ["bbnode2", "bbnode3"]
    for node in testbed.nodes[1:]:
        result = ok(others[node.name])
        assert result["changed"] is True
        assert [d["path"] for d in result["removed"]] == [f"{node.brick_roots[1]}/{name}"]
        assert result["waited"] >= 1  # it was there before the deletion began
    assert testbed.volume_info(name) is None
    assert testbed.brick_dirs(name) == []


def test_a_wait_that_runs_out_removes_nothing_and_says_which_volume(testbed, volume_name, ansible):
    name = volume_name("stay")
    ok(ansible.run("gluster_volume", {"name": name, "state": "started",
                                      "bricks": testbed.bricks(name, root=1),
                                      "glusterd_socket": testbed.first.socket}))
    refused = ansible.run("gluster_brick_dir", {
        "path": "{{ bb_bricks[1].path }}/" + name, "wait_timeout": 1,
        "glusterd_socket": "{{ bb_glusterd_socket }}"}, hosts="bbnode2")
    assert refused["failed"] is True
    assert f"belongs to volume {name} (started) after waiting 1 s" in refused["msg"]
    assert len(testbed.brick_dirs(name)) == 3
    refused = ansible.run("gluster_volume", {
        "name": volume_name("other"), "state": "absent", "glusterd_socket": testbed.first.socket,
        "remove_brick_dirs": [f"{testbed.first.brick_roots[1]}/{name}"]})
    assert refused["failed"] is True
    assert f"remove_brick_dirs: {testbed.first.brick_roots[1]}/{name} belongs to volume {name}" in refused["msg"]
    assert len(testbed.brick_dirs(name)) == 3


def test_a_failure_after_create_leaves_no_volume_and_no_brick_dirs(testbed, volume_name, ansible):
    name = volume_name("undo")
    sock = testbed.first.socket
    bricks = testbed.bricks(name)

    result = ansible.run("gluster_volume", {
        "name": name, "state": "started", "bricks": bricks, "glusterd_socket": sock,
        "options": {"performance.no-such-option": "on"}})

    assert result["failed"] is True
    assert "option : performance.no-such-option does not exist" in result["msg"]
    assert f"volume {name} was created by this task and has been deleted again" in result["msg"]
    assert result["commands"] == [g(sock, "volume", "create", name, "transport", "tcp", *bricks)]
    assert g(sock, "volume", "delete", name) in result["rolled_back"]
    assert testbed.volume_info(name) is None
    assert testbed.brick_dirs(name) == []


@pytest.fixture
def root_fs_dir():
    """A directory on the root filesystem (not a brick filesystem), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bb-gluster-rootfs-", dir="/var/tmp"))
    if os.stat(path).st_dev != os.stat("/").st_dev:
        shutil.rmtree(path)
        pytest.skip("/var/tmp is not on the root filesystem here")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def bad_requests(testbed, name, root_fs_dir):
    """(what is wrong, module arguments, words the failure message must contain)."""
    n1, n2 = testbed.nodes[0], testbed.nodes[1]
    good = testbed.bricks(name)
    return [
        ("parent missing", {"bricks": [good[0], f"{n2.host}:{n2.brick_roots[0]}/no-dir/{name}"]},
         [f"its parent directory {n2.brick_roots[0]}/no-dir does not exist on {n2.host}"]),
        ("root filesystem", {"bricks": [good[0], f"{n1.host}:{root_fs_dir}/{name}"]},
         ["is on the root filesystem", "force: true"]),
        ("brick root itself", {"bricks": [f"{n1.host}:{n1.brick_roots[0]}"]},
         ["is a mount point itself", "force: true"]),
        ("same brick twice", {"bricks": [good[0], good[1], good[0]]},
         [f"brick {good[0]} is given twice"]),
        ("dot in the name", {"name": name.replace("-", ".", 1), "bricks": good},
         ["use only letters, digits, '-' and '_'"]),
        ("leading hyphen", {"name": "-" + name, "bricks": good}, ["do not start with '-'"]),
        ("reserved name", {"name": "ALL", "bricks": good},
         ["'ALL' is reserved by gluster and cannot name a volume"]),
        ("too long for volfiles", {"name": name + "x" * 200, "bricks": good},
         ["too long for gluster's volume files"]),
        ("relative path", {"bricks": [f"{n1.host}:relative/{name}"]},
         ["write it as host:/absolute/path"]),
        ("dot-dot", {"bricks": [f"{n1.host}:{n1.brick_roots[0]}/../{name}"]},
         ["'..' is not allowed"]),
    ]


BAD_CASES = ["parent missing", "root filesystem", "brick root itself", "same brick twice",
             "dot in the name", "leading hyphen", "reserved name", "too long for volfiles",
             "relative path", "dot-dot"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_clearly_and_makes_nothing(testbed, volume_name, ansible, root_fs_dir,
                                                   case):
    name = volume_name("bad")
    cases = {why: (args, words) for why, args, words in bad_requests(testbed, name, root_fs_dir)}
    args, words = cases[case]
    volume = args.get("name", name)

    result = ansible.run("gluster_volume", dict(
        {"name": name, "state": "started", "glusterd_socket": testbed.first.socket}, **args))

    assert result["failed"] is True
    for word in words:
        assert word in result["msg"]
    assert result["commands"] == []
    assert volume not in testbed.volume_names()
    assert testbed.brick_dirs(name) == []
    assert not os.path.exists(f"{root_fs_dir}/{name}")


def test_a_name_gluster_rejects_is_never_asked_for(testbed, ansible):
    """The reserved name check works although ALL is case-folded: gluster would create it."""
    result = ansible.run("gluster_volume", {"name": "All", "state": "started",
                                            "bricks": testbed.bricks("gv-never"),
                                            "glusterd_socket": testbed.first.socket})
    assert result["failed"] is True
    assert "All" not in testbed.volume_names()
    assert testbed.brick_dirs("gv-never") == []


# --- gluster_peer ---------------------------------------------------------------------------------

def test_peers_of_the_test_bed_are_present_and_nothing_changes(testbed, ansible):
    result = ok(ansible.run("gluster_peer", {
        "nodes": [node.host for node in testbed.nodes], "glusterd_socket": testbed.first.socket}))
    assert (result["changed"], result["commands"]) == (False, [])
    assert sorted(p["hostname"] for p in result["peers"]) == [n.host for n in testbed.nodes[1:]]
    assert all(p["connected"] for p in result["peers"])


class PrivatePool:
    """Two glusterd of our own on 127.1.9.1-2: a pool the peer tests may change freely."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="bb-gluster-peers-"))
        self.sockets = []
        self.pids = []

    def start(self):
        for address in PRIVATE_ADDRESSES:
            node = self.dir / address
            for sub in ("glusterd", "run", "log"):
                (node / sub).mkdir(parents=True)
            sh("glusterd",
               "--xlator-option", f"management.working-directory={node}/glusterd",
               "--xlator-option", f"management.transport.socket.bind-address={address}",
               "--xlator-option", f"management.run-directory={node}/run",
               "--xlator-option", f"management.glusterd-sockfile={node}/run/glusterd.socket",
               "-p", f"{node}/glusterd.pid", "-l", f"{node}/log/glusterd.log", check=True)
            self.pids.append(node / "glusterd.pid")
            self.sockets.append(f"{node}/run/glusterd.socket")
        for socket in self.sockets:
            self._wait(socket)

    def _wait(self, socket, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sh("gluster", "--mode=script", f"--glusterd-sock={socket}", "pool", "list"
                  ).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"private glusterd at {socket} did not answer")

    def pool(self, index=0):
        out = sh("gluster", "--mode=script", f"--glusterd-sock={self.sockets[index]}", "pool",
                 "list", "--xml").stdout
        return {p.findtext("hostname"): p.findtext("connected") == "1"
                for p in ET.fromstring(out).iter("peer") if p.findtext("hostname") != "localhost"}

    def stop(self):
        for pid_file in self.pids:
            if pid_file.exists():
                pid = int(pid_file.read_text().strip())
                sh("kill", pid)
                deadline = time.monotonic() + 10
                while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                    time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pool(testbed):
    if shutil.which("glusterd") is None:
        pytest.skip("glusterd is not installed")
    busy = [a for a in PRIVATE_ADDRESSES if sh("ss", "-Hltn", f"src {a}:24007").stdout.strip()]
    if busy:
        pytest.skip(f"something already listens on {busy[0]}:24007")
    pool = PrivatePool()
    try:
        pool.start()
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def local_ansible(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"peerhost": {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(VENV_BIN / "python")}}}}))
    playbooks = Playbooks(inventory)
    try:
        yield playbooks
    finally:
        playbooks.cleanup()


def test_peer_probe_and_detach_on_a_private_pool(private_pool, local_ansible):
    sock = private_pool.sockets[0]
    args = {"nodes": list(PRIVATE_ADDRESSES), "glusterd_socket": sock, "timeout": 30}
    run = local_ansible.run

    planned = ok(run("gluster_peer", args, hosts="peerhost", check=True))
    assert planned["commands"] == [g(sock, "peer", "probe", "127.1.9.2")]
    assert planned["diff"] == {"before": {"peers": []}, "after": {"peers": ["127.1.9.2"]}}
    assert private_pool.pool() == {}

    probed = ok(run("gluster_peer", args, hosts="peerhost"))
    assert probed["commands"] == [g(sock, "peer", "probe", "127.1.9.2")]
    assert private_pool.pool() == {"127.1.9.2": True}
    assert [(p["hostname"], p["state_str"]) for p in probed["peers"]] == [
        ("127.1.9.2", "Peer in Cluster")]
    assert ok(run("gluster_peer", args, hosts="peerhost"))["changed"] is False

    selfish = run("gluster_peer", dict(args, state="absent"), hosts="peerhost")
    assert selfish["failed"] is True
    assert "127.1.9.1 is the node this task talks to" in selfish["msg"]

    detach_args = dict(args, nodes=["127.1.9.2"], state="absent")
    planned = ok(run("gluster_peer", detach_args, hosts="peerhost", check=True))
    assert planned["commands"] == [g(sock, "peer", "detach", "127.1.9.2")]
    assert private_pool.pool() == {"127.1.9.2": True}
    detached = ok(run("gluster_peer", detach_args, hosts="peerhost"))
    assert detached["commands"] == [g(sock, "peer", "detach", "127.1.9.2")]
    assert private_pool.pool() == {}
    assert ok(run("gluster_peer", detach_args, hosts="peerhost"))["changed"] is False


def test_probing_a_node_without_glusterd_fails_with_glusters_reason(private_pool, local_ansible):
    result = local_ansible.run("gluster_peer", {
        "nodes": ["127.1.9.3"], "glusterd_socket": private_pool.sockets[0]}, hosts="peerhost")
    assert result["failed"] is True
    assert result["msg"] == ("gluster peer probe 127.1.9.3: Probe returned with Transport "
                             "endpoint is not connected")
    assert private_pool.pool() == {}


# --- the privileged-port gate and the quota across a buffer's life ---------------------------------
# A buffer's volume takes clients on privileged ports only and enforces its capacity with quota,
# enabled before the gate closes. A distributed volume made that way goes through what happens
# to buffers later: an operator changes its capacity after the gate closed; a storage server's
# glusterd and brick process stop and start again; a brick is replaced. After each, the quota is
# read back, it stops a FUSE writer, and an ordinary user's libgfapi client claiming root is refused.
# (Distributed: a dispersed volume behind the gate can answer EIO at its quota, the defect docs/
# RELIABILITY.md describes; the gate itself is the subject here.)

MIB = 1024**2
TIMEOUTS = {"features.hard-timeout": 0, "features.soft-timeout": 0}  # enforce at once (see the quota test)


def holds(testbed, name, mount_point, limit):
    """The quota reads back as limit, stops a writer near it, and a user claiming root is refused."""
    assert quota_hard_limit(testbed, name) == str(limit)
    sh("mount", "-t", "glusterfs", f"{testbed.first.host}:/{name}", mount_point, check=True)
    try:
        (mount_point / "root-only").mkdir(mode=0o700, exist_ok=True)
        written = sh("dd", "if=/dev/zero", f"of={mount_point}/big", "bs=1M", f"count={limit // MIB + 40}")
        assert written.returncode != 0 and "Disk quota exceeded" in written.stderr, written.stderr
        # Gluster's quota is approximate (writes in flight land): far short of the 40 MiB over asked.
        assert os.path.getsize(mount_point / "big") <= limit + 16 * MIB
        claimed = sh("setpriv", "--reuid=bbuser", "--regid=bbuser", "--clear-groups", VENV_BIN / "python3",
                     "-c", CLAIM_ROOT, REPO / "collections", testbed.first.host, name, "/root-only")
        assert "refused: glfs_init" in claimed.stderr, claimed.stderr
        assert not (mount_point / "root-only" / "planted").exists()
        os.unlink(mount_point / "big")
    finally:
        sh("umount", mount_point)
    time.sleep(2)  # the quota's accounting of the deletion, before the next check fills again


def brick_pid(testbed, name, host):
    root = testbed.first.xml("volume", "status", name)
    for node in root.iter("node"):
        if node.findtext("hostname") == host and node.findtext("path", "").startswith("/"):
            return int(node.findtext("pid"))
    raise AssertionError(f"no brick process of {name} on {host}")


def quotads_not_connected(testbed, name):
    """(quotad pid, brick) pairs with no TCP connection yet. A brick's quota asks quotad for the
    volume's usage, which quotad sums over the bricks it reaches: until it reaches a restarted
    brick, that brick's data is left out of the sum and its writes are not limited."""
    root = testbed.first.xml("volume", "status", name)
    bricks = {f"{n.findtext('hostname')}:{n.findtext('port')}" for n in root.iter("node")
              if n.findtext("path", "").startswith("/")}
    pids = [host.read_pid(path) for path in TESTBED.glob("node*/run/quotad/quotad.pid")]
    sockets = sh("ss", "-tnpH", "state", "established", check=True).stdout.splitlines()
    return [(pid, brick) for pid in pids for brick in bricks
            if not any(f" {brick} " in f" {line} " and f"pid={pid}," in line for line in sockets)]


def wait_quotads_connected(testbed, name, timeout=30):
    """Seconds until every quotad reaches every brick of name; fails after timeout."""
    started = time.monotonic()
    while missing := quotads_not_connected(testbed, name):
        assert time.monotonic() - started < timeout, f"quotad never reached: {missing}"
        time.sleep(0.1)
    return time.monotonic() - started


def wait_bricks_online(testbed, name, count, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        root = testbed.first.xml("volume", "status", name)
        online = [n for n in root.iter("node") if n.findtext("path", "").startswith("/")
                  and n.findtext("status") == "1"]
        if len(online) == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name}: not all {count} bricks online within {timeout} s")


def test_the_gate_and_the_quota_hold_through_resize_and_brick_replacement(testbed, volume_name, ansible,
                                                                        mount_point):
    name = volume_name("gate")
    asked = {"name": name, "state": "started", "bricks": testbed.bricks(name, root=2),
             "glusterd_socket": testbed.first.socket, "quota": "100MiB",
             "options": {**PRIVILEGED_PORTS, **TIMEOUTS}}
    ok(ansible.run("gluster_volume", asked))
    holds(testbed, name, mount_point, 100 * MIB)

    # An operator grows the buffer after the gate closed: the module changes the limit only.
    resized = ok(ansible.run("gluster_volume", {**asked, "quota": "160MiB"}))
    assert resized["changed"] is True
    assert ok(ansible.run("gluster_volume", {**asked, "quota": "160MiB"}))["changed"] is False
    holds(testbed, name, mount_point, 160 * MIB)

    # A brick replaced (its disk died; on a distributed volume its files go with it).
    old = testbed.bricks(name, root=2)[2]
    new = f"{old}-new"
    # replace-brick is refused on distribute-only volumes: add the new brick, remove the old one.
    # The new brick's root never gets the quota's limit (measured: 200 MiB then went into 160 MiB,
    # and the root held no trusted.glusterfs.quota.limit-set); setting the limit again writes it
    # to every brick. That is the documented way (docs/OPERATOR_GUIDE.md); the gate stays closed.
    for words in (("add-brick", name, new, "force"), ("remove-brick", name, old, "force")):
        replaced = testbed.first.gluster("volume", *words)
        assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    wait_bricks_online(testbed, name, 3)
    new_dir = new.split(":", 1)[1]
    assert "trusted.glusterfs.quota.limit-set.1" not in xattrs(new_dir)
    again = testbed.first.gluster("volume", "quota", name, "limit-usage", "/", str(160 * MIB))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "trusted.glusterfs.quota.limit-set.1" in xattrs(new_dir)
    holds(testbed, name, mount_point, 160 * MIB)
    assert option_is(testbed, name, "server.allow-insecure", "off")


def option_is(testbed, name, key, value):
    volume = testbed.volume_info(name)
    return any(o.findtext("name") == key and o.findtext("value") == value for o in volume.iter("option"))


def test_after_a_storage_servers_restart_the_gate_and_the_quota_hold_once_quotad_reconnects(
        testbed, volume_name, ansible, mount_point):
    """The quota is enforced again once every quotad has reached the restarted brick (about 2 s here;
    written before that, 200 MiB went into 160 MiB in 5 of 6 runs: docs/RELIABILITY.md)."""
    name = volume_name("restart")
    asked = {"name": name, "state": "started", "bricks": testbed.bricks(name, root=2),
             "glusterd_socket": testbed.first.socket, "quota": "160MiB",
             "options": {**PRIVILEGED_PORTS, **TIMEOUTS}}
    ok(ansible.run("gluster_volume", asked))
    holds(testbed, name, mount_point, 160 * MIB)
    # Storage server 2 goes down and comes back: its glusterd and its brick process.
    node = TestbedConfig.load(TESTBED).nodes[1]
    os.kill(brick_pid(testbed, name, node.address), signal.SIGTERM)
    pid = int(node.pid_file.read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while storage.glusterd_running(node) and time.monotonic() < deadline:
        time.sleep(0.2)
    storage.start_glusterd(node)
    testbed.first.gluster("volume", "start", name, "force")  # what an operator does for a dead brick
    wait_bricks_online(testbed, name, 3)
    wait_quotads_connected(testbed, name)
    holds(testbed, name, mount_point, 160 * MIB)

