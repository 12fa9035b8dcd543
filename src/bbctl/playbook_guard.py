"""Runs ansible-playbook so that it cannot outlive the bbctl that started it.

ansible-runner starts ansible-playbook in a new session (a pty), so when Slurm
ends a stage by killing the stage script's process group, ansible-playbook, its
workers and the modules they run (a copy as the job's user, say) are not in
that group and would carry on, orphaned, while teardown destroys the buffer
under them. bbctl therefore puts this guard first on ansible-runner's PATH as
``ansible-playbook``: it asks the kernel for SIGTERM when bbctl dies
(PR_SET_PDEATHSIG), runs the real ansible-playbook in its own process group
(the pty session's), and on SIGTERM, SIGINT or SIGHUP ends that whole group:
SIGTERM, a short grace, then SIGKILL. That session is also a scheduling autogroup
of its own, where bbctl's stage niceness would count for nothing against
slurmctld: the guard gives the session the niceness it was started with.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bbctl.collection import linux_process

GRACE_SECONDS = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def install(bin_dir: Path) -> Path:
    """Write the ``ansible-playbook`` guard into bin_dir (once per Python); returns bin_dir."""
    script = bin_dir / "ansible-playbook"
    text = f"#!{sys.executable}\nimport sys\nfrom bbctl.playbook_guard import main\nsys.exit(main())\n"
    if not script.exists() or script.read_text() != text:
        bin_dir.mkdir(parents=True, exist_ok=True)
        tmp = script.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(script)
    return bin_dir


def real_ansible_playbook() -> str:
    return str(Path(sys.executable).parent / "ansible-playbook")


def die_with_parent() -> bool:
    """SIGTERM to this process when its parent (bbctl) dies; False if the parent is already gone."""
    return linux_process.die_with_parent(signal.SIGTERM, os.getppid())


def end_own_group(child: subprocess.Popen[bytes], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM our process group, wait up to grace for the child, then SIGKILL the group (us too)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)  # workers and modules that ignored SIGTERM, and this guard


def run_guarded(argv: list[str]) -> int:
    """Run argv in this process group; end the whole group if we are told to stop or bbctl dies."""
    if not die_with_parent():
        return 143
    if os.getsid(0) == os.getpid():  # ansible-runner's pty made us a session: give it the stage's niceness
        linux_process.set_session_niceness()
    # The same process group as this guard: ansible-runner's own cancel (SIGKILL to the
    # guard's group) then reaches ansible-playbook, its workers and their modules too.
    child = subprocess.Popen(argv)
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda _signum, _frame: end_own_group(child))
    return child.wait()


def main(argv: list[str] | None = None) -> int:
    return run_guarded([real_ansible_playbook(), *(sys.argv[1:] if argv is None else argv)])
