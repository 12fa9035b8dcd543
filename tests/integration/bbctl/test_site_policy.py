"""The site's policy (bbctl.yml policy:) through real Slurm, both plugins: refused at sbatch with our words.

The module gives the test bed's bbctl.yml a policy and reinstalls the Slurm files
(`bbctl slurm-install` resolves the policy's users into bbctl-site.lua), and puts the
file back at the end. Jobs are submitted as the unprivileged user (bbuser). Slurm
22.05 gives slurm_bb_job_process no uid, and dw_wlm_cli job_process never gets one:
there the user's limit and persistent_creators are refused at setup, the job held with
our message as its reason; from Slurm 23.02 the lua plugin refuses them at sbatch.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml

from tests.integration.bbctl.slurmjobs import (
    BBCTL_CONFIG,
    ENV,
    bbctl,
    job_fields,
    leftovers,
    reason_pattern,
    sbatch_error,
    submit,
    use_plugin,
    wait_for,
    wait_torn_down,
    write_job,
)

pytestmark = pytest.mark.testbed

# The test bed's pool nvme: nine bricks of 4 GiB, so every size below fits the pool itself
# (20GiB: disperse 5+1): what refuses them is the policy alone.
POLICY = {
    "max_capacity": "16GiB",
    "user_max_capacity": {"bbuser": "8GiB"},
    "pool_max_capacity": {"nvme": "16GiB"},
    "persistent_creators": {"users": ["root"]},
    "presets": {"both": {"access_mode": "striped,private"}, "fast": {"pool": "nvme", "access_mode": "striped"}},
}
POOL_LIMIT = "is more than pool nvme allows in one buffer: at most 16GiB (policy.pool_max_capacity.nvme)"
USER_LIMIT = re.compile(r"'capacity=12GiB' is more than uid \d+ may have in one buffer: at most 8GiB "
                        r"\(policy\.user_max_capacity\.bbuser\)")
NOT_CREATOR = re.compile(r"'name=pol\d+': uid \d+ may not create persistent buffers \(policy\.persistent_creators\)")


def slurm_install() -> None:
    done = bbctl("slurm-install")
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def site_policy(settings: dict) -> Iterator[None]:
    """The test bed's bbctl.yml with ``settings`` as its policy, installed for sbatch; put back afterwards."""
    original = BBCTL_CONFIG.read_text()
    data = yaml.safe_load(original)
    BBCTL_CONFIG.write_text(yaml.safe_dump({**data, "policy": settings}, sort_keys=False))
    try:
        slurm_install()
        yield
    finally:
        BBCTL_CONFIG.write_text(original)
        slurm_install()


@pytest.fixture(scope="module", autouse=True)
def with_policy(testbed):
    with site_policy(POLICY):
        yield testbed


@pytest.fixture
def lua(testbed):
    use_plugin("lua")
    return testbed


@pytest.fixture
def datawarp(testbed):
    use_plugin("datawarp")
    yield testbed
    use_plugin("lua")


def slurm_passes_uid_to_job_process() -> bool:
    """burst_buffer/lua's slurm_bb_job_process gets uid and gid from Slurm 23.02 on."""
    version = subprocess.run(["scontrol", "--version"], env=ENV, capture_output=True, text=True, check=True).stdout
    major, minor = (int(part) for part in re.search(r"(\d+)\.(\d+)", version).groups())
    return (major, minor) >= (23, 2)


def held_with(job: int, reason: re.Pattern[str], timeout: float = 180) -> dict[str, str]:
    """The job's fields once its reason matches (setup refused it), then cancels it and waits it out."""
    reason = reason_pattern(reason.pattern)
    deadline = time.monotonic() + timeout
    fields = job_fields(job)
    while not reason.search(fields.get("Reason", "")) and time.monotonic() < deadline:
        assert fields.get("JobState") not in ("RUNNING", "COMPLETED"), fields
        time.sleep(1)
        fields = job_fields(job)
    subprocess.run(["scancel", str(job)], env=ENV, check=False)
    wait_torn_down(job, timeout=120)
    assert reason.search(fields.get("Reason", "")), fields
    return fields


def refused_at_sbatch_or_held(user_dir, body: str, reason: re.Pattern[str]) -> None:
    script = write_job(user_dir, "job.sh", body)
    if slurm_passes_uid_to_job_process():
        error = sbatch_error(script)
        assert reason.search(error), error
    else:
        held_with(submit(script), reason)


# ---------------------------------------------------------------- burst_buffer/lua

def test_lua_refuses_a_buffer_above_the_pools_limit_at_sbatch(lua, user_dir):
    error = sbatch_error(write_job(user_dir, "job.sh", "#BB_LUA jobdw capacity=20GiB pool=nvme\nhostname\n"))
    assert f"burst_buffer/lua: line 2: jobdw: 'capacity=20GiB' {POOL_LIMIT}" in error, error


def test_lua_refuses_an_unknown_preset_at_sbatch_naming_the_sites(lua, user_dir):
    error = sbatch_error(write_job(user_dir, "job.sh", "#BB_LUA jobdw capacity=1GiB pool=nvme preset=fats\n"))
    assert "line 2: jobdw: 'preset=fats': no preset fats; the site's presets: both, fast" in error, error


def test_lua_applies_the_users_limit_before_anything_is_built(lua, user_dir):
    refused_at_sbatch_or_held(user_dir, "#BB_LUA jobdw capacity=12GiB pool=nvme\nhostname\n", USER_LIMIT)


def test_lua_lets_only_listed_users_create_persistent_buffers(lua, user_dir):
    name = f"pol{user_dir.stat().st_ino}"
    refused_at_sbatch_or_held(user_dir, f"#BB_LUA create_persistent name={name} capacity=1GiB pool=nvme\n",
                              NOT_CREATOR)
    assert bbctl("show", name).returncode == 3  # nothing was created
    assert leftovers(f"bbp-{name}") == []


def test_a_preset_gives_the_job_what_it_bundles(lua, user_dir):
    script = write_job(user_dir, "job.sh", """
#BB_LUA jobdw capacity=4GiB pool=nvme preset=both
set -e
echo mine > "$DW_JOB_PRIVATE/mine.txt"
echo "private=$DW_JOB_PRIVATE"
""")  # without the preset the buffer would be striped only: no $DW_JOB_PRIVATE
    job = submit(script)
    wait_torn_down(job, timeout=180)
    output = (user_dir / f"slurm-{job}.out").read_text()
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0", output
    assert f"bbjob-{job}-private" in output
    assert leftovers(f"bbjob-{job}") == []


# ---------------------------------------------------------------- burst_buffer/datawarp

def test_datawarp_refuses_a_buffer_above_the_pools_limit_at_sbatch(datawarp, user_dir):
    error = sbatch_error(write_job(user_dir, "job.sh", "#DW jobdw capacity=20GiB\nhostname\n"))
    assert f"line 2: jobdw: 'capacity=20GiB' {POOL_LIMIT}" in error, error


def test_datawarp_refuses_an_unknown_preset_at_sbatch(datawarp, user_dir):
    error = sbatch_error(write_job(user_dir, "job.sh", "#DW jobdw capacity=1GiB preset=fats\nhostname\n"))
    assert "line 2: jobdw: 'preset=fats': no preset fats; the site's presets: both, fast" in error, error


def test_datawarp_holds_a_job_above_the_users_limit_at_setup(datawarp, user_dir):
    """dw_wlm_cli job_process is given no uid: setup, which has it, refuses before allocating."""
    job = submit(write_job(user_dir, "job.sh", "#DW jobdw capacity=12GiB\nhostname\n"))
    held_with(job, USER_LIMIT)
    assert leftovers(f"bbjob-{job}") == []
