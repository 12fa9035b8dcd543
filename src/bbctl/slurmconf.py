"""Stage timeouts, from Slurm's burst_buffer.conf.

Slurm kills a stage script when its timeout runs out (SIGTERM, then SIGKILL to
the process group). bbctl gives ansible-runner a little less, so a stage that
runs long fails with bbctl's own message and leaves a state record an
operator or the next teardown can act on, instead of being killed mid-write.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from bbctl import host

# burst_buffer.conf key and Slurm's default (seconds), per bbctl stage.
STAGE_TIMEOUT_KEYS = {
    "setup": ("OtherTimeout", 300),
    "stage-in": ("StageInTimeout", 86400),
    "pre-run": ("OtherTimeout", 300),
    "post-run": ("OtherTimeout", 300),
    "stage-out": ("StageOutTimeout", 86400),
    "teardown": ("OtherTimeout", 300),
    "create-persistent": ("OtherTimeout", 300),
}
# What bbctl keeps for itself: to record the failure and answer Slurm.
MARGIN_FRACTION = 0.1
MARGIN_MAX = 30
_LINE_RE = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(\S+)")


def read_settings(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    settings = {}
    for line in path.read_text().splitlines():
        match = _LINE_RE.match(line.split("#", 1)[0])
        if match:
            settings[match.group(1).lower()] = match.group(2)
    return settings


def slurm_env(slurm_dir: Path | None) -> dict[str, str]:
    """The environment for Slurm's commands: SLURM_CONF names <slurm_dir>/slurm.conf when there is one.

    burst_buffer.lua's children and dw_wlm_cli inherit slurmctld's environment, which need not
    hold SLURM_CONF (Slurm 23.02+ does not promise it); the site configuration knows where it is.
    """
    env = dict(host.C_LOCALE)
    if slurm_dir is not None and (slurm_dir / "slurm.conf").is_file():
        env["SLURM_CONF"] = str(slurm_dir / "slurm.conf")
    return env


ENDED = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                   "DEADLINE", "BOOT_FAIL"})


def job_fields(slurm_dir: Path | None, job_id: str) -> dict[str, str] | None:
    """slurmctld's fields of the job (JobState, BurstBufferState, ...): {} once it has purged the job
    (or never had it), None when scontrol gives no answer."""
    proc = host.run(["scontrol", "-o", "show", "job", job_id], check=False, env=slurm_env(slurm_dir))
    if proc.returncode != 0:
        return {} if "Invalid job id" in proc.stderr + proc.stdout else None
    return _fields(proc.stdout)


def _fields(text: str) -> dict[str, str]:
    """KEY=VALUE words of scontrol's output (a later key wins)."""
    return dict(re.findall(r"(\w+)=(\S*)", text))


def jobs_fields(slurm_dir: Path | None) -> dict[str, dict[str, str]] | None:
    """slurmctld's fields of every job it has, by job id (one ``scontrol`` call); None when it gives
    no answer."""
    proc = host.run(["scontrol", "-o", "show", "job"], check=False, env=slurm_env(slurm_dir))
    if proc.returncode != 0:
        return None
    # One line per job, except that a job's burst buffer directives keep their newlines.
    records = re.split(r"^(?=JobId=)", proc.stdout, flags=re.MULTILINE)
    jobs = {}
    for record in records:
        fields = _fields(record)
        if fields.get("JobId"):
            jobs[fields["JobId"]] = fields
    return jobs


def end_time(fields: dict[str, str]) -> float | None:
    """When the job ended (its EndTime, slurmctld's local time) as epoch seconds; None if it has not."""
    try:
        return datetime.strptime(fields.get("EndTime", ""), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None  # "Unknown", or a job that has not ended


def drain(slurm_dir: Path | None, nodes: list[str], reason: str) -> None:
    """Drain nodes in Slurm with reason (``scontrol update``: running jobs finish, no new one starts);
    BBError if scontrol refuses or does not answer."""
    host.run(["scontrol", "update", f"NodeName={','.join(nodes)}", "State=DRAIN", f"Reason={reason}"],
             env=slurm_env(slurm_dir), timeout=30)


def teardown_lost(fields: dict[str, str]) -> bool:
    """The job has ended and Slurm shows its buffer in teardown: Slurm started a teardown and will not
    start another (Slurm 22.05 never retries one it killed, e.g. a job cancelled in stage-in)."""
    return fields.get("JobState") in ENDED and fields.get("BurstBufferState") == "teardown"


def stage_timeout(stage: str, settings: dict[str, str]) -> int:
    """Seconds ansible-runner may take for stage: Slurm's timeout less a margin."""
    key, default = STAGE_TIMEOUT_KEYS[stage]
    try:
        slurm = int(settings.get(key.lower(), default))
    except ValueError:
        slurm = default
    return max(1, slurm - min(MARGIN_MAX, int(slurm * MARGIN_FRACTION)))
