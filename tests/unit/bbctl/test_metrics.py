"""bbctl metrics: scraped over real HTTP on 127.0.0.1 and parsed with prometheus_client's own parser.

Every number comes from stage runs recorded through the real path (Lifecycle.timed
into a real SQLite store; only Ansible is replaced by a recorder), by Lifecycle
objects other than the one serving, and by the bbctl command line in another process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bbctl import lifecycle as lc
from bbctl import metrics, runner, site
from bbctl.state.timings import Running
from tests.unit.bbctl.test_lifecycle import GID, UID, make_config, script
from tests.unit.bbctl.test_stage_timings import STAGE_IN, STAGE_OUT, CopyingRecorder, run_whole_job

GiB = 1024**3
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def recorder(monkeypatch) -> CopyingRecorder:
    recording = CopyingRecorder()
    monkeypatch.setattr(runner, "run_stage", recording)
    return recording


@pytest.fixture
def config(tmp_path) -> site.Site:
    return make_config(tmp_path)


def fresh_life(config: site.Site) -> lc.Lifecycle:
    """A bbctl process of its own: its own store connection."""
    return lc.Lifecycle(config)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels), parsed by prometheus_client."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return samples(response.read().decode())


@pytest.fixture
def served(config):
    server, thread = metrics.serve(config, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_a_scrape_counts_every_stage_that_ended(config, recorder, served, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=6GiB", STAGE_IN, STAGE_OUT)
    run_whole_job(fresh_life(config), job)            # 42: every stage, torn down
    other = fresh_life(config)
    other.setup("43", UID, GID, job)                     # 43: set up, its stage-in fails
    recorder.failing.add("stage_in.yml")
    with pytest.raises(runner.StageFailed):
        other.stage_in("43", job)

    found = scrape(served)
    assert value(found, "bbctl_state_store_up") == 1
    assert value(found, "bbctl_pool_capacity_bytes", pool="nvme") == 6 * 4 * GiB
    assert value(found, "bbctl_pool_free_bytes", pool="nvme") == 3 * 4 * GiB  # 43 holds 2+1 bricks
    assert value(found, "bbctl_pool_free_bricks", pool="nvme") == 3
    assert value(found, "bbctl_buffers", state="created") == 1
    assert value(found, "bbctl_buffers", state="destroyed") == 0
    assert value(found, "bbctl_stage_runs_total", stage="setup", outcome="ok") == 2
    assert value(found, "bbctl_stage_runs_total", stage="stage-in", outcome="ok") == 1
    assert value(found, "bbctl_stage_runs_total", stage="stage-in", outcome="failed") == 1
    assert value(found, "bbctl_stage_failures_total", stage="stage-in", reason="task_failed") == 1
    assert value(found, "bbctl_stage_files_total", stage="stage-in") == 6   # 3 per run, the failed one too
    assert value(found, "bbctl_stage_bytes_total", stage="stage-in") == 6000
    assert value(found, "bbctl_stage_bytes_total", stage="stage-out") == 500
    for stage, runs in (("setup", 2), ("teardown", 1), ("pre-run", 1), ("post-run", 1)):
        assert value(found, "bbctl_stage_duration_seconds_count", stage=stage) == runs
        assert value(found, "bbctl_stage_duration_seconds_bucket", stage=stage, le="+Inf") == runs
        assert value(found, "bbctl_stage_duration_seconds_bucket", stage=stage, le="1.0") == runs  # recorded: fast
    assert value(found, "bbctl_stage_seconds_total", stage="setup") == pytest.approx(
        value(found, "bbctl_stage_duration_seconds_sum", stage="setup"))
    assert ("bbctl_stage_bytes_total", (("stage", "setup"),)) not in found  # setup copies nothing


def test_the_numbers_move_when_another_process_records(config, recorder, served, tmp_path):
    before = scrape(served)
    assert not [key for key in before if key[0] == "bbctl_stage_runs_total"]
    job = script(tmp_path, "#DW jobdw capacity=1GiB")
    life = fresh_life(config)
    life.setup("7", UID, GID, job)
    life.store.start_stage("7", Running("pre-run", 1.0))
    during = scrape(served)
    assert value(during, "bbctl_stage_runs_total", stage="setup", outcome="ok") == 1
    assert value(during, "bbctl_stages_running", stage="pre-run") == 1
    life.teardown("7", job, hurry=False)
    after = scrape(served)
    assert value(after, "bbctl_stage_runs_total", stage="teardown", outcome="ok") == 1
    assert value(after, "bbctl_buffers", state="created") == 0
    assert ("bbctl_stages_running", (("stage", "pre-run"),)) not in after


def test_an_unreachable_store_is_a_scrape_that_says_so(tmp_path):
    config = make_config(tmp_path)
    broken = site.Site(**{**config.__dict__, "state": "http://127.0.0.1:9/"})  # discard port: refused
    server, _thread = metrics.serve(broken, "127.0.0.1", 0)
    try:
        found = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert value(found, "bbctl_state_store_up") == 0
    assert not [key for key in found if key[0].startswith("bbctl_pool")]


def test_write_replaces_a_textfile_atomically(config, recorder, tmp_path):
    fresh_life(config).setup("7", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
    target = tmp_path / "textfile" / "bbctl.prom"
    target.parent.mkdir()
    target.write_text("old\n")
    metrics.write(config, target)
    found = samples(target.read_text())
    assert value(found, "bbctl_stage_runs_total", stage="setup", outcome="ok") == 1
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["bbctl.prom"]  # no temporary left behind
    with pytest.raises(metrics.BBError, match=r"reads only \*\.prom files"):
        metrics.write(config, tmp_path / "bbctl.txt")


def cli_config(config: site.Site, tmp_path: Path) -> Path:
    path = tmp_path / "cli-bbctl.yml"
    path.write_text(yaml.safe_dump({"inventory": str(config.inventory), "pools": {"nvme": {"granularity": "4GiB"}},
                                    "work_dir": str(config.work_dir), "mount_root": "/mnt/bb",
                                    "state": config.state}))
    return path


def test_bbctl_metrics_serve_in_its_own_process_until_sigterm(config, recorder, tmp_path):
    config_path = cli_config(config, tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from bbctl.cli import main; sys.exit(main())",
                             "--config", str(config_path), "metrics", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("bbctl metrics: serving http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[-1]
        assert value(scrape(url), "bbctl_buffers", state="created") == 0
        fresh_life(config).setup("7", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
        found = scrape(url)
        assert value(found, "bbctl_buffers", state="created") == 1
        assert value(found, "bbctl_stage_runs_total", stage="setup", outcome="ok") == 1
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0, proc.stderr.read()


def test_bbctl_metrics_write_from_the_command_line(config, recorder, tmp_path):
    fresh_life(config).setup("7", UID, GID, script(tmp_path, "#DW jobdw capacity=1GiB"))
    target = tmp_path / "node.prom"
    done = subprocess.run([sys.executable, "-c", "import sys; from bbctl.cli import main; sys.exit(main())",
                           "--config", str(cli_config(config, tmp_path)), "metrics", "write", str(target)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert value(samples(target.read_text()), "bbctl_buffers", state="created") == 1


def test_status_does_not_load_prometheus_client(config, recorder, tmp_path):
    """bbctl's start-up on Slurm's paths stays what it was: the metrics module is imported by bbctl metrics only."""
    probe = ("import sys; from bbctl.cli import main; code = main(sys.argv[1:]); "
             "print('prometheus_client' in sys.modules, 'bbctl.metrics' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, "--config", str(cli_config(config, tmp_path)), "status"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False False"
