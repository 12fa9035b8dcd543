# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Linux process controls the stack needs: prctl(2), capset(2), priorities and signal masks.

Two places use them: the copy worker (user_worker.py) keeps one capability across its
switch to the job's user and dies with its parent; bbctl's playbook guard
(src/bbctl/playbook_guard.py, through bbctl.collection) dies with bbctl. The constants
and the ctypes layouts are written here once. Standard library only: bbctl and the
modules both import it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import ctypes
import errno
import os
import signal
import socket
import stat
import struct
import time

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
CAP_NET_BIND_SERVICE = 10
LINUX_CAPABILITY_VERSION_3 = 0x20080522
LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff 1, l_linger 0}: close(2) sends RST


def prctl(option, value):
    """``prctl(option, value, 0, 0, 0)``; OSError (with errno) if the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        _raise_errno("prctl")


def keep_capabilities(keep):
    """PR_SET_KEEPCAPS: whether permitted capabilities survive leaving uid 0 (setresuid)."""
    prctl(PR_SET_KEEPCAPS, 1 if keep else 0)


def die_with_parent(signal_number, parent):
    """Ask for signal_number when the parent dies (PR_SET_PDEATHSIG); False if the parent
    (its pid, read by the caller beforehand) had already died before the wish was registered.
    The signal is unblocked first: a blocked death signal never arrives (unblock_signals).

    Changing credentials clears the setting: set it after dropping privileges."""
    unblock_signals([signal_number])
    prctl(PR_SET_PDEATHSIG, signal_number)
    return os.getppid() == parent


def set_niceness(niceness):
    """Run the calling process (and what it starts from now on) at ``niceness`` (0-19); a process
    not allowed to raise its priority back (not root) keeps the lower one it has. Returns the
    niceness it runs at.

    Stages of many jobs at once can keep every core busy; at equal priority slurmctld's quick
    burst buffer calls then wait their turn, and Slurm kills a datawarp job_process after its 5 s
    ValidateTimeout, refusing the submission (measured: docs/RELIABILITY.md, "Load")."""
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    return os.getpriority(os.PRIO_PROCESS, 0)


def set_session_niceness(niceness=None, path="/proc/self/autogroup", attempts=10, pause=0.1):
    """Give the calling session's scheduling autogroup ``niceness`` (0-19; default: the calling
    process's own); False where there is none
    (a kernel without CONFIG_SCHED_AUTOGROUP) or the kernel refused. Call it only in a process that
    leads a session of its own: every process of the session shares the setting.

    With autogroup (``kernel.sched_autogroup_enabled``, on in Debian's kernels) the scheduler shares
    the CPU between sessions first and honours a process's niceness only within its session.
    ansible-runner starts each ansible-playbook in a session of its own (a pty), so a stage's
    niceness counted for nothing against slurmctld's session: with 12 such sessions busy at
    niceness 10, datawarp's job_process took 1.6-2.1 s instead of 0.2-0.3 s; with their autogroups
    at 10, 0.27-0.42 s (docs/RELIABILITY.md, "Load"). Without CAP_SYS_ADMIN the kernel takes one
    change every 100 ms machine-wide and answers EAGAIN meanwhile: retried ``attempts`` times.
    Niceness 0 is the autogroup's own default: nothing is written."""
    if niceness is None:
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness == 0:
        return True
    for attempt in range(attempts):
        try:
            with open(path, "w") as autogroup:
                autogroup.write(str(niceness))
            return True
        except OSError as exc:
            if exc.errno != errno.EAGAIN or attempt + 1 == attempts:
                return False
        time.sleep(pause)
    return False


def unblock_signals(numbers=None):
    """Unblock ``numbers`` (default: every signal) in the calling thread.

    A signal mask survives fork and exec, and Slurm 22.05's slurmctld forks dw_wlm_cli from a
    thread that blocks SIGTERM, SIGHUP, SIGINT and more (SigBlk 0x897827, read on the test bed):
    every process below it then never saw Slurm's SIGTERM nor the kernel's death signal, and a
    stage whose bbctl was killed went on copying, orphaned (docs/RELIABILITY.md)."""
    if numbers is None:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    else:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, numbers)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def set_only_capability(number):
    """capset(2) for the calling thread: permitted and effective = {number}, nothing
    inheritable; OSError (with errno) if the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[number // 32].effective = data[number // 32].permitted = 1 << (number % 32)
    if libc.capset(ctypes.byref(header), data) != 0:
        _raise_errno("capset")


def _raise_errno(call):
    number = ctypes.get_errno()
    raise OSError(number, "%s: %s" % (call, os.strerror(number)))


def reset_tcp_on_exit(fd_dir="/proc/self/fd"):
    """Make every TCP connection of this process end with a reset (RST) when it is closed, not with
    FIN and TIME-WAIT; returns how many were set. Call it only when the process is about to exit
    and nothing it has sent is still needed: close(2) then discards data not yet sent.

    Why: the side that closes first keeps its local port in TIME-WAIT for 60 s. A libgfapi client
    (the copy worker's stage-in) binds ports below 1024, as bricks with server.allow-insecure off
    trust no others: one for glusterd and one per brick, and a host has 1023 of them. Each
    stage-in left its ports in TIME-WAIT after it exited; under load they ran out (docs/RELIABILITY.md,
    "Load"). Sockets that are not TCP (the worker's pipe to its parent is not one) are left alone."""
    count = 0
    for name in os.listdir(fd_dir):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            connection = socket.socket(fileno=fd)  # family and type read from the fd
        except (ValueError, OSError):
            continue  # not a number, or closed since the listing (the listing's own fd)
        try:
            if connection.type == socket.SOCK_STREAM and connection.family in (socket.AF_INET, socket.AF_INET6):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                count += 1
        except OSError:
            pass  # a listening or half-made socket takes no linger worth having
        finally:
            connection.detach()  # the fd stays open: it belongs to whoever made it
    return count
