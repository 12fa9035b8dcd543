"""The ansible-playbook guard: nothing it started outlives bbctl, or a cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bbctl import playbook_guard

# A stand-in for ansible-playbook: a child and a grandchild (a worker running a module), pids written down.
TREE = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {worker.pid}\\n")
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_dead(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def kill_all(pids: list[int]) -> None:
    """Whatever a failed test left running (these are the test's own pids)."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


SLURM_BLOCKED = ("import signal; "
                 "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGHUP, signal.SIGINT]); ")


def start_guarded_tree(tmp_path: Path, prelude: str = "") -> tuple[subprocess.Popen[bytes], list[int]]:
    """bbctl (a parent process, running ``prelude`` first) -> guard -> tree -> worker; returns the parent
    and the pids below it."""
    (tmp_path / "tree.py").write_text(TREE)
    pids = tmp_path / "pids"
    code = ("import sys; from bbctl.playbook_guard import run_guarded; "
            f"sys.exit(run_guarded([sys.executable, {str(tmp_path / 'tree.py')!r}, {str(pids)!r}]))")
    # The parent runs the guard in a new session, as pexpect does for ansible-runner.
    bbctl = subprocess.Popen([sys.executable, "-c",
                              prelude + "import subprocess, sys, time; "
                              f"p = subprocess.Popen([sys.executable, '-c', {code!r}], start_new_session=True); "
                              "open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(300)",
                              str(tmp_path / "guard.pid")])
    deadline = time.monotonic() + 10
    while not (pids.exists() and pids.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.05)
    guard = int((tmp_path / "guard.pid").read_text())
    return bbctl, [guard, *map(int, pids.read_text().split())]


@pytest.mark.parametrize("prelude", ["", SLURM_BLOCKED], ids=["plain", "signals blocked as slurmctld forks us"])
def test_killing_bbctl_ends_the_playbook_its_workers_and_their_modules(tmp_path, prelude):
    bbctl, pids = start_guarded_tree(tmp_path, prelude)
    try:
        assert all(alive(p) for p in pids)
        os.kill(bbctl.pid, signal.SIGKILL)  # as Slurm does when a stage outlives its timeout
        bbctl.wait()
        assert wait_dead(pids) == []
    finally:
        kill_all(pids)


def test_sigterm_to_the_guard_ends_the_whole_group(tmp_path):
    bbctl, pids = start_guarded_tree(tmp_path)
    try:
        os.kill(pids[0], signal.SIGTERM)
        assert wait_dead(pids) == []
    finally:
        bbctl.kill()
        bbctl.wait()
        kill_all(pids)


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="a kernel without CONFIG_SCHED_AUTOGROUP")
def test_the_playbooks_session_gets_the_stages_niceness(tmp_path):
    """ansible-runner's pty is a new session, so a new scheduling autogroup at niceness 0, where the
    stage's niceness would count only against its own session (linux_process.set_session_niceness)."""
    bbctl, pids = start_guarded_tree(tmp_path, "import os; os.nice(10); ")
    try:
        autogroups = [Path(f"/proc/{pid}/autogroup").read_text().split() for pid in pids]
        assert {tuple(group) for group in autogroups} == {tuple(autogroups[0])}  # one session: guard, tree, worker
        assert autogroups[0][-1] == "10"
    finally:
        bbctl.kill()
        bbctl.wait()
        kill_all(pids)


def test_install_writes_an_executable_guard_once(tmp_path):
    bin_dir = playbook_guard.install(tmp_path / "bin")
    script = bin_dir / "ansible-playbook"
    assert os.access(script, os.X_OK) and script.read_text().startswith(f"#!{sys.executable}\n")
    before = script.stat().st_mtime_ns
    playbook_guard.install(tmp_path / "bin")
    assert script.stat().st_mtime_ns == before


@pytest.mark.parametrize("entry", ["bbctl", "dw_wlm_cli"])
def test_the_entry_points_clear_the_signal_mask_slurm_forks_them_with(entry):
    """slurmctld forks dw_wlm_cli from a thread blocking SIGTERM and SIGHUP; a mask survives exec, so
    bbctl would never see Slurm's SIGTERM, nor its guard the kernel's death signal."""
    from bbctl import cli
    from bbctl.datawarp import dw_wlm_cli

    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGHUP])
    try:
        if entry == "bbctl":
            with pytest.raises(SystemExit):
                cli.main(["--help"])
        else:
            assert dw_wlm_cli.main(["--function", "no-such-function"]) != 0
        still_blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    assert {signal.SIGTERM, signal.SIGHUP} & still_blocked == set()


def test_set_niceness_sets_it_and_only_root_may_raise_the_priority_back():
    """In a child: the niceness of this test process is not the test's to change."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); "
            "from bbctl.collection import linux_process as lp; "
            "print(lp.set_niceness(7), lp.set_niceness(3), os.getpriority(os.PRIO_PROCESS, 0))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[3] / "src")],
                          capture_output=True, text=True, check=True)
    back = "3" if os.geteuid() == 0 else "7"
    assert done.stdout.split() == ["7", back, back]
