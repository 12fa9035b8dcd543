# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""How staging fails: StageError for a request that cannot be staged at all, and the wording
of per-file failures.

A job's copy runs as the job's user, so a refusal says which uid was refused: "Permission
denied" alone sends the user looking for the wrong problem.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os

from ansible_collections.hpc.burstbuffer.plugins.module_utils.sizes import SizeError, parse_size


class StageError(Exception):
    """A request that cannot be staged at all; the message says what was wrong and what to do."""


def describe_error(exc):
    """'Permission denied' style text of an OSError, or the exception's own text."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or os.strerror(exc.errno)
    return str(exc) or exc.__class__.__name__


def as_user(exc):
    """': Permission denied (as uid 1001)': who was refused matters when a job's copy fails."""
    text = ": " + describe_error(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        text += " (as uid %d, the job's user)" % os.getuid()
    return text


def failure_message(direction, failed, total, limit=10):
    shown = "; ".join("%s: %s" % (item["path"], item["reason"]) for item in failed[:limit])
    more = " (and %d more, see failed_files)" % (len(failed) - limit) if len(failed) > limit else ""
    return "stage-%s failed for %d of %d entries: %s%s" % (direction, len(failed), total, shown, more)


def copy_preflight(params, verb):
    """(chunk_size in bytes, None), or (None, the message): what a copying module (bb_stage,
    cache_writeback) checks before it starts its worker. verb names the copy ("stage", "write back")."""
    if params["uid"] == 0 or params["gid"] == 0:
        return None, ("refusing to %s as uid %d gid %d: copies run as the job's user, never as root."
                      % (verb, params["uid"], params["gid"]))
    try:
        return parse_size(params["chunk_size"]), None
    except SizeError as exc:
        return None, "chunk_size: %s" % exc
