"""Stage timings recorded by bbctl.lifecycle itself: a real SQLite store, the playbook runs recorded.

As in test_lifecycle, only what runs Ansible is replaced (by a recorder whose
copies report files and bytes, as bb_stage's results do); every timing here
went through Lifecycle.timed into the store, and is read back from a second
store handle, as another bbctl process would read it.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest

from bbctl import allocation, runner
from bbctl import lifecycle as lc
from bbctl.errors import Refused
from bbctl.state import BufferState, SQLiteStore
from bbctl.state.timings import STAGE_NOW, TIMINGS
from tests.unit.bbctl.test_lifecycle import GID, UID, Recorder, make_config, script

STAGE_IN = "#DW stage_in type=file source=/pfs/in.dat destination=$DW_JOB_STRIPED/in.dat"
STAGE_OUT = "#DW stage_out type=file source=$DW_JOB_STRIPED/out.dat destination=/pfs/out.dat"


class CopyingRecorder(Recorder):
    """A recorder whose stage_in/stage_out runs report what they copied."""

    def __init__(self) -> None:
        super().__init__()
        self.copied = {"stage_in.yml": (3, 3000), "stage_out.yml": (2, 500)}

    def __call__(self, config, key, stage, playbook, **kwargs):
        run = super().__call__(config, key, stage, playbook, **kwargs)
        if playbook in self.copied:
            run.files, run.bytes = self.copied[playbook]
        return run


@pytest.fixture
def recorder(monkeypatch) -> CopyingRecorder:
    recording = CopyingRecorder()
    monkeypatch.setattr(runner, "run_stage", recording)
    return recording


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


@pytest.fixture
def life(config, recorder) -> lc.Lifecycle:
    return lc.Lifecycle(config)


def reader(config) -> SQLiteStore:
    """Another process's view of the same store."""
    return SQLiteStore(config.state)


def stages(timings: list[dict]) -> list[tuple[str, str]]:
    return [(t["stage"], t["outcome"]) for t in timings]


def run_whole_job(life: lc.Lifecycle, job) -> None:
    life.setup("42", UID, GID, job)
    life.stage_in("42", job)
    life.pre_run("42", job, ["c1", "c2"])
    life.post_run("42", job)
    life.stage_out("42", job)
    life.teardown("42", job, hurry=False)


def test_every_stage_of_a_job_is_timed_and_outlives_the_teardown(life, config, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_IN, STAGE_OUT)
    life.setup("42", UID, GID, job)
    life.stage_in("42", job)
    live = reader(config).get("42")
    assert stages(live.meta[TIMINGS]) == [("setup", "ok"), ("stage-in", "ok")]
    assert STAGE_NOW not in live.meta
    life.pre_run("42", job, ["c1", "c2"])
    life.post_run("42", job)
    life.stage_out("42", job)
    life.teardown("42", job, hurry=False)

    store = reader(config)
    assert store.get("42") is None
    kept = store.history("42")
    timings = kept["meta"][TIMINGS]
    assert stages(timings) == [("setup", "ok"), ("stage-in", "ok"), ("pre-run", "ok"), ("post-run", "ok"),
                               ("stage-out", "ok"), ("teardown", "ok")]
    by_stage = {t["stage"]: t for t in timings}
    assert (by_stage["stage-in"]["files"], by_stage["stage-in"]["bytes"]) == (3, 3000)
    assert (by_stage["stage-out"]["files"], by_stage["stage-out"]["bytes"]) == (2, 500)
    assert "files" not in by_stage["setup"] and "files" not in by_stage["pre-run"]
    starts = [t["start"] for t in timings]
    assert starts == sorted(starts) and all(t["seconds"] >= 0 for t in timings)
    assert kept["state"] == "destroyed" and kept["brick_count"] == 1


def test_a_failed_copy_is_recorded_with_its_short_reason_and_kind(life, recorder, config, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_IN)
    life.setup("42", UID, GID, job)
    recorder.failing.add("stage_in.yml")
    with pytest.raises(runner.StageFailed):
        life.stage_in("42", job)
    failed = reader(config).get("42").meta[TIMINGS][-1]
    assert failed["stage"] == "stage-in" and failed["outcome"] == "failed" and failed["kind"] == "task_failed"
    assert "stage_in.yml broke" in failed["reason"] and "artifacts" not in failed["reason"]
    counters = reader(config).stage_counters()["stage-in"]
    assert counters["failures:task_failed"] == 1 and counters["runs:failed"] == 1
    assert counters["files"] == 3 and counters["bytes"] == 3000  # what the failed copy did copy


def test_a_failed_setup_and_its_rollback_are_both_kept(life, recorder, config, tmp_path):
    recorder.failing.add("buffer_create.yml")
    with pytest.raises(runner.StageFailed):
        life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
    kept = reader(config).history("42")
    assert sorted(stages(kept["meta"][TIMINGS])) == [("rollback", "ok"), ("setup", "failed")]


def test_a_refused_teardown_is_a_failed_teardown_and_the_buffer_stays(life, recorder, config, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_OUT)
    life.setup("42", UID, GID, job)
    with pytest.raises(Refused):
        life.teardown("42", job, hurry=False)
    record = reader(config).get("42")
    assert record.state is BufferState.CREATED
    assert record.meta[TIMINGS][-1]["kind"] == "refused"
    assert reader(config).stage_counters()["teardown"]["failures:refused"] == 1


def test_a_setup_that_finds_no_bricks_is_counted_though_no_record_holds_it(life, config, tmp_path, monkeypatch):
    monkeypatch.setattr(allocation, "POLL", 0.05)
    life.site = dataclasses.replace(config, brick_wait=1)
    life.create("41", UID, GID, 5 * 4 * 2**30, None, "gluster", striped=False)  # 5 of the 6 bricks
    with pytest.raises(lc.BBError, match="not enough free bricks"):
        life.create("42", UID, GID, 2 * 4 * 2**30, None, "gluster", striped=False)
    counters = reader(config).stage_counters()["setup"]
    assert counters["failures:no_space"] == 1 and reader(config).get("42") is None


def test_persistent_buffers_are_timed_as_create_and_destroy_and_serve_jobs(life, config, tmp_path):
    life.create_persistent("keep", UID, GID, 2**30, None)
    job = script(tmp_path, "#DW persistentdw name=keep")
    life.pre_run("42", job, ["c1"])
    life.post_run("42", job)
    life.destroy_persistent("keep", uid=UID)
    timings = reader(config).history("keep")["meta"][TIMINGS]
    assert stages(timings) == [("create-persistent", "ok"), ("pre-run", "ok"), ("post-run", "ok"),
                               ("destroy-persistent", "ok")]
    assert [t.get("job", "") for t in timings] == ["", "42", "42", ""]


def test_a_running_stage_is_visible_to_other_processes(life, config, recorder, tmp_path, monkeypatch):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_IN)
    life.setup("42", UID, GID, job)
    seen = {}

    def look(*args, **kwargs):
        seen.update(reader(config).get("42").meta[STAGE_NOW])
        return CopyingRecorder.__call__(recorder, *args, **kwargs)

    monkeypatch.setattr(runner, "run_stage", look)
    life.stage_in("42", job)
    assert seen["stage"] == "stage-in" and seen["start"] > 0
    assert seen["pid"] == os.getpid() and seen["host"] == socket.gethostname()  # who runs it, and where
    assert STAGE_NOW not in reader(config).get("42").meta
