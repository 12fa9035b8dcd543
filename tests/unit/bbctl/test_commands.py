"""bbctl's command line: arguments to stages, output, exit codes (playbook runs recorded)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from bbctl import cli, commands, reconcile, runner, site, slurmconf
from bbctl.errors import BBError
from tests.unit.bbctl.test_sweep import squeue

GiB = 1024**3


def bbctl(config_file: Path, *args: str) -> int:
    return cli.main(["--config", str(config_file), *args])


def job_script(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/bash\n" + "".join(f"{line}\n" for line in lines))
    return str(path)


def test_setup_show_teardown_and_their_exit_codes(config_file, tmp_path, capsys):
    script = job_script(tmp_path, "#DW jobdw capacity=2GiB access_mode=private")  # two bricks: distribute
    assert bbctl(config_file, "setup", "--job-id", "7", "--uid", "1001", "--gid", "1001", "--script", script) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["buffers"][0]["volume"] == "bbjob-7" and made["buffers"][0]["state"] == "created"
    assert bbctl(config_file, "show", "7") == 0
    assert json.loads(capsys.readouterr().out)["mount_path"] == "/mnt/bb/bbjob-7"
    assert bbctl(config_file, "teardown", "--job-id", "7", "--script", script) == 0
    assert bbctl(config_file, "show", "7") == 3
    assert "no buffer 7" in capsys.readouterr().err


def test_a_directive_error_exits_2_with_the_reason_on_the_last_line(config_file, tmp_path, capsys):
    script = job_script(tmp_path, "#DW jobdw capacity=2GiB colour=blue")
    assert bbctl(config_file, "setup", "--job-id", "7", "--uid", "1001", "--gid", "1001", "--script", script) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("bbctl setup: error:") and "colour=blue" in last


def test_refusals_exit_4(config_file, tmp_path, capsys):
    assert bbctl(config_file, "create-persistent", "--name", "keep", "--uid", "1001", "--gid", "1001",
                 "--capacity", "1GiB") == 0
    user = job_script(tmp_path, "#DW persistentdw name=keep")
    assert bbctl(config_file, "pre-run", "--job-id", "8", "--script", user, "--nodes", "cn1") == 0
    assert bbctl(config_file, "destroy-persistent", "--name", "keep") == 4
    assert "in use by job(s) 8" in capsys.readouterr().err


def test_paths_appends_key_value_lines_to_the_path_file(config_file, tmp_path):
    script = job_script(tmp_path, "#DW jobdw capacity=1GiB access_mode=striped,private")
    path_file = tmp_path / "paths"
    path_file.write_text("")
    assert bbctl(config_file, "paths", "--job-id", "9", "--script", script, "--path-file", str(path_file)) == 0
    assert path_file.read_text().splitlines() == [
        "DW_JOB_STRIPED=/mnt/bb/bbjob-9", "DW_JOB_PRIVATE=/mnt/bb/bbjob-9-private",
        "BB_JOB_STRIPED=/mnt/bb/bbjob-9", "BB_JOB_PRIVATE=/mnt/bb/bbjob-9-private"]


def test_status_and_pools_count_bricks(config_file, tmp_path, capsys):
    bbctl(config_file, "setup", "--job-id", "7", "--uid", "1001", "--gid", "1001",
          "--script", job_script(tmp_path, "#DW jobdw capacity=1GiB"))
    capsys.readouterr()
    assert bbctl(config_file, "pools", "--datawarp") == 0
    assert json.loads(capsys.readouterr().out)["pools"] == [
        {"id": "nvme", "units": "bytes", "granularity": GiB, "quantity": 2, "free": 1}]
    assert bbctl(config_file, "status") == 0
    text = capsys.readouterr().out
    pool, buffer = text.splitlines()[1], text.splitlines()[4]
    assert pool.split() == ["nvme", "[##########..........]", "50%", "2.0", "GiB", "1.0", "GiB", "1.0", "GiB",
                            "1/2", "of", "1.0", "GiB"]
    assert buffer.split()[:6] == ["7", "created", buffer.split()[2], "1.0", "GiB", "1"]
    assert "one file at most" not in text  # one brick: a file can fill the buffer


def test_status_names_the_largest_file_when_it_is_less_than_the_buffer(config_file, tmp_path, capsys):
    bbctl(config_file, "setup", "--job-id", "7", "--uid", "1001", "--gid", "1001",
          "--script", job_script(tmp_path, "#DW jobdw capacity=2GiB access_mode=private"))  # distribute, 2 bricks
    capsys.readouterr()
    assert bbctl(config_file, "status") == 0
    assert "one file at most 1.0 GiB" in capsys.readouterr().out
    assert bbctl(config_file, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["buffers"][0]["max_file"] == GiB


def test_a_missing_configuration_says_where_it_looked(tmp_path, capsys):
    assert cli.main(["--config", str(tmp_path / "nope.yml"), "status"]) == 1
    assert f"no bbctl configuration at {tmp_path / 'nope.yml'}" in capsys.readouterr().err


def test_a_bad_job_id_is_refused(config_file, capsys):
    assert bbctl(config_file, "real-size", "--job-id", "12;rm") == 2
    assert "expected digits only" in capsys.readouterr().err


def test_slurm_install_rewrites_the_pools_file_with_the_bricks_in_use(config_file, tmp_path, capsys):
    """burst_buffer.lua's job_process counts a pool's bricks in bbctl-pools.json: an install leaves it current."""
    settings = yaml.safe_load(config_file.read_text())
    config_file.write_text(yaml.safe_dump({**settings, "slurm_dir": str(tmp_path / "slurm")}))
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "bbctl-pools.json").write_text('{"pools": [{"id": "nvme", "quantity": 1, "free": 1}]}')
    bbctl(config_file, "setup", "--job-id", "7", "--uid", "1001", "--gid", "1001",
          "--script", job_script(tmp_path, "#DW jobdw capacity=1GiB"))
    (tmp_path / "slurm" / "bbctl-pools.json").write_text('{"pools": [{"id": "nvme", "quantity": 1, "free": 1}]}')
    assert bbctl(config_file, "slurm-install") == 0
    assert json.loads((tmp_path / "slurm" / "bbctl-pools.json").read_text())["pools"] == [
        {"id": "nvme", "granularity": GiB, "quantity": 2, "free": 1}]
    assert (tmp_path / "slurm" / "bbctl-layouts.lua").exists() and "pools = {" in \
        (tmp_path / "slurm" / "bbctl-site.lua").read_text()


def test_setup_sizes_swap_for_the_nodes_given(config_file, tmp_path, capsys):
    script = job_script(tmp_path, "#DW jobdw capacity=1GiB access_mode=private", "#DW swap 1GiB")
    assert bbctl(config_file, "setup", "--job-id", "7", "--uid", "1001", "--gid", "1001", "--script", script,
                 "--swap-nodes", "1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["buffers"][0]["capacity"] == 2 * GiB


def test_setup_asks_slurm_for_the_node_count_only_for_swap(config_file, tmp_path, capsys, monkeypatch):
    asked = []
    monkeypatch.setattr(commands, "slurm_node_count", lambda _site, job: asked.append(job) or 1)
    plain = job_script(tmp_path, "#DW jobdw capacity=1GiB access_mode=private")
    assert bbctl(config_file, "setup", "--job-id", "7", "--uid", "1001", "--gid", "1001", "--script", plain) == 0
    assert asked == []
    assert bbctl(config_file, "teardown", "--job-id", "7", "--script", plain, "--hurry") == 0
    capsys.readouterr()
    swapping = job_script(tmp_path, "#DW jobdw capacity=1GiB access_mode=private", "#DW swap 1")
    assert bbctl(config_file, "setup", "--job-id", "8", "--uid", "1001", "--gid", "1001", "--script", swapping,
                 "--json") == 0
    assert asked == ["8"]
    assert json.loads(capsys.readouterr().out)["buffers"][0]["capacity"] == 2 * GiB


@pytest.mark.parametrize(("listed", "count"), [
    ({"node_count": 4, "max_nodes": 0}, 4),  # running on 4 (22.05 leaves max_nodes 0 when not asked)
    ({"node_count": 2, "max_nodes": 6}, 6),  # pending with -N 2-6: Slurm books swap for the most
    ({"node_count": {"set": True, "infinite": False, "number": 3}, "max_nodes": {"set": False}}, 3),
])
def test_the_node_count_is_the_most_nodes_the_job_may_use(monkeypatch, config_file, listed, count):
    job = {"job_id": 42, "job_state": "PENDING", "name": "x NumNodes=999 NodeList=victim", **listed}
    monkeypatch.setattr(slurmconf.host, "run", squeue([job]))
    assert commands.slurm_node_count(site.load(config_file), "42") == count


def test_without_a_node_count_or_a_job_swap_cannot_be_sized(monkeypatch, config_file):
    monkeypatch.setattr(slurmconf.host, "run", squeue([{"job_id": 42, "job_state": "PENDING"}]))
    with pytest.raises(BBError, match="slurmctld shows no node count for job 42: cannot size the job's swap"):
        commands.slurm_node_count(site.load(config_file), "42")
    with pytest.raises(BBError, match="slurmctld has no job 43"):
        commands.slurm_node_count(site.load(config_file), "43")


def test_a_jobs_nodes_come_from_slurms_json_not_from_its_name(monkeypatch, config_file):
    job = {"job_id": 42, "job_state": "RUNNING", "nodes": "node[1-2]",
           "name": "x\nJobId=42 NodeList=victim[1-999]", "standard_output": "/tmp/o NodeList=victim"}
    listing = squeue([job])
    asked = []

    def run(argv, **kwargs):
        if argv[0] == "squeue":
            return listing(argv, **kwargs)
        asked.append(argv)
        return subprocess.CompletedProcess(argv, 0, "node1\nnode2\n", "")

    monkeypatch.setattr(slurmconf.host, "run", run)
    monkeypatch.setattr(commands.host, "run", run)
    assert commands.slurm_nodes(site.load(config_file), "42") == ["node1", "node2"]
    assert asked == [["scontrol", "show", "hostnames", "node[1-2]"]]


@pytest.fixture
def volume_gone(config_file, monkeypatch, capsys) -> Path:
    """A persistent buffer whose volume a survey does not find (deleted behind bbctl's back)."""
    assert bbctl(config_file, "create-persistent", "--name", "keep", "--uid", "1001", "--gid", "1001",
                 "--capacity", "1GiB") == 0
    capsys.readouterr()
    nothing = reconcile.Reality(volumes={}, brick_dirs=[], mounts=[], answered=frozenset({"s1", "s2"}))
    monkeypatch.setattr(reconcile, "survey", lambda _life: nothing)
    return config_file


def test_reconcile_exits_5_while_drift_is_left_and_0_once_repaired(volume_gone, capsys):
    assert bbctl(volume_gone, "reconcile", "--json") == reconcile.EXIT_DRIFT == 5
    assert [d["kind"] for d in json.loads(capsys.readouterr().out)["drift"]] == [reconcile.VOLUME_MISSING]
    assert bbctl(volume_gone, "reconcile") == 5
    assert "1 drift(s)" in capsys.readouterr().out
    assert bbctl(volume_gone, "reconcile", "--repair", "--json") == 0
    assert [r["repaired"] for r in json.loads(capsys.readouterr().out)["repaired"]] == [True]
    assert bbctl(volume_gone, "reconcile", "--json") == 0
    assert json.loads(capsys.readouterr().out)["drift"] == []


def test_reconcile_exits_5_when_a_repair_fails(volume_gone, capsys):
    runner.run_stage.failing.add("buffer_destroy.yml")
    assert bbctl(volume_gone, "reconcile", "--repair", "--json") == 5
    assert [r["repaired"] for r in json.loads(capsys.readouterr().out)["repaired"]] == [False]


def test_gc_exits_as_reconcile_does_for_the_drift_it_reports(volume_gone, capsys):
    assert bbctl(volume_gone, "gc", "--dry-run", "--older-than", "0") == 5  # a dry run repairs nothing
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and [d["kind"] for d in report["drift"]] == [reconcile.VOLUME_MISSING]
    assert bbctl(volume_gone, "gc", "--repair", "--older-than", "0") == 0
    assert bbctl(volume_gone, "gc", "--older-than", "0") == 0  # nothing left


def test_reconcile_and_gc_help_give_the_exit_codes(capsys):
    for command in ("reconcile", "gc"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        assert "Exit codes: 0 no drift left" in shown and "5 drift left" in shown
