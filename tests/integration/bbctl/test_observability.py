"""Stage timings and metrics during a real Slurm job (burst_buffer/lua) on the real test-bed cluster.

A `bbctl metrics serve` runs in its own process while the unprivileged user's job
goes through setup, stage-in, pre-run, post-run, stage-out and teardown, each
run by a bbctl that Slurm started: the scrapes must see those processes' work
move the numbers (the exporter counts nothing itself), and `scontrol show
bbstat job=N` (through burst_buffer.lua's slurm_bb_get_status) and `bbctl show N`
must show the stage timings, during the job and after its teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BBCTL
from tests.integration.bbctl.slurmjobs import (
    BBCTL_CONFIG,
    ENV,
    bbctl,
    leftovers,
    scontrol,
    submit,
    wait_for,
    wait_torn_down,
    write_job,
)

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("lua_slurm")]
JOB_STAGES = ["setup", "stage-in", "pre-run", "post-run", "stage-out", "teardown"]
FILES = {"a.txt": b"alpha\n", "sub/b.dat": bytes(range(256)) * 64, "sub/deeper/c.txt": b"gamma\n"}


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """`bbctl metrics serve` on a free loopback port, in its own process; stopped by its pid."""
    proc = subprocess.Popen([BBCTL, "--config", str(BBCTL_CONFIG), "metrics", "serve", "--port", "0"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("bbctl metrics: serving http://127.0.0.1:"), line + proc.stderr.read()
        yield line.split()[-1]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def make_input(root: Path) -> None:
    uid, gid = root.stat().st_uid, root.stat().st_gid
    for name, data in FILES.items():
        path = root / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in [root / "in", *(root / "in").rglob("*")]:
        os.chown(path, uid, gid)


def shown(job: int) -> tuple[int, dict]:
    done = bbctl("show", str(job), "--json")
    return done.returncode, json.loads(done.stdout or "{}")


def test_a_jobs_stages_move_the_metrics_and_show_in_bbstat_and_show(user_dir, metrics_url):
    make_input(user_dir)
    script = write_job(user_dir, "job.sh", f"""
#BB_LUA jobdw capacity=4GiB pool=nvme
#BB_LUA stage_in type=directory source={user_dir}/in destination=$DW_JOB_STRIPED/in
#BB_LUA stage_out type=directory source=$DW_JOB_STRIPED/in destination={user_dir}/out
sleep 10
""")
    before = scrape(metrics_url)
    assert value(before, "bbctl_state_store_up") == 1
    capacity = value(before, "bbctl_pool_capacity_bytes", pool="nvme")
    assert capacity > 0

    job = submit(script)
    wait_for(job, {"RUNNING"}, timeout=180)
    running = scrape(metrics_url)
    assert value(running, "bbctl_buffers", state="mounted") >= 1
    assert value(running, "bbctl_pool_free_bytes", pool="nvme") < capacity
    assert moved(before, running, "bbctl_stage_runs_total", stage="setup", outcome="ok") >= 1
    assert moved(before, running, "bbctl_stage_runs_total", stage="stage-in", outcome="ok") >= 1
    assert moved(before, running, "bbctl_stage_files_total", stage="stage-in") >= len(FILES)
    assert moved(before, running, "bbctl_stage_bytes_total", stage="stage-in") >= sum(map(len, FILES.values()))
    assert moved(before, running, "bbctl_stage_duration_seconds_count", stage="setup") >= 1

    code, record = shown(job)
    assert code == 0 and record["state"] == "mounted", record
    stages = {t["stage"]: t for t in record["timings"]}
    assert [t["stage"] for t in record["timings"]] == ["setup", "stage-in", "pre-run"], record["timings"]
    assert all(t["outcome"] == "ok" and t["seconds"] > 0 for t in stages.values()), record["timings"]
    assert stages["stage-in"]["files"] == len(FILES) and stages["stage-in"]["bytes"] == sum(map(len, FILES.values()))

    bbstat = scontrol("show", "bbstat", f"job={job}")
    lines = bbstat.splitlines()
    assert lines[0].startswith(f"buffer {job} (bbjob-{job}): mounted"), bbstat
    assert [line.split()[0] for line in lines[2:5]] == ["setup", "stage-in", "pre-run"], bbstat
    overview = scontrol("show", "bbstat")
    assert any(line.split()[:2] == [str(job), "mounted"] for line in overview.splitlines()), overview

    wait_torn_down(job, timeout=180)
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    after = scrape(metrics_url)
    for stage in JOB_STAGES:
        assert moved(before, after, "bbctl_stage_runs_total", stage=stage, outcome="ok") >= 1, stage
    assert moved(before, after, "bbctl_stage_duration_seconds_count", stage="teardown") >= 1
    assert moved(before, after, "bbctl_stage_bytes_total", stage="stage-out") >= sum(map(len, FILES.values()))
    assert moved(before, after, "bbctl_stage_seconds_total", stage="setup") > 0
    assert value(after, "bbctl_pool_free_bytes", pool="nvme") > value(running, "bbctl_pool_free_bytes", pool="nvme")

    code, kept = shown(job)
    assert code == 3 and kept["torn_down"] is True, kept  # no buffer any more; its record was kept
    assert [t["stage"] for t in kept["timings"]] == JOB_STAGES, kept["timings"]
    assert all(t["outcome"] == "ok" for t in kept["timings"]), kept["timings"]
    assert "torn down" in scontrol("show", "bbstat", f"job={job}").splitlines()[0]
    assert leftovers(f"bbjob-{job}") == []


def test_metrics_write_leaves_a_textfile_node_exporter_reads(tmp_path):
    target = tmp_path / "bbctl.prom"
    done = subprocess.run([BBCTL, "--config", str(BBCTL_CONFIG), "metrics", "write", str(target)], env=ENV,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    names = {family.name for family in text_string_to_metric_families(target.read_text())}
    assert {"bbctl_pool_capacity_bytes", "bbctl_buffers", "bbctl_stage_runs",
            "bbctl_stage_duration_seconds"} <= names, names
    assert time.time() - target.stat().st_mtime < 60
