"""The stage logic of bbctl.lifecycle: a real SQLite store, the playbook runs recorded.

What runs Ansible is replaced by a recorder (the integration tests run the real
thing through Slurm); everything else is real: parsing, allocation, state
transitions, refusals, the pools file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from bbctl import allocation, operator_views, runner, site, slurmconf
from bbctl import lifecycle as lc
from bbctl.errors import EXIT_REFUSED, BBError, Refused
from bbctl.job_request import read_request
from bbctl.state import BufferState
from bbctl.state.timings import Running

GiB = 1024**3
UID, GID = 1001, 1001


class Recorder:
    """Stands in for runner.run_stage: records each run, fails the playbooks it is told to."""

    def __init__(self) -> None:
        self.runs: list[dict] = []
        self.failing: set[str] = set()

    def __call__(self, config, key, stage, playbook, *, extravars, hosts, nodes=(), timeout, on_event, cancel):
        self.runs.append({"key": key, "stage": stage, "playbook": playbook, "extravars": extravars,
                          "hosts": list(hosts), "nodes": list(nodes), "timeout": timeout})
        status = "failed" if playbook in self.failing else "successful"
        failures = [f"bbnode1: a task: {playbook} broke"] if status == "failed" else []
        return runner.StageRun(stage=stage, status=status, rc=2 if failures else 0, seconds=0.1,
                               run_dir=config.runs_dir / key, failures=failures)

    def playbooks(self) -> list[str]:
        return [run["playbook"] for run in self.runs]


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    recording = Recorder()
    monkeypatch.setattr(runner, "run_stage", recording)
    return recording


@pytest.fixture
def config(tmp_path: Path) -> site.Site:
    return make_config(tmp_path)


def make_config(tmp_path: Path, **pool: str) -> site.Site:
    hosts = {f"bbnode{n}": {"bb_gluster_host": f"127.1.1.{n}",
                            "bb_bricks": [{"device": f"/dev/loop{2 * n + k}", "path": f"/bricks/n{n}/nvme{k}"}
                                          for k in (1, 2)]} for n in (1, 2, 3)}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"bb_storage": {"hosts": hosts}}}}))
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "burst_buffer.conf").write_text("OtherTimeout=100\nStageInTimeout=1000 # comment\n")
    return site.from_mapping({"inventory": str(inventory), "pools": {"nvme": {"granularity": "4GiB", **pool}},
                              "work_dir": str(tmp_path / "work"), "mount_root": "/mnt/bb",
                              "slurm_dir": str(tmp_path / "slurm")}, tmp_path / "bbctl.yml")


@pytest.fixture
def life(config, recorder) -> lc.Lifecycle:
    return lc.Lifecycle(config)


def script(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / f"job{len(list(tmp_path.glob('job*.sh')))}.sh"
    path.write_text("#!/bin/bash\n" + "".join(line + "\n" for line in lines) + "srun a.out\n")
    return path


def test_setup_allocates_and_builds(life, recorder, config, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=6GiB")
    [buffer] = life.setup("42", UID, GID, job)
    assert buffer.state is BufferState.CREATED
    # striped: two data bricks and one of redundancy, one per server (spread first)
    assert len(buffer.bricks) == 3 and len({b.server for b in buffer.bricks}) == 3
    assert buffer.meta["layout"] == {"data_bricks": 2, "sets": 1, "redundancy": 1}
    assert life.real_size("42") == 8 * GiB  # Slurm sees the data bricks' granules
    [run] = recorder.runs
    assert run["playbook"] == "buffer_create.yml"
    assert run["timeout"] == 90  # OtherTimeout 100 less the 10 % margin
    bb = run["extravars"]["bb_buffer"]
    assert bb["name"] == "bbjob-42" and bb["owner"] == UID and bb["capacity"] == str(6 * GiB)
    assert bb["layout"] == {"disperse": 3, "redundancy": 1, "force": False}
    assert bb["quota"] is True  # a dispersed buffer's bricks do not bound it cleanly (layouts.Layout.quota)
    assert "mount_path" not in bb  # mounted on the stage host only when something is staged
    assert sorted(run["hosts"]) == sorted(b.server for b in buffer.bricks)
    pools = json.loads(config.pools_json.read_text())["pools"]
    assert pools == [{"id": "nvme", "granularity": 4 * GiB, "quantity": 6, "free": 3}]


def waiting_life(config, monkeypatch, seconds: int) -> lc.Lifecycle:
    """A Lifecycle whose setup waits up to seconds for bricks, polling every 50 ms."""
    monkeypatch.setattr(allocation, "POLL", 0.05)
    return lc.Lifecycle(dataclasses.replace(config, brick_wait=seconds))


def test_setup_waits_for_bricks_a_teardown_is_releasing(config, recorder, monkeypatch, tmp_path):
    life = waiting_life(config, monkeypatch, 30)
    life.setup("41", UID, GID, script(tmp_path, "#DW jobdw capacity=20GiB access_mode=private"))  # 5 of 6
    job = script(tmp_path, "#DW jobdw capacity=8GiB access_mode=private")  # Slurm booked 2 of the 6
    releasing = threading.Timer(1.2, lambda: lc.Lifecycle(config).teardown("41", None, hurry=False))
    releasing.start()
    began = time.monotonic()
    [buffer] = life.setup("42", UID, GID, job)
    releasing.join()
    assert 1.2 <= time.monotonic() - began < 10
    assert len(buffer.bricks) == 2 and buffer.state is BufferState.CREATED
    assert recorder.runs[-1]["timeout"] <= 90 - 1  # the build gets what is left of OtherTimeout's 90 s


STAGE_IN_LINE = "#DW stage_in type=file source=/pfs/a destination=$DW_JOB_STRIPED/a"


def deferred_job(config, monkeypatch, tmp_path, *lines: str) -> tuple[lc.Lifecycle, Path, list]:
    """(life, job 42's script, what its setup returned): job 41 takes all six bricks, so job 42's setup
    (a 4 GiB buffer, its directives' other lines) waits 1 s and leaves its build to stage-in."""
    life = waiting_life(config, monkeypatch, 1)
    life.setup("41", UID, GID, script(tmp_path, "#DW jobdw capacity=24GiB access_mode=private"))
    job = script(tmp_path, "#DW jobdw capacity=4GiB", *lines)
    return life, job, life.setup("42", UID, GID, job)


def test_setup_short_of_bricks_leaves_the_build_to_stage_in(config, recorder, monkeypatch, tmp_path):
    life, _job, made = deferred_job(config, monkeypatch, tmp_path)
    assert made == []
    assert life.store.get("42") is None and life.has_buffer("42") and not life.has_buffer("43")
    assert json.loads(config.pools_json.read_text())["pools"][0]["free"] == 0  # nothing more taken
    assert recorder.playbooks() == ["buffer_create.yml"]  # job 41's only


def test_stage_in_builds_the_deferred_buffer_once_bricks_come_free_then_stages(config, recorder, monkeypatch,
                                                                               tmp_path):
    life, job, _made = deferred_job(config, monkeypatch, tmp_path, STAGE_IN_LINE)
    threading.Timer(1.2, lambda: lc.Lifecycle(config).teardown("41", None, hurry=False)).start()
    assert life.stage_in("42", job) == 1
    assert recorder.playbooks()[-3:] == ["buffer_destroy.yml", "buffer_create.yml", "stage_in.yml"]
    build = recorder.runs[-2]
    assert build["key"] == "42" and build["timeout"] < life._stage_timeout("stage-in") // 2
    assert life.store.get("42").state is BufferState.STAGED_IN and not life.has_buffer("43")
    life.stage_in("42", job)  # again: nothing left to build
    assert recorder.playbooks().count("buffer_create.yml") == 2


def test_a_deferred_build_that_never_gets_bricks_fails_stage_in_with_the_shortage(config, recorder, monkeypatch,
                                                                                  tmp_path):
    life, job, _made = deferred_job(config, monkeypatch, tmp_path, STAGE_IN_LINE)
    monkeypatch.setattr(lc.Lifecycle, "_stage_timeout", lambda self, stage: 4)
    with pytest.raises(BBError, match="not enough free bricks in pool 'nvme': 1 needed, 0 free"):
        life.stage_in("42", job)
    assert life.store.get("42") is None and life.has_buffer("42")  # Slurm holds it; teardown forgets it
    assert life.teardown("42", job, hurry=False) is False
    assert not life.has_buffer("42")


def test_setup_again_builds_nothing_twice(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    first = life.setup("42", UID, GID, job)
    second = life.setup("42", UID, GID, job)
    assert first[0].bricks == second[0].bricks
    assert recorder.playbooks() == ["buffer_create.yml"]


def test_setup_takes_slurms_larger_size(life, recorder, tmp_path):
    [buffer] = life.setup("42", UID, GID, script(tmp_path, "#BB_LUA jobdw capacity=1GiB pool=nvme"), size=9 * GiB)
    assert buffer.capacity == 9 * GiB and len(buffer.bricks) == 4  # three granules striped, one redundancy


def test_a_failed_build_is_rolled_back_and_holds_no_brick(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    recorder.failing.add("buffer_create.yml")
    with pytest.raises(runner.StageFailed, match=r"buffer_create\.yml broke"):
        life.setup("42", UID, GID, job)
    assert life.store.get("42") is None and life.store.allocated_brick_ids("nvme") == set()
    assert recorder.playbooks() == ["buffer_create.yml", "buffer_destroy.yml"]
    assert life.teardown("42", job, hurry=False) is False  # Slurm's teardown later: nothing left to do


def test_a_rollback_gets_what_is_left_of_the_setups_timeout(life, recorder, tmp_path):
    recorder.failing.add("buffer_create.yml")
    with pytest.raises(runner.StageFailed):
        life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
    build, rollback = recorder.runs
    assert build["timeout"] == 90 and 85 <= rollback["timeout"] <= 90  # OtherTimeout 100 less 10 %, less the build


def test_a_build_that_spent_the_setups_timeout_is_left_for_teardown_not_rolled_back(life, recorder, tmp_path,
                                                                                   monkeypatch):
    """A create that timed out has used the whole budget: a rollback then would outlive Slurm's timeout
    (found on the test bed: 18 s build + 18 s rollback under OtherTimeout=20)."""
    monkeypatch.setattr(lc, "ROLLBACK_MIN", 1000)
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    recorder.failing.add("buffer_create.yml")
    with pytest.raises(runner.StageFailed, match=r"buffer_create\.yml broke"):
        life.setup("42", UID, GID, job)
    assert recorder.playbooks() == ["buffer_create.yml"]
    assert life.store.get("42").state is BufferState.FAILED
    assert life.teardown("42", job, hurry=False) is True  # the job's teardown takes it
    assert recorder.playbooks() == ["buffer_create.yml", "buffer_destroy.yml"] and life.store.get("42") is None


def test_a_failed_roll_back_leaves_a_failed_record_that_gc_destroys(life, recorder, config, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    recorder.failing.update({"buffer_create.yml", "buffer_destroy.yml"})
    with pytest.raises(runner.StageFailed, match=r"buffer_create\.yml broke"):
        life.setup("42", UID, GID, job)
    assert life.store.get("42").state is BufferState.FAILED
    recorder.failing.clear()
    assert operator_views.gc(life, 600, dry_run=False)["stale_buffers"] == []  # too recent
    real_clock = life.store.clock
    life.store.clock = lambda: real_clock() + 3600
    assert operator_views.gc(life, 600, dry_run=False)["stale_buffers"] == ["42"]
    assert life.store.get("42") is None and life.store.allocated_brick_ids("nvme") == set()


def age(life: lc.Lifecycle, key: str, seconds: float) -> None:
    """Make key's record look seconds older (its last change then)."""
    buffer = life.store.get(key)
    life.store._db.execute("UPDATE buffers SET updated_at = ? WHERE key = ?", (buffer.updated_at - seconds, key))


RUNNING = {"42": slurmconf.SlurmJob("42", "RUNNING", "running", None)}
LOST = {"42": slurmconf.SlurmJob("42", "CANCELLED", "teardown", 1.0)}  # job 9 of the fault run, as Slurm showed it


@pytest.mark.parametrize(("slurm", "torn"), [({}, ["42"]), (LOST, ["42"]), (RUNNING, []), (None, []),
                                             ({"42": slurmconf.SlurmJob("42", "CANCELLED", "complete", 1.0)}, [])])
def test_gc_tears_down_a_built_buffer_only_when_no_teardown_will_come(life, recorder, tmp_path, monkeypatch,
                                                                      slurm, torn):
    asked = []
    monkeypatch.setattr(slurmconf, "jobs", lambda _dir: asked.append("42") or slurm)
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
    assert operator_views.gc(life, 600, dry_run=False)["stale_buffers"] == []  # recent: Slurm is not asked
    assert asked == []
    age(life, "42", 3600)
    report = operator_views.gc(life, 600, dry_run=False)
    assert asked == ["42"] and report["stale_buffers"] == torn and report["abandoned_kept"] == []
    assert (life.store.get("42") is None) == bool(torn)


@pytest.mark.parametrize(("slurm", "forgotten"), [
    ({}, True), ({"42": slurmconf.SlurmJob("42", "CANCELLED", "", 1.0)}, True),
    ({"42": slurmconf.SlurmJob("42", "PENDING", "pending", None)}, False), (None, False)])
def test_gc_forgets_a_deferred_build_whose_job_has_ended(config, recorder, monkeypatch, tmp_path, slurm, forgotten):
    monkeypatch.setattr(slurmconf, "jobs", lambda _dir: slurm)
    life, _job, _made = deferred_job(config, monkeypatch, tmp_path)
    assert life.has_buffer("42") and life.store.get("42") is None
    report = operator_views.gc(life, 600, dry_run=False)
    assert report["lapsed_builds"] == (["42"] if forgotten else [])
    assert life.has_buffer("42") is not forgotten


def test_gc_keeps_a_forgotten_jobs_buffer_whose_results_may_not_have_left(life, recorder, tmp_path, monkeypatch):
    monkeypatch.setattr(slurmconf, "jobs", lambda _dir: {})
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    life.setup("42", UID, GID, job)
    life.pre_run("42", job, ["node1"])  # the job ran: its buffer may hold results
    age(life, "42", 3600)  # and Slurm has forgotten it: nobody asked for its teardown
    report = operator_views.gc(life, 600, dry_run=False)
    assert report["stale_buffers"] == [] and report["abandoned_kept"] == ["42"]
    assert life.store.get("42") is not None


def test_gc_leaves_a_buffer_whose_stage_process_still_runs(life, recorder, tmp_path, monkeypatch):
    monkeypatch.setattr(slurmconf, "jobs", lambda _dir: LOST)
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
    life.store.start_stage("42", Running("stage-in", time.time(), pid=os.getpid(), host=socket.gethostname()))
    age(life, "42", 3600)
    assert operator_views.gc(life, 600, dry_run=False)["stale_buffers"] == []
    life.store.start_stage("42", Running("stage-in", time.time(), pid=dead_pid(), host=socket.gethostname()))
    age(life, "42", 3600)
    assert operator_views.gc(life, 600, dry_run=False)["stale_buffers"] == ["42"]


def test_gc_leaves_a_failed_buffer_whose_teardown_slurm_retries_while_it_runs(life, recorder, tmp_path):
    """Found on the test bed: gc --older-than 0 destroyed a buffer under a teardown Slurm was retrying;
    that teardown then failed on a brick directory gc had just removed."""
    recorder.failing.update({"buffer_create.yml", "buffer_destroy.yml"})
    with pytest.raises(runner.StageFailed):
        life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
    recorder.failing.clear()
    life.store.start_stage("42", Running("teardown", time.time(), pid=os.getpid(), host=socket.gethostname()))
    assert operator_views.gc(life, 0, dry_run=False)["stale_buffers"] == []
    life.store.start_stage("42", Running("teardown", time.time(), pid=dead_pid(), host=socket.gethostname()))
    assert operator_views.gc(life, 0, dry_run=False)["stale_buffers"] == ["42"]


def dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_setup_gives_the_job_buffer_what_slurm_booked_beyond_the_persistent_ones(life, recorder, tmp_path):
    """Slurm's lua plugin sums capacity= over every line: create_persistent's share is not the job's."""
    job = script(tmp_path, "#BB_LUA create_persistent name=keep capacity=4GiB pool=nvme",
                 "#BB_LUA jobdw capacity=1GiB pool=nvme")
    made = life.setup("42", UID, GID, job, pool="nvme", size=8 * 2**30)
    assert [(b.key, len(b.bricks)) for b in made] == [("keep", 1), ("42", 1)]


def test_setup_takes_a_larger_size_from_slurm(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    made = life.setup("42", UID, GID, job, size=8 * 2**30)
    assert len(made[0].bricks) == 3 and life.real_size("42") == 8 * GiB


def test_private_buffers_and_one_granule_are_distributed(life, recorder, tmp_path):
    """DataWarp's private mode keeps each file on one server: no redundancy brick, plain distribute."""
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=8GiB access_mode=private"))
    life.setup("43", UID, GID, script(tmp_path, "#DW jobdw capacity=4GiB"))
    assert [len(life.store.get(key).bricks) for key in ("42", "43")] == [2, 1]
    assert [run["extravars"]["bb_buffer"]["layout"] for run in recorder.runs] == [{}, {}]
    # whole bricks of their own bound them: no quota, so no quota daemon restarts for them
    assert [run["extravars"]["bb_buffer"]["quota"] for run in recorder.runs] == [False, False]


def test_a_disperse_set_on_fewer_servers_than_bricks_is_forced(life, recorder, tmp_path):
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=16GiB"))  # 4 + 1 bricks on 3 servers
    assert recorder.runs[0]["extravars"]["bb_buffer"]["layout"] == {"disperse": 5, "redundancy": 1, "force": True}


def test_a_pool_can_keep_striped_buffers_distributed(recorder, tmp_path):
    life = lc.Lifecycle(make_config(tmp_path, striped_layout="distribute"))
    [buffer] = life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=8GiB"))
    assert len(buffer.bricks) == 2 and recorder.runs[0]["extravars"]["bb_buffer"]["layout"] == {}


def test_two_names_with_one_volume_are_refused_before_allocating(life, recorder, monkeypatch):
    monkeypatch.setattr(lc.sitecfg, "volume_name", lambda key: "bbp-same")
    life.create_persistent("first", UID, GID, 2**30, None)
    with pytest.raises(BBError, match="would share volume bbp-same with buffer first") as clash:
        life.create_persistent("second", UID, GID, 2**30, None)
    assert clash.value.exit_code == 2 and life.store.get("second") is None


@pytest.mark.parametrize("name, message", [
    ("1abc", "names are 1 to 64 characters"),
    ("-x", "names are 1 to 64 characters"),
    ("a" * 65, "names are 1 to 64 characters"),
])
def test_create_persistent_checks_the_name_before_allocating(life, recorder, name, message):
    with pytest.raises(BBError, match=message) as refused:
        life.create_persistent(name, UID, GID, 2**30, None)
    assert refused.value.exit_code == 2 and life.store.buffers() == [] and recorder.runs == []


def test_create_persistent_refuses_cache_type_before_allocating(life, recorder):
    with pytest.raises(BBError, match="persistent buffer cannot be a cache"):
        life.create_persistent("cached", UID, GID, 2**30, None, buffer_type="cache")
    assert life.store.buffers() == [] and recorder.runs == []


def test_a_dotted_persistent_buffer_lives_and_dies(life, recorder):
    buffer = life.create_persistent("test35.1", UID, GID, 48, None)
    assert recorder.runs[-1]["extravars"]["bb_buffer"]["name"].startswith("bbp-test35_1-")
    assert len(buffer.bricks) == 1
    assert life.destroy_persistent("test35.1", uid=UID) is True
    assert life.store.get("test35.1") is None


def test_destroying_an_impossible_name_is_an_error_not_not_found(life, recorder):
    assert life.destroy_persistent("never.made") is False
    with pytest.raises(BBError, match="names are") as refused:
        life.destroy_persistent("-x")
    assert refused.value.exit_code == 2


def test_root_may_not_own_a_buffer(life, recorder, tmp_path):
    with pytest.raises(BBError, match="root cannot own a burst buffer"):
        life.setup("42", 0, 0, script(tmp_path, "#DW jobdw capacity=1GiB"))
    assert recorder.runs == []


def test_bad_directives_fail_setup_with_the_parsers_message(life, recorder, tmp_path):
    with pytest.raises(BBError, match="capacity=lots") as failure:
        life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=lots"))
    assert failure.value.exit_code == 2
    assert recorder.runs == []


def test_stage_in_resolves_buffer_paths_to_the_stage_mount(life, recorder, config, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB",
                 "#DW stage_in type=directory source=/pfs/in destination=$DW_JOB_STRIPED/input",
                 "#DW stage_out type=file source=$DW_JOB_STRIPED/out.dat destination=/pfs/out.dat")
    life.setup("42", UID, GID, job)
    assert life.stage_in("42", job) == 1
    run = recorder.runs[-1]
    stage_mount = str(config.work_dir / "stage" / "bbjob-42")
    assert run["playbook"] == "stage_in.yml" and run["timeout"] == 970
    assert run["extravars"]["bb_stages"] == [{"type": "directory", "source": "/pfs/in",
                                              "destination": stage_mount + "/input", "buffer_root": stage_mount}]
    assert run["extravars"]["bb_stage_uid"] == UID
    assert run["extravars"]["bb_buffer"]["mount_path"] == stage_mount
    assert life.store.get("42").state is BufferState.STAGED_IN
    life.teardown("42", job, hurry=True)
    assert recorder.runs[-1]["extravars"]["bb_stage_mounted"] is True


def test_teardown_skips_mounts_that_were_never_made(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    life.setup("42", UID, GID, job)
    life.teardown("42", job, hurry=False)
    destroy = recorder.runs[-1]["extravars"]
    assert destroy["bb_stage_mounted"] is False and "bb_client_mount_path" not in destroy


def test_teardown_keeps_a_buffer_whose_stage_out_did_not_succeed(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB",
                 "#DW stage_out type=file source=$DW_JOB_STRIPED/out.dat destination=/pfs/out.dat")
    life.setup("42", UID, GID, job)
    recorder.failing.add("stage_out.yml")
    with pytest.raises(runner.StageFailed):
        life.stage_out("42", job)
    with pytest.raises(Refused, match="stage-out has not succeeded") as refused:
        life.teardown("42", job, hurry=False)
    assert refused.value.exit_code == EXIT_REFUSED
    assert life.store.get("42").state is BufferState.FAILED
    assert "buffer_destroy.yml" not in recorder.playbooks()
    assert life.teardown("42", job, hurry=True) is True  # hurry: the user's choice to discard
    assert life.store.get("42") is None
    # the interrupted stage-out's temporaries were asked to go first; that it failed did not stop the teardown
    assert recorder.playbooks()[-2:] == ["stage_out.yml", "buffer_destroy.yml"]


STAGE_OUT = "#DW stage_out type=file source=$DW_JOB_STRIPED/out.dat destination=/pfs/out.dat"


def test_a_failed_stage_out_can_run_again_and_then_teardown_proceeds(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_OUT)
    life.setup("42", UID, GID, job)
    recorder.failing.add("stage_out.yml")
    with pytest.raises(runner.StageFailed):
        life.stage_out("42", job)
    assert life.store.get("42").meta[lc.FAILED_STAGE] == "stage-out"
    recorder.failing.clear()  # the operator made the destination writable

    assert life.stage_out("42", job) == 1
    again = life.store.get("42")
    assert (again.state, again.stage_out_verified, again.last_error) == (BufferState.STAGED_OUT, True, "")
    assert lc.FAILED_STAGE not in again.meta
    assert life.teardown("42", job, hurry=False) is True


def test_a_buffer_whose_build_failed_is_not_staged_out(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_OUT)
    recorder.failing.update({"buffer_create.yml", "buffer_destroy.yml"})  # not even rolled back
    with pytest.raises(runner.StageFailed):
        life.setup("42", UID, GID, job)
    recorder.failing.clear()
    with pytest.raises(Refused, match="buffer 42 is failed"):
        life.stage_out("42", job)
    assert recorder.playbooks() == ["buffer_create.yml", "buffer_destroy.yml"]


def stale(life, key, state, config, *, progress_age=None):
    """Put key's record in state, last updated an hour ago; optionally a progress file that old."""
    life.store.transition(key, set(BufferState) - {BufferState.DESTROYED}, state)
    real_clock = life.store.clock
    life.store.clock = lambda: real_clock() + 3600
    if progress_age is not None:
        path = config.runs_dir / key / "stage-out.progress"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
        moment = time.time() - progress_age
        os.utime(path, (moment, moment))


def test_gc_tears_down_a_dead_build_but_holds_a_dead_stage_out_with_its_data(life, recorder, config, tmp_path):
    for key in ("41", "42"):
        life.setup(key, UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_OUT))
    life.store.transition("41", BufferState.CREATED, BufferState.CREATING)
    stale(life, "42", BufferState.STAGING_OUT, config, progress_age=7200)

    assert operator_views.gc(life, 600, dry_run=True)["held_buffers"] == ["42"]
    assert life.store.get("42").state is BufferState.STAGING_OUT  # a dry run changes nothing
    done = operator_views.gc(life, 600, dry_run=False)

    assert (done["stale_buffers"], done["held_buffers"]) == (["41"], ["42"])
    assert life.store.get("41") is None
    held = life.store.get("42")
    assert held.state is BufferState.FAILED and "the data is kept" in held.last_error
    assert [run["key"] for run in recorder.runs if run["playbook"] == "buffer_destroy.yml"] == ["41"]
    life.store.clock = time.time
    assert life.stage_out("42", script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_OUT)) == 1


def test_gc_leaves_a_stage_out_that_still_reports_progress(life, recorder, config, tmp_path):
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_OUT))
    stale(life, "42", BufferState.STAGING_OUT, config, progress_age=5)
    done = operator_views.gc(life, 600, dry_run=False)
    assert (done["stale_buffers"], done["held_buffers"]) == ([], [])
    assert life.store.get("42").state is BufferState.STAGING_OUT


def test_a_verified_stage_out_lets_teardown_proceed(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB",
                 "#DW stage_out type=file source=$DW_JOB_STRIPED/out.dat destination=/pfs/out.dat")
    life.setup("42", UID, GID, job)
    assert life.stage_out("42", job) == 1
    assert life.store.get("42").stage_out_verified
    assert life.teardown("42", job, hurry=False) is True


def test_teardown_of_an_unknown_job_is_success_with_nothing_done(life, recorder, tmp_path):
    assert life.teardown("999", tmp_path / "gone.sh", hurry=False) is False
    assert recorder.runs == []


def test_pre_run_mounts_on_the_nodes_and_teardown_unmounts_them(life, recorder, config, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    life.setup("42", UID, GID, job)
    life.pre_run("42", job, ["cn2", "cn1", "cn1"])
    mount = recorder.runs[-1]
    assert mount["playbook"] == "buffer_mount.yml" and mount["nodes"] == ["cn1", "cn2"]
    assert mount["extravars"]["bb_buffer"]["mount_path"] == "/mnt/bb/bbjob-42"
    assert life.store.get("42").state is BufferState.MOUNTED
    life.teardown("42", job, hurry=True)
    destroy = recorder.runs[-1]
    assert destroy["playbook"] == "buffer_destroy.yml" and destroy["nodes"] == ["cn1", "cn2"]
    assert destroy["extravars"]["bb_client_mount_path"] == "/mnt/bb/bbjob-42"


def test_pre_run_without_nodes_is_refused(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    life.setup("42", UID, GID, job)
    with pytest.raises(BBError, match="no compute nodes"):
        life.pre_run("42", job, [])


def test_persistent_buffer_in_use_cannot_be_destroyed(life, recorder, tmp_path):
    life.create_persistent("shared", UID, GID, 4 * GiB, None)
    user_job = script(tmp_path, "#DW persistentdw name=shared")
    life.setup("43", UID, GID, user_job)  # checks the buffer exists and is theirs; builds nothing
    life.pre_run("43", user_job, ["cn1"])
    with pytest.raises(Refused, match="in use by job"):
        life.destroy_persistent("shared")
    life.post_run("43", user_job)
    assert recorder.playbooks()[-1] == "buffer_unmount.yml"
    assert life.destroy_persistent("shared") is True
    assert life.store.get("shared") is None


def test_another_users_persistent_buffer_is_refused(life, recorder, tmp_path):
    life.create_persistent("mine", UID, GID, GiB, None)
    with pytest.raises(Refused, match="only its owner"):
        life.setup("44", 2002, 2002, script(tmp_path, "#DW persistentdw name=mine"))


def test_a_job_can_create_and_another_destroy_a_persistent_buffer(life, recorder, tmp_path):
    life.setup("45", UID, GID, script(tmp_path, "#BB create_persistent name=scratch1 capacity=1GiB"))
    assert life.store.get("scratch1").state is BufferState.CREATED
    life.setup("46", UID, GID, script(tmp_path, "#BB destroy_persistent name=scratch1"))
    assert life.store.get("scratch1") is None


def test_real_size_is_whole_bricks(life, recorder, tmp_path):
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=5GiB"))
    assert life.real_size("42") == 8 * GiB
    assert life.real_size("43") == 0


def test_staging_into_the_private_area_is_refused_before_anything_is_allocated(life, recorder, tmp_path):
    """Known at submit, refused at submit (job_process) and again at setup, with the same message."""
    job = script(tmp_path, "#DW jobdw capacity=1GiB access_mode=striped,private",
                 "#DW stage_in type=file source=/pfs/a destination=$DW_JOB_PRIVATE/a")
    with pytest.raises(BBError, match=r"line 3: stage_in: .*\$DW_JOB_PRIVATE is a different directory on every "
                                      "compute node and cannot be staged") as refused:
        life.setup("42", UID, GID, job)
    assert refused.value.exit_code == 2
    assert life.store.buffers() == [] and recorder.runs == []


def test_private_access_mounts_and_unmounts_each_nodes_directory(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB access_mode=striped,private")
    life.setup("42", UID, GID, job)
    life.pre_run("42", job, ["cn1"])
    assert recorder.runs[-1]["extravars"]["bb_buffer"]["private_mount_path"] == "/mnt/bb/bbjob-42-private"
    life.post_run("42", job)
    assert recorder.runs[-1]["extravars"]["bb_buffer"]["private_mount_path"] == "/mnt/bb/bbjob-42-private"
    life.teardown("42", job, hurry=False)
    assert recorder.runs[-1]["extravars"]["bb_buffer"]["private_mount_path"] == "/mnt/bb/bbjob-42-private"


def test_teardown_after_post_run_does_not_visit_the_nodes_again(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    life.setup("42", UID, GID, job)
    life.pre_run("42", job, ["cn1"])
    life.post_run("42", job)
    assert recorder.runs[-1]["playbook"] == "buffer_unmount.yml" and recorder.runs[-1]["nodes"] == ["cn1"]
    life.teardown("42", job, hurry=False)
    destroy = recorder.runs[-1]
    assert destroy["nodes"] == [] and "bb_client_mount_path" not in destroy["extravars"]


def test_a_list_stage_gets_the_variables_of_its_directives_buffer(life, recorder, config, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB",
                 "#DW stage_in type=list source=/pfs/u/files.list destination=$DW_JOB_STRIPED/in",
                 "#DW persistentdw name=keep.1")
    life.create_persistent("keep.1", UID, GID, 2**30, None)
    life.setup("42", UID, GID, job)
    life.stage_in("42", job)
    stage_mount = str(config.work_dir / "stage" / "bbjob-42")
    assert recorder.runs[-1]["extravars"]["bb_stages"] == [{
        "type": "list", "source": "/pfs/u/files.list", "destination": stage_mount + "/in",
        "buffer_root": stage_mount,
        "buffer_variables": {"DW_JOB_STRIPED": stage_mount, "BB_JOB_STRIPED": stage_mount}}]


def test_a_job_its_pool_could_never_hold_is_refused_before_allocating(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=24GiB")  # six granules striped: 6 + 1 bricks; the pool has six
    with pytest.raises(BBError, match=r"needs disperse 6\+1, 7 bricks; pool 'nvme' has 6 of 4GiB: "
                                      r"ask for at most 20GiB"):
        life.check_fits(read_request(job))
    with pytest.raises(BBError, match="ask for at most 20GiB"):
        life.setup("42", UID, GID, job)
    assert recorder.runs == [] and life.store.get("42") is None
    life.check_fits(read_request(script(tmp_path, "#DW jobdw capacity=24GiB access_mode=private")))


@pytest.mark.parametrize(("line", "striped_layout", "expected"), [
    ("#DW jobdw capacity=64GiB", "disperse", None),                       # one set of 16+1
    ("#DW jobdw capacity=68GiB", "disperse", 9 * 4 * GiB),                # two sets of 9+1
    ("#DW jobdw capacity=68GiB access_mode=private", "disperse", None),   # no striped area
    ("#DW jobdw capacity=68GiB fs=lustre", "disperse", None),
    ("#DW jobdw capacity=8GiB", "distribute", 4 * GiB),                   # one file, one brick
    ("#DW jobdw capacity=4GiB", "distribute", None),
    ("#DW persistentdw name=shared", "disperse", None),                   # no job buffer
])
def test_paths_name_the_largest_file_when_it_is_less_than_the_buffer(recorder, tmp_path, line, striped_layout,
                                                                     expected):
    life = lc.Lifecycle(make_config(tmp_path, striped_layout=striped_layout))
    env = life.paths("12", script(tmp_path, line))
    assert env.get(site.MAX_FILE_VARIABLE) == (None if expected is None else str(expected))


# --- swap on the job's buffer -----------------------------------------------------------------

def test_swap_is_counted_in_the_buffer_for_every_node(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=6GiB", "#DW swap 2GiB")
    [buffer] = life.setup("42", UID, GID, job, swap_nodes=3)
    assert buffer.capacity == 6 * GiB + 3 * 2 * GiB
    assert (buffer.meta["swap"], buffer.meta["swap_nodes"]) == (2 * GiB, 3)
    assert recorder.runs[0]["extravars"]["bb_buffer"]["capacity"] == str(12 * GiB)
    assert "swap" not in recorder.runs[0]["extravars"]["bb_buffer"]  # the build sets up no swap


def test_datawarp_size_holds_slurms_own_swap_granule_which_is_not_counted_twice(life, tmp_path):
    # Slurm 22.05's datawarp plugin: 6GiB rounds up to 8GiB; swap 2 x 3 nodes = 6 "bytes", one 4GiB granule.
    job = script(tmp_path, "#DW jobdw capacity=6GiB", "#DW swap 2GiB")
    [buffer] = life.setup("42", UID, GID, job, size=12 * GiB, swap_nodes=3, slurm_books_swap=True)
    assert buffer.capacity == 8 * GiB + 6 * GiB


def test_the_node_count_is_asked_only_for_swap(life, tmp_path):
    asked = []

    def nodes() -> int:
        asked.append(True)
        return 2

    [plain] = life.setup("41", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"), swap_nodes=nodes)
    assert asked == [] and "swap" not in plain.meta
    [swapping] = life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB", "#DW swap 1"),
                            swap_nodes=nodes)
    assert asked == [True] and swapping.capacity == 3 * GiB


def test_swap_without_a_node_count_is_refused_before_anything_is_allocated(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", "#DW swap 1GiB")
    with pytest.raises(BBError, match=r"asks for swap .* node count is unknown") as caught:
        life.setup("42", UID, GID, job)
    assert caught.value.exit_code == 2
    assert life.store.get("42") is None and recorder.runs == []


def test_compute_nodes_get_swap_at_pre_run_and_lose_it_at_post_run_and_teardown(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", "#DW swap 1GiB")
    life.setup("42", UID, GID, job, swap_nodes=2)
    life.pre_run("42", job, ["cn1", "cn2"])
    mount = recorder.runs[-1]
    assert mount["playbook"] == "buffer_mount.yml" and mount["extravars"]["bb_buffer"]["swap"] == str(GiB)
    life.post_run("42", job)
    unmount = recorder.runs[-1]
    assert unmount["playbook"] == "buffer_unmount.yml" and unmount["extravars"]["bb_buffer"]["swap"] == str(GiB)
    life.pre_run("42", job, ["cn1", "cn2"])  # a requeued job; teardown then finds it mounted
    life.teardown("42", job, hurry=True)
    destroy = recorder.runs[-1]
    assert destroy["playbook"] == "buffer_destroy.yml" and destroy["extravars"]["bb_client_swap"] == str(GiB)
    assert "swap" not in destroy["extravars"]["bb_buffer"]  # the stage host never had swap


def test_pre_run_on_more_nodes_than_swap_was_sized_for_is_refused_before_mounting(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", "#DW swap 1GiB")
    life.setup("42", UID, GID, job, swap_nodes=1)
    with pytest.raises(BBError, match="swap was sized at setup for 1 node\\(s\\), the job runs on 2"):
        life.pre_run("42", job, ["cn1", "cn2"])
    assert recorder.playbooks() == ["buffer_create.yml"]


def test_a_job_without_swap_passes_none_to_its_nodes(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    life.setup("42", UID, GID, job)
    life.pre_run("42", job, ["cn1"])
    assert "swap" not in recorder.runs[-1]["extravars"]["bb_buffer"]
    life.teardown("42", job, hurry=True)
    assert "bb_client_swap" not in recorder.runs[-1]["extravars"]


# --- cache buffers (jobdw type=cache pfs=DIR) ----------------------------------------------------------

CACHE_LINE = "#DW jobdw capacity=1GiB type=cache pfs=/pfs/me/run"


def test_a_cache_buffer_mounts_its_volume_beside_the_cache_the_job_sees(life, recorder, tmp_path):
    job = script(tmp_path, CACHE_LINE)
    [buffer] = life.setup("42", UID, GID, job)
    assert buffer.meta["cache"] == "/pfs/me/run"
    env = life.paths("42", job)
    assert env["DW_JOB_STRIPED"] == env["DW_JOB_STRIPED_CACHE"] == env["BB_CACHE_DIR"] == "/mnt/bb/bbjob-42"
    life.pre_run("42", job, ["cn1"])
    mount = recorder.runs[-1]
    assert mount["playbook"] == "buffer_mount.yml" and mount["nodes"] == ["cn1"]
    bb = mount["extravars"]["bb_buffer"]
    assert bb["mount_path"] == "/mnt/bb/bbjob-42-cache"
    assert bb["cache"] == {"path": "/mnt/bb/bbjob-42", "lower": "/pfs/me/run"}
    life.post_run("42", job)
    assert recorder.runs[-1]["playbook"] == "buffer_unmount.yml"
    assert recorder.runs[-1]["extravars"]["bb_buffer"]["cache"]["path"] == "/mnt/bb/bbjob-42"


def test_a_cache_buffer_refuses_a_job_on_two_nodes_before_mounting(life, recorder, tmp_path):
    job = script(tmp_path, CACHE_LINE)
    life.setup("42", UID, GID, job)
    with pytest.raises(BBError, match=r"a cache buffer .* serves one compute node, the job runs on 2"):
        life.pre_run("42", job, ["cn1", "cn2"])
    assert recorder.playbooks() == ["buffer_create.yml"]


def test_stage_out_of_a_cache_buffer_writes_it_back_as_the_user(life, recorder, tmp_path):
    job = script(tmp_path, CACHE_LINE)
    life.setup("42", UID, GID, job)
    life.pre_run("42", job, ["cn1"])
    life.post_run("42", job)
    assert life.stage_out("42", job) == 1
    run = recorder.runs[-1]
    assert run["playbook"] == "cache_writeback.yml" and run["stage"] == "stage-out"
    assert run["extravars"]["bb_cache"] == {"lower": "/pfs/me/run"}
    assert (run["extravars"]["bb_stage_uid"], run["extravars"]["bb_stage_gid"]) == (UID, GID)
    assert run["extravars"]["bb_buffer"]["mount_path"] == str(life.stage_path("42"))
    buffer = life.store.get("42")
    assert buffer.state is BufferState.STAGED_OUT and buffer.stage_out_verified
    assert life.teardown("42", job, hurry=False)
    assert recorder.playbooks()[-1] == "buffer_destroy.yml"


def test_a_failed_write_back_keeps_the_buffer_until_it_succeeds_or_hurry(life, recorder, tmp_path):
    job = script(tmp_path, CACHE_LINE)
    life.setup("42", UID, GID, job)
    life.pre_run("42", job, ["cn1"])
    life.post_run("42", job)
    recorder.failing.add("cache_writeback.yml")
    with pytest.raises(runner.StageFailed, match=r"cache_writeback\.yml broke"):
        life.stage_out("42", job)
    assert life.store.get("42").state is BufferState.FAILED
    with pytest.raises(Refused, match="its stage-out has not succeeded"):
        life.teardown("42", job, hurry=False)
    with pytest.raises(Refused):  # the script gone: the record still says it is a cache
        life.teardown("42", None, hurry=False)
    recorder.failing.clear()
    assert life.stage_out("42", job) == 1  # runs again from failed
    assert life.store.get("42").state is BufferState.STAGED_OUT


def test_teardown_of_a_cache_still_mounted_unmounts_the_cache_on_the_nodes(life, recorder, tmp_path):
    job = script(tmp_path, CACHE_LINE)
    life.setup("42", UID, GID, job)
    life.pre_run("42", job, ["cn1"])
    assert life.teardown("42", job, hurry=True)
    run = recorder.runs[-1]
    assert run["playbook"] == "buffer_destroy.yml" and run["nodes"] == ["cn1"]
    assert run["extravars"]["bb_client_mount_path"] == "/mnt/bb/bbjob-42-cache"
    assert run["extravars"]["bb_client_cache_path"] == "/mnt/bb/bbjob-42"


def test_a_cache_job_stages_out_of_its_persistent_buffer_after_the_write_back(life, recorder, tmp_path):
    life.create_persistent("shared", UID, GID, GiB, None)
    job = script(tmp_path, CACHE_LINE, "#DW persistentdw name=shared",
                 "#DW stage_out type=file source=$DW_PERSISTENT_STRIPED_shared/r destination=/pfs/me/r")
    life.setup("42", UID, GID, job)
    assert life.stage_out("42", job) == 2
    assert recorder.playbooks()[-2:] == ["cache_writeback.yml", "stage_out.yml"]


def test_setup_refuses_a_cache_job_asking_for_two_nodes_before_allocating(life, recorder, tmp_path):
    job = script(tmp_path, CACHE_LINE)
    with pytest.raises(BBError, match=r"\(type=cache\) serves one compute node, the job asks for up to 2"):
        life.setup("42", UID, GID, job, swap_nodes=lambda: 2)
    assert recorder.runs == [] and life.store.get("42") is None


def test_setup_of_a_cache_job_goes_on_when_slurm_cannot_say_how_many_nodes(life, recorder, tmp_path):
    def unknown() -> int:
        raise BBError("scontrol show job 42: no such job")

    [buffer] = life.setup("42", UID, GID, script(tmp_path, CACHE_LINE), swap_nodes=unknown)
    assert buffer.meta["cache"] == "/pfs/me/run"
    with pytest.raises(BBError, match="no such job"):  # swap needs the count: still an error there
        life.setup("43", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB", "#DW swap 1GiB"), swap_nodes=unknown)


def test_no_write_back_while_the_cache_is_still_mounted(life, recorder, tmp_path):
    job = script(tmp_path, CACHE_LINE)
    life.setup("42", UID, GID, job)
    life.pre_run("42", job, ["cn1"])  # post-run failed or never ran: the job may still be writing
    with pytest.raises(Refused, match="its cache is still mounted on cn1"):
        life.stage_out("42", job)
    assert "cache_writeback.yml" not in recorder.playbooks() and life.store.get("42").state is BufferState.MOUNTED


def test_a_teardown_with_hurry_first_removes_what_an_interrupted_stage_out_left(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_OUT)
    life.setup("42", UID, GID, job)
    life.store.transition("42", BufferState.CREATED, BufferState.STAGING_OUT)  # a stage-out killed mid-copy
    assert life.teardown("42", job, hurry=True) is True
    discard, destroy = recorder.runs[-2:]
    assert (discard["playbook"], discard["stage"], destroy["playbook"]) == ("stage_out.yml", "teardown",
                                                                           "buffer_destroy.yml")
    assert discard["extravars"]["bb_stage_discard"] is True
    assert discard["extravars"]["bb_stages"][0]["destination"] == "/pfs/out.dat"
    assert discard["extravars"]["bb_stage_uid"] == UID
    assert destroy["extravars"]["bb_stage_mounted"] is True, "the stage host's mount is recorded: destroy unmounts it"


def test_a_failed_stage_out_is_discarded_from_its_record_when_the_job_script_is_gone(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_OUT)
    life.setup("42", UID, GID, job)
    recorder.failing.add("stage_out.yml")
    with pytest.raises(BBError):
        life.stage_out("42", job)
    recorder.failing.clear()
    job.unlink()  # Slurm's teardown may come without a readable script
    life.teardown("42", job, hurry=True)
    [discard] = [r for r in recorder.runs if r["extravars"].get("bb_stage_discard")]
    assert discard["playbook"] == "stage_out.yml"
    assert discard["extravars"]["bb_stages"][0]["destination"] == "/pfs/out.dat"


def test_a_teardown_with_hurry_of_an_interrupted_cache_write_back_removes_its_temporaries(life, recorder, tmp_path):
    job = script(tmp_path, CACHE_LINE)
    life.setup("42", UID, GID, job)
    recorder.failing.add("cache_writeback.yml")
    with pytest.raises(BBError):
        life.stage_out("42", job)
    recorder.failing.clear()
    assert life.teardown("42", job, hurry=True) is True
    discard, destroy = recorder.runs[-2:]
    assert (discard["playbook"], destroy["playbook"]) == ("cache_writeback.yml", "buffer_destroy.yml")
    assert discard["extravars"]["bb_stage_discard"] is True
    assert discard["extravars"]["bb_cache"] == {"lower": "/pfs/me/run"}
    assert discard["extravars"]["bb_stage_uid"] == UID


@pytest.mark.parametrize("stage_out_ran", [False, True])
def test_no_discard_when_no_stage_out_was_interrupted(life, recorder, tmp_path, stage_out_ran):
    job = script(tmp_path, "#DW jobdw capacity=1GiB", STAGE_OUT)
    life.setup("42", UID, GID, job)
    if stage_out_ran:
        life.stage_out("42", job)  # verified: nothing of ours is left in the destination
    life.teardown("42", job, hurry=True)
    assert [r for r in recorder.runs if r["extravars"].get("bb_stage_discard")] == []
