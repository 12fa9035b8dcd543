# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Planning a stage: walk the source, compare with the destination, decide what to copy.

Runs as the job's user, before anything is written (check mode stops here and shows the
plan). Why it decides as it does:

- The skip rule makes a stage resumable: a destination file with the source's size and
  mtime is complete (``is_complete``). The copier sets a file's mtime last, after its data,
  so an interrupted copy never looks complete.
- A stage-out file is written under a temporary name next to its destination
  (``temp_name``) and renamed into place when complete; the name is the same every run,
  so a rerun replaces a leftover instead of adding one.
- Hard links: a source file with more than one name is planned once all names are found
  (stage_hardlinks.py): its first name copied, the others linked to it.
- Symlinks are planned as symlinks, never followed. A stage-out source must resolve inside
  the buffer and every entry must be on the buffer's own filesystem (same ``st_dev``); a
  stage-in destination must resolve inside the buffer.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import posixpath
import stat
import threading
from collections import deque, namedtuple

from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError, as_user, describe_error
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_hardlinks import LinkMember, plan_groups
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_rules import (
    O_DIR,
    O_READ,
    is_inside,
    parse_stage_list,
)

TEMP_SUFFIX = ".bb-stage.tmp"
NAME_MAX = 255
# Directory scans handed to the crew at a time, per thread (Planner.walk): enough that no
# thread waits for the planner to hand it the next one, few enough that wait_any stays cheap.
SCANS_PER_WORKER = 2

FilePlan = namedtuple("FilePlan", ["source", "destination", "size", "replace", "temp", "replace_temp"])
DirPlan = namedtuple("DirPlan", ["source", "destination", "mode", "atime_ns", "mtime_ns", "exists",
                                 "keep_attributes"])
LinkPlan = namedtuple("LinkPlan", ["source", "destination", "target", "atime_ns", "mtime_ns", "replace"])
DestEntry = namedtuple("DestEntry", ["kind", "size", "mtime_ns", "target", "dev", "ino"], defaults=(0, 0))


class Plan:
    """What a stage will do. Built by ``Planner``; ``Copier`` carries it out."""

    def __init__(self):
        self.dirs = []
        self.files = []
        self.links = []
        self.hardlinks = []  # stage_hardlinks.HardLinkPlan: made after every file
        self.complete = 0
        self.failed = []
        self.not_copied = []

    @property
    def bytes(self):
        return sum(f.size for f in self.files)

    def fail(self, path, reason):
        self.failed.append({"path": path, "reason": reason})

    def summary(self, limit=100):
        """The first ``limit`` copies the plan would make, for check mode."""
        return [{"source": f.source, "destination": f.destination, "size": f.size}
                for f in self.files[:limit]]


class Planner:
    """Expands a request into a Plan. Runs as the job's user; scans directories in parallel."""

    def __init__(self, request, crew, buffer_dev=None):
        self.request = request
        self.crew = crew
        self.buffer_dev = buffer_dev
        self.plan = Plan()
        self.lock = threading.Lock()
        self.groups = {}  # (st_dev, st_ino) -> [LinkMember]: files with more than one name

    @property
    def outward(self):
        return self.request.direction == "out"

    def run(self):
        for source, destination in self.pairs():
            self.add_pair(source, destination)
        self.plan_hardlinks()
        return self.plan

    def plan_hardlinks(self):
        """Once every name is known: each multiply-linked file's first name copied, the rest linked."""
        leaders, links, complete = plan_groups(
            self.groups, lambda m: is_complete(m.size, m.mtime_ns, m.existing))
        for leader in leaders:
            self.plan.files.append(FilePlan(leader.source, leader.destination, leader.size,
                                            leader.existing is not None, leader.temp, leader.temp_exists))
        self.plan.hardlinks.extend(links)
        self.plan.complete += complete
        self.groups = {}

    def pairs(self):
        request = self.request
        if request.kind != "list":
            return [(request.source, request.destination)]
        try:
            with open(request.source, "rb") as handle:
                text = handle.read().decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise StageError("cannot read the list %s%s" % (request.source, as_user(exc))) from None
        return parse_stage_list(text, request.buffer_root, request.direction, request.source,
                                variables=request.buffer_variables, base=request.destination)

    # one top-level pair ------------------------------------------------------------------

    def add_pair(self, source, destination):
        source = self.resolve_source(source)
        try:
            info = os.stat(source)
        except OSError as exc:
            raise StageError("cannot read source %s%s" % (source, as_user(exc))) from None
        into = destination.endswith("/")
        destination = destination.rstrip("/") or "/"
        existing = self.lstat_destination(destination)
        if stat.S_ISDIR(info.st_mode):
            self.check_readable_dir(source)
            self.add_tree(source, destination, info, existing)
        elif stat.S_ISREG(info.st_mode):
            self.check_readable_file(source)
            if into or (existing is not None and existing.kind == "dir"):
                destination = posixpath.join(destination, posixpath.basename(source))
                existing = self.lstat_destination(destination)
            self.ensure_parent(destination)
            temp = temp_name(destination) if self.outward else None
            self.add_file(source, destination, info, existing, temp, temp is not None and os.path.lexists(temp))
        else:
            raise StageError("source %s is neither a regular file nor a directory." % source)

    def resolve_source(self, source):
        """Stage-out: the source as resolved, refused if the resolution leaves the buffer."""
        if not self.outward:
            return source
        resolved = os.path.realpath(source)
        root = os.path.realpath(self.request.buffer_root)
        if not is_inside(root, resolved):
            raise StageError("stage-out source %s resolves to %s, outside the buffer %s: "
                             "symlinks are not followed out of the buffer." % (source, resolved, root))
        return resolved

    def check_readable_dir(self, path):
        try:
            os.close(os.open(path, O_DIR))
        except OSError as exc:
            raise StageError("cannot read source %s%s" % (path, as_user(exc))) from None

    def check_readable_file(self, path):
        try:
            os.close(os.open(path, O_READ))
        except OSError as exc:
            raise StageError("cannot read source %s%s" % (path, as_user(exc))) from None

    def lstat_destination(self, path):
        """The destination entry at ``path``, or None; checks stage-in stays inside the buffer."""
        if not self.outward:
            self.check_resolves_inside(path)
        try:
            return dest_entry(os.lstat(path), path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise StageError("destination %s: a parent is not a directory." % path) from None
        except OSError as exc:
            raise StageError("cannot reach destination %s%s" % (path, as_user(exc))) from None

    def check_resolves_inside(self, path):
        """Stage-in: the deepest existing ancestor of ``path`` must resolve inside the buffer."""
        root = os.path.realpath(self.request.buffer_root)
        probe = path
        while not os.path.lexists(probe) and probe != "/":
            probe = posixpath.dirname(probe)
        resolved = os.path.realpath(probe)
        if not is_inside(root, resolved):
            raise StageError("stage-in destination %s resolves to %s, outside the buffer %s: "
                             "a symlink in the buffer is not followed." % (path, resolved, root))

    def ensure_parent(self, path):
        """The destination's parent directories, created as the user (0755) when missing."""
        parent = posixpath.dirname(path)
        if os.path.isdir(parent):
            if not self.outward:
                self.check_resolves_inside(parent)
            return
        missing = []
        while not os.path.lexists(parent) and parent != "/":
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for directory in reversed(missing):
            self.plan.dirs.append(DirPlan(None, directory, 0o755, None, None, False, True))

    def add_file(self, source, destination, info, existing, temp=None, temp_exists=False):
        if existing is not None and existing.kind == "dir":
            with self.lock:
                self.plan.fail(source, "destination %s is a directory" % destination)
            return
        if info.st_nlink > 1:  # a name of a hard-link group: planned when all are found
            member = LinkMember(source, destination, info.st_size, info.st_mtime_ns, existing, temp, temp_exists)
            with self.lock:
                self.groups.setdefault((info.st_dev, info.st_ino), []).append(member)
            return
        complete = is_complete(info.st_size, info.st_mtime_ns, existing)
        with self.lock:
            if complete:
                self.plan.complete += 1
                return
            self.plan.files.append(FilePlan(source, destination, info.st_size, existing is not None,
                                            temp, temp_exists))

    def add_tree(self, source, destination, info, existing):
        if existing is not None and existing.kind != "dir":
            raise StageError("destination %s exists and is not a directory." % destination)
        if existing is None:
            self.ensure_parent(destination)
        keep = existing is not None or destination == self.request.buffer_root
        self.plan.dirs.append(DirPlan(source, destination, stat.S_IMODE(info.st_mode), info.st_atime_ns,
                                      info.st_mtime_ns, existing is not None, keep))
        self.walk(source, destination, existing is not None)

    def walk(self, source, destination, exists):
        """Scan the tree breadth first, each directory (and its destination twin) in a thread.

        At most SCANS_PER_WORKER scans per thread are handed to the crew at a time, the rest
        wait here: wait_any visits every running scan each time it is called.
        """
        pending = deque([(source, destination, exists)])
        running = []
        limit = SCANS_PER_WORKER * self.crew.workers
        while pending or running:
            while pending and len(running) < limit:
                running.append(self.crew.submit(self.scan, *pending.popleft()))
            for future in self.crew.wait_any(running):
                running.remove(future)
                pending.extend(future.result())

    def scan(self, source, destination, exists):
        """Plan one directory's entries; returns its subdirectories to scan."""
        try:
            entries = scan_source(source)
        except OSError as exc:
            with self.lock:
                self.plan.fail(source, "cannot read directory: %s" % describe_error(exc))
            return []
        try:
            existing = scan_destination(destination) if exists else {}
        except OSError as exc:
            with self.lock:
                self.plan.fail(destination, "cannot read destination directory: %s"
                               % describe_error(exc))
            return []
        subdirs = []
        names = {name for name, _info in entries}
        for name, info in entries:
            target = posixpath.join(destination, name)
            temp = temp_name(target, names) if self.outward else None
            temp_exists = temp is not None and posixpath.basename(temp) in existing
            subdir = self.add_entry(posixpath.join(source, name), target, info, existing.get(name),
                                    temp, temp_exists)
            if subdir is not None:
                subdirs.append(subdir)
        return subdirs

    def add_entry(self, source, destination, info, existing, temp=None, temp_exists=False):
        if self.outward and self.buffer_dev is not None and info.st_dev != self.buffer_dev:
            with self.lock:
                self.plan.fail(source, "not on the buffer's filesystem; not copied")
            return None
        mode = info.st_mode
        if stat.S_ISREG(mode):
            self.add_file(source, destination, info, existing, temp, temp_exists)
        elif stat.S_ISDIR(mode):
            if existing is not None and existing.kind != "dir":
                with self.lock:
                    self.plan.fail(source, "destination %s exists and is not a directory" % destination)
                return None
            with self.lock:
                self.plan.dirs.append(DirPlan(source, destination, stat.S_IMODE(mode), info.st_atime_ns,
                                              info.st_mtime_ns, existing is not None, False))
            return (source, destination, existing is not None)
        elif stat.S_ISLNK(mode):
            self.add_link(source, destination, info, existing)
        else:
            with self.lock:
                self.plan.not_copied.append({"path": source, "reason": "not a regular file, directory "
                                             "or symlink"})
        return None

    def add_link(self, source, destination, info, existing):
        try:
            target = os.readlink(source)
        except OSError as exc:
            with self.lock:
                self.plan.fail(source, "cannot read symlink: %s" % describe_error(exc))
            return
        if existing is not None and existing.kind == "link" and existing.target == target:
            with self.lock:
                self.plan.complete += 1
            return
        if existing is not None and existing.kind == "dir":
            with self.lock:
                self.plan.fail(source, "destination %s is a directory" % destination)
            return
        with self.lock:
            self.plan.links.append(LinkPlan(source, destination, target, info.st_atime_ns,
                                            info.st_mtime_ns, existing is not None))


def same_mtime(a_ns, b_ns):
    """Equal, or equal at the coarser precision of a filesystem that keeps only us or seconds."""
    return a_ns == b_ns or any(a_ns // unit == b_ns // unit and (a_ns % unit == 0 or b_ns % unit == 0)
                               for unit in (1000, 1000000000))


def is_complete(size, mtime_ns, existing):
    """The skip rule: a destination regular file with the source's size and mtime is complete."""
    return (existing is not None and existing.kind == "file" and existing.size == size
            and same_mtime(existing.mtime_ns, mtime_ns))


def temp_name(path, taken=()):
    """Where stage-out writes ``path`` before renaming it: a hidden name in the same directory.

    The same name every run, so a rerun after a crash replaces a leftover instead of adding one
    (names ending in TEMP_SUFFIX are the stage's own). When that name is ``taken`` by a file
    being staged into the same directory, a name with a digest of the file's name is used.
    """
    directory, name = posixpath.split(path)
    temp = "." + name + TEMP_SUFFIX
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
    if temp in taken:
        temp = ".%s.%s%s" % (name, digest[:12], TEMP_SUFFIX)
    if len(temp.encode("utf-8", "surrogateescape")) > NAME_MAX:
        temp = "." + digest[:32] + TEMP_SUFFIX
    return posixpath.join(directory, temp)


def dest_entry(info, path=None):
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return DestEntry("dir", 0, info.st_mtime_ns, None)
    if stat.S_ISREG(mode):
        return DestEntry("file", info.st_size, info.st_mtime_ns, None, info.st_dev, info.st_ino)
    if stat.S_ISLNK(mode):
        target = None
        if path is not None:
            try:
                target = os.readlink(path)
            except OSError:
                target = None
        return DestEntry("link", 0, info.st_mtime_ns, target)
    return DestEntry("other", 0, info.st_mtime_ns, None)


def scan_source(path):
    """[(name, lstat result)] of one directory; never follows a symlink."""
    with os.scandir(path) as entries:
        return [(entry.name, entry.stat(follow_symlinks=False)) for entry in entries]


def scan_destination(path):
    """{name: DestEntry} of an existing destination directory (one readdir, cached attributes)."""
    found = {}
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                found[entry.name] = dest_entry(entry.stat(follow_symlinks=False), entry.path)
            except FileNotFoundError:
                continue
    return found


def discard_temporaries(plan, dry_run=False):
    """Remove the temporary names (temp_name) that plan's stage-out or cache write-back would write
    through and that an interrupted run left; how many there were. Only names the plan gives as
    temporaries, each ending in TEMP_SUFFIX, are touched: a user's file of a like name is a
    destination, never a temporary. A temporary that cannot be removed is a failed file."""
    temps = [f.temp for f in plan.files if f.temp and f.replace_temp]
    temps += [link.temp for link in plan.hardlinks if link.temp]
    found = 0
    for temp in temps:
        if not temp.endswith(TEMP_SUFFIX) or not os.path.lexists(temp):
            continue
        found += 1
        if dry_run:
            continue
        try:
            os.unlink(temp)
        except FileNotFoundError:
            found -= 1
        except OSError as exc:
            plan.fail(temp, "cannot remove this temporary file%s" % as_user(exc))
    return found
