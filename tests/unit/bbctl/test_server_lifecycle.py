"""Storage servers' health through the stages and the command line: which failures count, the limit, the
pools file, allocation around unusable servers, `bbctl servers` (playbook runs faked, SQLite store)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from bbctl import allocation, cli, reconcile, runner, server_health
from bbctl import lifecycle as lc
from bbctl import site as sitecfg
from bbctl.errors import BBError
from bbctl.operator_views import UnknownServer, drain_server, resume_server
from bbctl.pools import NotEnoughBricks
from bbctl.state import FAILING
from tests.unit.bbctl.test_lifecycle import GID, UID, config, script

__all__ = ["config"]
GiB = 1024**3


class FailOn:
    """Stands in for runner.run_stage: each run fails on the hosts in `hosts` (a set the test changes)."""

    def __init__(self) -> None:
        self.hosts: set[str] = set()
        self.runs: list[dict] = []

    def __call__(self, config, key, stage, playbook, *, extravars, hosts, nodes=(), timeout, on_event, cancel):
        self.runs.append({"stage": stage, "playbook": playbook, "hosts": list(hosts), "nodes": list(nodes)})
        failures = [f"{host}: a task: {playbook} broke on {host}" for host in sorted(self.hosts)]
        return runner.StageRun(stage=stage, status="failed" if failures else "successful", rc=2 if failures else 0,
                               seconds=0.1, run_dir=config.runs_dir / key, failures=failures)


@pytest.fixture
def fake(monkeypatch) -> FailOn:
    faking = FailOn()
    monkeypatch.setattr(runner, "run_stage", faking)
    return faking


@pytest.fixture
def life(config, fake) -> lc.Lifecycle:
    return lc.Lifecycle(config)


def pools_file(config) -> dict:
    [pool] = json.loads(config.pools_json.read_text())["pools"]
    return pool


def persistent(life: lc.Lifecycle, name: str, gib: int = 4):
    return life.create_persistent(name, UID, GID, gib * GiB, None)


def test_a_failed_run_counts_only_against_the_buffers_storage_servers(life, fake):
    buffer = persistent(life, "keep")  # one 4 GiB brick
    [server] = [b.server for b in buffer.bricks]
    fake.hosts = {server, "localhost", "cn1", "bbnode-not-ours"}
    with pytest.raises(runner.StageFailed):
        life.pre_run("9", script_with_persistent(life), ["cn1"])
    health = life.store.servers()
    assert set(health) == {server}, "the stage host, a compute node and other servers are no failure of its"
    assert health[server].failures == 1 and f"{server}: a task:" in health[server].last_error


def script_with_persistent(life: lc.Lifecycle) -> Path:
    return script(life.site.work_dir.parent, "#DW persistentdw name=keep")


def test_a_successful_run_resets_the_count(life, fake):
    buffer = persistent(life, "keep")
    [server] = [b.server for b in buffer.bricks]
    life.store.record_runs({server: "earlier"}, [], limit=3)
    life.pre_run("9", script_with_persistent(life), ["cn1"])
    assert life.store.servers()[server].failures == 0


def test_the_limit_makes_a_server_unusable_says_so_and_slurm_stops_counting_its_bricks(
        config, fake, caplog):
    life = lc.Lifecycle(dataclasses.replace(config, server_fail_limit=2))
    buffer = persistent(life, "keep", gib=12)  # 3 data + 1 redundancy bricks: two on bbnode1, one on each other
    assert sorted(b.server for b in buffer.bricks) == ["bbnode1", "bbnode1", "bbnode2", "bbnode3"]
    assert (pools_file(config)["quantity"], pools_file(config)["free"]) == (6, 2)
    fake.hosts = {"bbnode1"}
    with pytest.raises(runner.StageFailed):
        life.pre_run("9", script_with_persistent(life), ["cn1"])
    assert life.store.servers()["bbnode1"].unusable == ""
    with caplog.at_level(logging.INFO, logger="bbctl"), pytest.raises(runner.StageFailed):
        life.pre_run("10", script_with_persistent(life), ["cn1"])
    server = life.store.servers()["bbnode1"]
    assert server.unusable == FAILING and server.failures == 2
    assert any("storage server bbnode1 is now unusable: 2 consecutive failed runs (server_fail_limit 2)" in r.message
               and "broke on bbnode1" in r.message for r in caplog.records)
    # Slurm sees the pool without bbnode1's two bricks (both in use by keep): 4 bricks, 2 free
    assert (pools_file(config)["quantity"], pools_file(config)["free"]) == (4, 2)
    assert life.pools_document(datawarp=True)["pools"][0]["quantity"] == 4


def test_a_limit_of_zero_never_marks_a_server(config, fake):
    life = lc.Lifecycle(dataclasses.replace(config, server_fail_limit=0))
    persistent(life, "keep")
    fake.hosts = {"bbnode1", "bbnode2", "bbnode3"}
    for job_id in ("9", "10", "11", "12"):
        with pytest.raises(runner.StageFailed):
            life.pre_run(job_id, script_with_persistent(life), ["cn1"])
    assert not life.unusable_servers()


def test_setup_never_builds_on_an_unusable_server(life, fake, tmp_path):
    drain_server(life, "bbnode2", "disk swap")
    [buffer] = life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=8GiB"))  # 2 + 1 bricks
    assert "bbnode2" not in {b.server for b in buffer.bricks} and len(buffer.bricks) == 3
    assert "bbnode2" not in fake.runs[-1]["hosts"]


def test_a_striped_buffer_that_only_unusable_servers_could_hold_is_refused_naming_them(life, fake, tmp_path,
                                                                                       caplog):
    drain_server(life, "bbnode1", "")
    life.store.record_runs({"bbnode2": "bbnode2: x: y"}, [], limit=1)
    with pytest.raises(NotEnoughBricks, match=r"3 needed, 2 free \(4 more on unusable server\(s\) "
                                              r"bbnode1, bbnode2: `bbctl servers` says why\)"):
        life.create_persistent("big", UID, GID, 8 * GiB, None)  # striped: 2 data + 1 redundancy
    assert life.store.buffers() == []
    # a job's setup leaves the build to stage-in, with the same words in bbctl's log
    life.site = dataclasses.replace(life.site, brick_wait=1)
    with caplog.at_level(logging.INFO, logger="bbctl"):
        assert life.setup("43", UID, GID, script(tmp_path, "#DW jobdw capacity=8GiB")) == []
    assert allocation.deferred(life.site.work_dir, "43") is not None
    assert any("on unusable server(s) bbnode1, bbnode2" in r.message and "built by stage-in" in r.message
               for r in caplog.records)


def test_teardown_still_works_on_a_buffer_of_an_unusable_server(life, fake, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=4GiB")
    [buffer] = life.setup("44", UID, GID, job)
    [server] = {b.server for b in buffer.bricks}
    drain_server(life, server, "")
    assert life.teardown("44", job, hurry=False)
    assert life.store.get("44") is None
    assert fake.runs[-1]["playbook"] == "buffer_destroy.yml" and fake.runs[-1]["hosts"] == [server]


def test_resume_gives_the_bricks_back_and_clears_the_count(life, config, fake):
    life.store.record_runs({"bbnode3": "bbnode3: x: y"}, [], limit=1)
    life.refresh_pools()
    assert pools_file(config)["quantity"] == 4
    server = resume_server(life, "bbnode3")
    assert (server.unusable, server.failures) == ("", 0)
    assert pools_file(config)["quantity"] == 6


def test_an_unknown_server_is_refused_naming_the_known_ones(life):
    known = r"no storage server 'bbnode9' in any pool; known: bbnode1, bbnode2, bbnode3"
    with pytest.raises(UnknownServer, match=known) as err:
        drain_server(life, "bbnode9")
    assert err.value.exit_code == 2
    with pytest.raises(UnknownServer):
        resume_server(life, "bbnode9")
    assert life.store.servers() == {}, "nothing recorded for it"


# --- bbctl servers ---------------------------------------------------------------------------------

def bbctl(config_file: Path, *args: str) -> int:
    return cli.main(["--config", str(config_file), *args])


def test_bbctl_servers_lists_drains_and_resumes(config_file, capsys):
    """config_file (conftest): servers s1 and s2, one 1 GiB brick each."""
    assert bbctl(config_file, "servers", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["state"], s["failures"], s["bricks"]) for s in listed["servers"]] == [
        ("s1", "usable", 0, 1), ("s2", "usable", 0, 1)]
    assert listed["server_fail_limit"] == 3
    assert bbctl(config_file, "servers", "--drain", "s2", "--reason", "new disk") == 0
    text = capsys.readouterr().out
    assert "s2      DRAINED" in text and "s2: drained since" in text and ": new disk" in text
    assert bbctl(config_file, "pools") == 0
    [pool] = json.loads(capsys.readouterr().out)["pools"]
    assert (pool["quantity"], pool["free"]) == (1, 1)
    assert bbctl(config_file, "servers", "--resume", "s2", "--json") == 0
    assert [s["state"] for s in json.loads(capsys.readouterr().out)["servers"]] == ["usable", "usable"]


def test_bbctl_servers_exit_codes(config_file, capsys):
    assert bbctl(config_file, "servers", "--drain", "s9") == 2
    assert capsys.readouterr().err.strip().endswith("no storage server 's9' in any pool; known: s1, s2")
    assert bbctl(config_file, "servers", "--reason", "why") == 2
    with pytest.raises(SystemExit) as usage:  # argparse: one action at a time
        bbctl(config_file, "servers", "--drain", "s1", "--resume", "s2")
    assert usage.value.code == 2


def test_bbctl_servers_lists_the_buffers_on_each(config_file, tmp_path, capsys):
    job = tmp_path / "job.sh"
    job.write_text("#!/bin/bash\n#DW jobdw capacity=1GiB\n")
    assert bbctl(config_file, "setup", "--job-id", "7", "--uid", "1001", "--gid", "1001", "--script", str(job)) == 0
    capsys.readouterr()
    assert bbctl(config_file, "servers", "--json") == 0
    rows = {s["name"]: s for s in json.loads(capsys.readouterr().out)["servers"]}
    assert rows["s1"]["buffers"] == ["7"] and rows["s1"]["bricks_in_use"] == 1 and rows["s2"]["buffers"] == []


def test_a_server_that_is_down_is_blamed_and_the_peers_that_report_it_are_not():
    """The storage-server-down fault (tests/integration/bbctl/test_faults.py): each server failed."""
    failed = {
        "bbnode1": "bbnode1: Stop and delete: gluster volume delete bbjob-23: Some of the peers are down",
        "bbnode2": "bbnode2: Remove: ... which glusterd will not delete while peer(s) 127.1.1.3 are disconnected",
        "bbnode3": "bbnode3: Remove: cannot ask glusterd whether ... still belongs to a volume (Connection failed. "
                   "Please check if gluster daemon is operational.)"}
    assert server_health.blamed(failed) == {"bbnode3": failed["bbnode3"]}
    assert server_health.blamed({"s1": "s1: Mount: UNREACHABLE! ssh: connect to host s1"}) != {}
    others = {"s1": "s1: a task: broke", "s2": "s2: a task: broke"}
    assert server_health.blamed(others) == others  # nobody at fault by their own words: all are counted


class FailCreate(FailOn):
    """The create fails on `hosts`; every other playbook (the rollback's destroy) succeeds everywhere."""

    def __call__(self, config, key, stage, playbook, **kwargs):
        if playbook == "buffer_create.yml":
            return super().__call__(config, key, stage, playbook, **kwargs)
        hosts, self.hosts = self.hosts, set()
        try:
            return super().__call__(config, key, stage, playbook, **kwargs)
        finally:
            self.hosts = hosts


def test_a_failed_setup_counts_once_and_its_rollback_is_not_counted(config, monkeypatch, tmp_path):
    faking = FailCreate()
    monkeypatch.setattr(runner, "run_stage", faking)
    life = lc.Lifecycle(config)
    faking.hosts = {"bbnode1"}
    with pytest.raises(runner.StageFailed):
        life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=8GiB"))
    assert [r["playbook"] for r in faking.runs] == ["buffer_create.yml", "buffer_destroy.yml"]
    health = life.store.servers()
    assert health["bbnode1"].failures == 1, "the rollback that succeeded there must not reset the create's failure"


# --- compute nodes drained where a buffer was not unmounted ----------------------------------------

def mount_run(status: str, *, failed: tuple[str, ...] = (), done: tuple[str, ...] = (),
              mounted: bool = False) -> runner.StageRun:
    results = [(node, {"path": "/mnt/bb/9", "mounted": mounted}) for node in done]
    results.append(("cn9", {"path": "/mnt/bb/other", "mounted": mounted}))  # another path says nothing
    return runner.StageRun(stage="post-run", status=status, rc=2, seconds=1.0, run_dir=Path("/nonexistent"),
                           failures=[f"{n}: Unmount: target is busy" for n in failed], results=results)


def test_the_nodes_blamed_are_those_left_stuck():
    nodes = ["cn1", "cn2", "cn3", "cn9"]

    def stuck(run: runner.StageRun, *, mounting: bool = False) -> list[str]:
        return server_health.stuck_nodes(run, nodes, "/mnt/bb/9", mounting=mounting)

    # cn1 failed on the unmount; cn2 unmounted, then failed removing the directory: its mount is gone
    assert stuck(mount_run("failed", failed=("cn1", "cn2"), done=("cn2",))) == ["cn1"]
    # timed out: every node that had not reported the path unmounted
    assert stuck(mount_run("timeout", done=("cn1", "cn2"))) == ["cn3", "cn9"]
    assert stuck(mount_run("canceled")) == []
    assert stuck(mount_run("failed")) == [], "a run that failed on no node (ansible-playbook itself) blames none"
    # mounting: a mount that failed cleanly leaves the node as it was; one that hung is the node's
    assert stuck(mount_run("failed", failed=("cn1",), mounted=True), mounting=True) == []
    assert stuck(mount_run("timeout", done=("cn1", "cn2", "cn3"), mounted=True), mounting=True) == ["cn9"]
    assert stuck(mount_run("timeout", done=("cn1", "cn2", "cn3")), mounting=True) == nodes, \
        "a node that reported the path not mounted has not mounted it"


@pytest.fixture
def drained(monkeypatch) -> list[tuple[list[str], str]]:
    calls: list[tuple[list[str], str]] = []
    monkeypatch.setattr(lc.server_health.slurmconf, "drain", lambda _dir, nodes, reason: calls.append((nodes, reason)))
    return calls


def test_a_post_run_that_fails_on_a_node_drains_it_and_the_job_goes_on_to_stage_out(life, fake, drained, tmp_path):
    """Slurm 22.05 runs no stage-out after a failed post-run; a drained node does not fail it, and the
    teardown unmounts that node (only that one) again."""
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=4GiB"))
    life.pre_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"), ["cn1", "cn2"])
    fake.hosts = {"cn2"}
    life.post_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"))
    [(nodes, reason)] = drained
    assert nodes == ["cn2"]
    assert reason.startswith("bbctl: job 42 post-run: unmount of ") and reason.endswith(" failed")
    assert life.store.get("42").meta["nodes"] == ["cn2"]
    fake.hosts = set()
    life.teardown("42", script(tmp_path, "#DW jobdw capacity=4GiB"), hurry=False)
    assert fake.runs[-1]["playbook"] == "buffer_destroy.yml" and fake.runs[-1]["nodes"] == ["cn2"]


def test_a_post_run_that_fails_on_a_node_it_did_not_drain_fails(life, fake, drained, monkeypatch, tmp_path):
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=4GiB"))
    life.pre_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"), ["cn1", "cn2"])
    fake.hosts = {"cn1", "cn2"}
    monkeypatch.setattr(lc.server_health, "stuck_nodes", lambda run, nodes, path, mounting=False: ["cn2"])
    with pytest.raises(runner.StageFailed, match="cn1"):  # cn1 failed after its unmount: not the mount's
        life.post_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"))
    assert life.store.get("42").meta["nodes"] == ["cn1", "cn2"], "post-run failed: every node still to visit"


def test_a_site_that_does_not_drain_only_fails_the_stage(config, fake, drained, tmp_path):
    life = lc.Lifecycle(dataclasses.replace(config, drain_nodes=False))
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=4GiB"))
    life.pre_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"), ["cn1"])
    fake.hosts = {"cn1"}
    with pytest.raises(runner.StageFailed):
        life.post_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"))
    assert drained == []


def test_a_drain_slurm_refuses_is_logged_and_the_stage_fails_with_its_own_cause(life, fake, monkeypatch,
                                                                              tmp_path, caplog):
    def refuse(_dir, _nodes, _reason):
        raise BBError("scontrol update NodeName=cn1: Invalid node name specified")

    monkeypatch.setattr(lc.server_health.slurmconf, "drain", refuse)
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=4GiB"))
    life.pre_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"), ["cn1"])
    fake.hosts = {"cn1"}
    with caplog.at_level(logging.WARNING, logger="bbctl"), pytest.raises(runner.StageFailed, match="cn1: a task"):
        life.post_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"))
    assert any("could not drain cn1" in r.message for r in caplog.records)


def test_a_teardown_that_fails_on_a_node_drains_it(life, fake, drained, tmp_path):
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=4GiB"))
    life.pre_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"), ["cn1"])
    fake.hosts = {"cn1"}  # post-run never ran (the job was cancelled): teardown unmounts the node
    with pytest.raises(runner.StageFailed):
        life.teardown("42", script(tmp_path, "#DW jobdw capacity=4GiB"), hurry=True)
    assert [nodes for nodes, _reason in drained] == [["cn1"]]


def test_a_run_that_timed_out_resets_no_server(life, monkeypatch):
    buffer = persistent(life, "keep")
    [server] = [b.server for b in buffer.bricks]
    life.store.record_runs({server: "earlier"}, [], limit=3)
    hung = runner.StageRun(stage="pre-run", status="timeout", rc=254, seconds=30.0, run_dir=Path("/nonexistent"),
                           results=[(server, {"changed": False})])  # an early task went through, then it hung
    server_health.record(life, "9", buffer, hung)
    assert life.store.servers()[server].failures == 1
    server_health.record(life, "9", buffer, dataclasses.replace(hung, status="failed"))
    assert life.store.servers()[server].failures == 0, "a failed run still resets the servers that did their part"


def test_a_pre_run_that_times_out_drains_the_nodes_that_had_not_mounted(life, monkeypatch, drained, tmp_path):
    life.setup("42", UID, GID, script(tmp_path, "#DW jobdw capacity=4GiB"))
    mount_path = str(sitecfg.mount_path(life.site, "42"))

    def hangs_on_cn2(config, key, stage, playbook, **kwargs):
        return runner.StageRun(stage=stage, status="timeout", rc=254, seconds=60.0, run_dir=config.runs_dir / key,
                               results=[("cn1", {"path": mount_path, "mounted": True})])

    monkeypatch.setattr(runner, "run_stage", hangs_on_cn2)
    with pytest.raises(runner.StageFailed, match="timed out"):
        life.pre_run("42", script(tmp_path, "#DW jobdw capacity=4GiB"), ["cn1", "cn2"])
    assert drained == [(["cn2"], f"bbctl: job 42 pre-run: mount of {mount_path} timed out")]


# --- a server that hangs: counted by the survey (bbctl reconcile, bbctl gc) ---------------------------

def surveyed(monkeypatch, *, status: str, failures: list[str], answering: list[str]) -> None:
    """Fake the survey's run: each host of ``answering`` reports nothing of ours; ``failures`` as given."""
    def run_stage(site, key, stage, playbook, *, extravars, hosts, timeout, cancel):
        assert playbook == "buffer_survey.yml"
        results = [(host, {"volumes": [], "brick_dirs": [], "mounts": []}) for host in answering]
        return runner.StageRun(stage=stage, status=status, rc=0 if status == "successful" else 2, seconds=270.0,
                               run_dir=Path("/nonexistent") / key, failures=failures, results=results)
    monkeypatch.setattr(runner, "run_stage", run_stage)


def test_a_storage_server_that_does_not_answer_the_survey_counts_a_failure_and_no_one_else(config, monkeypatch):
    life = lc.Lifecycle(config)
    life.store.record_runs({"bbnode1": "earlier"}, [], limit=3)
    surveyed(monkeypatch, status="failed", answering=["bbnode1", "bbnode3"],
             failures=["bbnode2: Read the volumes and brick directories of burst buffers: Error : Request timed out",
                       "cn1: Read the mounts of burst buffers: unreachable"])
    reconcile.reconcile(life, repair_drift=False, older_than=0)
    health = life.store.servers()
    assert health["bbnode2"].failures == 1 and "did not answer bbctl's survey" in health["bbnode2"].last_error
    assert "Request timed out" in health["bbnode2"].last_error
    assert health["bbnode1"].failures == 1  # answering resets nothing
    assert "bbnode3" not in health and "cn1" not in health  # answered; not a storage server


def test_a_server_silent_until_the_survey_timed_out_is_counted_up_to_unusable(config, monkeypatch):
    life = lc.Lifecycle(dataclasses.replace(config, server_fail_limit=2))
    surveyed(monkeypatch, status="timeout", failures=[], answering=["bbnode1", "bbnode2", "cn1"])
    for _ in range(2):
        reconcile.reconcile(life, repair_drift=False, older_than=0)
    server = life.store.servers()["bbnode3"]
    assert server.unusable == FAILING and server.failures == 2
    assert "no answer before the survey timed out after 270 s" in server.last_error
    assert sorted(life.store.servers()) == ["bbnode3"]
    assert pools_file(config)["quantity"] == 4  # of 6: Slurm no longer counts bbnode3's two bricks


def test_a_cancelled_survey_blames_no_silent_server(config, monkeypatch):
    life = lc.Lifecycle(config)
    surveyed(monkeypatch, status="canceled", failures=[], answering=["bbnode1"])
    reconcile.reconcile(life, repair_drift=False, older_than=0)
    assert life.store.servers() == {}


def test_a_dry_run_of_gc_counts_no_silence_and_a_real_one_does(config_file, monkeypatch, capsys):
    """config_file (conftest): servers s1 and s2."""
    surveyed(monkeypatch, status="failed", answering=["s1"],
             failures=["s2: Read the volumes and brick directories of burst buffers: Error : Request timed out"])
    bbctl(config_file, "gc", "--dry-run", "--json")
    assert "s2" in json.loads(capsys.readouterr().out)["unanswered"]
    bbctl(config_file, "servers", "--json")
    assert {s["name"]: s["failures"] for s in json.loads(capsys.readouterr().out)["servers"]} == {"s1": 0, "s2": 0}
    bbctl(config_file, "gc", "--json")
    capsys.readouterr()
    bbctl(config_file, "servers", "--json")
    assert {s["name"]: s["failures"] for s in json.loads(capsys.readouterr().out)["servers"]} == {"s1": 0, "s2": 1}
