"""The same lifecycle through Slurm's burst_buffer/datawarp plugin and our dw_wlm_cli/dwstat.

The module switches the test bed's Slurm to the datawarp plugin and back to
lua at the end (storage stays up), then submits DataWarp-style job scripts
(#DW / #BB) as the unprivileged user. Two faults of test_faults.py run here
too: bbctl killed in stage-in, and in stage-out followed by scancel --hurry.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess

import pytest

from tests.cache_job import JOB, differences, make_dir, run_job, snapshot
from tests.conftest import BBCTL, TESTBED_ROOT
from tests.integration.bbctl import test_faults as faults
from tests.integration.bbctl.slurmjobs import (
    ENV,
    bbctl,
    leftovers,
    scontrol,
    submit,
    wait_for,
    wait_torn_down,
    write_job,
)

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module", autouse=True)
def datawarp_slurm(testbed):
    subprocess.run([BBCTL, "testbed", "slurm", "datawarp"], check=True, capture_output=True)
    yield testbed
    subprocess.run([BBCTL, "testbed", "slurm", "lua"], check=True, capture_output=True)


def test_jobdw_with_staging_through_dw_wlm_cli(user_dir):
    (user_dir / "in").mkdir()
    (user_dir / "in" / "data.txt").write_text("forty-two\n")
    for path in (user_dir / "in", user_dir / "in" / "data.txt"):
        os.chown(path, user_dir.stat().st_uid, user_dir.stat().st_gid)
    script = write_job(user_dir, "job.sh", f"""
#DW jobdw type=scratch capacity=4GiB access_mode=striped
#DW stage_in type=directory source={user_dir}/in destination=$DW_JOB_STRIPED/in
#DW stage_out type=file source=$DW_JOB_STRIPED/answer.txt destination={user_dir}/answer.txt
tr a-z A-Z < "$DW_JOB_STRIPED/in/data.txt" > "$DW_JOB_STRIPED/answer.txt"
sleep 5
""")
    job = submit(script)
    wait_for(job, {"RUNNING"}, timeout=180)
    burst = scontrol("show", "burst")
    assert "Name=datawarp" in burst and f"JobID={job}" in burst, burst
    sessions = json.loads(subprocess.run([BBCTL.replace("bbctl", "dw_wlm_cli"), "--function", "show_sessions"],
                                         env=ENV, capture_output=True, text=True, check=True).stdout)
    assert {"id": job, "token": str(job)}.items() <= next(
        s for s in sessions["sessions"] if s["token"] == str(job)).items()
    wait_torn_down(job, timeout=180)
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    assert (user_dir / "answer.txt").read_text() == "FORTY-TWO\n"
    assert (user_dir / "answer.txt").stat().st_uid == user_dir.stat().st_uid
    assert leftovers(f"bbjob-{job}") == []


def test_persistent_buffer_created_used_and_destroyed_by_jobs(user_dir):
    name = f"dwp{os.getpid()}"
    create = submit(write_job(user_dir, "create.sh",
                              f"#BB create_persistent name={name} capacity=4GiB access=striped type=scratch\n"
                              "hostname\n"))
    wait_torn_down(create, timeout=180)
    assert bbctl("show", name).returncode == 0
    use = submit(write_job(user_dir, "use.sh", f"""
#DW persistentdw name={name}
echo kept > "$DW_PERSISTENT_STRIPED_{name}/kept.txt" && cat "$DW_PERSISTENT_STRIPED_{name}/kept.txt"
"""))
    wait_torn_down(use, timeout=180)
    assert (user_dir / f"slurm-{use}.out").read_text().strip() == "kept"
    status = subprocess.run(["scontrol", "show", "bbstat"], env=ENV, capture_output=True, text=True, check=False)
    assert name in status.stdout, status.stdout + status.stderr
    destroy = submit(write_job(user_dir, "destroy.sh", f"#BB destroy_persistent name={name}\nhostname\n"))
    wait_torn_down(destroy, timeout=180)
    assert bbctl("show", name).returncode == 3
    assert leftovers(f"bbp-{name}") == []


def test_a_datawarp_cache_job_leaves_dir_as_the_same_job_run_on_dir_would(user_dir):
    """DataWarp's own form of a cache buffer (#DW jobdw type=cache pfs=DIR) through dw_wlm_cli."""
    owner = pwd.getpwnam("bbuser")
    pfs = make_dir(user_dir, owner)
    direct = user_dir / "direct"
    subprocess.run(["cp", "-a", str(pfs), str(direct)], check=True)
    run_job(direct, owner)
    script = write_job(user_dir, "cache.sh", f"""
#DW jobdw type=cache access_mode=striped capacity=4GiB pfs={pfs}
set -eu
echo "env $DW_JOB_STRIPED_CACHE $BB_CACHE_DIR"
cd "$DW_JOB_STRIPED_CACHE"
{JOB}
""")
    job = submit(script)
    wait_torn_down(job, timeout=240)
    output = (user_dir / f"slurm-{job}.out").read_text()
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0", output
    mount = TESTBED_ROOT / "mnt" / f"bbjob-{job}"
    assert f"env {mount} {mount}" in output, output
    assert differences(snapshot(pfs), snapshot(direct)) == []
    assert leftovers(f"bbjob-{job}") == []



# --- faults through dw_wlm_cli: the same bbctl stages, Slurm's other plugin around them ----------------

def test_bbctl_killed_during_stage_in_through_dw_wlm_cli_holds_the_job_and_leaves_nothing(user_dir):
    source = user_dir / "in"
    before = faults.tree(source, 1500, 4096)
    job = submit(write_job(user_dir, "job.sh", f"""\
#DW jobdw type=scratch capacity=8GiB access_mode=striped
#DW stage_in type=directory source={source} destination=$DW_JOB_STRIPED/in
hostname
"""))
    os.kill(faults.stage_pid(job, "stage-in"), signal.SIGKILL)
    fields = faults.held(job)
    assert fields["JobState"] == "PENDING" and "data_in" in fields["Reason"], fields
    assert faults.sums_of(source) == before
    faults.cancel_and_check_nothing_left(job)


def test_scancel_hurry_after_a_killed_stage_out_through_dw_wlm_cli_removes_its_temporaries(user_dir):
    out = user_dir / "out"
    before = faults.tree(out, 1500, 4096)
    job = submit(write_job(user_dir, "job.sh", faults.STAGE_OUT_JOB.replace("#BB_LUA", "#DW").replace(
        " pool=nvme", "").format(out=out)))
    faults.kill_stage_out_then_hurry(job, out, before, faults.upper_sums(out, before), "stage-out")
