# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The copy engine behind stage-in and stage-out: plan, then copy in parallel, as the job's user.

This file runs one stage (``stage``) and runs it as the job's user (``stage_as_user``); the
parts live in a file each, by subject:

- stage_rules.py: what a request may ask for (path rules, DataWarp-style lists); pure.
- stage_errors.py: StageError and how failures are worded.
- stage_plan.py: walk the source, compare with the destination: the skip rule that makes a
  stage resumable, stage-out's temporary names, symlinks that may not lead out of the buffer.
- stage_copy.py: carry the plan out: directories, files in chunks, links, directory times.
- stage_hardlinks.py: hard links kept as links: the rule for a group, and making the links.
- stage_gfapi.py: small files straight into (stage-in) or out of (stage-out) a GlusterFS volume
  (gfapi.py).
- stage_threads.py: the crew of threads the planner and the copier share (concurrent.futures).
- stage_progress.py: progress counters and the progress file bbctl reads.
- user_worker.py: the forked worker that drops privileges; the security-critical part.

Why it is shaped this way (figures in docs/BENCHMARKS.md, "Staging"):

- Privileges are dropped in a forked worker process before any user file is
  opened: ``setuid`` applies to a whole process, so threads cannot each be a
  different user. The parent (root) only reads results from a pipe. Nothing is
  ever passed to a shell.
- On a GlusterFS FUSE mount each small file costs about six round trips to the
  bricks and the kernel serialises creates inside one directory, so many threads
  (32-64) work round-robin across directories, large files in chunks; small files
  skip FUSE through libgfapi when the volume can be reached (new ones of a stage-in
  written, a stage-out's read).
- A stage can be run again after a failure or a kill: complete files are skipped,
  an interrupted one never looks complete, and stage-out never leaves a partial
  file under its final name.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat
import time

from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_copy import BLOCK, DEFAULT_CHUNK_SIZE, Copier
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError, as_user
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_gfapi import (
    GFAPI_READS_FROM,
    gfapi_side,
    gfapi_target,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_plan import Planner, discard_temporaries
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_progress import Progress
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_rules import check_request
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_threads import DEFAULT_WORKERS, Crew
from ansible_collections.hpc.burstbuffer.plugins.module_utils.user_worker import WorkerDied, run_as_user


# --- one stage in this process ---------------------------------------------------------------
def stage(request, workers=DEFAULT_WORKERS, chunk_size=DEFAULT_CHUNK_SIZE, verify=False,
          dry_run=False, report=None, gfapi_via=None, discard=False, gfapi_reads_from=GFAPI_READS_FROM):
    """Stage ``request`` in the current process (as whoever runs it); returns the result dict.

    ``report`` receives progress snapshots (dicts) at most every PROGRESS_INTERVAL seconds.
    ``gfapi_via``: gfapi_target()'s answer; small files then bypass the buffer's FUSE mount (a
    stage-out's only when it has at least ``gfapi_reads_from`` of them).
    ``discard``: copy nothing; remove the temporary files an interrupted stage-out left in the
    destination (``discarded``: how many; in a dry run, how many there are).
    Raises StageError when the request cannot be staged at all; per-file failures are in
    ``failed_files``.
    """
    if discard and request.direction != "out":
        raise StageError("discard removes what an interrupted stage-out left: direction must be out.")
    if workers < 1:
        raise StageError("workers is %d: use at least 1." % workers)
    if chunk_size < BLOCK:
        raise StageError("chunk_size is %d bytes: use at least 1MiB." % chunk_size)
    if gfapi_reads_from < 0:
        raise StageError("gfapi_reads_from is %d: use 0 or more." % gfapi_reads_from)
    request = check_request(request)
    start = time.monotonic()
    buffer_dev = buffer_device(request.buffer_root)
    umask = os.umask(0)  # modes are copied exactly
    crew = Crew(workers)
    try:
        plan = Planner(request, crew, buffer_dev).run()
        plan_done = time.monotonic()
        result = {"files": len(plan.files), "bytes": plan.bytes, "complete": plan.complete,
                  "links": len(plan.links), "hardlinks": len(plan.hardlinks), "hardlinks_copied": 0,
                  "directories": sum(not d.exists for d in plan.dirs)}
        if discard:
            result.update(files=0, bytes=0, links=0, hardlinks=0, directories=0,
                          discarded=discard_temporaries(plan, dry_run))
        elif dry_run:
            result["planned"] = plan.summary()
        else:
            progress = Progress(len(plan.files), plan.bytes, report)
            fast, why_not = gfapi_side(request, plan, gfapi_via, verify, gfapi_reads_from)
            copier = Copier(plan, crew, request.direction == "out", chunk_size, verify, buffer_dev,
                            progress, fast)
            copier.run()
            result.update(files=copier.copied, bytes=copier.copied_bytes, links=copier.links,
                          hardlinks=copier.hardlinker.made, hardlinks_copied=copier.hardlinker.copied,
                          directories=copier.created_dirs,
                          gfapi_files=fast.files if fast else 0, gfapi_unused=why_not)
            if report is not None:
                report(progress.snapshot())
    finally:
        crew.close()
        os.umask(umask)
    result.update(seconds=round(time.monotonic() - start, 3), plan_seconds=round(plan_done - start, 3),
                  peak_rss_kib=peak_rss_kib(), failed_files=plan.failed, not_copied=plan.not_copied)
    return result


def peak_rss_kib():
    """This process's peak resident memory (VmHWM, KiB), or None where /proc does not say.

    In the forked worker it includes what the worker shares with its parent (the module's
    Python, about 30 MiB), so a stage's own cost is this less the parent's."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def buffer_device(buffer_root):
    try:
        info = os.stat(buffer_root)
    except OSError as exc:
        raise StageError("cannot reach the buffer %s%s" % (buffer_root, as_user(exc))) from None
    if not stat.S_ISDIR(info.st_mode):
        raise StageError("buffer_root %s is not a directory." % buffer_root)
    return info.st_dev


# --- as the job's user: a forked worker (user_worker.py) --------------------------------------

def stage_as_user(request, uid, gid, workers=DEFAULT_WORKERS, chunk_size=DEFAULT_CHUNK_SIZE,
                  verify=False, dry_run=False, report=None, use_gfapi=True, discard=False,
                  gfapi_reads_from=GFAPI_READS_FROM):
    """Run ``stage`` in a forked worker that is uid/gid; the caller (root) only reads its results.

    ``report`` receives the worker's progress snapshots. ``use_gfapi``: a stage to or from a
    GlusterFS mount writes or reads small files through libgfapi (a stage-out reads through it
    only when it has at least ``gfapi_reads_from`` of them); only then does the worker keep the
    one capability that needs (a stage-out's worker keeps it whenever the buffer is a GlusterFS
    mount: how many small files it has is known only once it has planned, as the user).

    If a worker writing through libgfapi dies of a signal (a crash in the C library), the stage
    runs again through the mount (a stage is safe to run again: files land under temporary names
    and are renamed when whole), and ``gfapi_unused`` says why.
    """
    via = None if dry_run or discard else gfapi_target(request, use_gfapi)

    def work_via(target):
        return lambda send_progress: stage(request, workers, chunk_size, verify, dry_run,
                                           report=send_progress, gfapi_via=target, discard=discard,
                                           gfapi_reads_from=gfapi_reads_from)

    try:
        return run_as_user(uid, gid, work_via(via), report, keep_net_bind=via is not None)
    except WorkerDied as exc:
        if via is None or exc.signal is None:
            raise
        result = run_as_user(uid, gid, work_via(None), report)
        result["gfapi_unused"] = "%s; staged again through the mount" % exc
        return result
