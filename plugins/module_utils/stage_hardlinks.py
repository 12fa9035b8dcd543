# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Hard links: the names of one source inode that a stage copies become names of one inode at the
destination, in both directions, through the mount or through libgfapi.

The rule, and why:

- A group is the names of one source inode (st_dev, st_ino) that this request stages: one tree,
  or all the pairs of a list together. Names of that inode outside the request are neither copied
  nor linked to: the request did not name them, and a link to a destination it did not write
  could tie the user's copy to a file that is not theirs. A name whose other names are all
  outside is copied as a file (``rsync -aH`` does the same: it links what it transfers).
- The first name of a group (by destination path, so a rerun picks the same one) is copied as
  any file is: as the user, through a temporary name on stage-out, verified when asked, renamed.
  The other names are made after every file is complete: each a hard link to the first name's
  destination, checked to have that inode (never through a symlink: linkat without
  AT_SYMLINK_FOLLOW), made under the temporary name and renamed on stage-out. The source name
  is checked again first: still a name of the inode that was planned.
- Resumable: a name that already is a link of a complete first name is complete; anything else
  in its place (an older stage's separate copy, say) is replaced by the link. A first name that
  failed fails its links, named.
- Where the kernel cannot link (EXDEV: a list's pairs on two filesystems; EMLINK: the inode has
  all the names the filesystem allows), the name is copied as a file of its own: the data
  arrives, that one link does not; the result counts it (``hardlinks_copied``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import stat
from collections import namedtuple

from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import as_user, describe_error

# A name of a multiply-linked source file, as planned (existing: the DestEntry in its place or None).
LinkMember = namedtuple("LinkMember", ["source", "destination", "size", "mtime_ns", "existing", "temp",
                                       "temp_exists"])
# A name to make as a hard link to ``leader`` (the group's first destination) once that is complete.
HardLinkPlan = namedtuple("HardLinkPlan", ["source", "destination", "leader", "size", "inode", "replace", "temp"])
CANNOT_LINK = (errno.EXDEV, errno.EMLINK)


def plan_groups(groups, is_complete):
    """Split the names of multiply-linked source files into copies and links.

    groups: {(st_dev, st_ino): [LinkMember]}; is_complete(member) -> whether its destination is a
    complete copy (the skip rule). Returns (leaders [LinkMember] to copy, links [HardLinkPlan],
    complete: how many names need nothing). A group of one name is a leader alone.
    """
    leaders, links, complete = [], [], 0
    for inode, members in groups.items():
        members.sort(key=lambda member: member.destination)
        leader = next((member for member in members if is_complete(member)), members[0])
        if is_complete(leader):
            complete += 1
        else:
            leaders.append(leader)
        for member in members:
            if member is leader:
                continue
            if is_complete(leader) and same_inode(member.existing, leader.existing):
                complete += 1
                continue
            links.append(HardLinkPlan(member.source, member.destination, leader.destination, member.size,
                                      inode, member.existing is not None, member.temp))
    return leaders, links, complete


def same_inode(a, b):
    return a is not None and b is not None and a.kind == b.kind == "file" and (a.dev, a.ino) == (b.dev, b.ino)


class HardLinker:
    """Makes a Copier's planned hard links (stage_copy.Copier.run calls it after every file)."""

    def __init__(self, copier):
        self.copier = copier
        self.made = 0
        self.copied = 0

    def run(self, links, failed_dirs):
        """Each inode's names in one task, one after another; inodes in parallel. Two links of one inode
        made at once through GlusterFS's distribute translator fail now and then (ENODATA or ENOENT: 92 of
        6,000 links, groups of three, 32 threads, libgfapi; none with one thread, none with one link per
        inode; 2026-12-06)."""
        copier = self.copier
        groups = {}
        for link in links:
            if not copier.under_failed(link.destination, failed_dirs):
                groups.setdefault(link.leader, []).append(link)
        copier.crew.map_unordered(lambda group: self.make_group(group, failed_dirs), list(groups.values()))

    def make_group(self, group, failed_dirs):
        for link in group:
            self.make(link, failed_dirs)

    def make(self, link, failed_dirs):
        copier = self.copier
        if link.leader in copier.failed_destinations or copier.under_failed(link.leader, failed_dirs):
            copier.record_failure(link.source, "not linked: its first name %s was not staged" % link.leader)
            return
        reason = source_changed(link)
        if reason is None:
            try:
                self.link(link)
            except OSError as exc:
                if exc.errno in CANNOT_LINK:
                    self.copy_instead(link)
                    return
                reason = "cannot link %s to %s%s" % (link.destination, link.leader, as_user(exc))
        if reason is not None:
            copier.record_failure(link.source, reason)
            return
        with copier.lock:
            self.made += 1

    def link(self, link):
        """Through libgfapi where new small files go (a stage-in), else through the file system."""
        fast = self.copier.fast
        if fast is not None and fast.takes_link(link):
            fast.link(link.leader, link.destination, self.copier.local)
        else:
            link_locally(link)

    def copy_instead(self, link):
        """The name as a file of its own: the kernel cannot make this link here."""
        self.copier.copy_whole(link.source, link.destination, link.size, link.replace, link.temp)
        with self.copier.lock:
            self.copied += 1


def source_changed(link):
    """Why the source name is no longer a name of the planned inode, or None."""
    try:
        info = os.lstat(link.source)
    except OSError as exc:
        return "cannot read: %s" % describe_error(exc)
    if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != link.inode:
        return "changed while staging (no longer a hard link of %s); stage again" % link.leader
    return None


def link_locally(link):
    """link.destination as a hard link of link.leader, verified; through the temporary name on stage-out.

    Raises OSError (EXDEV, EMLINK: the caller copies instead)."""
    leader = os.lstat(link.leader)
    if not stat.S_ISREG(leader.st_mode) or leader.st_size != link.size:
        raise OSError(errno.EIO, "its first name %s is no longer the file staged" % link.leader)
    target = link.temp or link.destination
    if link.replace and not link.temp:
        os.unlink(link.destination)
    try:
        os.link(link.leader, target, follow_symlinks=False)
    except FileExistsError:
        if not link.temp:
            raise
        os.unlink(target)  # a leftover of ours (its name ends in .bb-stage.tmp)
        os.link(link.leader, target, follow_symlinks=False)
    made = os.lstat(target)
    if (made.st_dev, made.st_ino) != (leader.st_dev, leader.st_ino):
        os.unlink(target)
        raise OSError(errno.EIO, "verification failed: %s is not a link of %s" % (target, link.leader))
    if link.temp:
        os.rename(link.temp, link.destination)
        if os.path.lexists(link.temp):  # rename does nothing when both names are links of one inode
            os.unlink(link.temp)
