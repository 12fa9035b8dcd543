# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Write-back of a cache buffer: what a job changed in an overlay's upper directory, onto the directory it cached.

A cache buffer (``jobdw type=cache pfs=DIR``) is a fuse-overlayfs mount (cache_overlay.py)
whose lower directory is DIR and whose upper directory lies in the buffer. What the job
created or changed is in the upper directory, whole (fuse-overlayfs copies a file up
before its first change, even a chmod); what it deleted is a whiteout there. At the end
of the job this module makes DIR what the job left, in two steps:

- ``plan_writeback(upper, lower, since_ns)``: pure logic over the two trees (only reads),
  returning a ``Writeback``: the copies as a stage_plan.Plan (the stage-out engine's plan,
  with its temporary names and skip rule) and the deletions on DIR.
- ``apply_writeback``: the copies by stage_copy.Copier (temporary name, verified, renamed
  into place, mode and times); then, where the job put an entry of another kind in place of
  one of DIR's (a directory where a file was), DIR's entry deleted and the new one copied;
  then the deletions the job asked for; then directory modes and times. Each step runs only
  when every step before it succeeded: a failed copy leaves DIR with nothing deleted.

How the upper directory reads (fuse-overlayfs 1.10, verified on tmpfs and documented for
GlusterFS mounts, where a user cannot make device nodes):

- A whiteout is a character device 0/0, or a file ``.wh.NAME``: the job deleted NAME
  (a rename is the new name, copied whole, plus a whiteout of the old one).
- An opaque directory (``.wh..wh..opq``, ``.wh..opq``, or the xattr
  ``user.fuseoverlayfs.opaque``/``trusted.overlay.opaque`` = ``y``) replaced whatever DIR
  had there: DIR's entries it does not hold were deleted by the job (``rm -rf d; mkdir d``,
  or a directory renamed to d). fuse-overlayfs marks every directory the job made opaque.
- Every other entry is the job's version of that name: a directory (walked), a file, a
  symlink. Sockets, FIFOs and device nodes are not written back (reported in not_copied).

Safety (the stage-out rules, docs/OPERATOR_GUIDE.md): this runs as the job's user
(``writeback_as_user``). Files reach DIR under a temporary name and are renamed when
verified. Nothing on DIR is deleted unless the job deleted it, and with ``since_ns`` (when
the overlay was mounted) an entry whose ctime is newer, made or changed on DIR by someone
else during the job, is kept and reported in ``kept``. A directory of DIR the job did not
change (no entry made, deleted or replaced in it) keeps its mtime.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import posixpath
import stat
import time
from collections import namedtuple

from ansible_collections.hpc.burstbuffer.plugins.module_utils.cache_overlay import read_since
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_copy import BLOCK, DEFAULT_CHUNK_SIZE, Copier
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError, as_user, describe_error
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_plan import (
    TEMP_SUFFIX,
    DirPlan,
    FilePlan,
    LinkPlan,
    Plan,
    dest_entry,
    discard_temporaries,
    is_complete,
    same_mtime,
    temp_name,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_progress import Progress
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_threads import DEFAULT_WORKERS, Crew
from ansible_collections.hpc.burstbuffer.plugins.module_utils.user_worker import run_as_user

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKERS = (".wh..wh..opq", ".wh..opq")
OPAQUE_XATTRS = ("user.fuseoverlayfs.opaque", "trusted.overlay.opaque", "user.overlay.opaque")

# A deletion on DIR: ``path``, and ``why``: "whiteout", "opaque" or "replaced" (a new entry of
# another kind takes the name; done after the other copies, before its own).
Deletion = namedtuple("Deletion", ["path", "why"])
# A directory of DIR whose mtime is put back after the write-back (the job did not change it).
KeepTime = namedtuple("KeepTime", ["path", "atime_ns", "mtime_ns"])


class Writeback:
    """What a write-back will do: ``plan`` (copies, as stage-out's), ``deletions``, ``keep_times``."""

    def __init__(self):
        self.plan = Plan()
        self.later = Plan()  # what takes a name DIR holds as another kind: after the rest succeeded
        self.deletions = []
        self.keep_times = []
        self.whiteouts = 0
        self.root_times = None  # (atime_ns, mtime_ns) for DIR itself when the job changed it
        self.lower = None

    def summary(self, limit=100):
        return {"copies": (self.plan.summary(limit) + self.later.summary(limit))[:limit],
                "links": [link.destination for link in (self.plan.links + self.later.links)[:limit]],
                "deletions": [{"path": d.path, "why": d.why} for d in self.deletions[:limit]]}


def is_whiteout(name, info):
    """The entry deletes a name: a character device 0/0, or ``.wh.NAME`` (not an opaque marker)."""
    if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
        return True
    return name.startswith(WHITEOUT_PREFIX) and name not in OPAQUE_MARKERS and stat.S_ISREG(info.st_mode)


def whited_out(name, info):
    """The name a whiteout entry deletes."""
    if name.startswith(WHITEOUT_PREFIX) and not (stat.S_ISCHR(info.st_mode) and info.st_rdev == 0):
        return name[len(WHITEOUT_PREFIX):]
    return name


def is_opaque(path, names):
    """The upper directory hides everything below it in the lower one."""
    if any(marker in names for marker in OPAQUE_MARKERS):
        return True
    for attribute in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, attribute, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _scan(path):
    with os.scandir(path) as entries:
        return sorted((entry.name, entry.stat(follow_symlinks=False)) for entry in entries)


def plan_writeback(upper, lower, since_ns=None):
    """The Writeback that makes ``lower`` (DIR) what the job left, from the overlay's ``upper``.

    Reads both trees, changes nothing. Raises StageError when either root cannot be read.
    """
    for root, what in ((upper, "the cache's upper directory"), (lower, "the cached directory")):
        try:
            info = os.lstat(root)
        except OSError as exc:
            raise StageError("cannot reach %s %s%s" % (what, root, as_user(exc))) from None
        if not stat.S_ISDIR(info.st_mode):
            raise StageError("%s %s is not a directory" % (what, root))
    writeback = Writeback()
    writeback.lower = lower
    pending = [(upper, lower, True, False)]
    while pending:
        source, destination, exists, later = pending.pop()
        pending.extend(_plan_directory(writeback, source, destination, exists, since_ns, source == upper, later))
    return writeback


def _plan_directory(writeback, source, destination, exists, since_ns, root=False, later=False):
    """Plan one upper directory against its twin on DIR; returns the subdirectories to walk.

    DIR itself (``root``) never takes the upper root's mode (the cache made that directory),
    only its times, and only when the job changed it. An entry that takes a name DIR holds as
    another kind (a file where a directory was), and all below it, go to ``writeback.later``
    (``later``): DIR's entry must be deleted first, so that waits until every other copy succeeded.
    """
    try:
        entries = _scan(source)
    except OSError as exc:
        writeback.plan.fail(source, "cannot read directory: %s" % describe_error(exc))
        return []
    try:
        existing = _scan_existing(destination) if exists else {}
    except OSError as exc:
        writeback.plan.fail(destination, "cannot read directory: %s" % describe_error(exc))
        return []
    names = [name for name, _info in entries]
    opaque = is_opaque(source, names)
    kept = {}
    whiteouts = set()
    for name, info in entries:
        if name in OPAQUE_MARKERS:
            continue
        if is_whiteout(name, info):
            whiteouts.add(whited_out(name, info))
            writeback.whiteouts += 1
        else:
            kept[name] = info
    gone = set(name for name in whiteouts if name in existing and name not in kept)
    if opaque:
        gone |= set(name for name in existing if name not in kept and not name.endswith(TEMP_SUFFIX))
    changed = opaque or bool(gone)
    for name in sorted(gone):
        writeback.deletions.append(Deletion(posixpath.join(destination, name),
                                            "whiteout" if name in whiteouts else "opaque"))
    subdirs = []
    taken = set(kept)
    for name, info in sorted(kept.items()):
        target = posixpath.join(destination, name)
        before = existing.get(name)
        replaced = False
        if before is None:
            changed = True
        elif before.kind != _kind(info.st_mode):
            changed = replaced = True
            writeback.deletions.append(Deletion(target, "replaced"))
            before = None
        plan = writeback.later if later or replaced else writeback.plan
        subdir = _plan_entry(plan, posixpath.join(source, name), target, info, before, taken, since_ns)
        if subdir is not None:
            subdirs.append((*subdir, later or replaced))
    if exists and not changed:
        info = os.lstat(destination)
        writeback.keep_times.append(KeepTime(destination, info.st_atime_ns, info.st_mtime_ns))
    elif root:
        info = os.lstat(source)
        writeback.root_times = (info.st_atime_ns, info.st_mtime_ns)
    return subdirs


def _scan_existing(path):
    found = {}
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found[entry.name] = dest_entry(info, entry.path)
    return found


def _kind(mode):
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def _plan_entry(plan, source, target, info, before, taken, since_ns):
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        plan.dirs.append(DirPlan(source, target, stat.S_IMODE(mode), info.st_atime_ns, info.st_mtime_ns,
                                 before is not None, False))
        return (source, target, before is not None)
    if stat.S_ISREG(mode):
        if _written_back(target, info, before, since_ns):
            plan.complete += 1
        else:
            temp = temp_name(target, taken)
            plan.files.append(FilePlan(source, target, info.st_size, before is not None, temp,
                                       os.path.lexists(temp)))
        return None
    if stat.S_ISLNK(mode):
        try:
            link = os.readlink(source)
        except OSError as exc:
            plan.fail(source, "cannot read symlink: %s" % describe_error(exc))
            return None
        if before is not None and before.target == link and same_mtime(before.mtime_ns, info.st_mtime_ns):
            plan.complete += 1
        else:
            plan.links.append(LinkPlan(source, target, link, info.st_atime_ns, info.st_mtime_ns,
                                       before is not None))
        return None
    plan.not_copied.append({"path": source, "reason": "not a regular file, directory or symlink"})
    return None


def _written_back(target, info, before, since_ns):
    """The file on DIR is already this upper file: a write-back run before put it there.

    stage-out's skip rule (size and mtime) plus the same mode, and only for a file that
    appeared on DIR after the cache was mounted (``since_ns``): a file the job changed may
    keep its size and be given its old mtime back, and must then still be written.
    """
    if since_ns is None or not is_complete(info.st_size, info.st_mtime_ns, before):
        return False
    try:
        there = os.lstat(target)
    except OSError:
        return False
    return there.st_ctime_ns > since_ns and stat.S_IMODE(there.st_mode) == stat.S_IMODE(info.st_mode)


# --- carrying it out ---------------------------------------------------------------------------

def apply_writeback(writeback, upper, since_ns=None, workers=DEFAULT_WORKERS, chunk_size=DEFAULT_CHUNK_SIZE,
                    report=None):
    """Carry out ``writeback``; returns what was done. Failures are in ``failed_files``.

    In order, each step only when everything before it succeeded: the copies, the deletions of
    what a new entry of another kind replaces and those entries, the deletions the job asked for.
    Then directory modes and times (again: deletions touch their parents).
    """
    kept = []
    deleted = 0
    plan, later = writeback.plan, writeback.later
    umask = os.umask(0)
    crew = Crew(workers)
    device = os.lstat(upper).st_dev
    progress = Progress(len(plan.files) + len(later.files), plan.bytes + later.bytes, report)
    copiers = [Copier(plan, crew, True, chunk_size, True, device, progress)]
    try:
        copiers[0].run()
        if not plan.failed:
            for deletion in [d for d in writeback.deletions if d.why == "replaced"]:
                deleted += _delete(deletion.path, since_ns, plan, kept)
        if not plan.failed and (later.files or later.dirs or later.links):
            copiers.append(Copier(later, crew, True, chunk_size, True, device, progress))
            copiers[1].run()
            plan.failed.extend(later.failed)
        if not plan.failed:
            for deletion in [d for d in writeback.deletions if d.why != "replaced"]:
                deleted += _delete(deletion.path, since_ns, plan, kept)
            for copier in copiers:
                copier.finish_directories(set())
        _restore_times(writeback, plan)
        if report is not None:
            report(progress.snapshot())
    finally:
        crew.close()
        os.umask(umask)
    return {"files": sum(c.copied for c in copiers), "bytes": sum(c.copied_bytes for c in copiers),
            "links": sum(c.links for c in copiers), "directories": sum(c.created_dirs for c in copiers),
            "complete": plan.complete + later.complete, "deleted": deleted, "whiteouts": writeback.whiteouts,
            "kept": kept, "failed_files": plan.failed, "not_copied": plan.not_copied + later.not_copied}


def _delete(path, since_ns, plan, kept):
    """Remove ``path`` on DIR (a tree: depth first), keeping what changed after ``since_ns``.

    Returns how many entries went. Never follows a symlink: a link is removed, not its target.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        plan.fail(path, "cannot delete%s" % as_user(exc))
        return 0
    if since_ns is not None and info.st_ctime_ns > since_ns:
        kept.append({"path": path, "reason": "changed on the cached directory during the job"})
        return 0
    removed = 0
    if stat.S_ISDIR(info.st_mode):
        try:
            names = os.listdir(path)
        except OSError as exc:
            plan.fail(path, "cannot delete%s" % as_user(exc))
            return 0
        for name in names:
            removed += _delete(posixpath.join(path, name), since_ns, plan, kept)
        try:
            os.rmdir(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                plan.fail(path, "cannot delete%s" % as_user(exc))
            return removed
        return removed + 1
    try:
        os.unlink(path)
    except FileNotFoundError:
        return removed
    except OSError as exc:
        plan.fail(path, "cannot delete%s" % as_user(exc))
        return removed
    return removed + 1


def _restore_times(writeback, plan):
    """Directories the job did not change get their mtimes back; DIR itself the upper root's
    when the job changed it."""
    keep_times = list(writeback.keep_times)
    if writeback.root_times is not None:
        keep_times.append(KeepTime(writeback.lower, *writeback.root_times))
    for keep in sorted(keep_times, key=lambda k: -k.path.count("/")):
        try:
            os.utime(keep.path, ns=(keep.atime_ns, keep.mtime_ns), follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            plan.fail(keep.path, "cannot set times%s" % as_user(exc))


def writeback(upper, lower, since_ns=None, workers=DEFAULT_WORKERS, chunk_size=DEFAULT_CHUNK_SIZE,
              dry_run=False, report=None, discard=False):
    """Plan and (unless ``dry_run``) carry out the write-back, in this process; returns the result.

    ``discard``: write nothing back; remove the temporary files an interrupted write-back left on
    DIR (``discarded``: how many; in a dry run, how many there are), as before a teardown with hurry.
    """
    if workers < 1:
        raise StageError("workers is %d: use at least 1." % workers)
    if chunk_size < BLOCK:
        raise StageError("chunk_size is %d bytes: use at least 1MiB." % chunk_size)
    start = time.monotonic()
    planned = plan_writeback(upper, lower, since_ns)
    if discard:
        found = sum(discard_temporaries(plan, dry_run) for plan in (planned.plan, planned.later))
        result = {"files": 0, "bytes": 0, "discarded": found,
                  "failed_files": planned.plan.failed + planned.later.failed, "not_copied": []}
    elif dry_run:
        result = {"files": len(planned.plan.files) + len(planned.later.files),
                  "bytes": planned.plan.bytes + planned.later.bytes,
                  "deletions": len(planned.deletions), "planned": planned.summary(),
                  "failed_files": planned.plan.failed, "not_copied": planned.plan.not_copied}
    else:
        result = apply_writeback(planned, upper, since_ns, workers, chunk_size, report)
    result["seconds"] = round(time.monotonic() - start, 3)
    return result


def writeback_as_user(upper, lower, uid, gid, since_ns=None, workers=DEFAULT_WORKERS,
                      chunk_size=DEFAULT_CHUNK_SIZE, dry_run=False, report=None, since_file=None, discard=False):
    """``writeback`` in a forked worker that is uid/gid (user_worker.py); the caller only reads results.

    ``since_file``: where the cache kept the time it was first mounted (read by the worker, as the
    user: the file lies in the user's buffer); it gives ``since_ns`` when that is None.
    """

    def work(send_progress):
        since = since_ns if since_ns is not None or since_file is None else read_since(since_file)
        return writeback(upper, lower, since, workers, chunk_size, dry_run, send_progress, discard)

    return run_as_user(uid, gid, work, report)
