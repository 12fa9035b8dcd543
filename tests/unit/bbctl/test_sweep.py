"""bbctl sweep: buffers whose teardown Slurm lost are torn down, and only those (playbook runs recorded,
slurmctld's answers given)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from bbctl import lifecycle as lc
from bbctl import operator_views, slurmconf
from bbctl.errors import BBError
from bbctl.state import BufferState
from bbctl.state.timings import STAGE_NOW, TIMINGS
from tests.unit.bbctl.test_lifecycle import GID, UID, config, recorder, script

__all__ = ["config", "recorder"]
NOW = time.time()


def ended(seconds_ago: float, bb_state: str = "teardown", state: str = "CANCELLED") -> slurmconf.SlurmJob:
    return slurmconf.SlurmJob("42", state, bb_state, NOW - seconds_ago if state in slurmconf.ENDED else None)


@pytest.fixture
def life(config, recorder, tmp_path) -> lc.Lifecycle:
    life = lc.Lifecycle(config)
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
    return life


@pytest.fixture
def slurm(monkeypatch) -> dict:
    """What `squeue --json` answers: {"jobs": {...} or None}; how often it was asked."""
    answer: dict = {"jobs": {}, "asked": 0}

    def jobs(_slurm_dir):
        answer["asked"] += 1
        return answer["jobs"]

    monkeypatch.setattr(slurmconf, "jobs", jobs)
    return answer


def sweep(life: lc.Lifecycle) -> list[str]:
    return operator_views.sweep(life, grace=20, now=NOW)


def test_a_teardown_slurm_lost_is_done(life, slurm, recorder):
    slurm["jobs"] = {"42": ended(60)}
    assert sweep(life) == ["42"]
    assert life.store.get("42") is None
    assert recorder.playbooks()[-1] == "buffer_destroy.yml"


@pytest.mark.parametrize(("why", "fields"), [
    ("the job ended 5 s ago: Slurm's teardown may not have started", ended(5)),
    ("Slurm shows no teardown: a held or pending job", ended(60, bb_state="staged-in", state="PENDING")),
    ("a job that has not ended", slurmconf.SlurmJob("42", "RUNNING", "running", None)),
])
def test_a_buffer_slurm_still_has_in_hand_is_left(life, slurm, why, fields):
    slurm["jobs"] = {"42": fields}
    assert sweep(life) == [], why
    assert life.store.get("42") is not None


def test_a_teardown_that_ran_since_the_job_ended_is_slurms_to_retry(life, slurm):
    slurm["jobs"] = {"42": ended(60)}
    life.store.transition("42", BufferState.CREATED, BufferState.CREATED,
                          meta={TIMINGS: [{"stage": "teardown", "start": NOW - 50, "seconds": 3.0}]})
    assert sweep(life) == []
    # one from before the job ended (an earlier run of this job id) does not count
    life.store.transition("42", BufferState.CREATED, BufferState.CREATED,
                          meta={TIMINGS: [{"stage": "teardown", "start": NOW - 600, "seconds": 3.0}]})
    assert sweep(life) == ["42"]


def test_a_buffer_a_stage_of_ours_is_working_on_is_left_and_slurm_not_asked(life, slurm):
    slurm["jobs"] = {"42": ended(60)}
    life.store.transition("42", BufferState.CREATED, BufferState.CREATED,
                          meta={STAGE_NOW: {"stage": "teardown", "pid": os.getpid(), "host": socket.gethostname()}})
    assert sweep(life) == [] and slurm["asked"] == 0


@pytest.mark.parametrize("jobs", [None, {}], ids=["no answer", "slurmctld no longer has the job: gc's"])
def test_no_answer_or_a_forgotten_job_is_left(life, slurm, jobs):
    slurm["jobs"] = jobs
    assert sweep(life) == [] and life.store.get("42") is not None


def test_a_teardown_that_fails_is_logged_and_tried_at_the_next_sweep(life, slurm, recorder):
    slurm["jobs"] = {"42": ended(60)}
    recorder.failing.add("buffer_destroy.yml")
    assert sweep(life) == []
    assert life.store.get("42").state is BufferState.FAILED
    assert life.store.get("42").meta[TIMINGS][-1]["stage"] == "sweep", "not a teardown: Slurm is not retrying"
    recorder.failing.clear()
    assert sweep(life) == ["42"]


def test_sweep_every_runs_until_stopped_and_survives_a_failing_sweep(life, monkeypatch, caplog):
    calls = []

    def failing(_life):
        calls.append(1)
        raise BBError("state store unreachable")

    monkeypatch.setattr(operator_views, "sweep", failing)
    operator_views.sweep_every(life, 0.01, stop=lambda: len(calls) >= 3)
    assert len(calls) == 3
    assert "sweep: state store unreachable" in caplog.text


def squeue(jobs: list[dict], returncode: int = 0):
    text = json.dumps({"meta": {}, "errors": [], "jobs": jobs})
    return lambda argv, **_kw: subprocess.CompletedProcess(argv, returncode, text, "")


# squeue --json of Slurm 22.05.8 (openapi v0.0.38), fields cut to those read; job 40's name, output path and
# directives are a hostile user's: under `scontrol -o show job` they made a record for job 7.
FORGED = "x\nJobId=7 JobState=CANCELLED EndTime=2026-01-01T00:00:00 BurstBufferState=teardown"
SQUEUE_2205 = [
    {"job_id": 7, "job_state": "RUNNING", "burst_buffer_state": "running", "end_time": 1828105224,
     "name": "victim.sh", "burst_buffer": "#BB_LUA jobdw capacity=1GiB"},
    {"job_id": 40, "job_state": "CANCELLED", "burst_buffer_state": "teardown", "end_time": 1796569150,
     "name": FORGED, "standard_output": "/home/u/ JobId=7 " + FORGED,
     "burst_buffer": "#BB_LUA jobdw capacity=1GiB\n#BB_LUA stage_in type=file source=/tmp/a destination=" + FORGED},
    {"job_id": 48, "job_state": "PENDING", "burst_buffer_state": "pending", "end_time": 0},
]


def test_jobs_are_read_from_squeue_json_and_a_jobs_own_text_cannot_forge_another(monkeypatch):
    monkeypatch.setattr(slurmconf.host, "run", squeue(SQUEUE_2205))
    jobs = slurmconf.jobs(None)
    assert set(jobs) == {"7", "40", "48"}
    assert jobs["7"] == slurmconf.SlurmJob("7", "RUNNING", "running", None)
    assert not jobs["7"].teardown_lost, "job 40's name and paths must not speak for job 7"
    assert jobs["40"] == slurmconf.SlurmJob("40", "CANCELLED", "teardown", 1796569150.0)
    assert jobs["40"].teardown_lost
    assert jobs["48"].end_time is None and not jobs["48"].ended


def test_later_openapi_shapes_are_read_too(monkeypatch):
    later = [{"job_id": 9, "job_state": ["COMPLETED", "REQUEUED"], "burst_buffer_state": "teardown",
              "end_time": {"set": True, "infinite": False, "number": 1796569150}},
             {"job_id": 10, "job_state": ["RUNNING"], "burst_buffer_state": "running",
              "end_time": {"set": True, "infinite": True, "number": 0}}]
    monkeypatch.setattr(slurmconf.host, "run", squeue(later))
    jobs = slurmconf.jobs(None)
    assert jobs["9"] == slurmconf.SlurmJob("9", "COMPLETED", "teardown", 1796569150.0)
    assert jobs["10"].state == "RUNNING" and jobs["10"].end_time is None


@pytest.mark.parametrize("answer", [
    subprocess.CompletedProcess([], 1, "", "slurm_load_jobs error: Unable to contact slurm controller"),
    subprocess.CompletedProcess([], 0, "squeue: unrecognized option '--json'", ""),
    subprocess.CompletedProcess([], 0, json.dumps({"errors": []}), ""),
], ids=["slurmctld down", "not JSON", "no jobs list"])
def test_no_answer_from_squeue_is_none(monkeypatch, answer):
    monkeypatch.setattr(slurmconf.host, "run", lambda argv, **_kw: answer)
    assert slurmconf.jobs(None) is None


def test_a_lost_teardown_of_an_interrupted_stage_out_first_removes_its_temporaries(config, recorder, slurm,
                                                                                  tmp_path):
    """Slurm's teardown (with hurry: the job was cancelled) was lost; the sweep has no job script, so it
    discards what the record of the stage-out says it was writing."""
    life = lc.Lifecycle(config)
    job = script(tmp_path, "#DW jobdw capacity=1GiB",
                 "#DW stage_out type=directory source=$DW_JOB_STRIPED/out destination=/pfs/me/out")
    life.setup("42", UID, GID, job)
    recorder.failing.add("stage_out.yml")
    with pytest.raises(BBError):
        life.stage_out("42", job)
    recorder.failing.clear()
    slurm["jobs"] = {"42": ended(60)}
    assert sweep(life) == ["42"]
    discard, destroy = recorder.runs[-2:]
    assert (discard["playbook"], discard["stage"], destroy["playbook"]) == ("stage_out.yml", "sweep",
                                                                           "buffer_destroy.yml")
    assert discard["extravars"]["bb_stage_discard"] is True
    assert discard["extravars"]["bb_stages"][0]["destination"] == "/pfs/me/out"
