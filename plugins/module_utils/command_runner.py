# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place where modules act: run a command, record it, skip it in check mode.

A module reads, plans argv lists (pure), then hands them to its ``CommandRunner``:

* ``read(argv)`` asks something. It runs in check mode too and is not recorded.
* ``change(argv)`` changes something. It is recorded in ``commands``; in check mode it is
  only recorded. So ``commands`` is what a module returns: the commands run, or in check
  mode those that would run; after a failure, those that succeeded before it.
* ``act(function, *args)`` is a change that is no command (a file written, a directory
  removed): called unless in check mode.

Every command runs through ``module.run_command`` in the C locale (error text is matched).
A command that fails raises ``CommandError``, the one error type, naming the command, its
exit status and what it printed. Waiting out a transient failure (EBUSY from umount,
glusterd's cluster lock) is a ``Retry`` value handed to the runner, not a loop in a module.
``result`` and ``failure`` give every module's return value the same shape, ``--diff``
included.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time
from collections import namedtuple

C_LOCALE = {"LANG": "C", "LC_ALL": "C", "LC_MESSAGES": "C"}

# What one command did: argv as planned, exit status, output, and how many times it ran.
Completed = namedtuple("Completed", ["argv", "rc", "out", "err", "attempts"])

# when(rc, out, err): worth trying again; delays: seconds to wait before each retry;
# gave_up(argv, attempts): the message when the last attempt still met ``when`` (None, or a
# gave_up that returns None: the command is judged as usual); only: the programs (argv[0]) it
# applies to (None: every one).
Retry = namedtuple("Retry", ["when", "delays", "gave_up", "only"], defaults=[None, None])

_RUNNER_RETRY = object()  # change()/read() without retry=: the runner's own policy

# What the caller of timeout(1) sees when the command timed out: 124 after TERM; after KILL,
# timeout's own death by SIGKILL (it signals its whole process group, itself included), which
# Python's subprocess reports as -9 and a shell as 128 + 9.
TIMED_OUT = (124, -9, 128 + 9)


def under_deadline(argv, seconds):
    """argv run by timeout(1): killed after ``seconds``, with every process it started in its
    process group (a child blocked on a FUSE request that never ends is killable)."""
    return ["timeout", "--signal=KILL", "%g" % seconds, *argv]


class CommandError(Exception):
    """A command failed; str() says which and why, the attributes what it printed."""

    def __init__(self, message, argv=None, rc=None, out=None, err=None):
        super().__init__(message)
        self.argv = argv
        self.rc = rc
        self.out = out
        self.err = err

    def details(self):
        """The failed command as a task result shows it: cmd, rc, stdout, stderr (those known)."""
        found = {"cmd": self.argv, "rc": self.rc, "stdout": self.out, "stderr": self.err}
        return {key: value for key, value in found.items() if value is not None}


def failed_message(completed):
    """"ARGV failed (rc N): what it printed"; the number of attempts when there were several."""
    tries = f", {completed.attempts} attempts" if completed.attempts > 1 else ""
    said = (completed.err or completed.out or "").strip()
    return f"{' '.join(completed.argv)} failed (rc {completed.rc}{tries}): {said}"


def diff_of(before, after, changed):
    """The diff of every module: nothing moves (after is before) unless the task changed it."""
    return {"before": before, "after": after if changed else before}


class CommandRunner:
    """Runs a module's commands; records and (in check mode) skips those that change things.

    ``binaries`` maps a program name to the path run in its place, so the recorded argv keeps
    the name (``gluster ...``) while the binary found on this host runs. ``deadlines`` maps a
    program name to the seconds it may run (under_deadline); a command killed so fails with
    rc in TIMED_OUT and says so, and is recorded as planned.
    """

    def __init__(self, module, retry=None, sleep=time.sleep, binaries=None, deadlines=None):
        self.module = module
        self.retry = retry
        self.sleep = sleep
        self.binaries = dict(binaries or {})
        self.deadlines = dict(deadlines or {})
        self.commands = []

    @property
    def check_mode(self):
        return bool(self.module.check_mode)

    def read(self, argv, ok=(0,), parse=None, retry=_RUNNER_RETRY):
        """Run a command that changes nothing, in check mode too.

        ok: the exit statuses that mean success (None: any; the output tells). parse: a
        function of the Completed whose value is returned; it may raise CommandError.
        """
        return self._judge(self._run(argv, retry), ok, parse)

    def change(self, argv, ok=(0,), parse=None, retry=_RUNNER_RETRY, before=None, after=None):
        """Run a command that changes something and record it; in check mode only record it.

        before(), after(): steps of a real run only, right before the command (a check at the
        last moment, a directory it needs) and after it succeeded (reading back what it did).
        Returns what read() would, or None in check mode.
        """
        argv = list(argv)
        if self.check_mode:
            self.commands.append(argv)
            return None
        if before is not None:
            before()
        value = self._judge(self._run(argv, retry), ok, parse)
        self.commands.append(argv)
        if after is not None:
            after()
        return value

    def change_all(self, commands):
        for argv in commands:
            self.change(argv)

    def act(self, function, *args):
        """A change that is no command (a file written, a directory removed); not in check mode."""
        return None if self.check_mode else function(*args)

    def result(self, before, after, changed=None, **fields):
        """A module's return value: changed (default: a command was recorded), commands, diff."""
        changed = bool(self.commands) if changed is None else changed
        return dict(fields, changed=changed, commands=list(self.commands),
                    diff=diff_of(before, after, changed))

    def failure(self, error, msg=None, **fields):
        """fail_json's arguments for error: msg, the commands that succeeded before it and,
        for a failed command, its cmd, rc, stdout and stderr."""
        details = error.details() if isinstance(error, CommandError) else {}
        return dict(fields, **details, msg=msg or str(error), commands=list(self.commands))

    def _run(self, argv, retry):
        retry = self.retry if retry is _RUNNER_RETRY else retry
        if retry is not None and retry.only is not None and argv[0] not in retry.only:
            retry = None
        delays = list(retry.delays) if retry is not None else []
        run_argv = [self.binaries.get(argv[0], argv[0]), *argv[1:]]
        deadline = self.deadlines.get(argv[0])
        if deadline is not None:
            run_argv = under_deadline(run_argv, deadline)
        attempts = 0
        while True:
            attempts += 1
            rc, out, err = self.module.run_command(run_argv, environ_update=C_LOCALE)
            if deadline is not None and rc in TIMED_OUT:
                err = "%skilled: no end within %g s" % (err.rstrip("\n") + "\n" if err else "", deadline)
            done = Completed(list(argv), rc, out, err, attempts)
            if retry is None or not retry.when(rc, out, err):
                return done
            if delays:
                self.sleep(delays.pop(0))
                continue
            message = retry.gave_up(argv, attempts) if retry.gave_up is not None else None
            if message is not None:
                raise CommandError(message, done.argv, rc, out, err)
            return done

    @staticmethod
    def _judge(done, ok, parse):
        if ok is not None and done.rc not in ok:
            raise CommandError(failed_message(done), done.argv, done.rc, done.out, done.err)
        return parse(done) if parse is not None else done
