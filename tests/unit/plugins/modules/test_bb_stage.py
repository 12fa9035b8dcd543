"""bb_stage: its options match its documentation, refusals, results, failures and progress lines."""

import json

import pytest
import yaml
from ansible_collections.hpc.burstbuffer.plugins.module_utils import copy_engine as ce
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_errors as se
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_rules as sr
from ansible_collections.hpc.burstbuffer.plugins.modules import bb_stage


def params(**overrides):
    base = {"direction": "in", "type": "directory", "source": "/pfs/in", "destination": "/bb/job1/in",
            "buffer_root": "/bb/job1", "uid": 1001, "gid": 1001, "workers": 32, "chunk_size": "64MiB",
            "verify": False, "gfapi": True, "gfapi_reads_from": 100000, "discard": False, "progress_file": None,
            "buffer_variables": {}}
    return {**base, **overrides}


class Module:
    def __init__(self, check_mode=False):
        self.check_mode = check_mode


def result(**overrides):
    base = {"files": 3, "complete": 0, "bytes": 30, "seconds": 0.1, "directories": 1, "links": 0,
            "hardlinks": 0, "hardlinks_copied": 0, "failed_files": [], "not_copied": []}
    return {**base, **overrides}


@pytest.fixture
def engine(monkeypatch):
    """Replaces stage_as_user; records its call and answers with ``engine.answer``."""

    class Engine:
        def __init__(self):
            self.answer = result()
            self.error = None
            self.snapshots = []
            self.calls = []

        def __call__(self, request, uid, gid, **options):
            self.calls.append((request, uid, gid, options))
            for snapshot in self.snapshots:
                options["report"](snapshot)
            if self.error is not None:
                raise self.error
            return self.answer

    fake = Engine()
    monkeypatch.setattr(bb_stage, "stage_as_user", fake)
    return fake


def test_documented_options_match_the_argument_spec():
    documented = yaml.safe_load(bb_stage.DOCUMENTATION)["options"]
    assert set(documented) == set(bb_stage.ARGUMENT_SPEC)
    for name, spec in bb_stage.ARGUMENT_SPEC.items():
        assert documented[name]["type"] == spec["type"], name
        assert documented[name].get("default") == spec.get("default"), name
        assert documented[name].get("required", False) == spec.get("required", False), name
        assert documented[name].get("choices") == spec.get("choices"), name
    assert bb_stage.ARGUMENT_SPEC["workers"]["default"] == ce.DEFAULT_WORKERS
    assert bb_stage.ARGUMENT_SPEC["gfapi_reads_from"]["default"] == ce.GFAPI_READS_FROM


def test_stage_runs_as_the_job_user_with_parsed_options(engine):
    outcome, error = bb_stage.run_stage(Module(), params(chunk_size="1GiB", workers=8, verify=True, gfapi=False,
                                                         gfapi_reads_from=7))
    assert error is None and outcome == result()
    request, uid, gid, options = engine.calls[0]
    assert request == sr.StageRequest("in", "directory", "/pfs/in", "/bb/job1/in", "/bb/job1")
    assert (uid, gid) == (1001, 1001)
    assert (options["workers"], options["chunk_size"], options["verify"], options["dry_run"],
            options["use_gfapi"], options["gfapi_reads_from"]) == (8, 1024**3, True, False, False, 7)


def test_check_mode_is_a_dry_run(engine):
    bb_stage.run_stage(Module(check_mode=True), params())
    assert engine.calls[0][3]["dry_run"] is True


def test_a_list_gets_its_base_and_the_buffers_variables(engine):
    bb_stage.run_stage(Module(), params(type="list", source="/pfs/list", destination="/bb/job1/in",
                                        buffer_variables={"DW_JOB_STRIPED": "/bb/job1"}))
    request = engine.calls[0][0]
    assert (request.destination, request.buffer_variables) == ("/bb/job1/in", {"DW_JOB_STRIPED": "/bb/job1"})


def test_variables_are_for_lists_only(engine):
    bb_stage.run_stage(Module(), params(buffer_variables={"DW_JOB_STRIPED": "/bb/job1"}))
    assert engine.calls[0][0].buffer_variables is None


@pytest.mark.parametrize(("overrides", "message"), [
    ({"uid": 0}, "refusing to stage as uid 0 gid 1001"),
    ({"gid": 0}, "refusing to stage as uid 1001 gid 0"),
    ({"chunk_size": "lots"}, "chunk_size: cannot read size 'lots'"),
])
def test_refusals_never_start_a_worker(engine, overrides, message):
    outcome, error = bb_stage.run_stage(Module(), params(**overrides))
    assert message in error
    assert outcome["files"] == 0 and engine.calls == []


def test_engine_refusal_is_the_message(engine):
    engine.error = se.StageError("cannot read source /root/x: Permission denied (as uid 1001, the job's user)")
    outcome, error = bb_stage.run_stage(Module(), params())
    assert error == "cannot read source /root/x: Permission denied (as uid 1001, the job's user)"
    assert outcome["failed_files"] == []


def test_failed_files_fail_the_task_and_are_named(engine):
    failed = [{"path": "/bb/job1/out/a", "reason": "copy failed: No space left on device"}]
    engine.answer = result(files=2, failed_files=failed)
    outcome, error = bb_stage.run_stage(Module(), params(direction="out"))
    assert error == "stage-out failed for 1 of 3 entries: /bb/job1/out/a: copy failed: No space left on device"
    assert outcome["failed_files"] == failed


def test_hard_links_count_among_the_entries_a_failure_is_out_of(engine):
    failed = [{"path": "/bb/job1/out/b", "reason": "not linked: its first name /pfs/out/a was not staged"}]
    engine.answer = result(files=0, links=1, hardlinks=2, failed_files=failed)
    _outcome, error = bb_stage.run_stage(Module(), params(direction="out"))
    assert error.startswith("stage-out failed for 1 of 4 entries: /bb/job1/out/b: not linked")


def test_progress_lines_and_one_final_line(engine, tmp_path):
    target = tmp_path / "progress"
    engine.snapshots = [{"files_done": 1, "elapsed": 0.0}, {"files_done": 2, "elapsed": 0.1},
                        {"files_done": 3, "elapsed": 0.2}]
    bb_stage.run_stage(Module(), params(progress_file=str(target)))
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert lines == [{"files_done": 1, "elapsed": 0.0}, {"files_done": 3, "elapsed": 0.2}]


def test_a_long_list_of_failures_is_counted_in_msg_and_cut_in_the_result(engine):
    failed = [{"path": f"/bb/job1/in/{i}", "reason": "cannot read: Permission denied"} for i in range(1500)]
    engine.answer = result(files=0, failed_files=failed)
    outcome, error = bb_stage.run_stage(Module(), params())
    assert error.startswith("stage-in failed for 1500 of 1500 entries: /bb/job1/in/0: cannot read")
    assert outcome["failed_files"] == failed[:1000]
