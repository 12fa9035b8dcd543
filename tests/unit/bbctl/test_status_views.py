"""bbctl status, show and bbstat: the views operators and `scontrol show bbstat` read (playbook runs recorded)."""

from __future__ import annotations

import json
import time

import pytest

from bbctl import operator_views, runner, site, status_text
from bbctl.errors import BBError
from bbctl.state import open_store
from bbctl.state.timings import Running
from tests.unit.bbctl.test_commands import bbctl, job_script

STAGE_IN = "#DW stage_in type=file source=/pfs/in.dat destination=$DW_JOB_STRIPED/in.dat"


def setup_job(config_file, tmp_path, job="7", *lines):
    script = job_script(tmp_path, "#DW jobdw capacity=1GiB", *lines)
    assert bbctl(config_file, "setup", "--job-id", job, "--uid", "1001", "--gid", "1001", "--script", script) == 0
    return script


def test_status_json_has_pool_bytes_and_buffer_stage_timings(config_file, tmp_path, capsys):
    setup_job(config_file, tmp_path)
    capsys.readouterr()
    assert bbctl(config_file, "status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    [pool] = report["pools"]
    assert (pool["capacity_bytes"], pool["used_bytes"], pool["free_bytes"]) == (2 * 2**30, 2**30, 2**30)
    [buffer] = report["buffers"]
    assert buffer["brick_count"] == 1 and buffer["stage_now"] is None and buffer["torn_down"] is False
    assert [t["stage"] for t in buffer["timings"]] == ["setup"] and "timings" not in buffer["meta"]


def test_status_shows_the_stage_running_now_with_its_copy_progress(config_file, tmp_path, capsys):
    setup_job(config_file, tmp_path)
    settings = site.load(config_file)
    store = open_store(settings.state)
    store.start_stage("7", Running("stage-in", time.time() - 75))
    progress = site.progress_path(settings, "7", "stage-in")
    progress.parent.mkdir(parents=True, exist_ok=True)
    snapshots = [{"files_done": n, "files_total": 200, "bytes_done": n * 2**20, "bytes_total": 200 * 2**20,
                  "rate": 2**20} for n in (10, 150)]
    progress.write_text("".join(json.dumps(s) + "\n" for s in snapshots) + '{"files_do')  # one being written
    capsys.readouterr()
    assert bbctl(config_file, "status") == 0
    line = capsys.readouterr().out.splitlines()[4]
    assert line.endswith("stage-in for 1m15s: 150/200 files, 150.0 MiB/200.0 MiB (75%)"), line
    assert bbctl(config_file, "status", "--json") == 0
    running = json.loads(capsys.readouterr().out)["buffers"][0]["stage_now"]
    assert running["stage"] == "stage-in" and running["progress"]["files_done"] == 150
    assert 74 <= running["seconds"] <= 80


def test_an_earlier_runs_progress_is_not_shown(config_file, tmp_path):
    settings = site.load(config_file)
    progress = site.progress_path(settings, "7", "stage-in")
    progress.parent.mkdir(parents=True)
    progress.write_text(json.dumps({"files_done": 1}) + "\n")
    assert operator_views.last_progress(progress, since=time.time() + 60) is None
    assert operator_views.last_progress(progress, since=time.time() - 60) == {"files_done": 1}


def test_show_after_teardown_prints_the_kept_timings_and_still_exits_3(config_file, tmp_path, capsys):
    script = setup_job(config_file, tmp_path, "7", STAGE_IN)
    assert bbctl(config_file, "stage-in", "--job-id", "7", "--script", script) == 0
    assert bbctl(config_file, "teardown", "--job-id", "7", "--script", script) == 0
    capsys.readouterr()
    assert bbctl(config_file, "show", "7") == 3
    shown = capsys.readouterr()
    kept = json.loads(shown.out)
    assert kept["torn_down"] is True and kept["state"] == "destroyed"
    assert [t["stage"] for t in kept["timings"]] == ["setup", "stage-in", "teardown"]
    assert "no buffer 7 now: it was torn down" in shown.err
    assert bbctl(config_file, "show", "7", "--text") == 3
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("buffer 7 (bbjob-7): torn down ")
    assert [line.split()[0] for line in text[1:]] == ["STAGE", "setup", "stage-in", "teardown"]
    assert bbctl(config_file, "show", "8") == 3
    assert capsys.readouterr().out == ""


def test_show_text_of_a_live_buffer_names_a_failed_stage_and_why(config_file, tmp_path, capsys):
    script = setup_job(config_file, tmp_path, "7", STAGE_IN)
    runner.run_stage.failing.add("stage_in.yml")  # the Recorder config_file put there
    assert bbctl(config_file, "stage-in", "--job-id", "7", "--script", script) == 1
    capsys.readouterr()
    assert bbctl(config_file, "show", "7", "--text") == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.split()[0] == "stage-in" and "failed (task_failed): stage-in: bbnode1: a task: stage_in.yml broke" \
        in last


@pytest.mark.parametrize("words, key", [
    ([], None),
    (["0", "0"], None),                     # 23.02+: uid and gid, nothing asked
    (["1001", "1001", "job=42"], "42"),
    (["job=42"], "42"),                     # 22.05: only the words
    (["JobId=42"], "42"),
    (["name=keep"], "keep"),
    (["42"], "42"),
    (["1001", "1001", "keep"], "keep"),
])
def test_bbstat_reads_what_scontrol_passes(words, key):
    assert operator_views.bbstat_key(words) == key


def test_bbstat_refuses_words_it_cannot_read_with_a_hint():
    with pytest.raises(BBError, match="give job=JOBID, name=NAME"):
        operator_views.bbstat_key(["colour=blue"])


def test_bbstat_always_exits_0_so_slurm_shows_its_answer(config_file, tmp_path, capsys):
    setup_job(config_file, tmp_path)
    capsys.readouterr()
    assert bbctl(config_file, "bbstat", "1001", "1001", "job=7") == 0
    assert capsys.readouterr().out.startswith("buffer 7 (bbjob-7): created")
    assert bbctl(config_file, "bbstat", "job=9") == 0
    assert "no buffer 9" in capsys.readouterr().out
    assert bbctl(config_file, "bbstat", "colour=blue") == 0
    assert "cannot read 'colour=blue'" in capsys.readouterr().out
    assert bbctl(config_file, "bbstat") == 0
    assert capsys.readouterr().out.startswith("POOL ")


@pytest.mark.parametrize("used, total, drawn", [(0, 10, "[....]"), (1, 100, "[#...]"), (5, 10, "[##..]"),
                                                (10, 10, "[####]"), (0, 0, "[....]")])
def test_the_bar_shows_any_use(used, total, drawn):
    assert status_text.bar(used, total, width=4) == drawn


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (125, "2m05s"), (3 * 3600 + 240, "3h04m"),
                                           (2 * 86400 + 3 * 3600, "2d03h")])
def test_ages_read_at_a_glance(seconds, text):
    assert status_text.age(seconds) == text
