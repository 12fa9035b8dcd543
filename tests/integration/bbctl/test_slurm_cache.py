"""Cache buffers (jobdw type=cache pfs=DIR) through real Slurm (burst_buffer/lua) and the real test bed.

A job that reads, modifies, creates, renames and deletes files in $DW_JOB_STRIPED runs in the cache
of a directory; the same job runs directly on a copy of that directory; after the job's write-back
the two must be equal in every path, kind, mode, owner, size, checksum, link target and mtime
(tests/cache_job.py). The datawarp plugin's twin is in test_slurm_datawarp.py.
"""

from __future__ import annotations

import json
import pwd
import subprocess
import time

import pytest

from tests.cache_job import JOB, differences, make_dir, run_job, snapshot
from tests.integration.bbctl.slurmjobs import (
    ENV,
    bbctl,
    job_fields,
    leftovers,
    sbatch_error,
    submit,
    wait_for,
    wait_torn_down,
    write_job,
)

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("lua_slurm")]


def cache_script(user_dir, pfs, directive: str, tail: str = "sleep 8\n"):
    return write_job(user_dir, "cache.sh", f"""
{directive}
set -eu
echo "env DW_JOB_STRIPED=$DW_JOB_STRIPED DW_JOB_STRIPED_CACHE=$DW_JOB_STRIPED_CACHE BB_CACHE_DIR=$BB_CACHE_DIR"
cd "$DW_JOB_STRIPED"
{JOB}
{tail}""")


def test_a_cache_job_leaves_dir_as_the_same_job_run_on_dir_would(user_dir):
    owner = pwd.getpwnam("bbuser")
    pfs = make_dir(user_dir, owner)
    direct = user_dir / "direct"
    subprocess.run(["cp", "-a", str(pfs), str(direct)], check=True)
    run_job(direct, owner)
    before = snapshot(pfs)
    script = cache_script(user_dir, pfs, f"#BB_LUA jobdw capacity=4GiB pool=nvme type=cache pfs={pfs}")

    job = submit(script)
    wait_for(job, {"RUNNING"}, timeout=180)
    time.sleep(3)
    assert snapshot(pfs) == before, "the job's changes must stay in the buffer until the job ends"
    wait_torn_down(job, timeout=240)

    output = (user_dir / f"slurm-{job}.out").read_text()
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0", output
    mount = f"/bbjob-{job}"
    assert "DW_JOB_STRIPED_CACHE=" in output and output.count(mount + " ") + output.count(mount + "\n") == 3, output
    assert differences(snapshot(pfs), snapshot(direct)) == []
    assert not [p for p in pfs.rglob("*") if p.name.startswith(".wh.") or p.name.endswith(".bb-stage.tmp")]
    assert leftovers(f"bbjob-{job}") == []


def test_a_failed_write_back_holds_the_job_keeps_the_buffer_and_reruns(user_dir):
    """The job writes d1/sub/new in its cache, then puts a file where DIR has d1/sub (on DIR itself, after
    the cache was mounted: the write-back keeps it) so the write-back cannot make d1/sub until an
    operator removes that file."""
    owner = pwd.getpwnam("bbuser")
    pfs = make_dir(user_dir, owner)
    script = cache_script(user_dir, pfs, f"#BB_LUA jobdw capacity=4GiB pool=nvme type=cache pfs={pfs}", tail=f"""
echo precious > d1/sub/new
rm -rf {pfs}/d1/sub && echo in the way > {pfs}/d1/sub
""")
    job = submit(script)
    wait_for(job, {"STAGE_OUT"}, timeout=240)
    deadline = time.monotonic() + 120
    while json.loads(bbctl("show", str(job)).stdout or "{}").get("state") != "failed":
        assert time.monotonic() < deadline, "the write-back never failed"
        time.sleep(0.5)
    held = job_fields(job)
    assert "stage-out" in held.get("Reason", "") or held["JobState"] == "STAGE_OUT", held
    assert (pfs / "d1" / "sub").read_text() == "in the way\n"
    assert (pfs / "d1" / "b").exists() and (pfs / "d2" / "x").exists(), \
        "what the job deleted is deleted only once everything is written"
    refused = bbctl("teardown", "--job-id", str(job), "--script", str(script))
    assert refused.returncode == 4 and "stage-out has not succeeded" in refused.stderr
    again = bbctl("stage-out", "--job-id", str(job), "--script", str(script))
    assert again.returncode != 0 and "d1/sub" in again.stderr, again.stderr

    (pfs / "d1" / "sub").unlink()  # the operator's fix
    rerun = bbctl("stage-out", "--job-id", str(job), "--script", str(script))

    assert rerun.returncode == 0, rerun.stderr
    assert (pfs / "d1" / "sub" / "new").read_text() == "precious\n"
    assert (pfs / "d1" / "sub" / "new").stat().st_uid == owner.pw_uid
    assert (pfs / "d1" / "sub" / "c").read_text() == "c\n"
    assert not (pfs / "d1" / "b").exists() and (pfs / "d2new" / "x").exists() and not (pfs / "d2").exists()
    assert bbctl("teardown", "--job-id", str(job), "--script", str(script)).returncode == 0
    subprocess.run(["scancel", "--hurry", str(job)], env=ENV, check=True)
    wait_torn_down(job, timeout=180)
    assert leftovers(f"bbjob-{job}") == []


def test_a_cache_job_with_a_stage_line_or_without_pfs_is_refused_at_sbatch(user_dir):
    staged = write_job(user_dir, "staged.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme type=cache pfs={user_dir}
#BB_LUA stage_in type=directory source={user_dir} destination=$DW_JOB_STRIPED/in
hostname
""")
    assert "the job buffer is a cache of pfs=DIR (line 2)" in sbatch_error(staged)
    bare = write_job(user_dir, "bare.sh", "#BB_LUA jobdw capacity=4GiB pool=nvme type=cache\nhostname\n")
    assert "a cache buffer needs pfs=DIR" in sbatch_error(bare)
