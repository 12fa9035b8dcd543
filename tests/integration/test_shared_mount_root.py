"""shared_mount_root through real ansible-playbook: mount propagation into a namespace made earlier.

No test bed: a temporary directory in /var/tmp is the mount root, a tmpfs stands in for a
buffer's GlusterFS mount, and ``unshare -m --propagation slave sleep`` for a container
started before the job. A finalizer stops the sleeper (by its pid), unmounts what the test
mounted (the tmpfs, the root's self bind) and removes the directory, whatever happened.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.module_task import ModuleTask

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"),
    reason="needs root, unshare and nsenter")


def sh(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check,
                          env=dict(os.environ, LANG="C", LC_ALL="C"))


def targets(pid="self"):
    """Mount targets in the mount namespace of pid (unescaped enough for /var/tmp paths)."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines]


def mount_of(path, pid="self"):
    """The optional fields of the mount at path, or None."""
    for line in reversed(Path(f"/proc/{pid}/mountinfo").read_text().splitlines()):
        fields = line.split()
        if fields[4] == path:
            return fields[6:fields.index("-", 6)]
    return None


def parent_is_shared(path):
    """Whether the mount path lies on propagates already (systemd makes / shared)."""
    entries = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    best = max((fields for fields in entries if path.startswith(fields[4].rstrip("/") + "/")),
               key=lambda fields: len(fields[4]))
    return any(field.startswith("shared:") for field in best[6:best.index("-", 6)])


class Node:
    """A mount root in a temporary directory, the namespaces and mounts a test makes there."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="bb-shared-root-", dir="/var/tmp"))
        self.root = str(self.dir / "mnt")
        self.buffer = self.root + "/bb-job42"
        self.task = ModuleTask("hpc.burstbuffer.shared_mount_root", self.dir)
        self.sleepers = []
        self.mounted = []

    def run(self, check=False, **args):
        return self.task(check, **{"path": self.root, **args})

    def container(self):
        """A process in a new mount namespace with slave propagation, as a container runtime makes."""
        sleeper = subprocess.Popen(["unshare", "-m", "--propagation", "slave", "sleep", "300"])
        self.sleepers.append(sleeper)
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{sleeper.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            assert time.monotonic() < deadline, "unshare did not make a namespace"
            time.sleep(0.05)
        return sleeper.pid

    def mount_buffer(self):
        os.makedirs(self.buffer, exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", "size=1m", "bb-shared-test", self.buffer)
        self.mounted.append(self.buffer)

    def unmount_buffer(self):
        sh("umount", self.buffer)
        self.mounted.remove(self.buffer)

    def cleanup(self):
        for sleeper in self.sleepers:
            sleeper.kill()
            sleeper.wait()
        for target in (*reversed(self.mounted), self.root):
            while target in targets():
                if sh("umount", target, check=False).returncode != 0:
                    sh("umount", "-l", target, check=False)
                    break
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def node():
    made = Node()
    try:
        yield made
    finally:
        made.cleanup()


def test_root_is_made_a_shared_mount_point_once(node):
    first = node.run()
    assert not first.get("failed"), first.get("msg")
    assert first["changed"] is True
    assert first["commands"][-2:] == [["mount", "--bind", node.root, node.root],
                                      ["mount", "--make-shared", node.root]]
    assert any(field.startswith("shared:") for field in mount_of(node.root))

    second = node.run()
    assert (second["changed"], second["commands"]) == (False, [])
    assert targets().count(node.root) == 1


def test_check_mode_changes_nothing(node):
    os.makedirs(node.root)
    result = node.run(check=True)
    assert result["changed"] is True and result["diff"]["after"] == {"mount_point": True, "shared": True}
    assert mount_of(node.root) is None


def test_a_namespace_made_before_sees_buffers_come_and_go(node):
    assert not node.run().get("failed")
    pid = node.container()
    assert node.buffer not in targets(pid)

    node.mount_buffer()
    assert node.buffer in targets(pid)
    seen = sh("nsenter", f"--target={pid}", "--mount", "findmnt", "--noheadings", "--output", "FSTYPE",
              node.buffer)
    assert seen.stdout.split() == ["tmpfs"]

    node.unmount_buffer()
    assert node.buffer not in targets(pid)


def test_without_it_a_private_root_hides_later_buffers(node):
    """The control: on a host whose / is private, a namespace does not see later mounts."""
    os.makedirs(node.root)
    if parent_is_shared(node.root):
        pytest.skip("the filesystem under the mount root propagates already (systemd's shared /)")
    pid = node.container()
    node.mount_buffer()
    assert node.buffer in targets()
    assert node.buffer not in targets(pid)
