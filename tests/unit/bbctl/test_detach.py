"""bbctl.detach: a teardown outlives the script Slurm kills, with real processes and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bbctl import commands

REPO = Path(__file__).resolve().parents[3]

CHILD = """
import sys, time
from pathlib import Path
from bbctl import detach

def work():
    print("working", flush=True)
    time.sleep(float(sys.argv[2]))
    Path(sys.argv[1]).write_text("finished")
    print("done")  # after the caller died: must not break the work
    return 7

sys.exit(detach.run_detached(work))
"""


def start(marker: Path, seconds: float) -> subprocess.Popen[str]:
    """A process as Slurm starts a stage script: in a process group of its own, output piped."""
    return subprocess.Popen([sys.executable, "-c", CHILD, str(marker), str(seconds)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})


def wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def test_the_caller_gets_the_work_s_exit_code_and_output(tmp_path):
    proc = start(tmp_path / "marker", 0.1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, err
    assert out.splitlines() == ["working", "done"]
    assert (tmp_path / "marker").read_text() == "finished"


def test_killing_the_callers_process_group_does_not_stop_the_work(tmp_path):
    proc = start(tmp_path / "marker", 1.5)
    assert proc.stdout.readline() == "working\n"  # the work has started
    os.killpg(proc.pid, signal.SIGKILL)  # what slurmscriptd does to a script it terminates
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "marker").exists()
    assert wait_for(tmp_path / "marker", 30), "the detached work was killed with its caller"


def test_sigterm_to_the_caller_and_its_group_is_ignored_by_the_work(tmp_path):
    proc = start(tmp_path / "marker", 1.0)
    assert proc.stdout.readline() == "working\n"
    os.killpg(proc.pid, signal.SIGTERM)
    assert wait_for(tmp_path / "marker", 30)


def test_a_command_that_ignores_sigterm_stays_deaf_inside_on_sigterm():
    cancelled = []
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with commands.on_sigterm(lambda: cancelled.append(True)):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert cancelled == []


AUTOGROUP_CHILD = """
import os, sys
from pathlib import Path
from bbctl import detach
os.nice(10)  # as bbctl.entry starts a stage
sys.exit(detach.run_detached(lambda: Path(sys.argv[1]).write_text(Path("/proc/self/autogroup").read_text()) and 0))
"""


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="a kernel without CONFIG_SCHED_AUTOGROUP")
def test_the_detached_work_keeps_the_stages_niceness_in_its_own_session(tmp_path):
    """setsid makes a new scheduling autogroup at niceness 0: the stage's niceness is given to it."""
    done = subprocess.run([sys.executable, "-c", AUTOGROUP_CHILD, str(tmp_path / "autogroup")], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "autogroup").read_text().split()[-1] == "10"
