"""The warm runner killed while a stage runs: the stage finishes or fails cleanly, never hangs or half-does.

Three ways it can go: the listening process alone dies (a crash: the stage's supervisor
and playbook are processes of their own and finish it); the whole service dies
(``systemctl kill``, the OOM killer taking the supervisor: the playbook's process group
is ended and bbctl reports the stage failed at once, saying why); and afterwards, with
nothing listening, the next stage runs through ansible-runner.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from bbctl import runner
from tests.unit.bbctl import warm_server
from tests.unit.bbctl.warm_server import children, processes_with, ran_warm, run, wait_for


def run_in_background(config, **extravars) -> tuple[threading.Thread, list[runner.StageRun]]:
    done: list[runner.StageRun] = []
    thread = threading.Thread(target=lambda: done.append(run(config, "sleep.yml", **extravars)[0]))
    thread.start()
    return thread, done


def test_the_listener_killed_mid_stage_leaves_the_stage_to_finish_and_the_next_falls_back(tmp_path):
    config = warm_server.local_site(tmp_path)
    server = warm_server.start(config)
    marker = "3.0417"
    try:
        thread, done = run_in_background(config, bb_seconds=marker)
        assert wait_for(lambda: processes_with(marker), 30)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        thread.join(60)
        assert not thread.is_alive()
        assert done[0].status == "successful" and ran_warm(done[0])
        # The socket file is left behind, nothing answers on it: bbctl runs the stage itself.
        assert config.warm_runner_socket.exists()
        after, _seen = run(config, "noop.yml")
        assert after.status == "successful" and not ran_warm(after)
    finally:
        server.stop()


def test_the_whole_service_killed_mid_stage_fails_the_stage_cleanly_and_at_once(tmp_path):
    config = warm_server.local_site(tmp_path)
    server = warm_server.start(config)
    marker = "63.0417"
    try:
        thread, done = run_in_background(config, bb_seconds=marker)
        assert wait_for(lambda: processes_with(marker), 30)
        supervisors = list(children(server.process.pid))
        assert supervisors
        killed = time.monotonic()
        os.killpg(server.process.pid, signal.SIGKILL)  # the server and its supervisors: its process group
        server.process.wait()
        thread.join(30)
        assert not thread.is_alive(), "bbctl still waits on a stage nobody runs"
        assert time.monotonic() - killed < 10
        stage = done[0]
        assert stage.status == "failed" and ran_warm(stage)
        assert any("went away mid-stage" in failure for failure in stage.failures)
        assert wait_for(lambda: not processes_with(marker), 5), "the stage's command outlived the runner"
        try:
            stage.raise_for_failure()
        except runner.StageFailed as failure:
            assert "the warm runner went away mid-stage" in str(failure)
        else:
            raise AssertionError("a stage whose runner died must raise")
    finally:
        server.stop()
