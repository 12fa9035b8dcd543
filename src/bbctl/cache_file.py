"""One JSON value kept in a file that only this user can have written, under a key.

bbctl runs as root for Slurm: whatever it reads back from such a file it believes
without checking again, so a file (or its directory) that another user owns or that
is group- or world-writable is never read, and one that cannot be read as what
``write`` wrote is ignored. Writes are atomic (a temporary file renamed over the
old one), so a reader sees the old value or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DIR_MODE = 0o700
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC  # a symlink planted in its place is not followed


def read(path: Path, key: str) -> Any | None:
    """The value stored at path under key; None if there is none, it was stored under another key,
    the file or its directory is not this user's alone (``trusted``), or it is not what ``write`` wrote."""
    try:
        if not trusted(os.lstat(path.parent), stat.S_ISDIR):
            return None
        fd = os.open(path, _OPEN_FLAGS)
        with os.fdopen(fd, "rb") as handle:
            if not trusted(os.fstat(handle.fileno()), stat.S_ISREG):
                return None
            stored = json.loads(handle.read())
    except (OSError, ValueError):  # missing, unreadable, not UTF-8, not JSON
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    return stored.get("value")


def write(path: Path, key: str, value: Any) -> bool:
    """Store value at path under key; False, and nothing written, if that is not possible.

    The directory is made (mode 0700) if missing and must be ``trusted``; the file is
    written 0600 beside its final name and renamed over it. A value that JSON would
    not give back equal (tuples, sets, dates, non-string keys) is not stored.
    """
    try:
        text = json.dumps({"key": key, "value": value})
        if json.loads(text)["value"] != value:
            return False
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if not trusted(os.lstat(path.parent), stat.S_ISDIR):
            return False
        _replace(path, text.encode())
    except (OSError, TypeError, ValueError):
        return False
    return True


def trusted(status: os.stat_result, is_kind: Callable[[int], bool]) -> bool:
    """Whether a file of this status is of the kind wanted and could have been written only by this user."""
    return (is_kind(status.st_mode) and status.st_uid == os.geteuid()
            and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _replace(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
