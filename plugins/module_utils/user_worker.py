# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The copy worker: a forked child that becomes the job's user for good, then does the work.

The security-critical part of staging, kept short to be read alone. The promises:

- ``setuid`` applies to a whole process, so threads cannot each be a different user:
  the child drops privileges before it opens any user file, and the parent (root) only
  reads JSON lines from a pipe and waits for it. Nothing is ever passed to a shell.
- Real, effective and saved uid and gid become the user's, the groups the user's own
  (from the group database); uid or gid 0 is refused before forking; the child checks
  that ``setuid(0)`` fails afterwards and stops if it does not.
- At most one capability stays: CAP_NET_BIND_SERVICE, and only when asked (libgfapi to
  bricks that trust only privileged source ports); permitted and effective hold it
  alone, nothing is inheritable. Otherwise none.
- The child is killed when its parent dies (PR_SET_PDEATHSIG): a module killed by a
  timeout does not leave a copier running as the user.
- A child that dies of a signal (libgfapi is C, run through ctypes) is reported with the
  Python frames it was in (faulthandler, into a file root opened before the fork).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import faulthandler
import json
import os
import pwd
import signal
import tempfile
import threading

from ansible_collections.hpc.burstbuffer.plugins.module_utils import linux_process
from ansible_collections.hpc.burstbuffer.plugins.module_utils.linux_process import CAP_NET_BIND_SERVICE
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError

CRASH_FRAMES = 3  # innermost Python frames a crash report quotes


class WorkerDied(StageError):
    """The worker ended without a result; ``signal`` is the signal number that ended it, or None."""

    def __init__(self, message, signal_number=None):
        super(WorkerDied, self).__init__(message)
        self.signal = signal_number


def run_as_user(uid, gid, work, report=None, keep_net_bind=False):
    """``work(send_progress)`` in a forked child that is uid/gid; the caller (root) only reads its results.

    The child sends JSON lines through a pipe: what it passes to ``send_progress`` (handed on
    to ``report``), then one result (what ``work`` returned) or error (a StageError here).
    keep_net_bind: the child keeps CAP_NET_BIND_SERVICE (see drop_privileges).
    Raises WorkerDied when the child ends without a result (killed, or crashed in C code:
    the message then names the Python frames it was in), StageError for its error.
    """
    refuse_root(uid, gid)
    with tempfile.TemporaryFile(prefix="bb-worker-crash.") as crash:
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, checked by the integration tests
            os.close(read_end)
            _child(write_end, uid, gid, work, keep_net_bind, parent, crash)
        os.close(write_end)
        final = _read_messages(read_end, report)
        _pid, status = os.waitpid(pid, 0)
        if final is None:
            crash.seek(0)
            raise WorkerDied("the copy worker (uid %d) died %s without a result%s"
                             % (uid, describe_status(status), crash_frames(crash.read())),
                             os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
    if "error" in final:
        raise StageError(final["error"])
    return final["result"]


def _read_messages(read_end, report):
    """The child's last message other than progress (None if it sent none); progress goes to report."""
    final = None
    with os.fdopen(read_end, "rb") as pipe:
        for line in pipe:
            message = json.loads(line.decode("utf-8", "surrogateescape"))
            if "progress" in message:
                if report is not None:
                    report(message["progress"])
            else:
                final = message
    return final


def crash_frames(dump):
    """' (in create_file at gfapi.py:250, ...)': the innermost frames of the thread that crashed,
    from faulthandler's dump (bytes); '' when there is none."""
    text = dump.decode("utf-8", "replace")
    current = text.rfind("Current thread")
    if current < 0:
        return ""
    frames = []
    for line in text[current:].splitlines()[1:]:
        words = line.strip().split()
        if len(words) < 5 or words[0] != "File":  # 'File "/p/gfapi.py", line 250 in create_file'
            break
        frames.append("%s at %s:%s" % (words[-1], os.path.basename(words[1].strip('",')), words[3]))
    return " (in %s)" % ", ".join(frames[:CRASH_FRAMES]) if frames else ""


def _child(write_end, uid, gid, work, keep_net_bind, parent, crash):  # pragma: no cover
    """The worker: drop privileges first, then work; exits without returning (gfapi's
    threads and connections end with the process: glfs_fini can take seconds)."""
    faulthandler.enable(file=crash, all_threads=True)
    code = 0
    lock = threading.Lock()

    def send(message):
        data = (json.dumps(message) + "\n").encode("utf-8", "surrogateescape")
        with lock:
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view):]

    try:
        drop_privileges(uid, gid, keep_net_bind)
        die_with_parent(parent)
        os.umask(0)
        os.chdir("/")
        result = work(lambda snapshot: send({"progress": snapshot}))
        send({"result": result})
    except StageError as exc:
        send({"error": str(exc)})
    except BaseException as exc:  # pylint: disable=broad-exception-caught
        code = 1
        with contextlib.suppress(OSError):
            send({"error": "copy worker failed: %s: %s" % (exc.__class__.__name__, exc)})
    finally:
        # gfapi's connections hold ports below 1024: reset, they are free at once, not after 60 s
        # of TIME-WAIT. Every call has had its answer by now (work returned, or failed).
        with contextlib.suppress(OSError):
            linux_process.reset_tcp_on_exit()
        os._exit(code)


def refuse_root(uid, gid):
    """Copies run as the job's user: uid 0 or gid 0 is a mistake upstream, never a user."""
    if uid == 0 or gid == 0:
        raise StageError("refusing to stage as uid %d gid %d: copies run as the job's user, "
                         "never as root." % (uid, gid))


def drop_privileges(uid, gid, keep_net_bind=False):
    """Become uid/gid for good (real, effective and saved ids), with the user's groups.

    keep_net_bind: keep one capability, CAP_NET_BIND_SERVICE, and nothing else. A
    GlusterFS brick that does not trust unprivileged source ports
    (server.allow-insecure off) talks to a gfapi client only from a port below 1024;
    every file operation is still the user's, checked by the kernel and the bricks."""
    refuse_root(uid, gid)
    if keep_net_bind:
        with _keeping_net_bind():
            linux_process.keep_capabilities(True)
    os.setgroups(user_groups(uid, gid))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise StageError("could not become uid %d gid %d" % (uid, gid))
    if keep_net_bind:
        with _keeping_net_bind():
            linux_process.keep_capabilities(False)
            linux_process.set_only_capability(CAP_NET_BIND_SERVICE)
    try:
        os.setuid(0)
    except OSError:
        return
    raise StageError("privileges were not dropped: setuid(0) succeeded")


def user_groups(uid, gid):
    """The user's supplementary groups (from the group database), or just ``gid``."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return [gid]
    try:
        return sorted(set(os.getgrouplist(name, gid)))
    except OSError:
        return [gid]


@contextlib.contextmanager
def _keeping_net_bind():
    """The kernel refusing a step of keeping CAP_NET_BIND_SERVICE alone, as a StageError."""
    try:
        yield
    except OSError as exc:
        raise StageError("could not keep CAP_NET_BIND_SERVICE: %s" % os.strerror(exc.errno)) from None


def die_with_parent(parent):
    """SIGKILL this process when its parent dies (a module killed by a timeout takes its copier
    with it). Set after dropping privileges: changing credentials clears it."""
    try:
        parent_alive = linux_process.die_with_parent(signal.SIGKILL, parent)
    except (OSError, AttributeError):
        return
    if not parent_alive:
        os._exit(1)


def describe_status(status):
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return "of signal %s" % signal.Signals(number).name
        except ValueError:
            return "of signal %d" % number
    return "with exit status %d" % os.WEXITSTATUS(status)
