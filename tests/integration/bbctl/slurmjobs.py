"""Submitting jobs to the test bed's Slurm as the unprivileged user, and checking what is left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import BBCTL, TESTBED_ROOT

SLURM_CONF = TESTBED_ROOT / "slurm" / "etc" / "slurm.conf"
BBCTL_CONFIG = TESTBED_ROOT / "bbctl.yml"
GLUSTERD_SOCKET = TESTBED_ROOT / "node1" / "run" / "glusterd.socket"
USER = "bbuser"
ENV = {**os.environ, "SLURM_CONF": str(SLURM_CONF), "BBCTL_CONFIG": str(BBCTL_CONFIG), "LC_ALL": "C.UTF-8"}
FINISHED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE"}


def use_plugin(name: str) -> None:
    """Switch the test bed's Slurm to burst_buffer/<name> unless it already runs it (storage stays up)."""
    status = json.loads(subprocess.run([BBCTL, "testbed", "status", "--json"], capture_output=True, text=True,
                                       check=False).stdout)
    if status["slurm"]["burst_buffer"] != name:
        subprocess.run([BBCTL, "testbed", "slurm", name], check=True, capture_output=True)


def as_user(*argv: str, cwd: Path | None = None, user: str = USER) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", "env", f"SLURM_CONF={SLURM_CONF}", *argv],
                          cwd=cwd, capture_output=True, text=True, check=False)


def write_job(directory: Path, name: str, body: str) -> Path:
    """A batch script owned by the user; body starts with its #BB_LUA lines."""
    path = directory / name
    path.write_text("#!/bin/bash\n" + body.lstrip("\n"))
    os.chown(path, directory.stat().st_uid, directory.stat().st_gid)
    return path


def submit(script: Path, *options: str, user: str = USER) -> int:
    done = as_user("sbatch", "--parsable", "-o", f"{script.parent}/slurm-%j.out", *options, str(script),
                   cwd=script.parent, user=user)
    assert done.returncode == 0, f"sbatch refused {script.name}: {done.stderr.strip()}"
    return int(done.stdout.strip().split(";")[0])


def sbatch_error(script: Path, user: str = USER) -> str:
    done = as_user("sbatch", "--parsable", str(script), cwd=script.parent, user=user)
    assert done.returncode != 0, f"sbatch accepted {script.name} as job {done.stdout.strip()}"
    return done.stderr


def job_fields(job: int) -> dict[str, str]:
    done = subprocess.run(["scontrol", "-o", "show", "job", str(job)], env=ENV, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return {}
    # Reason may contain spaces: split on the " Key=" boundaries.
    return dict(re.findall(r"(\w+)=(.*?)(?= \w+=|$)", done.stdout.strip()))


def reason_pattern(pattern: str) -> re.Pattern[str]:
    """pattern for a job's Reason from job_fields: `scontrol -o` writes its spaces as underscores."""
    return re.compile(pattern.replace(" ", "[ _]"))


def said(reason: str, text: str) -> bool:
    """Whether a Reason from job_fields holds text."""
    return reason_pattern(" ".join(re.escape(word) for word in text.split(" "))).search(reason) is not None


def wait_for(job: int, states: set[str], timeout: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        fields = job_fields(job)
        if fields.get("JobState") in states:
            return fields
        time.sleep(0.5)
    raise AssertionError(f"job {job} not in {states} within {timeout:.0f} s: {fields.get('JobState')} "
                         f"({fields.get('Reason')}); see {TESTBED_ROOT}/bbctl/bbctl.log")


def wait_torn_down(job: int, timeout: float = 120) -> None:
    """Until Slurm has finished the job and bbctl holds no record of its buffer.

    A teardown Slurm 22.05 lost (it killed the one it started as it cancelled the job) is done by the
    test bed's `bbctl sweep` (or had nothing to do: teardown_lost); Slurm then keeps the buffer's
    space in its books until slurmctld restarts (it requeues the teardown then, which finds nothing
    to do), so this restarts it: the tests after see the whole pool."""
    wait_for(job, FINISHED, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bbctl("show", str(job)).returncode == 3:  # gone from bbctl: what does Slurm say?
            state = job_fields(job).get("BurstBufferState")
            if state in (None, "", "complete"):
                return
            if state == "teardown" and (swept(job) or teardown_lost(job)):
                release_lost_allocation(job)
                return
        time.sleep(0.5)
    raise AssertionError(f"job {job}: its buffer was not torn down within {timeout:.0f} s")


def swept(job: int) -> bool:
    """bbctl sweep tore job's buffer down (Slurm lost its teardown)."""
    log = TESTBED_ROOT / "bbctl" / "bbctl.log"
    return f" {job} sweep: the job ended" in log.read_text(errors="replace")


def teardown_lost(job: int) -> bool:
    """slurmctld killed the teardown it started for job. With no record left in bbctl (a setup that
    failed and rolled back, say) the sweep has nothing to do and says nothing."""
    log = TESTBED_ROOT / "slurm" / "log" / "slurmctld.log"
    return f"teardown for JobId={job} terminated by slurmctld" in log.read_text(errors="replace")


def restart_slurmctld() -> None:
    """Stop the test bed's slurmctld (SIGTERM, by its pid file) and start it again."""
    from bbctl import host
    from bbctl.testbed import slurm as testbed_slurm
    from bbctl.testbed.config import TestbedConfig

    testbed = TestbedConfig.load(TESTBED_ROOT)
    pid_file = testbed.slurm_dir / "slurmctld.pid"
    os.kill(host.read_pid(pid_file), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while host.read_pid(pid_file) and time.monotonic() < deadline:
        time.sleep(0.5)
    testbed_slurm.start_slurm(testbed)


def release_lost_allocation(job: int, timeout: float = 120) -> None:
    """Restart slurmctld so that it drops the allocation of a job whose teardown it lost."""
    restart_slurmctld()
    deadline = time.monotonic() + timeout
    while job_fields(job).get("BurstBufferState") not in (None, "", "complete") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job_fields(job).get("BurstBufferState") in (None, "", "complete"), job_fields(job)


def bbctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BBCTL, "--config", str(BBCTL_CONFIG), *args], env=ENV, capture_output=True, text=True,
                          check=False)


def scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], env=ENV, capture_output=True, text=True, check=True).stdout


def volumes() -> list[str]:
    done = subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={GLUSTERD_SOCKET}", "volume", "list"],
                          capture_output=True, text=True, check=False)
    return [line for line in done.stdout.split() if line != "No"] if "No volumes" not in done.stdout else []


def leftovers(volume: str) -> list[str]:
    """Whatever of volume is still anywhere: the volume, a mount, a brick directory, what gluster's
    quota commands left in glusterd's run directory (an aux mount's directory, pid files)."""
    found = [f"volume {volume}"] if volume in volumes() else []
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines() if volume in line]
    found += [f"brick dir {path}" for path in TESTBED_ROOT.glob(f"node*/bricks/*/{volume}")]
    found += [f"aux {path}" for path in Path("/run/gluster").glob(f"{volume}_quota_*")]
    return found
