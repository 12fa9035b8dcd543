"""The whole job lifecycle through real Slurm (burst_buffer/lua) and the real test-bed cluster.

Jobs are submitted by the unprivileged user; Slurm calls burst_buffer.lua,
which calls bbctl, which runs the collection's playbooks through
ansible-runner against the loopback glusterds. Each test ends by checking
that nothing of its buffers is left: volume, mount, brick directory, record.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.bbctl.slurmjobs import (
    ENV,
    bbctl,
    job_fields,
    leftovers,
    sbatch_error,
    scontrol,
    submit,
    wait_for,
    wait_torn_down,
    write_job,
)

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("lua_slurm")]


def owner_of(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


def make_input(root: Path) -> dict[str, bytes]:
    """A small directory tree owned by the user, as it would sit on the parallel file system."""
    uid, gid = root.stat().st_uid, root.stat().st_gid
    files = {"a.txt": b"alpha\n", "sub/b.dat": bytes(range(256)) * 64, "sub/deeper/c.txt": b"gamma\n"}
    for name, data in files.items():
        path = root / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in [root / "in", *(root / "in").rglob("*")]:
        os.chown(path, uid, gid)
    return files


def test_stage_in_run_stage_out_and_nothing_left(user_dir):
    files = make_input(user_dir)
    script = write_job(user_dir, "job.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme
#BB_LUA stage_in type=directory source={user_dir}/in destination=$DW_JOB_STRIPED/in
#BB_LUA stage_out type=directory source=$DW_JOB_STRIPED/out destination={user_dir}/out
set -e
mkdir "$DW_JOB_STRIPED/out"
for f in a.txt sub/b.dat sub/deeper/c.txt; do
    mkdir -p "$(dirname "$DW_JOB_STRIPED/out/$f")"
    cat "$DW_JOB_STRIPED/in/$f" "$DW_JOB_STRIPED/in/$f" > "$DW_JOB_STRIPED/out/$f"
done
echo "striped=$DW_JOB_STRIPED bb=$BB_JOB_STRIPED" > "$DW_JOB_STRIPED/out/env.txt"
sleep 6
""")
    job = submit(script)
    running = wait_for(job, {"RUNNING"}, timeout=180)
    burst = scontrol("show", "burst")
    assert "nvme" in burst and f"JobID={job}" in burst, burst
    wait_torn_down(job, timeout=180)
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0", (user_dir / f"slurm-{job}.out").read_text()
    for name, data in files.items():
        result = user_dir / "out" / name
        assert result.read_bytes() == data + data
        assert owner_of(result) == "bbuser"
    env = (user_dir / "out" / "env.txt").read_text()
    assert f"/mnt/bbjob-{job} bb=" in env and env.count(f"bbjob-{job}") == 2
    assert leftovers(f"bbjob-{job}") == []
    assert running["BurstBuffer"].startswith("#BB_LUA jobdw")
    stage_in = [line for line in bbctl_log_for(job).splitlines() if " stage-in: " in line]
    assert any(f"{user_dir}/in -> " in line and ": 3 files, " in line and "3 of the files through libgfapi"
               in line for line in stage_in), stage_in


def test_a_rejected_directive_is_refused_at_sbatch_with_our_message(user_dir):
    # (Slurm's own parser catches a bad capacity first; a bad access mode reaches ours.)
    script = write_job(user_dir, "bad.sh", "#BB_LUA jobdw capacity=1GiB pool=nvme access_mode=sideways\nhostname\n")
    error = sbatch_error(script)
    assert "access_mode=sideways" in error and "striped" in error, error


def test_an_unknown_key_names_the_token(user_dir):
    script = write_job(user_dir, "bad.sh", "#BB_LUA jobdw capacity=1GiB pool=nvme colour=blue\nhostname\n")
    error = sbatch_error(script)
    assert "colour=blue" in error, error


def test_scancel_during_stage_in_tears_everything_down(user_dir):
    big = user_dir / "in"
    big.mkdir()
    for n in range(6):  # enough that stage-in is still copying when the job is cancelled
        with (big / f"part{n}").open("wb") as out:
            out.write(os.urandom(1024 * 1024) * 200)
    for path in [big, *big.iterdir()]:
        os.chown(path, user_dir.stat().st_uid, user_dir.stat().st_gid)
    script = write_job(user_dir, "job.sh", f"""
#BB_LUA jobdw capacity=8GiB pool=nvme
#BB_LUA stage_in type=directory source={big} destination=$DW_JOB_STRIPED/in
hostname
""")
    job = submit(script)
    progress = Path(ENV["BBCTL_CONFIG"]).parent / "bbctl" / "runs" / str(job) / "stage-in.progress"
    deadline = time.monotonic() + 120
    while not (progress.exists() and progress.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert progress.exists(), "stage-in never started copying"
    subprocess.run(["scancel", str(job)], env=ENV, check=True)
    wait_torn_down(job, timeout=180)
    assert wait_for(job, {"CANCELLED"}, timeout=5)
    assert leftovers(f"bbjob-{job}") == []


def test_a_failed_stage_out_keeps_the_data_until_scancel_hurry(user_dir):
    forbidden = user_dir / "root-only"
    forbidden.mkdir()  # owned by root, 0755: the user cannot write there
    os.chown(forbidden, 0, 0)
    script = write_job(user_dir, "job.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme
#BB_LUA stage_out type=directory source=$DW_JOB_STRIPED/out destination={forbidden}/out
mkdir -p "$DW_JOB_STRIPED/out" && echo precious > "$DW_JOB_STRIPED/out/x"
""")
    job = submit(script)
    held = wait_for(job, {"STAGE_OUT"}, timeout=180)
    deadline = time.monotonic() + 120
    while "slurm_bb_data_out" not in held.get("Reason", "") and time.monotonic() < deadline:
        time.sleep(0.5)
        held = job_fields(job)
    assert "stage-out" in held["Reason"] and str(forbidden) in held["Reason"], held
    kept = bbctl("show", str(job))
    assert kept.returncode == 0 and json.loads(kept.stdout)["state"] == "failed", kept.stdout
    teardown = bbctl("teardown", "--job-id", str(job), "--script", str(script))
    assert teardown.returncode == 4 and "stage-out has not succeeded" in teardown.stderr
    subprocess.run(["scancel", "--hurry", str(job)], env=ENV, check=True)
    wait_torn_down(job, timeout=180)
    assert not (forbidden / "out").exists()
    assert leftovers(f"bbjob-{job}") == []


def test_an_operator_reruns_a_failed_stage_out_once_the_destination_is_fixed(user_dir):
    full = user_dir / "not-yet"
    full.mkdir()
    os.chown(full, 0, 0)  # root's, 0755: the stage-out fails until the operator hands it over
    script = write_job(user_dir, "job.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme
#BB_LUA stage_out type=directory source=$DW_JOB_STRIPED/out destination={full}/out
mkdir -p "$DW_JOB_STRIPED/out" && echo precious > "$DW_JOB_STRIPED/out/x"
""")
    job = submit(script)
    wait_for(job, {"STAGE_OUT"}, timeout=180)
    deadline = time.monotonic() + 120
    while json.loads(bbctl("show", str(job)).stdout or "{}").get("state") != "failed":
        assert time.monotonic() < deadline, "the stage-out never failed"
        time.sleep(0.5)
    os.chown(full, user_dir.stat().st_uid, user_dir.stat().st_gid)

    rerun = bbctl("stage-out", "--job-id", str(job), "--script", str(script))

    assert rerun.returncode == 0, rerun.stderr
    assert (full / "out" / "x").read_text() == "precious\n"
    assert owner_of(full / "out" / "x") == "bbuser"
    assert bbctl("teardown", "--job-id", str(job), "--script", str(script)).returncode == 0  # no hurry needed
    subprocess.run(["scancel", "--hurry", str(job)], env=ENV, check=True)  # release Slurm's held job
    wait_torn_down(job, timeout=180)
    assert leftovers(f"bbjob-{job}") == []


def test_a_persistent_buffer_serves_two_jobs_and_is_destroyed_only_when_free(user_dir):
    name = f"shared{os.getpid()}"
    create = submit(write_job(user_dir, "create.sh",
                              f"#BB_LUA create_persistent name={name} capacity=4GiB pool=nvme\nhostname\n"))
    wait_torn_down(create, timeout=180)
    assert bbctl("show", name).returncode == 0, "the persistent buffer must outlive the job that made it"
    writer = submit(write_job(user_dir, "writer.sh", f"""
#BB_LUA persistentdw name={name}
echo "from job $SLURM_JOB_ID" > "$DW_PERSISTENT_STRIPED_{name}/note.txt"
sleep 8
"""))
    wait_for(writer, {"RUNNING"}, timeout=180)
    refused = bbctl("destroy-persistent", "--name", name)
    assert refused.returncode == 4 and "in use by job" in refused.stderr, refused.stderr
    wait_torn_down(writer, timeout=180)
    reader = submit(write_job(user_dir, "reader.sh", f"""
#BB_LUA persistentdw name={name}
cat "$DW_PERSISTENT_STRIPED_{name}/note.txt"
"""))
    wait_torn_down(reader, timeout=180)
    assert (user_dir / f"slurm-{reader}.out").read_text().strip() == f"from job {writer}"
    destroy = submit(write_job(user_dir, "destroy.sh", f"#BB_LUA destroy_persistent name={name}\nhostname\n"))
    wait_torn_down(destroy, timeout=180)
    assert bbctl("show", name).returncode == 3
    assert leftovers(f"bbp-{name}") == []


def bbctl_log_for(job: int) -> str:
    log = Path(ENV["BBCTL_CONFIG"]).parent / "bbctl" / "bbctl.log"
    return "".join(line for line in log.read_text().splitlines(keepends=True) if f" {job} " in line)


def test_private_access_gives_each_node_its_own_directory(user_dir):
    script = write_job(user_dir, "job.sh", """
#BB_LUA jobdw capacity=4GiB pool=nvme access_mode=striped,private
set -e
echo mine > "$DW_JOB_PRIVATE/mine.txt"
echo shared > "$DW_JOB_STRIPED/shared.txt"
stat -c '%U %a' "$DW_JOB_PRIVATE"
ls "$DW_JOB_STRIPED/.private/$(hostname -s)"
test "$BB_JOB_PRIVATE" = "$DW_JOB_PRIVATE"
""")
    job = submit(script)
    wait_torn_down(job, timeout=180)
    output = (user_dir / f"slurm-{job}.out").read_text().split()
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0", output
    assert output == ["bbuser", "700", "mine.txt"]
    assert leftovers(f"bbjob-{job}") == []
