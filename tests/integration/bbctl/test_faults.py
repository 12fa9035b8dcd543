"""Faults injected for real at a named moment of a job's life (issue 11's fault matrix).

Each test submits a job as the unprivileged user through burst_buffer/lua, waits for the moment in
bbctl's log or record, injects the fault on the test bed (a glusterd killed or stopped, bbctl killed,
slurmctld restarted, the stage host's mount taken away, a brick filled), and then checks what the
matrix asks: the job either runs, or ends held with a reason that names the cause; no stage waits
past its timeout; the user's data on the "PFS" is untouched (checksums before and after); and once
the fault is gone, ``bbctl gc --repair`` leaves no volume, brick directory, mount or record.
The figures (how many runs, what held) are in docs/RELIABILITY.md, "Faults".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest

from bbctl import host
from tests.conftest import TESTBED_ROOT
from tests.integration.bbctl.slurmjobs import (
    BBCTL,
    BBCTL_CONFIG,
    ENV,
    bbctl,
    job_fields,
    leftovers,
    restart_slurmctld,
    said,
    submit,
    swept,
    teardown_lost,
    wait_for,
    wait_torn_down,
    write_job,
)
from tests.integration.bbctl.storage_servers import glusterd_pid, node, restart_glusterd

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("lua_slurm", "servers_given_back")]

LOG = TESTBED_ROOT / "bbctl" / "bbctl.log"


@pytest.fixture
def servers_given_back():
    """A fault may mark its server failing (server_fail_limit failed runs in a row: bbctl.server_health);
    the next test must find every server usable again, as an operator would leave it."""
    yield
    for server in servers():
        if server["state"] != "usable":
            assert bbctl("servers", "--resume", server["name"]).returncode == 0


def servers() -> list[dict]:
    return json.loads(bbctl("servers", "--json").stdout)["servers"]


def log_line(job: int, pattern: str, timeout: float = 180) -> str:
    """The first line of bbctl's log for job matching pattern (a regex), waiting for it."""
    wanted = re.compile(rf" {job} {pattern}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = LOG.read_text(errors="replace") if LOG.exists() else ""  # a fresh test bed has no log yet
        for line in text.splitlines():
            if wanted.search(line):
                return line
        time.sleep(0.2)
    raise AssertionError(f"job {job}: no log line {pattern!r} within {timeout:.0f} s")


def _log_time(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def held(job: int, timeout: float = 300) -> dict[str, str]:
    """Wait until Slurm holds the job (pending, priority 0) and return its fields."""
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        fields = job_fields(job)
        if fields.get("JobState") == "PENDING" and fields.get("Priority") == "0":
            return fields
        assert fields.get("JobState") not in ("COMPLETED", "FAILED"), f"job {job} was not held: {fields}"
        time.sleep(1)
    raise AssertionError(f"job {job} was not held within {timeout:.0f} s: {fields.get('JobState')} "
                         f"({fields.get('Reason')})")


def ended(job: int, timeout: float = 600) -> dict[str, str]:
    """Wait until the job completed, failed or is held (pending with priority 0): its fields then."""
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        fields = job_fields(job)
        state = fields.get("JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED") or (state == "PENDING" and fields.get("Priority") == "0"):
            return fields
        time.sleep(1)
    raise AssertionError(f"job {job} neither ended nor was held within {timeout:.0f} s: {fields.get('JobState')} "
                         f"({fields.get('Reason')})")


def cancel_and_check_nothing_left(job: int) -> None:
    subprocess.run(["scancel", str(job)], env=ENV, check=True)
    wait_torn_down(job, timeout=300)
    repaired = bbctl("gc", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert leftovers(f"bbjob-{job}") == []
    assert torn_down(str(job))


def tree(root: Path, files: int, size: int) -> dict[str, str]:
    """files files of size bytes under root, owned by the user: {relative path: sha256}."""
    root.mkdir()
    owner = root.parent.stat()
    sums = {}
    for n in range(files):
        data = hashlib.sha256(str(n).encode()).digest() * (size // 32)
        path = root / f"f{n:05d}"
        path.write_bytes(data)
        os.chown(path, owner.st_uid, owner.st_gid)
        sums[path.name] = hashlib.sha256(data).hexdigest()
    os.chown(root, owner.st_uid, owner.st_gid)
    return sums


def sums_of(root: Path) -> dict[str, str]:
    return {p.name: sums_of_one(p) for p in root.iterdir()}


def stage_pid(job: int, stage: str, timeout: float = 180) -> int:
    """The pid of the bbctl process running job's stage, from its record's stage_now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = bbctl("show", str(job))
        now = json.loads(shown.stdout).get("stage_now") if shown.returncode == 0 else None
        if now and now.get("stage") == stage and now.get("pid"):
            return int(now["pid"])
        time.sleep(0.2)
    raise AssertionError(f"job {job}: {stage} never showed its pid")


def copying(job: int, stage: str = "stage-in", timeout: float = 180) -> None:
    """Until job's stage-in (or stage-out) has copied something (its progress file is written)."""
    progress = TESTBED_ROOT / "bbctl" / "runs" / str(job) / f"{stage}.progress"
    deadline = time.monotonic() + timeout
    while not (progress.exists() and progress.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert progress.exists(), f"job {job}: {stage} never started copying"


STRIPED_JOB = """\
#BB_LUA jobdw capacity=8GiB pool=nvme access_mode=striped type=scratch
hostname
"""


def test_glusterd_killed_during_setup_holds_the_job_and_gc_leaves_nothing(user_dir):
    job = submit(write_job(user_dir, "job.sh", STRIPED_JOB))  # disperse 2+1: a brick on every server
    log_line(job, r"setup: allocated")
    os.kill(glusterd_pid(3), signal.SIGKILL)
    try:
        fields = held(job)
        assert "setup" in fields["Reason"], fields["Reason"]
    finally:
        restart_glusterd(3)
    cancel_and_check_nothing_left(job)


def test_glusterd_stopped_5_s_during_setup_is_waited_out_and_the_job_runs(user_dir):
    job = submit(write_job(user_dir, "job.sh", STRIPED_JOB))
    log_line(job, r"setup: allocated")
    pid = glusterd_pid(3)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(5)
    finally:
        os.kill(pid, signal.SIGCONT)
    fields = ended(job)
    assert fields["JobState"] == "COMPLETED", fields
    wait_torn_down(job, timeout=180)
    assert leftovers(f"bbjob-{job}") == []


def test_bbctl_killed_during_stage_in_holds_the_job_and_leaves_the_source_as_it_was(user_dir):
    source = user_dir / "in"
    before = tree(source, 1500, 4096)  # many small files into a dispersed buffer: stage-in takes a while
    job = submit(write_job(user_dir, "job.sh", f"""\
#BB_LUA jobdw capacity=8GiB pool=nvme access_mode=striped type=scratch
#BB_LUA stage_in type=directory source={source} destination=$DW_JOB_STRIPED/in
hostname
"""))
    os.kill(stage_pid(job, "stage-in"), signal.SIGKILL)
    fields = held(job)
    assert "data_in" in fields["Reason"], fields["Reason"]
    assert sums_of(source) == before
    cancel_and_check_nothing_left(job)


def test_slurmctld_restarted_during_stage_in_the_job_still_ends(user_dir):
    source = user_dir / "in"
    before = tree(source, 1500, 4096)
    job = submit(write_job(user_dir, "job.sh", f"""\
#BB_LUA jobdw capacity=8GiB pool=nvme access_mode=striped type=scratch
#BB_LUA stage_in type=directory source={source} destination=$DW_JOB_STRIPED/in
ls $DW_JOB_STRIPED/in | wc -l > {user_dir}/count
"""))
    stage_pid(job, "stage-in")
    restart_slurmctld()
    fields = ended(job)
    assert fields["JobState"] == "COMPLETED", fields
    assert (user_dir / "count").read_text().strip() == "1500"
    assert sums_of(source) == before
    wait_torn_down(job, timeout=180)
    assert leftovers(f"bbjob-{job}") == []


def test_the_stage_hosts_mount_gone_mid_copy_ends_the_stage_and_leaves_nothing(user_dir):
    source = user_dir / "in"
    before = tree(source, 1500, 4096)
    job = submit(write_job(user_dir, "job.sh", f"""\
#BB_LUA jobdw capacity=8GiB pool=nvme access_mode=striped type=scratch
#BB_LUA stage_in type=directory source={source} destination=$DW_JOB_STRIPED/in
ls $DW_JOB_STRIPED/in | wc -l > {user_dir}/count
"""))
    copying(job)
    mount = TESTBED_ROOT / "bbctl" / "stage" / f"bbjob-{job}"
    subprocess.run(["umount", "-l", str(mount)], check=True)
    fields = ended(job)
    if fields["JobState"] == "PENDING":  # the stage failed: held, with the reason
        assert "data_in" in fields["Reason"], fields["Reason"]
        cancel_and_check_nothing_left(job)
    else:  # the copy went on through libgfapi: then every file must have arrived
        assert (user_dir / "count").read_text().strip() == "1500"
        wait_torn_down(job, timeout=180)
        assert leftovers(f"bbjob-{job}") == []
    assert sums_of(source) == before


def test_a_brick_full_during_stage_in_holds_the_job_with_the_reason(user_dir):
    source = user_dir / "in"
    before = tree(source, 8, 4 * 1024 * 1024)
    job = submit(write_job(user_dir, "job.sh", f"""\
#BB_LUA jobdw capacity=4GiB pool=nvme access_mode=striped type=scratch
#BB_LUA stage_in type=directory source={source} destination=$DW_JOB_STRIPED/in
hostname
"""))
    line = log_line(job, r"setup: allocated 1 brick\(s\)")
    _server, brick = re.search(r": (bbnode\d+):(\S+)", line).groups()
    filler = Path(brick) / ".filler"  # beside the buffer's brick directory, on the brick's XFS
    free = os.statvfs(brick)
    subprocess.run(["fallocate", "-l", str(max(free.f_bavail * free.f_frsize - 8 * 1024 * 1024, 0)),
                    str(filler)], check=True)
    try:
        fields = held(job)
        assert "data_in" in fields["Reason"], fields["Reason"]
        assert said(fields["Reason"], "No space left on device"), fields["Reason"]
        assert sums_of(source) == before
    finally:
        filler.unlink()
    cancel_and_check_nothing_left(job)


def test_bbctl_killed_during_stage_out_keeps_the_buffer_never_half_replaces_and_a_rerun_finishes(user_dir):
    out = user_dir / "out"
    before = tree(out, 1500, 4096)  # what the "PFS" holds before: each file must stay whole, old or new
    script = write_job(user_dir, "job.sh", f"""\
#BB_LUA jobdw capacity=8GiB pool=nvme access_mode=striped type=scratch
#BB_LUA stage_out type=directory source=$DW_JOB_STRIPED/out destination={out}
mkdir "$DW_JOB_STRIPED/out"
for f in {out}/*; do tr 'a-z' 'A-Z' < "$f" > "$DW_JOB_STRIPED/out/${{f##*/}}"; done
""")
    job = submit(script)
    new = {name: hashlib.sha256((out / name).read_bytes().upper()).hexdigest() for name in before}
    pid = stage_pid(job, "stage-out", timeout=600)
    copying(job, "stage-out")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 300
    fields = job_fields(job)
    while "slurm_bb_data_out" not in fields.get("Reason", "") and time.monotonic() < deadline:
        time.sleep(1)
        fields = job_fields(job)
    assert fields["JobState"] == "STAGE_OUT" and "data_out" in fields["Reason"], fields
    assert not json.loads(bbctl("show", str(job)).stdout)["torn_down"], "the job's results must be kept"
    temporaries = [p.name for p in out.iterdir() if p.name not in before]
    assert all(re.fullmatch(r"\..+\.bb-stage\.tmp", name) for name in temporaries), temporaries
    for name in before:  # every file whole: the old one, or the new one
        assert sums_of_one(out / name) in (before[name], new[name]), f"{name} is half-replaced"

    rerun = bbctl("stage-out", "--job-id", str(job), "--script", str(script))  # the operator's way on
    assert rerun.returncode == 0, rerun.stderr
    assert sums_of(out) == new, "after the rerun: every file new, no temporary left"
    subprocess.run(["scancel", "--hurry", str(job)], env=ENV, check=True)
    wait_torn_down(job, timeout=300)
    assert leftovers(f"bbjob-{job}") == []


def test_scancel_hurry_after_a_killed_stage_out_leaves_no_temporary_in_the_destination(user_dir):
    """The user gives up on the results: the teardown removes, as the user, the temporaries the
    killed stage-out left beside their files, and every file stays whole (old or new)."""
    job, out, before, new = stage_out_job(user_dir)
    kill_stage_out_then_hurry(job, out, before, new, "stage-out")


def kill_stage_out_then_hurry(job: int, out: Path, before: dict[str, str], new: dict[str, str], what: str) -> None:
    """SIGKILL job's bbctl mid stage-out (``what``: stage-out or write-back), wait for Slurm to show the
    failed data_out, scancel --hurry; then only the user's files are left in out, each whole (old or
    new), the teardown said it removed temporaries, and nothing of the buffer is left."""
    pid = stage_pid(job, "stage-out", timeout=600)
    copying(job, "stage-out")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 300
    while "data_out" not in job_fields(job).get("Reason", "") and time.monotonic() < deadline:
        time.sleep(1)
    assert any(p.name.endswith(".bb-stage.tmp") for p in out.iterdir()), "the kill left no temporary to remove"
    subprocess.run(["scancel", "--hurry", str(job)], env=ENV, check=True)
    wait_torn_down(job, timeout=300)
    assert sorted(p.name for p in out.iterdir()) == sorted(before), "only the user's files are left"
    each_whole(out, before, new)
    assert log_line(job, rf"teardown: removed \d+ temporary file\(s\) the interrupted {what}", timeout=5)
    assert leftovers(f"bbjob-{job}") == []


CACHE_JOB = """\
#BB_LUA jobdw capacity=4GiB pool=nvme type=cache pfs={out}
cd "$DW_JOB_STRIPED"
for f in *; do tr 'a-z' 'A-Z' < "$f" > "$f.new" && mv "$f.new" "$f"; done
"""


def test_scancel_hurry_after_a_killed_cache_write_back_leaves_no_temporary_in_the_cached_directory(user_dir):
    """A cache buffer's write-back is its stage-out: killed mid-way and given up on with --hurry, the
    teardown removes, as the user, the temporaries it left in pfs=DIR, and every file stays whole."""
    out = user_dir / "out"
    before = tree(out, 1500, 4096)
    new = upper_sums(out, before)
    job = submit(write_job(user_dir, "cache.sh", CACHE_JOB.format(out=out)))
    kill_stage_out_then_hurry(job, out, before, new, "write-back")


def sums_of_one(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gc_tears_down_a_built_buffer_whose_job_slurm_does_not_have(user_dir):
    """The safety net for a teardown that never came: slurmctld is asked about the job itself."""
    owner = user_dir.stat()
    script = write_job(user_dir, "orphan.sh", "#BB_LUA jobdw capacity=4GiB pool=nvme\nhostname\n")
    made = bbctl("setup", "--job-id", "990001", "--uid", str(owner.st_uid), "--gid", str(owner.st_gid),
                 "--script", str(script))
    assert made.returncode == 0, made.stderr
    assert bbctl("gc", "--older-than", "3600").returncode == 0
    assert bbctl("show", "990001").returncode == 0, "a recent buffer must be left alone"
    report = bbctl("gc", "--older-than", "0")
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["stale_buffers"] == ["990001"]
    assert leftovers("bbjob-990001") == []


def torn_down(key: str) -> bool:
    shown = bbctl("show", key)
    return shown.returncode == 3 or json.loads(shown.stdout)["torn_down"]


# --- the rest of the matrix: a brick process stopped, slurmctld restarted in stage-out, a playbook timed
# out in create, a storage server down at teardown -------------------------------------------------------

STAGE_OUT_JOB = """\
#BB_LUA jobdw capacity=8GiB pool=nvme access_mode=striped type=scratch
#BB_LUA stage_out type=directory source=$DW_JOB_STRIPED/out destination={out}
mkdir "$DW_JOB_STRIPED/out"
for f in {out}/*; do tr 'a-z' 'A-Z' < "$f" > "$DW_JOB_STRIPED/out/${{f##*/}}"; done
"""


def stage_out_job(user_dir: Path) -> tuple[int, Path, dict[str, str], dict[str, str]]:
    """(job, its output directory, sums before, sums the stage-out must leave): a striped job that
    rewrites 1,500 small files of the "PFS" in upper case and stages them back over the old ones."""
    out = user_dir / "out"
    before = tree(out, 1500, 4096)
    job = submit(write_job(user_dir, "job.sh", STAGE_OUT_JOB.format(out=out)))
    return job, out, before, upper_sums(out, before)


def upper_sums(out: Path, before: dict[str, str]) -> dict[str, str]:
    """The sums of out's files once a job has rewritten each in upper case."""
    return {name: hashlib.sha256((out / name).read_bytes().upper()).hexdigest() for name in before}


def each_whole(out: Path, before: dict[str, str], new: dict[str, str]) -> None:
    """Every file of out is the old one or the new one, never a mixture or a part."""
    for name in before:
        assert sums_of_one(out / name) in (before[name], new[name]), f"{name} is half-replaced"


def brick_pid(volume: str, server: int) -> int:
    """The pid of volume's brick process (glusterfsd) on test-bed server ``server``, as glusterd reports it."""
    done = subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={node(1).socket}", "volume", "status",
                           volume, "--xml"], capture_output=True, text=True, check=True)
    for brick in ET.fromstring(done.stdout).iter("node"):
        if brick.findtext("hostname") == node(server).address and brick.findtext("pid", "-1") not in ("-1", "N/A"):
            return int(brick.findtext("pid"))
    raise AssertionError(f"{volume} has no running brick on server {server}: {done.stdout}")


def test_a_brick_process_stopped_during_stage_out_delays_it_and_the_job_still_completes(user_dir):
    """SIGSTOP, not a kill: the brick answers nothing, so the client waits out network.ping-timeout
    (42 s) before it goes on with the other two bricks of the 2+1 set."""
    job, out, before, new = stage_out_job(user_dir)
    stage_pid(job, "stage-out", timeout=600)
    copying(job, "stage-out")
    brick = brick_pid(f"bbjob-{job}", 3)
    os.kill(brick, signal.SIGSTOP)
    try:
        fields = ended(job, timeout=600)
        each_whole(out, before, new)
    finally:
        os.kill(brick, signal.SIGCONT)
    assert fields["JobState"] == "COMPLETED", fields
    assert sums_of(out) == new
    wait_torn_down(job, timeout=300)
    assert leftovers(f"bbjob-{job}") == []
    assert not host.pid_alive(brick), "the stopped brick process outlived its volume"


def test_a_brick_process_stopped_during_teardown_is_waited_for_and_nothing_is_left(user_dir):
    """Stopped as teardown starts (the stage host's unmount, then the volume's stop and delete), for
    20 s: teardown waits for it and then leaves nothing, the brick process included. (Stopped earlier,
    while the job runs, it holds the compute node's unmount in post-run until it answers again:
    104 s here; docs/RELIABILITY.md.)"""
    job = submit(write_job(user_dir, "job.sh", STRIPED_JOB))
    deadline = time.monotonic() + 300
    while job_fields(job).get("JobState") not in ("RUNNING", "COMPLETING", "COMPLETED") \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    brick = brick_pid(f"bbjob-{job}", 3)
    log_line(job, r"teardown: buffer_destroy\.yml", timeout=300)
    os.kill(brick, signal.SIGSTOP)
    try:
        time.sleep(20)
    finally:
        os.kill(brick, signal.SIGCONT)
    wait_torn_down(job, timeout=300)
    assert leftovers(f"bbjob-{job}") == []
    deadline = time.monotonic() + 30
    while host.pid_alive(brick) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not host.pid_alive(brick), "the stopped brick process outlived its volume"


def test_slurmctld_restarted_during_stage_out_the_job_completes_with_every_file_new(user_dir):
    job, out, before, new = stage_out_job(user_dir)
    stage_pid(job, "stage-out", timeout=600)
    restart_slurmctld()
    fields = ended(job)
    each_whole(out, before, new)
    assert fields["JobState"] == "COMPLETED", fields
    assert sums_of(out) == new
    wait_torn_down(job, timeout=180)
    assert leftovers(f"bbjob-{job}") == []


def test_a_create_that_outlives_its_playbook_timeout_fails_setup_and_teardown_leaves_nothing(user_dir, tmp_path):
    """OtherTimeout=20 gives setup's playbook 18 s; glusterd of one server stopped for 40 s holds the
    volume create (glusterd locks every peer) past it. The create may still finish on the servers
    after ansible-runner gave up: teardown and gc must find and remove what it made."""
    conf = tmp_path / "burst_buffer.conf"
    conf.write_text("StageInTimeout=3600\nStageOutTimeout=3600\nOtherTimeout=20\n")
    short = tmp_path / "bbctl.yml"
    short.write_text(BBCTL_CONFIG.read_text() + f"burst_buffer_conf: {conf}\n")
    owner = user_dir.stat()
    script = write_job(user_dir, "timeout.sh", STRIPED_JOB)
    started = time.monotonic()
    setup = subprocess.Popen([BBCTL, "--config", str(short), "setup", "--job-id", "990101", "--uid",
                              str(owner.st_uid), "--gid", str(owner.st_gid), "--script", str(script)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    log_line(990101, r"setup: allocated")
    glusterd = glusterd_pid(3)
    os.kill(glusterd, signal.SIGSTOP)
    try:
        _out, err = setup.communicate(timeout=120)
        took = time.monotonic() - started
    finally:
        os.kill(glusterd, signal.SIGCONT)
    assert setup.returncode != 0, "setup cannot have succeeded with a server's glusterd stopped"
    assert took < 20, f"setup ran {took:.1f} s, past OtherTimeout: {err}"
    assert "timed out" in err or "timeout" in err, err
    torn = bbctl("teardown", "--job-id", "990101", "--script", str(script))
    assert torn.returncode == 0, torn.stdout + torn.stderr
    repaired = bbctl("gc", "--repair", "--older-than", "0")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert leftovers("bbjob-990101") == []
    assert bbctl("show", "990101").returncode == 3


def test_a_storage_server_down_at_teardown_leaves_the_buffer_to_gc_which_removes_it_once_it_is_back(user_dir):
    job = submit(write_job(user_dir, "job.sh", STRIPED_JOB.replace("hostname", "sleep 10")))
    deadline = time.monotonic() + 300
    while job_fields(job).get("JobState") != "RUNNING" and time.monotonic() < deadline:
        time.sleep(1)
    brick = brick_pid(f"bbjob-{job}", 3)
    os.kill(glusterd_pid(3), signal.SIGKILL)  # server 3 gone: its glusterd and its brick
    os.kill(brick, signal.SIGKILL)
    try:
        fields = ended(job)
        assert fields["JobState"] == "COMPLETED", fields
        started = log_line(job, r"teardown: buffer_destroy\.yml")
        failed = log_line(job, r"teardown: failed in")
        took = (_log_time(failed) - _log_time(started)).total_seconds()
        assert took < 60, f"a teardown that cannot succeed took {took:.0f} s to say so"
        said_why = "\n".join(line for line in LOG.read_text(errors="replace").splitlines()
                             if f" {job} teardown:" in line and "FAILED" in line)
        assert "Some of the peers are down" in said_why and "127.1.1.3 are disconnected" in said_why, said_why
        assert json.loads(bbctl("show", str(job)).stdout)["torn_down"] is False
    finally:
        # glusterd 3 comes back thinking the volume started (it missed the stop) and starts its
        # self-heal daemon, then forgets it when the volume is deleted (GlusterFS 10.3): it serves
        # the volumes of later tests, and `bbctl testbed down` ends it (storage.forgotten_daemons)
        restart_glusterd(3)
    repaired = bbctl("gc", "--repair", "--older-than", "0")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert leftovers(f"bbjob-{job}") == []
    # bbctl.server_health: the server that was down is blamed (gc's success has reset its count since);
    # the two that reported it missing are not
    health = {server["name"]: server for server in servers()}
    assert "operational" in health["bbnode3"]["last_error"], health["bbnode3"]
    assert "Some of the peers are down" not in health["bbnode1"]["last_error"], health["bbnode1"]
    assert "disconnected" not in health["bbnode2"]["last_error"], health["bbnode2"]


def node_fields(name: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "node", name], env=ENV, capture_output=True, text=True,
                         check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out)) | {"Reason": out.split("Reason=", 1)[-1].strip()}


def test_a_node_where_post_run_cannot_unmount_is_drained_and_the_job_still_stages_out(user_dir):
    """A process left in the buffer on the compute node (outside the job: Slurm cannot end it) keeps
    the mount busy; post-run's unmount fails there, and bbctl drains the node as Slurm drains one
    whose epilog fails. The job goes on: Slurm 22.05 would run no stage-out after a failed post-run
    (the job waited in stage-out until `scancel --hurry` discarded its output). Its output is staged
    out, the teardown unmounts the node once the process is gone, and nothing is left."""
    result = user_dir / "result"
    job = submit(write_job(user_dir, "job.sh", f"""\
#BB_LUA jobdw capacity=4GiB pool=nvme
#BB_LUA stage_out type=file source=$DW_JOB_STRIPED/result destination={result}
echo "made in the buffer" > $DW_JOB_STRIPED/result
sleep 15
"""))
    fields = wait_for(job, {"RUNNING"}, timeout=180)
    node = fields["NodeList"]
    mount = Path(json.loads(bbctl("show", str(job)).stdout)["mount_path"])
    holder = subprocess.Popen(["sleep", "600"], cwd=mount)  # ours: ended by pid below
    try:
        deadline = time.monotonic() + 240
        while "DRAIN" not in node_fields(node).get("State", "") and time.monotonic() < deadline:
            time.sleep(1)
        drained = node_fields(node)
        assert "DRAIN" in drained["State"], drained
        assert drained["Reason"].startswith(f"bbctl: job {job} post-run: unmount of {mount} failed"), drained
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], env=ENV, check=False)
    assert "DRAIN" not in node_fields(node)["State"]
    wait_torn_down(job, timeout=300)
    assert job_fields(job)["JobState"] == "COMPLETED", job_fields(job)
    assert result.read_text() == "made in the buffer\n"
    assert leftovers(f"bbjob-{job}") == []


def test_every_teardown_slurm_loses_for_held_jobs_cancelled_together_is_done_by_bbctl_sweep(user_dir):
    """Slurm 22.05 SIGKILLs the scripts of a job it cancels, sometimes the teardown it has just started
    among them ("teardown for JobId=N terminated by slurmctld"), and never starts another: the test
    bed's `bbctl sweep --every 10` must do each such teardown, and only those."""
    secret = user_dir / "secret"
    secret.write_text("root's\n")
    secret.chmod(0o600)  # root's: the user's stage-in cannot read it, so each job is held
    jobs = [submit(write_job(user_dir, f"job{n}.sh", f"""\
#BB_LUA jobdw capacity=1GiB pool=nvme
#BB_LUA stage_in type=file source={secret} destination=$DW_JOB_STRIPED/secret
hostname
""")) for n in range(6)]
    waiting = set(jobs)
    deadline = time.monotonic() + 300
    while waiting and time.monotonic() < deadline:  # each cancelled as soon as it is held, as a user would
        for job in sorted(waiting):
            if job_fields(job).get("Priority") == "0":
                subprocess.run(["scancel", str(job)], env=ENV, check=True)
                waiting.discard(job)
        time.sleep(0.05)
    assert not waiting, f"jobs {sorted(waiting)} were never held"
    for job in jobs:
        wait_torn_down(job, timeout=120)
        assert leftovers(f"bbjob-{job}") == []
    lost = {job for job in jobs if teardown_lost(job)}
    done = {job for job in jobs if swept(job)}
    assert done == lost, f"Slurm lost the teardowns of {sorted(lost)}; bbctl sweep did {sorted(done)}"


def test_a_storage_server_whose_glusterd_hangs_is_counted_by_the_survey(user_dir):
    """A stage that times out blames no server (the task that hangs may be another's, waiting on it);
    the survey asks each server alone, so one whose glusterd is stopped (SIGSTOP: connected, never
    answering) fails its own task after the survey's 30 s glusterd timeout and counts one failure;
    the servers that answered count none."""
    before = {server["name"]: server["failures"] for server in servers()}
    glusterd = glusterd_pid(3)
    os.kill(glusterd, signal.SIGSTOP)
    started = time.monotonic()
    try:
        surveyed = bbctl("reconcile", "--json")
        took = time.monotonic() - started
    finally:
        os.kill(glusterd, signal.SIGCONT)
    try:
        report = json.loads(surveyed.stdout)
        assert "bbnode3" in report["unanswered"] and "Request timed out" in report["unanswered"]["bbnode3"], report
        assert took < 90, f"the survey took {took:.0f} s"
        after = {server["name"]: server for server in servers()}
        assert after["bbnode3"]["failures"] == before.get("bbnode3", 0) + 1, after["bbnode3"]
        assert "did not answer bbctl's survey" in after["bbnode3"]["last_error"], after["bbnode3"]
        assert {name: after[name]["failures"] for name in ("bbnode1", "bbnode2") if name in after} == {
            name: count for name, count in before.items() if name in ("bbnode1", "bbnode2")}
    finally:
        assert bbctl("servers", "--resume", "bbnode3").returncode == 0
