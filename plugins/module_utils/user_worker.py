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
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import json
import os
import pwd
import signal
import threading

from ansible_collections.hpc.burstbuffer.plugins.module_utils import linux_process
from ansible_collections.hpc.burstbuffer.plugins.module_utils.linux_process import CAP_NET_BIND_SERVICE
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError


def run_as_user(uid, gid, work, report=None, keep_net_bind=False):
    """``work(send_progress)`` in a forked child that is uid/gid; the caller (root) only reads its results.

    The child sends JSON lines through a pipe: what it passes to ``send_progress`` (handed on
    to ``report``), then one result (what ``work`` returned) or error (a StageError here).
    keep_net_bind: the child keeps CAP_NET_BIND_SERVICE (see drop_privileges).
    """
    refuse_root(uid, gid)
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, checked by the integration tests
        os.close(read_end)
        _child(write_end, uid, gid, work, keep_net_bind, parent)
    os.close(write_end)
    final = None
    with os.fdopen(read_end, "rb") as pipe:
        for line in pipe:
            message = json.loads(line.decode("utf-8", "surrogateescape"))
            if "progress" in message:
                if report is not None:
                    report(message["progress"])
            else:
                final = message
    _pid, status = os.waitpid(pid, 0)
    if final is None:
        raise StageError("the copy worker (uid %d) died %s without a result"
                         % (uid, describe_status(status)))
    if "error" in final:
        raise StageError(final["error"])
    return final["result"]


def _child(write_end, uid, gid, work, keep_net_bind, parent):  # pragma: no cover
    """The worker: drop privileges first, then work; exits without returning (gfapi's
    threads and connections end with the process: glfs_fini can take seconds)."""
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
