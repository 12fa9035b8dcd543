"""module_utils.linux_process: prctl and capset through libc, in child processes (never this one).

The capability sets a copy worker ends with are checked as root in test_copy_engine.py;
the guard that dies with bbctl in tests/unit/bbctl/test_playbook_guard.py.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import linux_process

COLLECTIONS = str(Path(__file__).resolve().parents[4] / "collections")
PR_GET_PDEATHSIG = 2

# Run in a child: asks for SIGTERM on its parent's death, then reports what the kernel holds.
CHILD = f"""
import ctypes, json, os, signal, sys
sys.path.insert(0, {COLLECTIONS!r})
from ansible_collections.hpc.burstbuffer.plugins.module_utils import linux_process
alive = linux_process.die_with_parent(signal.SIGTERM, int(sys.argv[1]))
held = ctypes.c_int()
ctypes.CDLL(None).prctl({PR_GET_PDEATHSIG}, ctypes.byref(held), 0, 0, 0)
print(json.dumps({{"alive": alive, "signal": held.value}}))
"""


def child(parent):
    done = subprocess.run([sys.executable, "-c", CHILD, str(parent)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_die_with_parent_registers_the_signal_and_sees_the_parent_alive():
    assert child(os.getpid()) == {"alive": True, "signal": signal.SIGTERM}


def test_die_with_parent_says_so_when_the_parent_is_not_the_one_expected():
    # As when the parent died (the child is re-parented) before the wish was registered.
    assert child(-1)["alive"] is False


def test_a_refused_prctl_raises_with_its_errno():
    with pytest.raises(OSError) as raised:
        linux_process.prctl(-1, 0)
    assert raised.value.errno == errno.EINVAL
    assert "prctl" in str(raised.value)


AUTOGROUP = Path("/proc/self/autogroup")
needs_autogroup = pytest.mark.skipif(not AUTOGROUP.exists(), reason="a kernel without CONFIG_SCHED_AUTOGROUP")

# Run in a child that leads a new session (so a new autogroup): sets its niceness, reports the autogroup.
SESSION = f"""
import sys
sys.path.insert(0, {COLLECTIONS!r})
from ansible_collections.hpc.burstbuffer.plugins.module_utils import linux_process
done = linux_process.set_session_niceness(int(sys.argv[1]))
print(done, open("/proc/self/autogroup").read().split()[-1])
"""


@needs_autogroup
def test_set_session_niceness_sets_the_autogroup_of_a_new_session_only():
    # Ours may be the kernel's root group, which /proc shows as empty (CI started from init's session).
    before = AUTOGROUP.read_text()
    done = subprocess.run([sys.executable, "-c", SESSION, "7"], capture_output=True, text=True, check=True,
                          start_new_session=True)
    assert done.stdout.split() == ["True", "7"]
    assert AUTOGROUP.read_text() == before  # ours (the test's session) is untouched


def test_set_session_niceness_says_false_where_the_kernel_has_no_autogroup(tmp_path):
    assert linux_process.set_session_niceness(5, path=str(tmp_path / "missing" / "autogroup")) is False
    assert linux_process.set_session_niceness(0, path=str(tmp_path / "missing" / "autogroup")) is True


# Run in a child: connects to the test's listener, opens a UDP and a unix socket too, optionally sets
# every TCP connection to reset on close, reports how many it set, and exits (closing them all).
CONNECT = f"""
import os, socket, sys
sys.path.insert(0, {COLLECTIONS!r})
from ansible_collections.hpc.burstbuffer.plugins.module_utils import linux_process
tcp = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
udp, pair = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socketpair()
print(linux_process.reset_tcp_on_exit() if sys.argv[2] == "reset" else 0, flush=True)
os._exit(0)
"""


def close_seen_by_peer(how):
    """(connections the child set, what the listener's side saw when the child exited)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        done = subprocess.run([sys.executable, "-c", CONNECT, str(listener.getsockname()[1]), how],
                              capture_output=True, text=True, check=True, timeout=30)
        accepted, _address = listener.accept()
        with accepted:
            try:
                seen = "FIN" if accepted.recv(1) == b"" else "data"
            except ConnectionResetError:
                seen = "RST"
    return int(done.stdout), seen


def test_reset_tcp_on_exit_ends_the_tcp_connection_with_a_reset_and_leaves_other_sockets():
    assert close_seen_by_peer("reset") == (1, "RST")  # the UDP socket and the socketpair are not counted


def test_a_connection_not_reset_ends_with_fin_so_the_test_can_fail():
    assert close_seen_by_peer("keep") == (0, "FIN")


def test_reset_tcp_on_exit_skips_entries_that_are_not_open_descriptors(tmp_path):
    (tmp_path / "not-a-number").touch()
    (tmp_path / "99999").touch()  # no such fd in this process
    assert linux_process.reset_tcp_on_exit(fd_dir=str(tmp_path)) == 0
