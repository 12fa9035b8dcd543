"""bbctl sweep: buffers whose teardown Slurm lost are torn down, and only those (playbook runs recorded,
slurmctld's answers given)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from datetime import datetime

import pytest

from bbctl import lifecycle as lc
from bbctl import operator_views, slurmconf
from bbctl.errors import BBError
from bbctl.state import BufferState
from bbctl.state.timings import STAGE_NOW, TIMINGS
from tests.unit.bbctl.test_lifecycle import GID, UID, config, recorder, script

__all__ = ["config", "recorder"]
NOW = time.time()


def ended(seconds_ago: float, bb_state: str = "teardown", state: str = "CANCELLED") -> dict[str, str]:
    end = datetime.fromtimestamp(NOW - seconds_ago).strftime("%Y-%m-%dT%H:%M:%S")
    return {"JobId": "42", "JobState": state, "BurstBufferState": bb_state, "EndTime": end}


@pytest.fixture
def life(config, recorder, tmp_path) -> lc.Lifecycle:
    life = lc.Lifecycle(config)
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
    return life


@pytest.fixture
def slurm(monkeypatch) -> dict:
    """What `scontrol show job` answers: {"jobs": {...} or None}; how often it was asked."""
    answer: dict = {"jobs": {}, "asked": 0}

    def jobs_fields(_slurm_dir):
        answer["asked"] += 1
        return answer["jobs"]

    monkeypatch.setattr(slurmconf, "jobs_fields", jobs_fields)
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
    ("a job that has not ended", {"JobId": "42", "JobState": "RUNNING", "BurstBufferState": "running",
                                  "EndTime": "Unknown"}),
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


def test_end_time_is_read_from_slurms_local_time():
    assert slurmconf.end_time(ended(60)) == pytest.approx(NOW - 60, abs=1)
    assert slurmconf.end_time({"EndTime": "Unknown"}) is None
    assert slurmconf.end_time({}) is None


SCONTROL = (  # scontrol -o show job: one line a job, but a job's directives keep their newlines
    "JobId=40 JobName=job3.sh JobState=CANCELLED EndTime=2026-12-06T12:31:03 "
    "BurstBuffer=#BB_LUA jobdw capacity=1GiB pool=nvme\n"
    "#BB_LUA stage_in type=file source=/tmp/secret destination=$DW_JOB_STRIPED/secret "
    "BurstBufferState=teardown Power=\n"
    "JobId=48 JobName=job5.sh JobState=COMPLETED EndTime=2026-12-06T12:33:10 BurstBufferState=complete Power=\n")


def test_every_jobs_fields_are_read_though_its_directives_span_lines(monkeypatch):
    monkeypatch.setattr(slurmconf.host, "run", lambda argv, **_kw: subprocess.CompletedProcess(argv, 0, SCONTROL, ""))
    jobs = slurmconf.jobs_fields(None)
    assert set(jobs) == {"40", "48"}
    assert (jobs["40"]["JobState"], jobs["40"]["BurstBufferState"]) == ("CANCELLED", "teardown")
    assert jobs["48"]["BurstBufferState"] == "complete"
    monkeypatch.setattr(slurmconf.host, "run", lambda argv, **_kw: subprocess.CompletedProcess(argv, 1, "", "down"))
    assert slurmconf.jobs_fields(None) is None
