"""Burst buffer directives: the grammar as data, the reference parser, and its Lua rendering.

Users write ``#DW``, ``#BB`` or ``#BB_LUA`` lines at the top of a batch script.
Slurm asks ``slurm_bb_job_process`` in burst_buffer.lua to validate them inside
slurmctld, where nothing may fork, so the rules run twice: here (the
reference, also used by every forked stage) and in Lua. Both read the same
tables: ``lua_grammar()`` renders them into burst_buffer.lua between marker
comments (``python -m bbctl.directives --write-lua slurm/burst_buffer.lua``),
and tests/fixtures/directives/cases.yaml holds the cases both must agree on,
message for message.

Decisions (see the tables below for the exact values):

- Lines are scanned like Slurm's own ``_xlate_batch``: split on newlines, empty
  lines skipped, scanning stops at the first line not starting with ``#``.
  Slurm matches directive prefixes without a word boundary, so ``#DWjobdw`` is
  refused rather than silently ignored. A trailing backslash joins the next
  line, which must carry the same prefix.
- Names of persistent buffers: a letter, then letters, digits or ``_``; at
  most 64. They never start with a digit (``teardown --token`` shares its
  namespace with job ids) and ``DW_PERSISTENT_STRIPED_<name>`` stays a valid
  environment variable. Pool names also allow ``.`` and ``-``.
- Paths never reach a shell, so shell metacharacters such as ``;`` ``|`` ``&``
  ``<`` ``>`` are ordinary characters. Refused are what cannot be a sound
  path (control characters, ``..``, ``.`` or empty components, over-long
  paths) and what is ambiguous because a reader expects expansion that never
  happens: quotes, backslash, ``$`` other than the leading buffer variable,
  backticks, braces (also Jinja2 markers: paths travel as Ansible extra
  vars) and glob characters ``* ? [ ]``. ``%j``-style symbols are accepted;
  Slurm substitutes them in later stages, whose parse must run again on the
  substituted text (``%x``, the job name, is user-controlled).
- One trailing ``/`` is accepted and dropped: it never means "contents of".
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from bbctl.collection import sizes
from bbctl.errors import BBError

# --------------------------------------------------------------------------- the grammar (data)

PREFIXES = ("#BB_LUA", "#DW", "#BB")  # longest first: "#BB_LUA" also starts with "#BB"
WHITESPACE = " \t\r\v\f"  # C isspace() without newline: what Slurm skips

LIMITS = {
    "directive_bytes": 16384,  # one directive after joining continuation lines
    "path_bytes": 4095,  # PATH_MAX less the NUL
    "component_bytes": 255,  # NAME_MAX
    "size_bytes": 2**53,  # 8 PiB: beyond any buffer, and exact in Lua's doubles
    "echo_bytes": 64,  # longest token quoted back in a message
}

PATH_FORBIDDEN = "\"'`\\$*?[]{}"

BUFFER_VARIABLES = {
    "DW_JOB_STRIPED": "striped",
    "DW_JOB_PRIVATE": "private",
    "BB_JOB_STRIPED": "striped",
    "BB_JOB_PRIVATE": "private",
}
PERSISTENT_VARIABLE_PREFIXES = ("DW_PERSISTENT_STRIPED_", "BB_PERSISTENT_STRIPED_")

# What a key's value is. "check" picks the validator; the rest parameterise it.
KINDS: dict[str, dict[str, Any]] = {
    "size": {"check": "size", "expects": "a size such as 100GiB"},
    "pool": {"check": "name", "expects": "a pool name", "first": "A-Za-z0-9", "rest": "A-Za-z0-9_.-", "max": 64,
             "describe": "1 to 64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"},
    "buffer_name": {"check": "name", "expects": "a buffer name", "first": "A-Za-z", "rest": "A-Za-z0-9_", "max": 64,
                    "describe": "1 to 64 characters of A-Z a-z 0-9 _, starting with a letter"},
    "access_mode": {"check": "enum", "values": ["striped", "private", "striped,private"]},
    "access": {"check": "enum", "values": ["striped", "private"]},
    "buffer_type": {"check": "enum", "values": ["scratch", "cache"]},
    "fs": {"check": "enum", "values": ["gluster", "lustre"]},
    "stage_type": {"check": "enum", "values": ["file", "directory", "list"]},
    "pfs_path": {"check": "pfs_path", "expects": "an absolute path"},
    "buffer_path": {"check": "buffer_path",
                    "expects": "a path under $DW_JOB_STRIPED, $DW_JOB_PRIVATE or $DW_PERSISTENT_STRIPED_<name>"},
}

_CACHE_RULES = [
    {"rule": "requires", "key": "type", "value": "cache", "needs": "pfs",
     "hint": "name the parallel filesystem directory to cache, e.g. pfs=/lustre/project"},
    {"rule": "only_with", "key": "pfs", "other": "type", "other_value": "cache"},
]

# directive -> keys (in order) and their kinds, required keys, bare flags,
# defaults, per-line rules. "once": at most one such line per job.
# "positional": the directive takes one bare value of that kind instead of keys.
GRAMMAR: dict[str, dict[str, Any]] = {
    "jobdw": {
        "keys": {"capacity": "size", "pool": "pool", "access_mode": "access_mode", "type": "buffer_type",
                 "fs": "fs", "pfs": "pfs_path"},
        "required": ["capacity"], "once": True,
        "defaults": {"access_mode": "striped", "type": "scratch", "fs": "gluster"},
        "rules": _CACHE_RULES,
    },
    "stage_in": {
        "keys": {"type": "stage_type", "source": "pfs_path", "destination": "buffer_path"},
        "required": ["type", "source", "destination"], "rules": [{"rule": "file_needs_name"}],
    },
    "stage_out": {
        "keys": {"type": "stage_type", "source": "buffer_path", "destination": "pfs_path"},
        "required": ["type", "source", "destination"], "rules": [{"rule": "file_needs_name"}],
    },
    "persistentdw": {"keys": {"name": "buffer_name"}, "required": ["name"]},
    "create_persistent": {
        "keys": {"name": "buffer_name", "capacity": "size", "access": "access", "type": "buffer_type",
                 "pool": "pool", "pfs": "pfs_path"},
        "required": ["name", "capacity"],
        "defaults": {"access": "striped", "type": "scratch"},
        "rules": _CACHE_RULES,
    },
    "destroy_persistent": {"keys": {"name": "buffer_name"}, "required": ["name"], "flags": ["hurry"]},
    "swap": {"positional": "size", "once": True},
}

# Two directives naming the same persistent buffer in one job.
CONFLICTS = [
    {"a": "create_persistent", "b": "persistentdw",
     "why": "a job cannot use a buffer it creates: use it from a later job"},
    {"a": "create_persistent", "b": "destroy_persistent", "why": "create and destroy a buffer in separate jobs"},
    {"a": "destroy_persistent", "b": "persistentdw", "why": "a job cannot use a buffer it destroys"},
]

MESSAGES = {
    "control_char": "line {line}: control character {token} in a directive line: directives are printable text",
    "no_space": "line {line}: '{token}' starts like a directive: write '{prefix} ' and then the directive, "
                "e.g. '{prefix} jobdw capacity=100GiB'",
    "dangling_continuation": "line {line}: the directive ends with '\\' but the next line is not a {prefix} line: "
                             "continue it on a '{prefix} ...' line or remove the '\\'",
    "too_long": "line {line}: directive '{token}' is longer than {limit} bytes",
    "unknown_directive": "line {line}: unknown directive '{token}': use one of {allowed}",
    "bare_options": "line {line}: '{token}' is not a directive: lines read '{prefix} DIRECTIVE key=value ...', "
                    "e.g. '{prefix} jobdw capacity=100GiB pool=nvme'",
    "second_directive": "line {line}: a second {directive} line (the first is line {first}): give {directive} once",
    "flag_value": "line {line}: {directive}: '{token}': {key} is a flag and takes no value: write just '{key}'",
    "unknown_key": "line {line}: {directive}: unknown key '{key}' in '{token}': allowed: {allowed}",
    "not_key_value": "line {line}: {directive}: '{token}' is not key=value: allowed: {allowed}",
    "duplicate_key": "line {line}: {directive}: '{token}': {key} is given twice: give it once",
    "empty_value": "line {line}: {directive}: '{token}' has an empty value: give {expects}",
    "bad_enum": "line {line}: {directive}: '{token}': {key} must be one of {choices}",
    "bad_name": "line {line}: {directive}: '{token}': {key} must be {describe}",
    "bad_size": "line {line}: {directive}: '{token}' is not a size: give a whole or decimal number of bytes "
                "with an optional unit: K M G T P or KiB..PiB (powers of 1024), KB..PB (powers of 1000)",
    "node_size": "line {line}: {directive}: '{token}': node counts (N) are not supported: give bytes, e.g. 100GiB",
    "zero_size": "line {line}: {directive}: '{token}': the size must be more than 0 bytes",
    "huge_size": "line {line}: {directive}: '{token}' is larger than the limit of {limit}",
    "missing_positional": "line {line}: {directive}: missing {expects}: write '{directive} 4GiB'",
    "extra_positional": "line {line}: {directive}: unexpected '{token}': write '{directive} SIZE'",
    "missing_key": "line {line}: {directive}: missing {key}=: required: {required}",
    "requires": "line {line}: {directive}: {key}={value} needs {needs}=: {hint}",
    "only_with": "line {line}: {directive}: '{token}' is only allowed with {other}={other_value}",
    "path_too_long": "line {line}: {directive}: '{token}': {key} is longer than {limit} bytes",
    "not_absolute": "line {line}: {directive}: '{token}': {key} must be an absolute path on the parallel "
                    "filesystem (starting with /)",
    "not_buffer_path": "line {line}: {directive}: '{token}': {key} must start with $DW_JOB_STRIPED, "
                       "$DW_JOB_PRIVATE or $DW_PERSISTENT_STRIPED_<name> (or their $BB_ twins), "
                       "then /path or nothing",
    "bad_persistent_var": "line {line}: {directive}: '{token}': '{name}' is not a persistent buffer name: "
                          "names are {describe}",
    "bad_char": "line {line}: {directive}: '{token}': '{char}' is not allowed in paths: nothing expands quotes, "
                "backslashes, $, backticks, braces or glob characters here",
    "dotdot": "line {line}: {directive}: '{token}': '..' is not allowed in paths",
    "not_normal": "line {line}: {directive}: '{token}': write the path without '.' components or '//'",
    "long_component": "line {line}: {directive}: '{token}': a path component is longer than {limit} bytes",
    "file_needs_name": "line {line}: {directive}: '{token}': type=file needs a file name, not a directory root",
    "duplicate_name": "line {line}: {directive} name={name} appears twice (first on line {first})",
    "name_conflict": "line {line}: {directive} name={name} conflicts with {other} name={name} on line {first}: "
                     "{why}",
    "swap_needs_jobdw": "line {line}: swap needs a jobdw line: swap space comes from the job buffer",
    "needs_jobdw": "line {line}: {directive}: '{token}' uses ${var} but there is no jobdw line: add "
                   "'{prefix} jobdw capacity=SIZE' or use a persistent buffer",
    "needs_persistentdw": "line {line}: {directive}: '{token}' uses ${var} but there is no "
                          "'persistentdw name={name}' line",
    "needs_access": "line {line}: {directive}: '{token}' uses ${var}, but jobdw (line {first}) has "
                    "access_mode={mode}: use access_mode=striped,private",
}


def size_units() -> dict[str, int]:
    """Every unit sizes.py accepts (upper-cased) and its multiplier, found by asking sizes.py itself."""
    candidates = ["", "B"] + [letter + suffix for letter in map(chr, range(65, 91)) for suffix in ("", "B", "IB")]
    units = {}
    for unit in candidates:
        try:
            units[unit] = sizes.parse_size("1" + unit)
        except sizes.SizeError:
            continue
    return units


# --------------------------------------------------------------------------- typed results


@dataclass(frozen=True)
class JobDW:
    capacity: int
    pool: str | None
    access_mode: str
    type: str
    fs: str
    pfs: str | None
    line: int

    @property
    def access_modes(self) -> tuple[str, ...]:
        return tuple(self.access_mode.split(","))


@dataclass(frozen=True)
class BufferPath:
    """A path inside a burst buffer: ``area`` is striped, private or persistent (then ``name``)."""

    variable: str
    area: str
    name: str | None
    subpath: str  # "" for the buffer's root, else "/a/b"

    def __str__(self) -> str:
        return "$" + self.variable + self.subpath


@dataclass(frozen=True)
class Stage:
    direction: str  # "in" or "out"
    type: str
    pfs_path: str
    buffer_path: BufferPath
    line: int

    @property
    def source(self) -> str | BufferPath:
        return self.pfs_path if self.direction == "in" else self.buffer_path

    @property
    def destination(self) -> str | BufferPath:
        return self.buffer_path if self.direction == "in" else self.pfs_path


@dataclass(frozen=True)
class CreatePersistent:
    name: str
    capacity: int
    access: str
    type: str
    pool: str | None
    pfs: str | None
    line: int


@dataclass(frozen=True)
class DestroyPersistent:
    name: str
    hurry: bool
    line: int


@dataclass(frozen=True)
class JobRequest:
    jobdw: JobDW | None = None
    stage_in: tuple[Stage, ...] = ()
    stage_out: tuple[Stage, ...] = ()
    persistent: tuple[str, ...] = ()
    create_persistent: tuple[CreatePersistent, ...] = ()
    destroy_persistent: tuple[DestroyPersistent, ...] = ()
    swap: int | None = None


class DirectiveError(BBError, ValueError):
    """A directive the job cannot have.

    ``line`` is 1-based in the script, ``token`` the offending text (shortened
    as in the message) and ``reason`` the key of the message in MESSAGES.
    """

    def __init__(self, message: str, line: int, token: str, reason: str = "") -> None:
        super().__init__(message)
        self.line, self.token, self.reason = line, token, reason


# --------------------------------------------------------------------------- the parser

_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_TOKEN_RE = re.compile(r"[^ \t\r\v\f]+")
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)")
_VARIABLE_RE = re.compile(r"\$([A-Za-z0-9_]+)(.*)", re.DOTALL)
_FORBIDDEN_RE = re.compile("[" + re.escape(PATH_FORBIDDEN) + "]")


def _name_regex(kind: dict[str, Any]) -> re.Pattern[str]:
    return re.compile(f"[{kind['first']}][{kind['rest']}]{{0,{kind['max'] - 1}}}")


_NAME_RES = {name: _name_regex(kind) for name, kind in KINDS.items() if kind["check"] == "name"}


@dataclass(frozen=True)
class _Record:
    line: int
    prefix: str
    body: str


@dataclass(frozen=True)
class _Where:
    """Where a value sits, for messages: line, prefix, directive."""

    line: int
    prefix: str
    directive: str


@dataclass
class _State:
    first: dict[str, int] = field(default_factory=dict)  # "once" directive -> its line
    names: dict[str, dict[str, int]] = field(default_factory=dict)  # directive -> name -> line
    jobdw: JobDW | None = None
    stages: list[tuple[Stage, _Where, str]] = field(default_factory=list)  # with the buffer path's token
    persistent: list[str] = field(default_factory=list)
    create: list[CreatePersistent] = field(default_factory=list)
    destroy: list[DestroyPersistent] = field(default_factory=list)
    swap: tuple[int, int] | None = None  # (bytes, line)

    def request(self) -> JobRequest:
        stages = [stage for stage, _, _ in self.stages]
        return JobRequest(
            jobdw=self.jobdw,
            stage_in=tuple(s for s in stages if s.direction == "in"),
            stage_out=tuple(s for s in stages if s.direction == "out"),
            persistent=tuple(self.persistent),
            create_persistent=tuple(self.create),
            destroy_persistent=tuple(self.destroy),
            swap=self.swap[0] if self.swap else None)


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def shorten(text: str) -> str:
    """``text`` as quoted in messages: at most echo_bytes, cut on a UTF-8 character boundary."""
    data = text.encode("utf-8", "surrogateescape")
    if len(data) <= LIMITS["echo_bytes"]:
        return text
    cut = LIMITS["echo_bytes"] - 4
    while cut > 0 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return data[:cut].decode("utf-8", "surrogateescape") + "..."


def _fail(message: str, line: int, token: str, **fields: object) -> NoReturn:
    raise DirectiveError(MESSAGES[message].format(line=line, token=token, **fields), line, token, message)


def _fail_at(where: _Where, message: str, token: str, **fields: object) -> NoReturn:
    _fail(message, where.line, token, directive=where.directive, prefix=where.prefix, **fields)


def parse_job_script(text: str) -> JobRequest:
    """The burst buffer request in a batch script's leading comment block; DirectiveError if it has none valid."""
    state = _State()
    for record in _directive_records(text):
        _parse_record(record, state)
    _check_buffers(state)
    return state.request()


def _directive_records(text: str) -> Iterator[_Record]:
    """Directive lines of the leading comment block, continuation lines joined."""
    pending: _Record | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        if line == "":
            continue
        if not line.startswith("#"):
            break
        prefix = next((p for p in PREFIXES if line.startswith(p)), None)
        if prefix is None or (pending and prefix != pending.prefix):
            if pending:
                _fail("dangling_continuation", pending.line, "\\", prefix=pending.prefix)
            continue
        record = _Record(number, prefix, _directive_body(number, line, prefix))
        if pending:
            record = _Record(pending.line, prefix, pending.body + record.body)
        if _nbytes(record.body) > LIMITS["directive_bytes"]:
            _fail("too_long", record.line, shorten(_first_token(record.body)), limit=LIMITS["directive_bytes"])
        pending = _Record(record.line, prefix, record.body[:-1]) if record.body.endswith("\\") else None
        if pending is None:
            yield record
    if pending:
        _fail("dangling_continuation", pending.line, "\\", prefix=pending.prefix)


def _directive_body(number: int, line: str, prefix: str) -> str:
    control = _CONTROL_RE.search(line)
    if control:
        _fail("control_char", number, f"\\x{ord(control.group()):02x}")
    body = line[len(prefix):]
    if body and body[0] not in WHITESPACE:
        _fail("no_space", number, shorten(_first_token(line)), prefix=prefix)
    return body


def _first_token(text: str) -> str:
    match = _TOKEN_RE.search(text)
    return match.group() if match else ""


def _parse_record(record: _Record, state: _State) -> None:
    tokens = _TOKEN_RE.findall(record.body)
    if not tokens:
        return  # a bare "#BB_LUA" line: Slurm's minimal form, nothing to check
    name, args = tokens[0], tokens[1:]
    spec = GRAMMAR.get(name)
    if spec is None:
        message = "bare_options" if "=" in name else "unknown_directive"
        _fail(message, record.line, shorten(name), prefix=record.prefix, allowed=", ".join(GRAMMAR))
    where = _Where(record.line, record.prefix, name)
    if spec.get("once"):
        if name in state.first:
            _fail_at(where, "second_directive", name, first=state.first[name])
        state.first[name] = record.line
    if "positional" in spec:
        _BUILDERS[name](where, {"": _positional(where, spec, args)}, state)
        return
    values = _key_values(where, spec, args)
    _check_required(where, spec, values)
    for rule in spec.get("rules", ()):
        _RULES[rule["rule"]](where, spec, rule, values)
    _BUILDERS[name](where, values, state)


def _positional(where: _Where, spec: dict[str, Any], args: list[str]) -> tuple[str, object]:
    if not args:
        _fail_at(where, "missing_positional", "", expects=KINDS[spec["positional"]]["expects"])
    if len(args) > 1:
        _fail_at(where, "extra_positional", shorten(args[1]))
    return args[0], _check_value(where, spec["positional"], "", args[0], args[0])


def _allowed(spec: dict[str, Any]) -> str:
    return ", ".join([key + "=" for key in spec.get("keys", {})] + list(spec.get("flags", ())))


def _key_values(where: _Where, spec: dict[str, Any], args: list[str]) -> dict[str, tuple[str, object]]:
    """key -> (token, checked value), in the order given; flags map to (token, True)."""
    values: dict[str, tuple[str, object]] = {}
    flags = spec.get("flags", ())
    for token in args:
        key, eq, value = token.partition("=")
        shown = shorten(token)
        if not eq and key not in flags:
            _fail_at(where, "not_key_value", shown, allowed=_allowed(spec))
        if eq and key in flags:
            _fail_at(where, "flag_value", shown, key=key)
        if eq and key not in spec["keys"]:
            _fail_at(where, "unknown_key", shown, key=shorten(key), allowed=_allowed(spec))
        if key in values:
            _fail_at(where, "duplicate_key", shown, key=key)
        values[key] = (token, _check_value(where, spec["keys"][key], key, value, token) if eq else True)
    return values


def _check_required(where: _Where, spec: dict[str, Any], values: dict[str, tuple[str, object]]) -> None:
    for key in spec["required"]:
        if key not in values:
            _fail_at(where, "missing_key", key, key=key, required=", ".join(k + "=" for k in spec["required"]))


def _effective(spec: dict[str, Any], values: dict[str, tuple[str, object]], key: str) -> object:
    return values[key][1] if key in values else spec.get("defaults", {}).get(key)


def _rule_requires(where: _Where, spec: dict[str, Any], rule: dict[str, Any], values: dict) -> None:
    if _effective(spec, values, rule["key"]) == rule["value"] and rule["needs"] not in values:
        _fail_at(where, "requires", shorten(values[rule["key"]][0]), key=rule["key"], value=rule["value"],
                 needs=rule["needs"], hint=rule["hint"])


def _rule_only_with(where: _Where, spec: dict[str, Any], rule: dict[str, Any], values: dict) -> None:
    if rule["key"] in values and _effective(spec, values, rule["other"]) != rule["other_value"]:
        _fail_at(where, "only_with", shorten(values[rule["key"]][0]), other=rule["other"],
                 other_value=rule["other_value"])


def _rule_file_needs_name(where: _Where, spec: dict[str, Any], rule: dict[str, Any], values: dict) -> None:
    if values["type"][1] != "file":
        return
    for key in spec["keys"]:
        token, value = values[key]
        if value == "/" or (isinstance(value, BufferPath) and value.subpath == ""):
            _fail_at(where, "file_needs_name", shorten(token))


_RULES = {"requires": _rule_requires, "only_with": _rule_only_with, "file_needs_name": _rule_file_needs_name}


# ----------------------------------------------------------------- values


def _check_value(where: _Where, kind_name: str, key: str, value: str, token: str) -> object:
    kind = KINDS[kind_name]
    shown = shorten(token)
    if value == "":
        _fail_at(where, "empty_value", shown, expects=_expects(kind))
    check = kind["check"]
    if check == "enum":
        if value not in kind["values"]:
            _fail_at(where, "bad_enum", shown, key=key, choices=" | ".join(kind["values"]))
        return value
    if check == "name":
        if not _NAME_RES[kind_name].fullmatch(value):
            _fail_at(where, "bad_name", shown, key=key, describe=kind["describe"])
        return value
    if check == "size":
        return _check_size(where, value, shown)
    if _nbytes(value) > LIMITS["path_bytes"]:
        _fail_at(where, "path_too_long", shown, key=key, limit=LIMITS["path_bytes"])
    if check == "pfs_path":
        if not value.startswith("/"):
            _fail_at(where, "not_absolute", shown, key=key)
        return _check_path_chars(where, value, shown)
    return _check_buffer_path(where, key, value, shown)


def _expects(kind: dict[str, Any]) -> str:
    return kind["expects"] if "expects" in kind else "one of " + " | ".join(kind["values"])


def _check_size(where: _Where, value: str, shown: str) -> int:
    match = _SIZE_RE.fullmatch(value)
    if not match:
        _fail_at(where, "bad_size", shown)
    if match.group(2).upper() == "N":
        _fail_at(where, "node_size", shown)
    try:
        nbytes = sizes.parse_size(value)
    except sizes.SizeError:
        _fail_at(where, "bad_size", shown)
    except OverflowError:  # float("9" * 400) is inf
        nbytes = math.inf
    if nbytes == 0:
        _fail_at(where, "zero_size", shown)
    if nbytes > LIMITS["size_bytes"]:
        _fail_at(where, "huge_size", shown, limit=sizes.format_size(LIMITS["size_bytes"]))
    return int(nbytes)


def _check_buffer_path(where: _Where, key: str, value: str, shown: str) -> BufferPath:
    match = _VARIABLE_RE.fullmatch(value)
    if not match or not (match.group(2) == "" or match.group(2).startswith("/")):
        _fail_at(where, "not_buffer_path", shown, key=key)
    variable, rest = match.groups()
    area, name = BUFFER_VARIABLES.get(variable), None
    if area is None:
        prefix = next((p for p in PERSISTENT_VARIABLE_PREFIXES if variable.startswith(p)), None)
        if prefix is None:
            _fail_at(where, "not_buffer_path", shown, key=key)
        area, name = "persistent", variable[len(prefix):]
        if not _NAME_RES["buffer_name"].fullmatch(name):
            _fail_at(where, "bad_persistent_var", shown, name=shorten(name),
                     describe=KINDS["buffer_name"]["describe"])
    subpath = _check_path_chars(where, rest, shown) if rest else ""
    return BufferPath(variable, area, name, "" if subpath == "/" else subpath)


def _check_path_chars(where: _Where, path: str, shown: str) -> str:
    """``path`` (starting with /) checked character and component wise; one trailing / dropped."""
    bad = _FORBIDDEN_RE.search(path)
    if bad:
        _fail_at(where, "bad_char", shown, char=bad.group())
    if path == "/":
        return path
    path = path[:-1] if path.endswith("/") else path
    parts = path[1:].split("/")
    if ".." in parts:
        _fail_at(where, "dotdot", shown)
    if "" in parts or "." in parts:
        _fail_at(where, "not_normal", shown)
    if any(_nbytes(part) > LIMITS["component_bytes"] for part in parts):
        _fail_at(where, "long_component", shown, limit=LIMITS["component_bytes"])
    return path


# ----------------------------------------------------------------- builders and cross-line checks


def _value(values: dict[str, tuple[str, object]], key: str, default: object = None) -> Any:
    return values[key][1] if key in values else default


def _build_jobdw(where: _Where, values: dict, state: _State) -> None:
    defaults = GRAMMAR["jobdw"]["defaults"]
    state.jobdw = JobDW(
        capacity=_value(values, "capacity"), pool=_value(values, "pool"),
        access_mode=_value(values, "access_mode", defaults["access_mode"]),
        type=_value(values, "type", defaults["type"]), fs=_value(values, "fs", defaults["fs"]),
        pfs=_value(values, "pfs"), line=where.line)


def _build_stage(where: _Where, values: dict, state: _State) -> None:
    direction = "in" if where.directive == "stage_in" else "out"
    pfs_key, buffer_key = ("source", "destination") if direction == "in" else ("destination", "source")
    stage = Stage(direction, _value(values, "type"), _value(values, pfs_key), _value(values, buffer_key), where.line)
    state.stages.append((stage, where, values[buffer_key][0]))


def _claim_name(where: _Where, name: str, state: _State) -> None:
    """Record a persistent buffer name, refusing repeats and conflicting uses in one job."""
    seen = state.names.setdefault(where.directive, {})
    if name in seen:
        _fail_at(where, "duplicate_name", name, name=name, first=seen[name])
    for conflict in CONFLICTS:
        pair = (conflict["a"], conflict["b"])
        if where.directive not in pair:
            continue
        other = pair[1] if where.directive == pair[0] else pair[0]
        if name in state.names.get(other, {}):
            _fail_at(where, "name_conflict", name, name=name, other=other, first=state.names[other][name],
                     why=conflict["why"])
    seen[name] = where.line


def _build_persistentdw(where: _Where, values: dict, state: _State) -> None:
    name = _value(values, "name")
    _claim_name(where, name, state)
    state.persistent.append(name)


def _build_create(where: _Where, values: dict, state: _State) -> None:
    name = _value(values, "name")
    _claim_name(where, name, state)
    defaults = GRAMMAR["create_persistent"]["defaults"]
    state.create.append(CreatePersistent(
        name=name, capacity=_value(values, "capacity"), access=_value(values, "access", defaults["access"]),
        type=_value(values, "type", defaults["type"]), pool=_value(values, "pool"), pfs=_value(values, "pfs"),
        line=where.line))


def _build_destroy(where: _Where, values: dict, state: _State) -> None:
    name = _value(values, "name")
    _claim_name(where, name, state)
    state.destroy.append(DestroyPersistent(name=name, hurry=_value(values, "hurry", False), line=where.line))


def _build_swap(where: _Where, values: dict, state: _State) -> None:
    state.swap = (_value(values, ""), where.line)


_BUILDERS = {
    "jobdw": _build_jobdw, "stage_in": _build_stage, "stage_out": _build_stage,
    "persistentdw": _build_persistentdw, "create_persistent": _build_create,
    "destroy_persistent": _build_destroy, "swap": _build_swap,
}


def _check_buffers(state: _State) -> None:
    """Checks that need every line: swap and stage paths need the buffer they use."""
    if state.swap and state.jobdw is None:
        _fail("swap_needs_jobdw", state.swap[1], "swap")
    persistent = state.names.get("persistentdw", {})
    for stage, where, token in state.stages:
        path, shown = stage.buffer_path, shorten(token)
        if path.area == "persistent":
            if path.name not in persistent:
                _fail_at(where, "needs_persistentdw", shown, var=path.variable, name=path.name)
        elif state.jobdw is None:
            _fail_at(where, "needs_jobdw", shown, var=path.variable)
        elif path.area not in state.jobdw.access_modes:
            _fail_at(where, "needs_access", shown, var=path.variable, first=state.jobdw.line,
                     mode=state.jobdw.access_mode)


# --------------------------------------------------------------------------- Lua rendering

LUA_BEGIN = "-- BEGIN GENERATED GRAMMAR (bbctl.directives)"
LUA_END = "-- END GENERATED GRAMMAR"
_LUA_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _lua_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\{byte}" for byte in char.encode("utf-8"))
    return '"' + "".join(out) + '"'


def _lua_value(value: object, indent: str = "") -> str:
    """Lua source for plain data: dicts keep their order, lists become arrays."""
    inner = indent + "    "
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _lua_string(value)
    if isinstance(value, dict):
        items = [f"{inner}{_lua_key(k)} = {_lua_value(v, inner)}," for k, v in value.items()]
    else:
        items = [f"{inner}{_lua_value(v, inner)}," for v in value]  # type: ignore[attr-defined]
    return "{\n" + "\n".join(items) + "\n" + indent + "}" if items else "{}"


_LUA_KEYWORDS = frozenset({"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in",
                           "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while"})


def _lua_key(key: str) -> str:
    return key if _LUA_IDENTIFIER.fullmatch(key) and key not in _LUA_KEYWORDS else f"[{_lua_string(key)}]"


def _lua_kinds() -> dict[str, dict[str, Any]]:
    kinds = {}
    for name, kind in KINDS.items():
        kind = dict(kind, expects=_expects(kind))
        if kind["check"] == "enum":
            kind["choices"] = " | ".join(kind["values"])
        if kind["check"] == "name":
            kind["pattern"] = f"^[{kind['first']}][{kind['rest']}]*$"
        kinds[name] = kind
    return kinds


def _lua_directives() -> dict[str, dict[str, Any]]:
    directives = {}
    for name, spec in GRAMMAR.items():
        entry = dict(spec)
        if "keys" in spec:
            entry["key_order"] = list(spec["keys"])
            entry["allowed"] = _allowed(spec)
            entry["required_text"] = ", ".join(k + "=" for k in spec["required"])
            entry["flags"] = {flag: True for flag in spec.get("flags", ())}
        directives[name] = entry
    return directives


def lua_grammar() -> str:
    """The Lua block between the markers in burst_buffer.lua: every table the Lua validator reads."""
    grammar = {
        "prefixes": list(PREFIXES),
        "limits": LIMITS,
        "size_limit_text": sizes.format_size(LIMITS["size_bytes"]),
        "units": size_units(),
        "path_forbidden_pattern": "[" + "".join("%" + c for c in PATH_FORBIDDEN) + "]",
        "buffer_variables": BUFFER_VARIABLES,
        "persistent_variable_prefixes": list(PERSISTENT_VARIABLE_PREFIXES),
        "kinds": _lua_kinds(),
        "directive_order": list(GRAMMAR),
        "directive_list": ", ".join(GRAMMAR),
        "directives": _lua_directives(),
        "conflicts": CONFLICTS,
        "messages": MESSAGES,
    }
    return "\n".join([
        LUA_BEGIN,
        "-- Rendered from src/bbctl/directives.py; do not edit here. Refresh with:",
        "--   python -m bbctl.directives --write-lua slurm/burst_buffer.lua",
        "local GRAMMAR = " + _lua_value(grammar),
        LUA_END,
    ])


def lua_block(lua_source: str) -> str:
    """The generated block currently in ``lua_source`` (markers included)."""
    start, end = lua_source.find(LUA_BEGIN), lua_source.find(LUA_END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {LUA_BEGIN!r} and {LUA_END!r} are missing")
    return lua_source[start:end + len(LUA_END)]


def write_lua(path: Path) -> bool:
    """Refresh the generated block in ``path``; True if the file changed."""
    source = path.read_text(encoding="utf-8")
    updated = source.replace(lua_block(source), lua_grammar())
    if updated != source:
        path.write_text(updated, encoding="utf-8")
    return updated != source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bbctl.directives", description=__doc__.splitlines()[0])
    parser.add_argument("--write-lua", type=Path, metavar="LUA", help="refresh the generated grammar block")
    parser.add_argument("--check-lua", type=Path, metavar="LUA", help="exit 1 if the generated block is stale")
    parser.add_argument("scripts", nargs="*", type=Path, help="batch scripts to validate")
    args = parser.parse_args(argv)
    status = 0
    if args.write_lua:
        print(f"{args.write_lua}: {'updated' if write_lua(args.write_lua) else 'already current'}")
    if args.check_lua and lua_block(args.check_lua.read_text(encoding="utf-8")) != lua_grammar():
        print(f"{args.check_lua}: generated grammar is stale: run with --write-lua", file=sys.stderr)
        status = 1
    for script in args.scripts:
        try:
            parse_job_script(script.read_text(encoding="utf-8", errors="surrogateescape"))
        except DirectiveError as error:
            print(f"{script}: {error}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
