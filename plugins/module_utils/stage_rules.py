# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What a stage request may ask for: path rules and DataWarp-style lists (pure functions).

A request names a source, a destination and the buffer's root; one side of every pair must be
inside the buffer (the destination of a stage-in, the source of a stage-out). Paths are
absolute and free of '..' before anything is opened, so a job cannot name its way out of the
buffer; symlinks met later are dealt with by the planner (stage_plan.py), which sees the
filesystem. Source files are only ever opened with O_READ: never through a symlink, and a FIFO
never hangs the copy.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import posixpath
import re
import shlex
from collections import namedtuple

from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError

DIRECTIONS = ("in", "out")
KINDS = ("file", "directory", "list")

O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO never hangs us
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# buffer_variables (lists only): variable name -> the buffer's root here, for list lines that name
# the buffer as directives do ($DW_JOB_STRIPED/a); None when no list line may.
StageRequest = namedtuple("StageRequest", ["direction", "kind", "source", "destination", "buffer_root",
                                           "buffer_variables"], defaults=(None,))


def check_path(path, what):
    """The normalised form of an absolute path without '..'; refuses anything else."""
    if not isinstance(path, str) or not path:
        raise StageError("%s is empty: give an absolute path." % what)
    if "\0" in path:
        raise StageError("%s %r contains a NUL byte." % (what, path))
    if not path.startswith("/"):
        raise StageError("%s %r is relative: give an absolute path." % (what, path))
    if ".." in path.split("/"):
        raise StageError("%s %r contains '..': give the path without it." % (what, path))
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/")


def is_inside(root, path):
    """Whether normalised ``path`` is ``root`` or below it (lexically)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_inside_buffer(path, buffer_root, what):
    if not is_inside(buffer_root, path):
        raise StageError("%s %s is not inside the buffer %s: it must be a path under the buffer "
                         "($DW_JOB_STRIPED or $BB_JOB_STRIPED)." % (what, path, buffer_root))


def check_request(request):
    """The request with normalised paths, or StageError naming the first thing wrong with it."""
    if request.direction not in DIRECTIONS:
        raise StageError("direction %r: use one of %s." % (request.direction, ", ".join(DIRECTIONS)))
    if request.kind not in KINDS:
        raise StageError("type %r: use one of %s." % (request.kind, ", ".join(KINDS)))
    root = check_path(request.buffer_root, "buffer_root")
    if root == "/":
        raise StageError("buffer_root is /: give the buffer's mount point.")
    source = check_path(request.source, "source")
    destination = None
    if request.kind != "list":
        if not request.destination:
            raise StageError("destination is required with type=%s." % request.kind)
        destination = check_path(request.destination, "destination")
        if request.destination.endswith("/") and destination != "/":
            destination += "/"  # a trailing slash asks for "into this directory"
        check_pair(request.direction, source, destination.rstrip("/") or "/", root)
    elif request.destination:  # where a list's relative destinations are read
        destination = check_path(request.destination, "destination")
        if request.direction == "in":
            check_inside_buffer(destination, root, "stage-in destination")
    variables = dict((name, check_path(path, "buffer variable " + name))
                     for name, path in (request.buffer_variables or {}).items()) or None
    return StageRequest(request.direction, request.kind, source, destination, root, variables)


def check_pair(direction, source, destination, buffer_root):
    if direction == "in":
        check_inside_buffer(destination, buffer_root, "stage-in destination")
    else:
        check_inside_buffer(source, buffer_root, "stage-out source")


_LIST_VARIABLE_RE = re.compile(r"^\$([A-Za-z0-9_.-]+)(/.*)?$")


def resolve_list_path(field, variables, base, what):
    """A list line's path as a path here: ``$VAR/rest`` by ``variables``, relative under ``base``.

    ``variables`` maps the buffer's variable names (DW_JOB_STRIPED ...) to its root on this host;
    ``base`` is where relative paths are read (None: they are refused). Absolute paths stay.
    """
    match = _LIST_VARIABLE_RE.match(field)
    if match and variables is None:
        raise StageError("%s %r: a variable names the buffer, and this side of the line is on the parallel "
                         "filesystem: give an absolute path." % (what, field))
    if match:
        name, rest = match.groups()
        if name not in variables:
            known = ", ".join("$" + key for key in sorted(variables)) or "none"
            raise StageError("%s %r names $%s, which is not this directive's buffer (here: %s)."
                             % (what, field, name, known))
        return variables[name] + (rest or "")
    if field.startswith("/") or base is None:
        return field
    return base.rstrip("/") + "/" + field


def parse_stage_list(text, buffer_root, direction, list_path="the list", variables=None, base=None):
    """(source, destination) pairs of a DataWarp-style list: one ``source destination`` a line.

    Blank lines and ``#`` comments are ignored; a path with spaces is quoted. The buffer side
    (the destination of a stage-in, the source of a stage-out) may name the buffer as directives
    do (``$DW_JOB_STRIPED/a``, by ``variables``); a relative destination is read under ``base``
    (the directive's destination), a relative stage-out source under the buffer root. The paths
    are then checked like a single pair.
    """
    pairs = []
    # Newlines only: splitlines() also ends a line at \r, \v, \f, \x1c-\x1e, \x85 and U+2028/9, which
    # file names may hold (quoted), and its line numbers would not be the editor's. shlex reads a
    # \r left by a CRLF line end as whitespace.
    for number, line in enumerate(text.split("\n"), 1):
        try:
            fields = shlex.split(line, comments=True)
        except ValueError as exc:
            raise StageError("%s line %d: %s" % (list_path, number, exc)) from None
        if not fields:
            continue
        if len(fields) != 2:
            raise StageError("%s line %d has %d fields: write 'source destination' (quote a path "
                             "with spaces)." % (list_path, number, len(fields)))
        try:
            source_base = buffer_root if direction == "out" else None
            buffer_side = variables or {}
            source = check_path(resolve_list_path(fields[0], buffer_side if direction == "out" else None,
                                                  source_base, "source"), "source")
            destination = check_path(resolve_list_path(fields[1], buffer_side if direction == "in" else None,
                                                       base, "destination"), "destination")
            if fields[1].endswith("/") and destination != "/":
                destination += "/"
            check_pair(direction, source, destination.rstrip("/") or "/", buffer_root)
        except StageError as exc:
            raise StageError("%s line %d: %s" % (list_path, number, exc)) from None
        pairs.append((source, destination))
    if not pairs:
        raise StageError("%s names no files: write one 'source destination' pair a line." % list_path)
    return pairs
