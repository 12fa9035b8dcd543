"""What bbctl asks Slurm: stage timeouts from burst_buffer.conf, and jobs from slurmctld (squeue --json).

Slurm kills a stage script when its timeout runs out (SIGTERM, then SIGKILL to
the process group). bbctl gives ansible-runner a little less, so a stage that
runs long fails with bbctl's own message and leaves a state record an
operator or the next teardown can act on, instead of being killed mid-write.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbctl import host
from bbctl.errors import BBError

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


@dataclass(frozen=True)
class SlurmJob:
    """One job as slurmctld reports it (``squeue --json``): its JobState (PENDING, RUNNING,
    COMPLETED, ...), its BurstBufferState (pending, staging-in, ..., teardown, complete) and, once it
    has ended, its EndTime in epoch seconds (None before); its nodes as a Slurm hostlist ("" before it
    has any) and the most nodes it may run on (a pending job asked for MIN-MAX: MAX)."""

    job_id: str
    state: str
    bb_state: str
    end_time: float | None
    nodes: str = ""
    node_count: int = 0

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def teardown_lost(self) -> bool:
        """The job has ended and Slurm shows its buffer in teardown: Slurm started a teardown and will
        not start another (Slurm 22.05 never retries one it killed, e.g. a job cancelled in stage-in)."""
        return self.ended and self.bb_state == "teardown"


def jobs(slurm_dir: Path | None) -> dict[str, SlurmJob] | None:
    """Every job slurmctld has (finished ones until MinJobAge), by job id: one ``squeue --json`` call
    (Slurm 22.05 ignores squeue's filters with --json); None when slurmctld gives no answer.

    Why JSON and not ``scontrol -o show job``: that text is KEY=VALUE words, and a job's own name,
    paths and directives may hold spaces, newlines and "JobId=..." of their own. A user could then
    write a record for another user's job (found 2026-12-06): ``bbctl sweep`` would have torn down a
    running job's buffer on the word of a neighbouring job's name."""
    proc = host.run(["squeue", "--json"], check=False, env=slurm_env(slurm_dir))
    if proc.returncode != 0:
        return None
    try:
        listed = json.loads(proc.stdout)["jobs"]
        return {str(record["job_id"]): _slurm_job(record) for record in listed}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # not the shape Slurm's openapi plugins write


def job(slurm_dir: Path | None, job_id: str) -> SlurmJob:
    """The job job_id as slurmctld reports it (jobs()); BBError naming the job when slurmctld gives no
    answer or does not have it."""
    answer = jobs(slurm_dir)
    if answer is None:
        raise BBError(f"squeue --json gave no answer about job {job_id} (is slurmctld up, and slurm_dir right?)")
    if job_id not in answer:
        raise BBError(f"slurmctld has no job {job_id}")
    return answer[job_id]


def _slurm_job(record: dict) -> SlurmJob:
    """One entry of squeue --json's "jobs" list."""
    state = str(_plain(record.get("job_state")) or "")
    end = _plain(record.get("end_time"))
    ended = state in ENDED and isinstance(end, int) and end > 0
    counts = [_plain(record.get(key)) for key in ("node_count", "max_nodes")]
    return SlurmJob(str(record["job_id"]), state, str(record.get("burst_buffer_state") or ""),
                    float(end) if ended else None, str(record.get("nodes") or ""),
                    max((n for n in counts if isinstance(n, int)), default=0))


def _plain(value: Any) -> Any:
    """A field's value in any openapi version: 22.05 writes ``"COMPLETED"`` and ``1796569150``; later
    versions write a list of flags (the state first) and ``{"set": true, "number": ...}``."""
    if isinstance(value, list):
        return value[0] if value else None
    if isinstance(value, dict):
        return value.get("number") if value.get("set", True) and not value.get("infinite") else None
    return value


def drain(slurm_dir: Path | None, nodes: list[str], reason: str) -> None:
    """Drain nodes in Slurm with reason (``scontrol update``: running jobs finish, no new one starts);
    BBError if scontrol refuses or does not answer."""
    host.run(["scontrol", "update", f"NodeName={','.join(nodes)}", "State=DRAIN", f"Reason={reason}"],
             env=slurm_env(slurm_dir), timeout=30)


def stage_timeout(stage: str, settings: dict[str, str]) -> int:
    """Seconds ansible-runner may take for stage: Slurm's timeout less a margin."""
    key, default = STAGE_TIMEOUT_KEYS[stage]
    try:
        slurm = int(settings.get(key.lower(), default))
    except ValueError:
        slurm = default
    return max(1, slurm - min(MARGIN_MAX, int(slurm * MARGIN_FRACTION)))
