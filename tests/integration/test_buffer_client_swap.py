"""The buffer_client role's new steps through the real mount and unmount playbooks, no test bed.

Mounting needs GlusterFS, so buffer_mount.yml runs in check mode: the shared mount root, the
mount and the swap area are each planned, in that order, and nothing changes. Unmounting
runs for real on a directory standing in for a mounted buffer, holding a swap area made by
buffer_swap: the role turns it off and removes it before the (no-op) unmount and removes the
then empty mount point. Clean-up turns off and detaches, by name, every loop device backed
by a file under the test's directory, and removes the directory (tests/integration/swap_scratch.py).
"""

import json
import os
import shutil
import subprocess

import pytest
import yaml

from tests.integration.module_task import LOCALHOST, REPO, VENV_BIN, ModuleTask
from tests.integration.swap_scratch import loops_under, scratch_dir, sh

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("losetup", "mkswap", "swapon")),
    reason="needs root and util-linux (losetup, mkswap, swapon)")


def task_results(stdout):
    """{task name: the result ansible-playbook -v printed for it} (one host)."""
    results, decoder = {}, json.JSONDecoder()
    for block in stdout.split("TASK [")[1:]:
        name = block.split("]", 1)[0].split(" : ", 1)[-1]
        if " => " in block:
            results[name], _ = decoder.raw_decode(block, block.index(" => ") + len(" => "))
    return results


@pytest.fixture
def workdir():
    with scratch_dir("bb-client-swap-") as path:
        yield path


def playbook(workdir, name, buffer, *flags):
    inventory = workdir / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        **LOCALHOST["vars"], "ansible_connection": "local", "bb_gluster_host": "127.0.0.1"}}}}))
    done = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-v", "-i", str(inventory), "-e",
                           json.dumps({"bb_buffer": buffer, "bb_clients": "localhost"}),
                           str(REPO / "playbooks" / name), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")))
    return done, task_results(done.stdout)


def test_mount_plans_shared_root_and_mount_in_one_task_then_swap_and_changes_nothing(workdir):
    mount_path = str(workdir / "mnt" / "bb-job42")
    buffer = {"name": "bb-job42", "mount_path": mount_path, "swap": str(64 * 1024**2),
              "bricks": [{"host": "localhost"}]}
    done, results = playbook(workdir, "buffer_mount.yml", buffer, "--check")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    names = list(results)
    mount = next(n for n in names if n.startswith("Mount the buffer"))
    swap = next(n for n in names if n.startswith("Give this node swap space"))
    assert names.index(mount) < names.index(swap)
    root = str(workdir / "mnt")  # made a shared mount point by the mount's own task, before mounting
    assert results[mount]["commands"][:4] == [["mkdir", "-p", "--mode", "0755", root], ["mount", "--bind", root, root],
                                              ["mount", "--make-shared", root], ["mkdir", "-p", mount_path]]
    assert results[mount]["commands"][4][:3] == ["mount", "-t", "glusterfs"]
    swap_file = f"{mount_path}/.swap/localhost"
    assert results[swap]["changed"] is True
    assert [str(64 * 1024**2), swap_file] == results[swap]["commands"][1][-2:]  # fallocate --length SIZE FILE
    assert results[swap]["commands"][-1] == ["swapon", "<new loop device>"]
    assert not (workdir / "mnt").exists() and loops_under(workdir) == []


def test_unmount_removes_the_swap_area_before_unmounting(workdir):
    mount_path = workdir / "mnt" / "bb-job42"
    mount_path.mkdir(parents=True)
    swap_file = str(mount_path / ".swap" / "localhost")
    made = ModuleTask("hpc.burstbuffer.buffer_swap", workdir)(path=swap_file, size="64MiB")
    assert not made.get("failed"), made.get("msg")
    assert loops_under(workdir) == [made["device"]]

    buffer = {"name": "bb-job42", "mount_path": str(mount_path), "swap": "64MiB", "bricks": [{"host": "localhost"}]}
    done, results = playbook(workdir, "buffer_unmount.yml", buffer)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    names = list(results)
    taken = next(n for n in names if n.startswith("Take this node's swap space off"))
    unmount = next(n for n in names if n == "Unmount the buffer")
    assert names.index(taken) < names.index(unmount)
    assert results[taken]["commands"][0] == ["swapoff", made["device"]]
    assert loops_under(workdir) == []
    assert made["device"] not in sh("swapon", "--show=NAME", "--noheadings", "--raw").stdout.split()
    assert not mount_path.exists()  # the swap directory went, so the empty mount point did too
