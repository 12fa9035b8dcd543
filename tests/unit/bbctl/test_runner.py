"""bbctl.runner's pure parts: inventories, event handling, failure messages, progress, pruning."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import ansible_runner
import ptyprocess
import yaml

from bbctl import runner, site


def a_site(tmp_path: Path, keep_runs: int = 2) -> site.Site:
    return site.from_mapping({"inventory": str(tmp_path / "site-inventory.yml"), "pools": {"nvme": {}},
                              "work_dir": str(tmp_path / "work"), "keep_runs": keep_runs}, tmp_path / "bbctl.yml")


def test_inventory_adds_the_stage_host_and_the_jobs_nodes_to_the_sites(tmp_path):
    config = a_site(tmp_path)
    sources = runner.inventory_sources(config, tmp_path / "run", nodes=["cn1", "cn2"])
    assert sources[0] == str(config.inventory)
    generated = yaml.safe_load(Path(sources[1]).read_text())["all"]["children"]
    assert list(generated["bb_stage"]["hosts"]) == ["localhost"]
    assert generated["bb_stage"]["hosts"]["localhost"]["ansible_connection"] == "local"
    assert list(generated["bb_clients"]["hosts"]) == ["cn1", "cn2"]


def events(*items: tuple[str, dict]) -> runner._Events:
    seen: list[str] = []
    handler = runner._Events(seen.append)
    for kind, data in items:
        assert handler({"event": kind, "event_data": data}) is False
    handler.seen = seen  # type: ignore[attr-defined]
    return handler


def test_failures_name_host_task_and_message_and_loop_items_replace_the_summary():
    handler = events(
        ("playbook_on_task_start", {"task": "Copy"}),
        ("runner_item_on_failed", {"host": "localhost", "task": "Copy", "res": {"msg": "/pfs/x: Permission denied"}}),
        ("runner_on_failed", {"host": "localhost", "task": "Copy",
                              "res": {"msg": "One or more items failed", "results": [{}]}}),
        ("runner_on_failed", {"host": "s1", "task": "Other", "ignore_errors": True, "res": {"msg": "ignored"}}),
    )
    assert handler.failures == ["localhost: Copy: /pfs/x: Permission denied"]
    assert handler.seen[0] == "task: Copy"  # type: ignore[attr-defined]


def test_an_unreachable_host_says_so_in_its_failure():
    """bbctl.server_health blames a host that is gone, not the peers that report it missing."""
    handler = events(("runner_on_unreachable", {"host": "s3", "task": "Stop", "res": {
        "msg": "Failed to connect to the host via ssh: connect to host s3 port 22: No route to host"}}))
    assert handler.failures == ["s3: Stop: unreachable: Failed to connect to the host via ssh: connect to host s3 "
                                "port 22: No route to host"]


def test_a_changed_result_is_reported_with_its_duration():
    handler = events(("runner_on_ok", {"host": "s1", "task": "Create", "duration": 2.25, "res": {"changed": True}}))
    assert handler.seen == ["  s1: changed (2.2 s)"]  # type: ignore[attr-defined]


def copied(**result: object) -> dict:
    base = {"files": 35, "bytes": 3 * 2**20 + 2**19, "complete": 2, "seconds": 1.26, "changed": True,
            "_ansible_item_label": "/pfs/in -> /bb/in"}
    return {"host": "localhost", "task": "Copy", "res": {**base, **result}}


def test_each_copied_directive_gets_a_summary_line():
    handler = events(("runner_item_on_ok", copied(gfapi_files=34, gfapi_unused=None)),
                     ("runner_item_on_ok", copied(gfapi_files=0, gfapi_unused="glfs_init of v at h did not "
                                                  "answer in 15 s")),
                     ("runner_item_on_ok", {"host": "s1", "task": "Mount", "res": {"changed": True}}))
    assert handler.seen == [  # type: ignore[attr-defined]
        "  /pfs/in -> /bb/in: 35 files, 3.5 MiB copied, 2 already complete, in 1.3 s; 34 of the files "
        "through libgfapi",
        "  /pfs/in -> /bb/in: 35 files, 3.5 MiB copied, 2 already complete, in 1.3 s; libgfapi not used: "
        "glfs_init of v at h did not answer in 15 s",
    ]


def test_a_failure_before_any_task_quotes_ansibles_last_line_without_colour(tmp_path):
    stdout = tmp_path / "artifacts" / "x" / "stdout"
    stdout.parent.mkdir(parents=True)
    stdout.write_text("\x1b[0;31mERROR! the playbook could not be found\x1b[0m\n\x1b[0;31m\x1b[0m\n")
    run = runner.StageRun(stage="setup", status="failed", rc=1, seconds=0.3, run_dir=tmp_path)
    try:
        run.raise_for_failure()
    except runner.StageFailed as failure:
        assert str(failure) == (f"setup: ansible-playbook exited 1: ERROR! the playbook could not be found "
                                f"(artifacts: {tmp_path})")
    else:
        raise AssertionError("a failed run must raise")


def test_timeout_and_cancel_say_so(tmp_path):
    for status, words in (("timeout", "timed out after 12 s"), ("canceled", "cancelled")):
        run = runner.StageRun(stage="stage-in", status=status, rc=254, seconds=12.0, run_dir=tmp_path)
        try:
            run.raise_for_failure()
        except runner.StageFailed as failure:
            assert words in str(failure)


def test_progress_watcher_reports_complete_lines_only_and_the_final_one(tmp_path):
    path = tmp_path / "stage-in.progress"
    seen: list[str] = []
    with runner.ProgressWatcher(path, seen.append, interval=0.05), path.open("a") as out:
        out.write('{"files_done": 1, "files_total": 4, "bytes_done": 1048576, "bytes_total": 4194304, '
                  '"rate": 2097152}\n{"files_done": 2')
        out.flush()
        time.sleep(0.3)
        out.write(', "files_total": 4, "bytes_done": 4194304, "bytes_total": 4194304, "rate": 4194304}\n')
    assert seen[0] == "  copied 1/4 files, 1.0/4.0 MiB (25%) at 2 MiB/s"
    assert seen[-1] == "  copied 2/4 files, 4.0/4.0 MiB (100%) at 4 MiB/s"


def test_prune_keeps_live_buffers_and_the_newest_finished_runs(tmp_path):
    config = a_site(tmp_path, keep_runs=2)
    for n, key in enumerate(["1", "2", "3", "4", "live"]):
        (config.runs_dir / key).mkdir(parents=True)
        os.utime(config.runs_dir / key, (1000 + n, 1000 + n))
    removed = runner.prune_runs(config, live_keys={"live"})
    assert sorted(p.name for p in removed) == ["1", "2"]
    assert sorted(p.name for p in config.runs_dir.iterdir()) == ["3", "4", "live"]


def test_closing_the_pty_of_a_reaped_playbook_skips_ptyprocess_settle_sleep():
    import pexpect

    original = ptyprocess.PtyProcess.close
    with runner.pty_closed_without_settling():
        done = pexpect.spawn("true")
        while done.isalive():  # as ansible-runner's loop: it closes only after this turned False
            time.sleep(0.01)
        done.close()
        assert done.ptyproc.delayafterclose == 0

        running = pexpect.spawn("sleep", ["30"])
        running.close(force=True)  # alive: the original close, settle sleep and all, ends it
        assert running.ptyproc.delayafterclose > 0
        assert not running.isalive()

        with runner.pty_closed_without_settling():  # a run inside a run keeps the swap
            assert ptyprocess.PtyProcess.close is not original
        assert ptyprocess.PtyProcess.close is not original
    assert ptyprocess.PtyProcess.close is original  # only while bbctl runs a stage


def test_importing_the_runner_leaves_ptyprocess_alone():
    assert not hasattr(ptyprocess.PtyProcess.close, "bbctl_no_settle")


def test_run_stage_runs_ansible_runner_with_the_pty_swap(tmp_path, monkeypatch):
    original = ptyprocess.PtyProcess.close
    seen = {}

    def fake_run(**kwargs):
        seen["swapped"] = ptyprocess.PtyProcess.close is not original
        seen["playbook"] = kwargs["playbook"]
        return SimpleNamespace(status="successful", rc=0)

    monkeypatch.setattr(ansible_runner, "run", fake_run)
    niced: list[int] = []
    monkeypatch.setattr(runner.linux_process, "set_niceness", niced.append)  # not this test process
    run = runner.run_stage(a_site(tmp_path), "7", "setup", "buffer_create.yml", extravars={}, hosts=["s1"],
                           timeout=60)
    assert niced == [10], "a stage runs at the site's stage_nice"
    assert seen == {"swapped": True, "playbook": "buffer_create.yml"}
    assert run.status == "successful"
    assert ptyprocess.PtyProcess.close is original

