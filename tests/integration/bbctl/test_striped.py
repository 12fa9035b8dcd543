"""Striped buffers through real Slurm: one file as large as the buffer, full means a clean error, a lost brick
loses nothing.

A striped buffer is a dispersed GlusterFS volume (bbctl.layouts): data bricks plus one of redundancy. These
jobs, submitted by the unprivileged user through burst_buffer/lua, write what the issue asked for: a 23 GiB
file into a 24 GiB buffer (each test-bed brick holds 4 GiB), then on until the buffer is full; many files
until full; and a file written while one brick process is killed. Each ends with nothing left. Then what
the job is told: no BB_JOB_STRIPED_MAX_FILE for one disperse set, the largest file for several (a test bed of
20 bricks or more: ``bbctl testbed up --bricks 7``), and sbatch refusing a buffer the pool can never hold.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from bbctl import layouts
from bbctl.errors import BBError
from bbctl.pools import Brick, Pool
from bbctl.testbed.config import TestbedConfig
from tests.integration.bbctl.slurmjobs import (
    FINISHED,
    GLUSTERD_SOCKET,
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

GiB = 1024**3
FULL = ("Disk quota exceeded", "No space left on device")  # what a full buffer should answer; never a hang
STUCK_AT_MOST = 10.0  # seconds a writer may wait between its last byte and its error
# Known limit (docs/OPERATOR_GUIDE.md, "Buffer layouts"): each brick's quota judges a write by itself,
# so at the exact limit some bricks of a dispersed set may refuse a write that others take, and the
# erasure code answers EIO;
# the file written last then answers EIO too. Seen in 1 of 2 CI runs of the 24 GiB fill on 2026-11-29
# (after allocsize=64k removed the block-count cause). The tests still require an error within seconds,
# a clean teardown and nothing left; an EIO ending is reported as this expected failure, not hidden.
EIO = "Input/output error"


def full_or_known_eio(error: str) -> None:
    if EIO in error and not any(reason in error for reason in FULL):
        pytest.xfail(f"a dispersed buffer filled to its exact limit answered EIO (a known limit: "
                     f"docs/OPERATOR_GUIDE.md, 'Buffer layouts'): {error}")
    assert any(reason in error for reason in FULL), error


def run(user_dir: Path, name: str, body: str, timeout: float) -> int:
    """Submit ``body`` as the user, wait until it has ended and its buffer is torn down; its job id."""
    job = submit(write_job(user_dir, name, body))
    wait_torn_down(job, timeout=timeout)
    fields = wait_for(job, FINISHED, timeout=5)
    files = {path.name: path.read_text(errors="replace")[-2000:] for path in sorted(user_dir.iterdir())
             if path.is_file() and path.suffix != ".sh"}
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), files
    assert leftovers(f"bbjob-{job}") == []
    return job


def stuck_seconds(growth: Path, end: Path) -> float:
    """From ``time size`` samples and the writer's end time: how long the size stood still before the end."""
    samples = [line.split() for line in growth.read_text().splitlines() if len(line.split()) == 2]
    last_change = float(samples[0][0])
    for (_, before), (when, after) in itertools.pairwise(samples):
        if after != before:
            last_change = float(when)
    return float(end.read_text()) - last_change


def test_one_file_as_large_as_a_24gib_buffer_then_a_clean_error_when_full(user_dir):
    out = user_dir
    run(user_dir, "big.sh", f"""
#BB_LUA jobdw capacity=24GiB pool=nvme
set -u
f="$DW_JOB_STRIPED/big"
df -B1 --output=size "$DW_JOB_STRIPED" | tail -1 | tr -d ' ' > {out}/df
dd if=/dev/zero of="$f" bs=4M count=5888 conv=fsync status=none 2> {out}/dd23; echo $? > {out}/rc23
stat -c %s "$f" > {out}/size23
( while sleep 0.5; do echo "$(date +%s.%N) $(stat -c %s "$f")"; done ) > {out}/growth &
timeout 600 dd if=/dev/zero of="$f" bs=4M oflag=append conv=notrunc,fsync status=none 2> {out}/ddfull
echo $? > {out}/rcfull; date +%s.%N > {out}/end; kill %1
stat -c %s "$f" > {out}/sizefull 2>&1 || true
""", timeout=1500)
    assert int((out / "df").read_text()) == 24 * GiB  # what the job sees is what Slurm booked
    assert (out / "rc23").read_text().strip() == "0", (out / "dd23").read_text()
    assert int((out / "size23").read_text()) == 23 * GiB
    assert (out / "rcfull").read_text().strip() == "1", "the writer was not stopped by an error"
    assert stuck_seconds(out / "growth", out / "end") < STUCK_AT_MOST
    full_or_known_eio((out / "ddfull").read_text())
    assert int((out / "sizefull").read_text()) >= 0.97 * 24 * GiB


@pytest.mark.parametrize(("access", "area"), [("striped", "DW_JOB_STRIPED"), ("private", "DW_JOB_PRIVATE")],
                         ids=["disperse", "distribute"])
def test_many_files_until_full_then_a_clean_error(user_dir, access, area):
    """Both layouts bbctl ships: a striped buffer (disperse 2+1) and a private one (distribute, 2 bricks)."""
    out = user_dir
    run(user_dir, "many.sh", f"""
#BB_LUA jobdw capacity=8GiB pool=nvme access_mode={access}
set -u
df -B1 --output=size "${area}" | tail -1 | tr -d ' ' > {out}/df
i=0
( while sleep 0.5; do echo "$(date +%s.%N) $(du -sb "${area}" | cut -f1)"; done ) > {out}/growth &
while timeout 120 dd if=/dev/zero of="${area}/f$i" bs=4M count=16 conv=fsync status=none 2> {out}/dd; do
    i=$((i+1))
done
date +%s.%N > {out}/end; kill %1
du -sb --apparent-size "${area}" | cut -f1 > {out}/bytes
""", timeout=900)
    if access == "striped":
        assert int((out / "df").read_text()) == 8 * GiB  # what Slurm booked, quota enforces and df shows
    else:  # no quota (layouts.Layout.quota): df shows the two bricks' XFS, at least what Slurm booked
        assert 8 * GiB <= int((out / "df").read_text()) <= 2 * TestbedConfig().image_size
    assert stuck_seconds(out / "growth", out / "end") < STUCK_AT_MOST
    full_or_known_eio((out / "dd").read_text())
    assert int((out / "bytes").read_text()) >= 0.95 * 8 * GiB


def brick_pids(volume: str) -> list[int]:
    """The brick processes of ``volume`` (``volume status`` also lists self-heal and quota daemons)."""
    xml = subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={GLUSTERD_SOCKET}", "volume", "status",
                          volume, "--xml"], capture_output=True, text=True, check=True).stdout
    nodes = ElementTree.fromstring(xml).iter("node")
    return [int(node.findtext("pid")) for node in nodes if (node.findtext("path") or "").startswith("/")]


def test_a_striped_buffer_keeps_the_jobs_data_when_a_brick_process_dies(user_dir):
    out = user_dir
    script = write_job(user_dir, "brick.sh", f"""
#BB_LUA jobdw capacity=8GiB pool=nvme
set -eu
head -c 1G /dev/urandom > "$DW_JOB_STRIPED/data"
sha256sum < "$DW_JOB_STRIPED/data" > {out}/before
touch {out}/written
while [ ! -e {out}/killed ]; do sleep 0.5; done
head -c 256M /dev/urandom >> "$DW_JOB_STRIPED/data"   # and it takes new writes with a brick gone
sha256sum < "$DW_JOB_STRIPED/data" > {out}/after
head -c 1G "$DW_JOB_STRIPED/data" | sha256sum > {out}/first
""")
    job = submit(script)
    deadline = time.monotonic() + 600
    while not (out / "written").exists():
        assert time.monotonic() < deadline, "the job did not write its data"
        time.sleep(0.5)
    pids = brick_pids(f"bbjob-{job}")
    assert len(pids) == 3  # two data bricks and one of redundancy
    subprocess.run(["kill", "-KILL", str(pids[1])], check=True)  # by pid: a brick of this job's volume only
    (out / "killed").touch()
    wait_torn_down(job, timeout=600)
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0", (out / f"slurm-{job}.out").read_text()
    assert (out / "first").read_text() == (out / "before").read_text()  # what was there survives
    assert (out / "after").read_text() != (out / "before").read_text()  # and the append landed
    assert leftovers(f"bbjob-{job}") == []


# ------------------------------------------------------------------ the largest file, and what a pool can hold

def nvme_bricks() -> int:
    """Bricks in the test bed's pool (nine by default: three servers of three)."""
    pools = json.loads(bbctl("pools", "--datawarp").stdout)["pools"]
    [nvme] = [pool for pool in pools if pool["id"] == "nvme"]
    assert nvme["granularity"] == 4 * GiB
    return nvme["quantity"]


def test_sbatch_refuses_a_buffer_the_pool_can_never_hold_naming_what_fits(user_dir):
    """As many granules as the pool has bricks: Slurm books it, but the redundancy brick would not fit."""
    bricks = nvme_bricks()
    capacity = bricks * 4 * GiB
    pool = Pool("nvme", 4 * GiB, tuple(Brick("nvme", "s", "s", f"/b{n}", f"/d{n}") for n in range(bricks)))
    with pytest.raises(BBError) as expected:
        layouts.check_fits(layouts.plan(capacity, 4 * GiB, striped=True), capacity, pool)
    script = write_job(user_dir, "toobig.sh", f"#BB_LUA jobdw capacity={bricks * 4}GiB pool=nvme\nhostname\n")
    error = sbatch_error(script)
    assert str(expected.value) in error  # "capacity=36GiB needs disperse 9+1, 10 bricks; ... at most 32GiB"


def max_file_job(user_dir: Path, name: str, capacity: str) -> tuple[str, dict]:
    """Run a job of a striped buffer of ``capacity``: (its $BB_JOB_STRIPED_MAX_FILE or "unset", its buffer
    in ``bbctl status --json`` while it ran)."""
    out = user_dir
    script = write_job(user_dir, name, f"""
#BB_LUA jobdw capacity={capacity} pool=nvme
set -u
echo "${{BB_JOB_STRIPED_MAX_FILE-unset}}" > {out}/max_file
touch {out}/ready
while [ ! -e {out}/done ]; do sleep 0.5; done
""")
    job = submit(script)
    deadline = time.monotonic() + 900
    while not (out / "ready").exists():
        assert time.monotonic() < deadline, f"job {job} did not start: {job_fields(job).get('Reason')}"
        time.sleep(0.5)
    status = json.loads(bbctl("status", "--json").stdout)
    (out / "done").touch()
    wait_torn_down(job, timeout=600)
    assert wait_for(job, FINISHED, timeout=5)["JobState"] == "COMPLETED"
    assert leftovers(f"bbjob-{job}") == []
    for name in ("ready", "done"):
        (out / name).unlink()
    buffer = next(b for b in status["buffers"] if b["key"] == str(job))
    return (out / "max_file").read_text().strip(), buffer


def test_one_disperse_set_sets_no_file_limit(user_dir):
    max_file, status = max_file_job(user_dir, "oneset.sh", "8GiB")  # disperse 2+1: a file may fill the buffer
    assert max_file == "unset"
    assert (status["layout"], status["max_file"]) == ("disperse 2+1", None)


def test_a_buffer_of_several_disperse_sets_tells_the_job_its_largest_file(user_dir):
    if nvme_bricks() < 20:
        pytest.skip("needs a pool of 20 bricks (17 granules: two sets of 9+1): bbctl testbed up --bricks 7")
    max_file, status = max_file_job(user_dir, "twosets.sh", "68GiB")
    assert max_file == str(9 * 4 * GiB)
    assert (status["layout"], status["max_file"]) == ("2 x disperse 9+1", 9 * 4 * GiB)
