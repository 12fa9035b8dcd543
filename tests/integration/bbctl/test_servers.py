"""A storage server taken out by hand and given back, through the real Slurm (issue 11 item 2).

``bbctl servers --drain`` must take the server's bricks out of what Slurm offers (``scontrol show
burst``, read from bbctl's pools file by burst_buffer.lua) and out of every new allocation, and
``--resume`` must give them back. The automatic side (a server marked failing after
server_fail_limit failed runs) is the same state, reached by counting: tests/unit/bbctl/
test_server_lifecycle.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.conftest import TESTBED_ROOT
from tests.integration.bbctl.slurmjobs import ENV, bbctl, submit, wait_for, wait_torn_down, write_job

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("lua_slurm")]

LOG = TESTBED_ROOT / "bbctl" / "bbctl.log"


def offered(total: str, timeout: float = 120) -> str:
    """Wait until slurmctld shows the nvme pool's TotalSpace as ``total`` (it reads the pools
    file at its own pace); its line then."""
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        burst = subprocess.run(["scontrol", "show", "burst"], env=ENV, capture_output=True, text=True).stdout
        line = next((text for text in burst.splitlines() if "PoolName[0]=nvme" in text), "")
        if f"TotalSpace={total} " in line + " ":
            return line
        time.sleep(2)
    raise AssertionError(f"Slurm did not show TotalSpace={total} within {timeout:.0f} s: {line!r}")


def server_state(name: str) -> dict:
    done = bbctl("servers", "--json")
    assert done.returncode == 0, done.stderr
    return next(s for s in json.loads(done.stdout)["servers"] if s["name"] == name)


def test_a_drained_server_gets_no_new_buffer_and_slurm_stops_offering_it_until_resumed(user_dir):
    drained = bbctl("servers", "--drain", "bbnode3", "--reason", "test: a disk to replace")
    try:
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert (server_state("bbnode3")["state"], server_state("bbnode3")["reason"]) == (
            "drained", "test: a disk to replace")
        offered("24GiB")  # six 4 GiB bricks left of nine
        job = submit(write_job(user_dir, "job.sh", "#BB_LUA jobdw capacity=8GiB pool=nvme\nhostname\n"))
        assert wait_for(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=300)["JobState"] == "COMPLETED"
        allocated = next(line for line in LOG.read_text(errors="replace").splitlines()
                         if re.search(rf" {job} setup: allocated", line))
        assert re.search(r": bbnode[12]:", allocated) and "bbnode3" not in allocated, allocated
        wait_torn_down(job, timeout=180)
    finally:
        resumed = bbctl("servers", "--resume", "bbnode3")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert server_state("bbnode3")["state"] == "usable"
    offered("36GiB")
    unknown = bbctl("servers", "--drain", "bbnode9")
    assert unknown.returncode == 2 and "bbnode9" in unknown.stderr and "bbnode1" in unknown.stderr, unknown.stderr
