"""Hostile users through real Slurm jobs (burst_buffer/lua): refused or harmless, nothing outside changed.

Two ordinary users: the job owner (`bbuser`) and a second one (`bbother`, made here
like the test bed makes the first). Each test states what an attacker tries and
checks, besides the refusal, that what lay outside their buffer is byte for byte
what it was (sha256 before and after). The module-level cases of the same rules
(bb_stage alone: root-only sources, symlinks planted in the buffer, a destination
the user may not write) are in tests/integration/test_bb_stage.py; the parsers are
fuzzed in the unit stage (docs/RELIABILITY.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from bbctl.testbed.config import TestbedConfig
from bbctl.testbed.slurm import ensure_user
from tests.conftest import REPO, VENV_BIN
from tests.integration.bbctl.slurmjobs import (
    ENV,
    GLUSTERD_SOCKET,
    as_user,
    bbctl,
    job_fields,
    leftovers,
    said,
    sbatch_error,
    submit,
    wait_for,
    wait_torn_down,
    write_job,
)
from tests.integration.test_gluster_modules import CLAIM_ROOT

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("lua_slurm")]
OTHER = "bbother"
GLUSTER_HOST = "127.1.1.1"


@pytest.fixture(scope="module")
def other():
    return ensure_user(OTHER)


@pytest.fixture
def other_dir(other):
    path = Path(tempfile.mkdtemp(prefix="bb-other-", dir="/tmp"))
    os.chown(path, other.pw_uid, other.pw_gid)
    path.chmod(0o755)  # others may look in, not write: as a shared project directory would be
    yield path
    shutil.rmtree(path, ignore_errors=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_reason(job: int, text: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if said(found := job_fields(job).get("Reason", ""), text):
            return found
        time.sleep(0.5)
    raise AssertionError(f"job {job}: reason never held {text!r}: {job_fields(job).get('Reason')!r}")


def cancel(*jobs: int) -> None:
    subprocess.run(["scancel", "--hurry", *map(str, jobs)], env=ENV, check=False, capture_output=True)


def test_a_second_user_can_neither_reach_nor_use_nor_destroy_the_first_users_buffers(user_dir, other_dir, other):
    owner = pwd.getpwnam("bbuser")
    persistent = f"hostile{uuid.uuid4().hex[:6]}"
    made = bbctl("create-persistent", "--name", persistent, "--uid", str(owner.pw_uid), "--gid",
                 str(owner.pw_gid), "--capacity", "4GiB")
    assert made.returncode == 0, made.stderr[-2000:]
    script = write_job(user_dir, "owner.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme
echo "the owner's data" > "$DW_JOB_STRIPED/secret.txt"
echo "$DW_JOB_STRIPED" > {user_dir}/striped.path
sleep 120
""")
    job = submit(script)
    others: list[int] = []
    try:
        wait_for(job, {"RUNNING"}, timeout=180)
        path_file = user_dir / "striped.path"
        deadline = time.monotonic() + 30
        while not (path_file.exists() and path_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        striped = path_file.read_text().strip()
        # The running job's buffer, through its mount: read, list, write.
        for argv in (["cat", f"{striped}/secret.txt"], ["ls", striped], ["touch", f"{striped}/planted"]):
            tried = as_user(*argv, user=OTHER)
            assert tried.returncode != 0 and "Permission denied" in tried.stderr, (argv, tried.stderr)
        # Straight to the bricks with libgfapi, claiming to be root: the privileged-port gate refuses.
        claimed = subprocess.run(["setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups",
                                  str(VENV_BIN / "python3"), "-c", CLAIM_ROOT, str(REPO / "collections"),
                                  GLUSTER_HOST, f"bbjob-{job}", "/"], capture_output=True, text=True, timeout=120)
        assert "refused: glfs_init" in claimed.stderr, claimed.stderr[-2000:]
        assert not Path(striped, "planted").exists()
        # ... and it holds without quota, which a distributed buffer no longer gets (layouts.Layout.quota).
        info = subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={GLUSTERD_SOCKET}", "volume", "info",
                               f"bbjob-{job}"], capture_output=True, text=True, timeout=120, check=True).stdout
        assert "server.allow-insecure: off" in info and "features.quota: on" not in info, info
        # The persistent buffer: use it, destroy it.
        use = write_job(other_dir, "use.sh", f"#BB_LUA persistentdw name={persistent}\ntouch {other_dir}/ran-use\n")
        destroy = write_job(other_dir, "destroy.sh",
                            f"#BB_LUA destroy_persistent name={persistent}\ntouch {other_dir}/ran-destroy\n")
        others = [submit(use, user=OTHER), submit(destroy, user=OTHER)]
        wait_reason(others[0], f"persistent buffer {persistent} belongs to uid {owner.pw_uid}; "
                               "only its owner's jobs may use it")
        wait_reason(others[1], f"persistent buffer {persistent} belongs to uid {owner.pw_uid}, not {other.pw_uid}")
        assert not list(other_dir.glob("ran-*"))
        kept = json.loads(bbctl("show", persistent).stdout)
        assert kept["owner_uid"] == owner.pw_uid and kept["state"] not in ("destroying", "destroyed", "failed")
    finally:
        cancel(job, *others)
        bbctl("destroy-persistent", "--name", persistent, "--hurry")
    wait_torn_down(job, timeout=180)
    assert leftovers(f"bbjob-{job}") == [] and leftovers(f"bbp-{persistent}") == []


@pytest.mark.parametrize("line, token", [
    ("stage_in type=file source={d}/in;touch$IFS{d}/pwned destination=$DW_JOB_STRIPED/x", "source={d}/in;touch"),
    ("stage_in type=file source=$(touch {d}/pwned) destination=$DW_JOB_STRIPED/x", "source=$(touch"),
    ("stage_in type=file source={d}/`touch {d}/pwned` destination=$DW_JOB_STRIPED/x", "source={d}/`touch"),
    ("stage_in type=file source={d}/in destination=$DW_JOB_STRIPED/../../escape",
     "destination=$DW_JOB_STRIPED/../../escape"),
    ("stage_in type=file source={d}/../../etc/shadow destination=$DW_JOB_STRIPED/x", "source={d}/../../etc/shadow"),
    ("stage_in type=file source=\"{d}/a b\" destination=$DW_JOB_STRIPED/x", "source=\"{d}/a"),
    ("stage_in type=file source={d}/" + "a" * 5000 + " destination=$DW_JOB_STRIPED/x", "source={d}/aaaa"),
    # Slurm parses create_persistent itself and refuses this name before burst_buffer.lua runs (its words).
    ("create_persistent name=../../x capacity=4GiB", None),
    # Slurm reads pool= itself and refuses a pool it does not know, also with its own words.
    ("jobdw capacity=4GiB pool=nvme;id", None),
], ids=["semicolon", "command-substitution", "backtick", "dotdot-destination", "dotdot-source", "quotes",
        "5000-byte-path", "dotdot-name", "metacharacter-pool"])
def test_hostile_directive_values_are_refused_at_sbatch_naming_the_token(user_dir, line, token: str | None):
    jobdw = "" if line.startswith("jobdw") else "#BB_LUA jobdw capacity=4GiB pool=nvme\n"
    script = write_job(user_dir, "hostile.sh", f"{jobdw}#BB_LUA {line.format(d=user_dir)}\nhostname\n")
    error = sbatch_error(script)
    expected = "Burst Buffer request invalid" if token is None else token.format(d=user_dir)[:60]
    assert expected in error, error
    assert not (user_dir / "pwned").exists()


def test_a_nul_byte_in_a_directive_is_refused_at_sbatch(user_dir):
    script = write_job(user_dir, "nul.sh", "#BB_LUA jobdw capacity=4GiB pool=nvme\x00\nhostname\n")
    error = sbatch_error(script)
    assert "NULL" in error or "\\x00" in error, error  # sbatch itself, or our validator


def test_stage_in_of_root_and_other_users_private_files_holds_the_job(user_dir, other_dir, other):
    """`//etc//shadow` passes the grammar (it is an absolute path); the copy, as the user, is refused."""
    private = other_dir / "diary.txt"
    private.write_text("the other user's diary\n")
    os.chown(private, other.pw_uid, other.pw_gid)
    private.chmod(0o600)
    before = {p: digest(p) for p in (Path("/etc/shadow"), private)}
    jobs = []
    try:
        for source, shown in (("//etc//shadow", "/etc/shadow"), (str(private), str(private))):
            script = write_job(user_dir, f"in-{len(jobs)}.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme
#BB_LUA stage_in type=file source={source} destination=$DW_JOB_STRIPED/stolen
cp "$DW_JOB_STRIPED/stolen" {user_dir}/stolen-{len(jobs)}
""")
            jobs.append(submit(script))
            held = wait_reason(jobs[-1], "stage-in", timeout=180)
            assert said(held, f"cannot read source {shown}: Permission denied"), held
        assert job_fields(jobs[0]).get("JobState") != "RUNNING" and not list(user_dir.glob("stolen-*"))
    finally:
        cancel(*jobs)
    for job in jobs:
        wait_torn_down(job, timeout=180)
        assert leftovers(f"bbjob-{job}") == []
    assert {p: digest(p) for p in before} == before


def test_stage_out_onto_root_and_other_users_files_changes_neither(user_dir, other_dir, other):
    theirs = other_dir / "results.txt"
    theirs.write_text("the other user's results\n")
    os.chown(theirs, other.pw_uid, other.pw_gid)
    theirs.chmod(0o644)  # readable by all, writable by its owner only
    before = {p: (digest(p), p.stat().st_uid, p.stat().st_mode) for p in (Path("/etc/passwd"), theirs)}
    jobs = []
    try:
        for target in ("/etc/passwd", str(theirs)):
            script = write_job(user_dir, f"out-{len(jobs)}.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme
#BB_LUA stage_out type=file source=$DW_JOB_STRIPED/x destination={target}
echo "owned by the attacker" > "$DW_JOB_STRIPED/x"
""")
            jobs.append(submit(script))
            held = wait_reason(jobs[-1], "slurm_bb_data_out", timeout=180)
            assert said(held, f"cannot write {target} (through its temporary ") and said(held, "Permission denied"), \
                held
    finally:
        cancel(*jobs)  # --hurry: the failed stage-out's buffer is let go
    for job in jobs:
        wait_torn_down(job, timeout=180)
        assert leftovers(f"bbjob-{job}") == []
    assert {p: (digest(p), p.stat().st_uid, p.stat().st_mode) for p in before} == before
    assert sorted(os.listdir(other_dir)) == ["results.txt"]  # no temporary file left beside it


def test_writing_past_the_allocation_fails_inside_that_buffer_only(user_dir, other_dir, other):
    """The owner's job writes 6 GiB into 4 GiB; the other user's job on the same servers keeps working."""
    neighbour = write_job(other_dir, "neighbour.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme
set -e
for n in $(seq 1 40); do
    dd if=/dev/urandom of="$DW_JOB_STRIPED/f$n" bs=1M count=16 status=none
    sha256sum "$DW_JOB_STRIPED/f$n" >> {other_dir}/sums
    sleep 1
done
sha256sum -c --quiet {other_dir}/sums && echo whole > {other_dir}/verdict
""")
    flood = write_job(user_dir, "flood.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme
start=$(date +%s)
dd if=/dev/zero of="$DW_JOB_STRIPED/flood" bs=1M count=6144 2> {user_dir}/dd.err
echo "rc=$? seconds=$(( $(date +%s) - start ))" > {user_dir}/dd.rc
df -B1 --output=size "$DW_JOB_STRIPED" | tail -1 > {user_dir}/df.size
""")
    jobs = [submit(neighbour, user=OTHER)]
    try:
        wait_for(jobs[0], {"RUNNING"}, timeout=180)
        jobs.append(submit(flood))
        for job in jobs:
            wait_torn_down(job, timeout=600)
    finally:
        cancel(*jobs)
    rc = (user_dir / "dd.rc").read_text()
    assert not rc.startswith("rc=0"), rc
    error = (user_dir / "dd.err").read_text()
    assert "Disk quota exceeded" in error or "No space left on device" in error, error
    # A distributed buffer is bounded by its own brick, not quota: df shows what the brick's XFS offers,
    # at least the granule Slurm booked and at most the test bed's image (TestbedConfig.image_size).
    assert 4 * 1024**3 <= int((user_dir / "df.size").read_text()) <= TestbedConfig().image_size
    assert (other_dir / "verdict").read_text() == "whole\n"
    for job in jobs:
        assert leftovers(f"bbjob-{job}") == []


def test_a_jobs_own_name_speaks_for_no_other_job(user_dir, other_dir, other):
    """`scontrol -o show job` is KEY=VALUE text in which a job's name (and its output path and directives)
    may hold spaces, newlines and fields of their own. Read as text, the second user's job below (no
    buffer, its name a forged record) stood for the owner's running job: `bbctl sweep` took that job for
    ended with its teardown lost, and tore its buffer down mid-job (this test failed so, 2026-12-06).
    bbctl reads slurmctld's JSON (`squeue --json`): the owner's job keeps its buffer to the end."""
    victim_script = write_job(user_dir, "victim.sh", f"""
#BB_LUA jobdw capacity=1GiB pool=nvme
echo "still here" > "$DW_JOB_STRIPED/mine"
sleep 75
cat "$DW_JOB_STRIPED/mine" > {user_dir}/after
""")
    victim = submit(victim_script)
    jobs = [victim]
    try:
        wait_for(victim, {"RUNNING"}, timeout=180)
        forger_script = write_job(other_dir, "forger.sh", f"touch {other_dir}/ran\n")
        jobs.append(submit(forger_script, "-J", f"forger\nJobId={victim} BurstBufferState=teardown", user=OTHER))
        wait_torn_down(victim, timeout=300)
    finally:
        cancel(*jobs)
    assert (other_dir / "ran").exists()
    assert (user_dir / "after").read_text() == "still here\n", "the owner's buffer was taken mid-job"
    stages = [t["stage"] for t in json.loads(bbctl("show", str(victim)).stdout or "{}").get("timings", [])]
    assert "sweep" not in stages, stages
    assert leftovers(f"bbjob-{victim}") == []
