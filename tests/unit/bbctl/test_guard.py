"""bbctl.guard: a stage's guardian, with real processes and signals, and its watch over the buffer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bbctl import guard, host, operator_views

REPO = Path(__file__).resolve().parents[3]

# The stage prints its guardian's pid first: guarded() hides the Guardian, so start() is used here.
STAGE = """
import sys, time
from pathlib import Path
from bbctl import guard

guardian = guard.start("42", "stage-in", Path(sys.argv[1]))
print(guardian.pid, flush=True)
try:
    time.sleep(float(sys.argv[2]))
finally:
    guardian.done()
"""


def start_stage(config: Path, seconds: float) -> subprocess.Popen[str]:
    """A stage as Slurm runs one: a process group of its own, its output read through a pipe."""
    return subprocess.Popen([sys.executable, "-c", STAGE, str(config), str(seconds)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})


def wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def log_text(config: Path) -> str:
    log = config.parent / "work" / "bbctl.log"
    return log.read_text() if log.exists() else ""


def test_a_stage_that_ends_tells_its_guardian_which_then_exits(config_file):
    stage = start_stage(config_file, 0.2)
    out, err = stage.communicate(timeout=30)
    assert stage.returncode == 0, err
    pid = int(out.split()[0])
    assert wait_until(lambda: not host.pid_alive(pid), 10), "the guardian outlived a stage that ended"
    assert "killed" not in log_text(config_file)


def test_a_stage_killed_with_its_process_group_leaves_its_guardian_watching(config_file):
    stage = start_stage(config_file, 60)
    pid = int(stage.stdout.readline())
    assert os.getsid(pid) != os.getsid(stage.pid), "the guardian must be out of the group Slurm kills"
    os.killpg(stage.pid, signal.SIGKILL)  # what slurmscriptd does to a job's scripts when it is cancelled
    # Slurm reads a stage's output to its end: the guardian must not hold it open.
    out, _err = stage.communicate(timeout=5)
    assert out == ""
    assert wait_until(lambda: "42 guard: stage-in was killed before it ended" in log_text(config_file), 20), \
        log_text(config_file)
    assert host.pid_alive(pid)  # watching: the record is looked at after guard.POLL seconds
    assert wait_until(lambda: not host.pid_alive(pid), guard.POLL + 15), "no record: the guardian ends"


# --- watch: what the guardian does once its stage was killed ---------------------------------------

class Life:
    """A Lifecycle as watch uses it: a record that may vanish, notes, destroy recorded."""

    def __init__(self, buffer: object | None, site: Path = REPO / "README.md") -> None:
        self.buffer = buffer
        self.site = SimpleNamespace(path=site)
        self.notes: list[str] = []
        self.destroyed: list[tuple[str, str]] = []
        self.store = SimpleNamespace(get=lambda _key: self.buffer)

    def note(self, _key: str, _stage: str, message: str) -> None:
        self.notes.append(message)

    def destroy(self, key: str, *, stage: str) -> None:
        self.destroyed.append((key, stage))
        self.buffer = None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def slurm(monkeypatch):
    """teardown_verdict answers from a script of answers (None, True, False), one per look."""
    answers: list[bool | None] = []
    alive = {"stage": False}
    monkeypatch.setattr(operator_views, "teardown_verdict", lambda _life, _buffer: answers.pop(0))
    monkeypatch.setattr(operator_views, "stage_alive", lambda _running: alive["stage"])
    return SimpleNamespace(answers=answers, alive=alive)


def watch(life: Life, clock: Clock, **kwargs) -> str:
    return guard.watch(life, "42", "stage-in", poll=5, grace=15, clock=clock, sleep=clock.sleep, **kwargs)


def test_a_teardown_slurm_lost_is_done_once_it_has_stayed_lost_for_the_grace(slurm):
    slurm.answers += [None, True, True, True, True]
    life, clock = Life(SimpleNamespace(meta={})), Clock()
    assert watch(life, clock) == "torn down"
    assert life.destroyed == [("42", "teardown")]
    assert clock.now == 25  # first seen lost at 10 s, acted on at 25 s
    assert "tearing down" in life.notes[-1]


def test_slurm_taking_the_job_in_hand_again_restarts_the_grace(slurm):
    slurm.answers += [True, True, None, True, True, True, True]
    life, clock = Life(SimpleNamespace(meta={})), Clock()
    assert watch(life, clock) == "torn down"
    assert clock.now == 35


def test_a_stage_of_ours_at_work_on_the_buffer_is_left_to_it(slurm):
    slurm.alive["stage"] = True  # Slurm's own teardown is running: teardown_verdict is never asked
    life, clock = Life(SimpleNamespace(meta={})), Clock()
    assert watch(life, clock, watch_for=60) == "left"
    assert life.destroyed == []
    assert "left to it and to gc" in life.notes[-1]


def test_a_buffer_torn_down_by_slurm_ends_the_watch(slurm):
    life, clock = Life(None), Clock()
    assert watch(life, clock) == "gone"
    assert clock.now == 5 and life.destroyed == []


def test_results_that_may_not_have_left_are_kept(slurm):
    slurm.answers += [False, False, False, False]
    life, clock = Life(SimpleNamespace(meta={})), Clock()
    assert watch(life, clock) == "kept"
    assert life.destroyed == [] and "abandoned_kept" in life.notes[-1]


def test_a_guardian_told_done_watches_nothing(monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda *_args: None)  # main ignores SIGINT: not pytest's
    read_fd, write_fd = os.pipe()
    os.write(write_fd, guard.DONE)
    os.close(write_fd)
    monkeypatch.setattr(guard, "watch", lambda *a, **k: pytest.fail("watched after done"))
    assert guard.main(["--fd", str(read_fd), "--job-id", "42", "--stage", "setup"]) == 0


def test_only_the_stages_slurm_may_kill_mid_way_are_guarded():
    from bbctl.commands import DETACHED, JOB_STAGES

    assert set(JOB_STAGES) >= guard.GUARDED_COMMANDS
    assert not guard.GUARDED_COMMANDS & DETACHED  # a teardown detaches instead
    assert set(guard.GUARDED_FUNCTIONS.values()) == guard.GUARDED_COMMANDS


def test_a_site_taken_away_ends_the_watch(slurm, tmp_path):
    slurm.answers += [None] * 10
    life, clock = Life(SimpleNamespace(meta={}), site=tmp_path / "gone.yml"), Clock()
    assert watch(life, clock) == "left"
    assert clock.now == 5 and life.destroyed == []
