"""The warm runner for real: a `bbctl warm-runner` process, its socket, forks and localhost playbooks.

Each stage goes through bbctl.runner.run_stage as the lifecycle calls it, so these tests
check what bbctl sees: the status, the progress lines, the results and failures, and
which path ran the stage (warm or ansible-runner).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbctl import runner, site
from bbctl.warm import protocol
from tests.unit.bbctl import warm_server
from tests.unit.bbctl.warm_server import processes_with, ran_warm, run, wait_for


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[site.Site, warm_server.Server]]:
    config = warm_server.local_site(tmp_path_factory.mktemp("warm"))
    server = warm_server.start(config)
    yield config, server
    server.stop()


def test_the_socket_is_0600_in_a_0700_directory_of_its_own_user(warm):
    config, _server = warm
    status, directory = os.stat(config.warm_runner_socket), os.stat(config.warm_runner_socket.parent)
    assert status.st_mode & 0o777 == 0o600 and directory.st_mode & 0o777 == 0o700
    assert status.st_uid == directory.st_uid == os.geteuid()


def test_a_stage_runs_warm_with_the_events_and_results_of_an_ansible_runner_run(warm, monkeypatch):
    config, server = warm
    warm_run, warm_seen = run(config, "noop.yml", bb_word="warm")
    assert warm_run.status == "successful" and warm_run.rc == 0 and ran_warm(warm_run)
    monkeypatch.setenv(protocol.DISABLE_ENV, "0")
    cold_run, cold_seen = run(config, "noop.yml", bb_word="warm")
    assert cold_run.status == "successful" and not ran_warm(cold_run)
    assert warm_seen == cold_seen == ["task: Ping"]
    assert [(host, result["ping"]) for host, result in warm_run.results] == [("localhost", "warm")]
    assert warm_run.results == cold_run.results
    assert "ok: [localhost]" in (warm_run.run_dir / "artifacts" / "warm" / "stdout").read_text()
    assert "setup (noop.yml): successful, rc 0" in server.text()


def test_a_stage_runs_at_the_sites_stage_nice_and_the_listener_at_its_own(tmp_path):
    config = warm_server.local_site(tmp_path / "nice", stage_nice=13)  # a niceness no other test sets
    server = warm_server.start(config)
    try:
        warm_run, _seen = run(config, "niceness.yml")
        assert ran_warm(warm_run)
        [(_host, result)] = warm_run.results
        assert result["msg"] == "13"
        assert os.getpriority(os.PRIO_PROCESS, server.process.pid) < 13, "the listener keeps its own"
    finally:
        server.stop()


def test_a_failed_task_is_reported_as_ansible_runner_reports_it(warm):
    config, _server = warm
    failed, seen = run(config, "fail.yml", bb_word="seven")
    assert failed.status == "failed" and failed.rc == 2 and ran_warm(failed)
    assert failed.failures == ["localhost: Fail: failed on purpose: seven"]
    assert seen[-1] == "  localhost: FAILED: failed on purpose: seven"
    with pytest.raises(runner.StageFailed, match="failed on purpose: seven"):
        failed.raise_for_failure()


def test_a_playbook_error_before_any_task_is_quoted_from_the_output(warm):
    config, _server = warm
    broken, _seen = run(config, "fail.yml")  # bb_word undefined: the task fails templating its message
    assert broken.status == "failed" and ran_warm(broken)
    assert "bb_word" in "; ".join(broken.failures)


def test_the_timeout_ends_the_stage_and_everything_it_started(warm):
    config, _server = warm
    marker = "61.0731"
    started = time.monotonic()
    timed_out, _seen = run(config, "sleep.yml", timeout=2, bb_seconds=marker)
    assert timed_out.status == "timeout" and timed_out.rc == 254 and ran_warm(timed_out)
    assert time.monotonic() - started < 15
    assert wait_for(lambda: not processes_with(marker), 5)
    with pytest.raises(runner.StageFailed, match="timed out after 2 s"):
        timed_out.raise_for_failure()


def test_a_cancel_ends_the_stage_and_everything_it_started(warm):
    config, _server = warm
    marker = "62.0731"
    cancel = runner.Cancel()
    threading.Thread(target=lambda: wait_for(lambda: processes_with(marker), 30) and cancel.set()).start()
    cancelled, _seen = run(config, "sleep.yml", cancel=cancel, bb_seconds=marker)
    assert cancelled.status == "canceled" and ran_warm(cancelled)
    assert wait_for(lambda: not processes_with(marker), 5)


def test_stages_run_side_by_side(warm):
    config, _server = warm
    results: list[runner.StageRun] = []
    threads = [threading.Thread(target=lambda n=n: results.append(run(config, "noop.yml", key=str(n))[0]))
               for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted((r.status, ran_warm(r)) for r in results) == [("successful", True)] * 3


def test_a_playbook_it_was_not_given_runs_through_ansible_runner(warm, tmp_path):
    config, server = warm
    elsewhere = tmp_path / "noop.yml"
    elsewhere.write_text((warm_server.PLAYBOOKS / "noop.yml").read_text())
    outside = runner.run_stage(config, "4711", "setup", str(elsewhere), extravars={}, hosts=[], timeout=60)
    assert outside.status == "successful" and not ran_warm(outside)
    assert "is not one of the runner's" in server.text()


def test_a_stage_of_another_site_or_release_runs_through_ansible_runner(warm, tmp_path):
    config, server = warm
    inventory = tmp_path / "other-inventory.yml"
    inventory.write_text(config.inventory.read_text())
    other, _seen = run(dataclasses.replace(config, inventory=inventory), "noop.yml")
    assert other.status == "successful" and not ran_warm(other)
    assert "another release or site" in server.text()


def test_inputs_another_user_could_have_written_are_refused(warm):
    config, server = warm
    config.runs_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.runs_dir, 0o777)
    try:
        loose, _seen = run(config, "noop.yml")
    finally:
        os.chmod(config.runs_dir, 0o755)
    assert loose.status == "successful" and not ran_warm(loose)
    assert "only uid" in server.text()


def test_requests_are_names_only(warm):
    config, _server = warm
    for request in (b'{"stage": "setup", "key": "4711", "run": "20261206T000000-setup", "playbook": "x.yml"}\n',
                    b'{"stage": "setup", "key": "../..", "run": "20261206T000000-setup"}\n',
                    b'{"stage": "setup", "key": "4711", "run": "20261206T000000-teardown"}\n',
                    b'ansible-playbook /tmp/evil.yml\n'):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(config.warm_runner_socket))
            sock.sendall(request)
            answer = protocol.LineReader(sock).next()
        assert answer and "refused" in answer, request


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_only_its_own_user_may_talk_to_it(warm):
    config, server = warm
    directory = config.warm_runner_socket.parent
    os.chmod(directory, 0o755)
    os.chmod(config.warm_runner_socket, 0o777)
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # a process of another user that finds the socket open: the kernel's word decides
            try:
                os.close(read_end)
                os.chdir(directory)  # pytest's directories above are root's alone: connect by relative name
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(60)
                    sock.connect(config.warm_runner_socket.name)
                    with contextlib.suppress(BrokenPipeError):  # it may refuse and close before reading a word
                        sock.sendall(protocol.Request("setup", "4711", "20261206T000000-setup").line())
                    os.write(write_end, sock.recv(4096))  # its refusal is still there to read
            except BaseException as exc:  # said to the parent: a failure here must show its cause
                os.write(write_end, repr(exc).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        answer = os.read(read_end, 4096)
        os.waitpid(pid, 0)
    finally:
        os.chmod(config.warm_runner_socket, 0o600)
        os.chmod(directory, 0o700)
    assert b"refused" in answer and b"only uid" in answer, (answer, server.text())


def test_without_a_runner_or_when_told_not_to_bbctl_runs_ansible_runner(tmp_path, monkeypatch):
    config = warm_server.local_site(tmp_path)
    alone, _seen = run(config, "noop.yml")
    assert alone.status == "successful" and not ran_warm(alone)
    assert not (alone.run_dir / protocol.REQUEST_DIR).exists()  # nothing written for a runner that is not there


def test_a_changed_code_base_makes_it_refuse_and_exit_for_a_fresh_start(tmp_path):
    config = warm_server.local_site(tmp_path)
    server = warm_server.start(config)
    source = Path(protocol.__file__)
    before = os.stat(source)
    try:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        changed, _seen = run(config, "noop.yml")
        assert changed.status == "successful" and not ran_warm(changed)
        assert server.process.wait(10) == 75
        assert "code under the runner changed" in server.text()
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
        server.stop()


def test_it_tells_systemd_when_it_is_warm_and_stops_on_sigterm(tmp_path):
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(address))
        notify.settimeout(60)
        config = warm_server.local_site(tmp_path / "site")
        server = warm_server.start(config, env={"NOTIFY_SOCKET": str(address)})
        try:
            assert notify.recv(64) == b"READY=1"
        finally:
            server.stop()
    assert server.process.returncode == 0
    assert not config.warm_runner_socket.exists()


def test_a_collection_playbook_gives_the_same_run_on_both_paths(warm, tmp_path, monkeypatch):
    """post-run's buffer_unmount.yml (the buffer_client role, its argument validation, buffer_mount) for a
    buffer never mounted on this host: nothing to do, the same way through the warm runner and ansible-runner."""
    config, _server = warm
    buffer = {"name": "bbjob-4711", "fs": "gluster", "capacity": "1073741824", "owner": 1000, "group": 1000,
              "bricks": [{"host": "localhost", "path": "/nonexistent/brick", "device": "/dev/null"}],
              "layout": {}, "mount_path": str(tmp_path / "mnt" / "bbjob-4711")}

    def post_run() -> tuple[runner.StageRun, list[str]]:
        seen: list[str] = []
        return runner.run_stage(config, "4711", "post-run", "buffer_unmount.yml", extravars={"bb_buffer": buffer},
                                hosts=["localhost"], nodes=["localhost"], timeout=120, on_event=seen.append), seen

    warm_run, warm_seen = post_run()
    monkeypatch.setenv(protocol.DISABLE_ENV, "0")
    cold_run, cold_seen = post_run()
    assert (warm_run.status, ran_warm(warm_run)) == ("successful", True), warm_run.failures
    assert (cold_run.status, ran_warm(cold_run)) == ("successful", False), cold_run.failures
    assert warm_seen == cold_seen and "task: Unmount the buffer" in " ".join(warm_seen)
    assert [(host, result.get("changed")) for host, result in warm_run.results] == \
        [(host, result.get("changed")) for host, result in cold_run.results]


def test_ansible_core_resolves_the_same_settings_on_both_paths(warm, monkeypatch):
    config, _server = warm
    warm_run, _seen = run(config, "settings.yml")
    monkeypatch.setenv(protocol.DISABLE_ENV, "0")
    cold_run, _seen = run(config, "settings.yml")
    assert ran_warm(warm_run) and not ran_warm(cold_run)
    assert warm_run.results[0][1]["msg"] == cold_run.results[0][1]["msg"]
    assert "False" in str(warm_run.results[0][1]["msg"]["config"])  # ansible-runner's host key checking


def test_the_free_strategy_over_two_hosts_reports_both(warm, monkeypatch):
    config, _server = warm
    seen: dict[bool, runner.StageRun] = {}
    for warm_path in (True, False):
        monkeypatch.setenv(protocol.DISABLE_ENV, "1" if warm_path else "0")
        seen[warm_path] = runner.run_stage(config, "4711", "teardown", str(warm_server.PLAYBOOKS / "free.yml"),
                                           extravars={}, hosts=["local2"], timeout=120)
    assert ran_warm(seen[True]) and not ran_warm(seen[False])
    for run_ in seen.values():
        assert run_.status == "successful"
        assert sorted(host for host, _result in run_.results) == ["local2", "localhost"]
