"""The warm runner's protocol: what bbctl sends, what it gets back, and where a stage's inputs live.

One connection runs one stage. Lines are JSON objects ending in a newline.

1. bbctl sends the request: ``{"stage": NAME, "key": KEY, "run": RUN}``: the stage's name,
   the buffer's (or job's) key and the name of the run directory bbctl made for it,
   ``<work_dir>/runs/KEY/RUN``. Nothing else: no playbook path, no command, no variables.
   What the stage runs is in that directory, written by bbctl (root) before it connects:
   ``warm/request.json`` (the playbook's name, the host limit, the timeout) and
   ``warm/extravars.json`` (the playbook's variables), beside the generated inventory.
2. The runner answers ``{"accepted": true}`` or ``{"refused": WHY}`` (bbctl then runs the
   stage through ansible-runner itself).
3. bbctl answers ``{"go": true}``; only then does the runner start the playbook. A bbctl
   that gave up waiting for step 2 has closed the connection instead, so a stage is never
   run by both paths.
4. The runner streams ``{"event": KIND, "event_data": {...}}`` lines (ansible-runner's
   event names and the fields bbctl.runner reads) and ends with
   ``{"done": {"status": STATUS, "rc": RC}}``, STATUS as ansible-runner's: successful,
   failed, timeout, canceled.

bbctl cancels by shutting down its side of the connection (or by dying): the runner
ends the playbook's whole process group and still sends its ``done`` line.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbctl import cache_file

# BBCTL_WARM_RUNNER=0 in bbctl's environment: never try the socket (benchmarks compare both paths this way).
DISABLE_ENV = "BBCTL_WARM_RUNNER"
REQUEST_DIR = "warm"  # inside a stage's run directory
REQUEST_FILE = "request.json"
EXTRAVARS_FILE = "extravars.json"
MAX_REQUEST_BYTES = 4096
STAGE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
RUN_RE = re.compile(r"^[0-9]{8}T[0-9]{6}-[a-z][a-z0-9-]{0,31}(\.[0-9]{1,6})?$")
PLAYBOOK_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\.ya?ml$")
LIMIT_RE = re.compile(r"^[A-Za-z0-9_.:,\[\]-]{1,65536}$")  # host names and group names, comma-separated
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NotRun(Exception):
    """A request the runner does not run (bbctl falls back to ansible-runner); the message says why."""


@dataclass(frozen=True)
class Request:
    stage: str
    key: str
    run: str

    def line(self) -> bytes:
        return encode({"stage": self.stage, "key": self.key, "run": self.run})


@dataclass(frozen=True)
class StageInput:
    """What one stage runs, read back from its run directory."""

    run_dir: Path
    playbook: Path
    limit: str
    timeout: int
    extravars: Path


def encode(message: dict[str, Any]) -> bytes:
    # default=str: a task result may hold a value JSON has no type for (a date); bbctl only shows it.
    return (json.dumps(message, default=str, separators=(",", ":")) + "\n").encode()


def parse_request(line: bytes) -> Request:
    """The request in line, its fields checked for shape (the run directory is checked by locate)."""
    try:
        data = json.loads(line)
    except ValueError:
        raise NotRun("the request is not JSON") from None
    if not isinstance(data, dict) or set(data) != {"stage", "key", "run"}:
        raise NotRun("a request is {stage, key, run} and nothing else")
    stage, key, run = data["stage"], data["key"], data["run"]
    if not isinstance(stage, str) or not STAGE_RE.match(stage):
        raise NotRun(f"bad stage name {stage!r}")
    if not _one_component(key):
        raise NotRun(f"bad key {key!r}")
    if not isinstance(run, str) or not RUN_RE.match(run) or not run.split(".")[0].endswith("-" + stage):
        raise NotRun(f"bad run directory name {run!r} for stage {stage}")
    return Request(stage=stage, key=key, run=run)


def _one_component(name: object) -> bool:
    return (isinstance(name, str) and 0 < len(name.encode("utf-8", "surrogateescape")) <= 255
            and name not in (".", "..") and "/" not in name and "\0" not in name)


def identity(inventory: Path) -> dict[str, str]:
    """What must be the same on both ends: the code (bbctl and the collection, one checkout per
    release) and the site's inventory. A runner left running across an upgrade that switched
    releases (docs/OPERATOR_GUIDE.md, section 14) refuses the new release's stages until restarted."""
    from bbctl.collection import COLLECTION_ROOT

    return {"bbctl": str(Path(__file__).resolve().parents[1]), "collection": str(COLLECTION_ROOT.resolve()),
            "inventory": str(inventory)}


def locate(runs_dir: Path, request: Request, playbook_dirs: list[Path], inventory: Path) -> StageInput:
    """The stage's inputs, believed only if bbctl's user alone can have written them.

    The runs directory, the key's directory, the run directory, its warm/ directory and the two
    files must be real (no symlinks), owned by the runner's own user (root) and not writable by
    group or others (bbctl.cache_file.trusted): whoever else could write there could choose what
    root runs. The playbook must be a file directly in one of playbook_dirs (the collection's
    playbooks/ unless the server was started with others), and bbctl's identity this runner's."""
    run_dir = runs_dir / request.key / request.run
    for directory in (runs_dir, run_dir.parent, run_dir, run_dir / REQUEST_DIR):
        _trusted(directory, stat.S_ISDIR)
    data = _read_trusted_json(run_dir / REQUEST_DIR / REQUEST_FILE)
    extravars = run_dir / REQUEST_DIR / EXTRAVARS_FILE
    _trusted(extravars, stat.S_ISREG)
    if not isinstance(data, dict):
        raise NotRun(f"{REQUEST_FILE} is not an object")
    if data.get("identity") != identity(inventory):
        raise NotRun(f"another release or site: {data.get('identity')} is not this runner's {identity(inventory)}")
    playbook, limit, timeout = data.get("playbook"), data.get("limit"), data.get("timeout")
    if not isinstance(limit, str) or not LIMIT_RE.match(limit):
        raise NotRun(f"bad host limit {limit!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= 7 * 86400:
        raise NotRun(f"bad timeout {timeout!r}")
    return StageInput(run_dir=run_dir, playbook=allowed_playbook(playbook, playbook_dirs), limit=limit,
                      timeout=timeout, extravars=extravars)


def allowed_playbook(name: object, playbook_dirs: list[Path]) -> Path:
    """name (a bare file name, or a path whose directory is one of playbook_dirs) as a path in
    one of playbook_dirs; NotRun for anything else."""
    if not isinstance(name, str):
        raise NotRun(f"bad playbook {name!r}")
    given = Path(name)
    candidates = [given] if given.is_absolute() else [d / name for d in playbook_dirs]
    for path in candidates:
        if PLAYBOOK_RE.match(path.name) and path.parent in playbook_dirs and path.is_file():
            return path
    raise NotRun(f"playbook {name!r} is not one of the runner's ({', '.join(map(str, playbook_dirs))})")


def _trusted(path: Path, is_kind: Any) -> None:
    try:
        status = os.lstat(path)
    except OSError as exc:
        raise NotRun(f"{path}: {exc.strerror}") from None
    if not cache_file.trusted(status, is_kind):
        raise NotRun(f"{path}: not a {'directory' if is_kind is stat.S_ISDIR else 'file'} only "
                      f"uid {os.geteuid()} can have written")


def _read_trusted_json(path: Path) -> Any:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not cache_file.trusted(os.fstat(handle.fileno()), stat.S_ISREG):
                raise NotRun(f"{path}: not a file only uid {os.geteuid()} can have written")
            return json.loads(handle.read(1 << 20))
    except OSError as exc:
        raise NotRun(f"{path}: {exc.strerror}") from None
    except ValueError:
        raise NotRun(f"{path}: not JSON") from None


def write_inputs(run_dir: Path, *, playbook: str, limit: str, timeout: int, extravars: dict[str, Any],
                 inventory: Path) -> None:
    """bbctl's side of locate: the stage's inputs in its run directory (mode 0700, files 0600)."""
    directory = run_dir / REQUEST_DIR
    directory.mkdir(mode=0o700)
    request = {"playbook": playbook, "limit": limit, "timeout": timeout, "identity": identity(inventory)}
    for name, value in ((REQUEST_FILE, request),
                        (EXTRAVARS_FILE, extravars)):
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(value, handle)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket, from the kernel (SO_PEERCRED)."""
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid


class LineReader:
    """Newline-terminated JSON messages from a socket, with a cap on the size of one line."""

    def __init__(self, sock: socket.socket, max_line: int = 64 << 20) -> None:
        self.sock, self.max_line = sock, max_line
        self._buffer = b""

    def next(self) -> dict[str, Any] | None:
        """The next message; None at end of stream. Raises OSError (socket timeout included) and ValueError."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > self.max_line:
                raise ValueError("a line longer than allowed")
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("a message that is not a JSON object")
        return message
