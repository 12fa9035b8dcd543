"""Swap on the buffer and buffers seen from containers, through real Slurm on the test bed.

Swap: a job with ``swap 1GiB`` (lua and datawarp) sees a loop device backed by its buffer in
``swapon --show`` while it runs, cannot read the swap file, and nothing of it is left after
teardown (no loop device, no swap area, no file). Containers: a mount namespace started with
slave propagation before the job's pre-run sees the job's buffer (and what the job wrote in
it) while the job runs, and sees it go after. Each test ends by checking that nothing of its
buffer is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.bbctl.slurmjobs import (
    BBCTL_CONFIG,
    bbctl,
    leftovers,
    submit,
    use_plugin,
    wait_for,
    wait_torn_down,
    write_job,
)
from tests.integration.module_task import ModuleTask

pytestmark = pytest.mark.testbed
GiB = 1024**3


@pytest.fixture(scope="module", autouse=True)
def back_to_lua(testbed):
    """Tests here switch the plugin they need; the module leaves the test bed on lua."""
    yield testbed
    use_plugin("lua")


def mount_root() -> Path:
    return Path(yaml.safe_load(BBCTL_CONFIG.read_text())["mount_root"])


def loops_backed_by(fragment: str) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], capture_output=True,
                         text=True, check=True).stdout
    entries = json.loads(out)["loopdevices"] if out.strip() else []
    return [entry["name"] for entry in entries if fragment in (entry.get("back-file") or "")]


def swap_devices() -> list[str]:
    return subprocess.run(["swapon", "--show=NAME", "--noheadings", "--raw"], capture_output=True, text=True,
                          check=True).stdout.split()


SWAP_JOB = """
{directives}
set -u
echo "swaps:"
swapon --show=NAME,TYPE,SIZE --noheadings --raw
echo "loops:"
losetup --list --noheadings --output NAME,BACK-FILE
echo "swapfile-readable=$(cat "$DW_JOB_STRIPED"/.swap/* >/dev/null 2>&1 && echo yes || echo no)"
echo "striped=$DW_JOB_STRIPED"
sleep 8
"""


@pytest.mark.parametrize(("plugin", "directives"), [
    ("lua", "#BB_LUA jobdw capacity=4GiB pool=nvme\n#BB_LUA swap 1GiB"),
    ("datawarp", "#DW jobdw type=scratch capacity=4GiB access_mode=striped\n#DW swap 1GiB"),
])
def test_a_job_swaps_on_its_buffer_and_nothing_is_left_after(user_dir, plugin, directives):
    use_plugin(plugin)
    job = submit(write_job(user_dir, "swap.sh", SWAP_JOB.format(directives=directives)))
    wait_for(job, {"RUNNING"}, timeout=180)
    shown = json.loads(bbctl("show", str(job)).stdout)
    assert shown["capacity"] == 4 * GiB + 1 * GiB  # one node: its swap is counted in the buffer
    fragment = f"bbjob-{job}/.swap/"
    during = loops_backed_by(fragment)
    assert len(during) == 1 and during[0] in swap_devices()
    wait_torn_down(job, timeout=180)
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    out = (user_dir / f"slurm-{job}.out").read_text()
    swaps = out.split("swaps:")[1].split("loops:")[0].split()
    loops = out.split("loops:")[1].split("swapfile-readable=")[0]
    assert during[0] in swaps and "partition" in swaps, out  # swapon --show inside the job
    assert f"{during[0]} " in loops and fragment in loops, out
    assert "swapfile-readable=no" in out, out  # root's alone, though the buffer is the user's
    assert loops_backed_by(fragment) == []
    assert not set(during) & set(swap_devices())
    assert leftovers(f"bbjob-{job}") == []


@pytest.mark.parametrize(("plugin", "jobdw"), [
    ("lua", "#BB_LUA jobdw capacity=4GiB pool=nvme"),
    ("datawarp", "#DW jobdw type=scratch capacity=4GiB access_mode=striped"),
])
def test_a_namespace_started_before_pre_run_sees_the_buffer_come_and_go(user_dir, tmp_path, plugin, jobdw):
    use_plugin(plugin)
    root = mount_root()
    made = ModuleTask("hpc.burstbuffer.shared_mount_root", tmp_path)(path=str(root))  # as at node boot
    assert not made.get("failed"), made.get("msg")
    container = subprocess.Popen(["unshare", "-m", "--propagation", "slave", "sleep", "600"])
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{container.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            assert time.monotonic() < deadline, "unshare made no namespace"
            time.sleep(0.05)
        job = submit(write_job(user_dir, "seen.sh", f"""
{jobdw}
echo "from the job" > "$DW_JOB_STRIPED/hello.txt"
sleep 20
"""))
        wait_for(job, {"RUNNING"}, timeout=180)
        buffer = root / f"bbjob-{job}"
        inside = ["nsenter", f"--target={container.pid}", "--mount", "--"]
        deadline = time.monotonic() + 15
        while not (buffer / "hello.txt").exists():
            assert time.monotonic() < deadline, "the job did not write hello.txt"
            time.sleep(0.5)
        seen = subprocess.run([*inside, "findmnt", "--noheadings", "--output", "FSTYPE", str(buffer)],
                              capture_output=True, text=True, check=False)
        assert seen.stdout.split() == ["fuse.glusterfs"], seen.stderr
        read = subprocess.run([*inside, "cat", str(buffer / "hello.txt")], capture_output=True, text=True,
                              check=False)
        assert read.stdout == "from the job\n", read.stderr
        wait_torn_down(job, timeout=180)
        gone = subprocess.run([*inside, "findmnt", str(buffer)], capture_output=True, text=True, check=False)
        assert gone.returncode != 0, gone.stdout  # unmounted inside the namespace too
        assert leftovers(f"bbjob-{job}") == []
    finally:
        container.kill()
        container.wait()
