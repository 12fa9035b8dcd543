"""The reference parser of burst buffer directives: a batch script in, a typed JobRequest out.

Raises DirectiveError at the first offending token, with the message of
bbctl.directives.grammar.MESSAGES; the Lua validator mirrors this order of checks.
The types of the result are in bbctl.directives.request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from bbctl.collection import sizes
from bbctl.directives.grammar import (
    BUFFER_VARIABLES,
    CONFLICTS,
    GRAMMAR,
    IMPLICIT_JOBDW_PREFIX,
    KINDS,
    LIMITS,
    MESSAGES,
    PATH_FORBIDDEN,
    PERSISTENT_VARIABLE_PREFIXES,
    PREFIXES,
    SUGGEST_UNITS,
    UNITS,
    WHITESPACE,
    allowed,
    expects,
)
from bbctl.directives.request import (
    BufferPath,
    CreatePersistent,
    DestroyPersistent,
    JobDW,
    JobRequest,
    Stage,
)
from bbctl.errors import BBError


class DirectiveError(BBError, ValueError):
    """A directive the job cannot have.

    ``line`` is 1-based in the script, ``token`` the offending text (shortened
    as in the message) and ``reason`` the key of the message in MESSAGES.
    """

    def __init__(self, message: str, line: int, token: str, reason: str = "") -> None:
        super().__init__(message)
        self.line, self.token, self.reason = line, token, reason


_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_TOKEN_RE = re.compile(r"[^ \t\r\v\f]+")
_SEPARATOR_RE = re.compile(r"[ \t\r\v\f]")
_SIZE_RE = re.compile(r"([0-9]+)(\.[0-9]+)?([A-Za-z]*)")
_SWAP_RE = re.compile(r"([0-9]+)(?:[Gg]|[Gg][Ii][Bb])?")
_VARIABLE_RE = re.compile(r"\$([A-Za-z0-9_.-]+)(.*)", re.DOTALL)  # . and - for persistent names
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
    first_command: tuple[int, int] | None = None  # (line, offset in the text) where the leading block ends

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


def check_buffer_name(name: str) -> str:
    """``name`` if the grammar accepts it as a persistent buffer name, else DirectiveError.

    For entry points that get a name without a script line (dw_wlm_cli create_persistent,
    bbctl create-persistent): the same rule as ``name=`` in a directive.
    """
    if not _NAME_RES["buffer_name"].fullmatch(name):
        raise DirectiveError(f"persistent buffer name {shorten(name)!r}: names are "
                             f"{KINDS['buffer_name']['describe']}", 0, shorten(name), "bad_name")
    return name


def check_buffer_type(value: str) -> str:
    """A buffer type (dw_wlm_cli create_persistent -T) as ``create_persistent type=`` takes it, else DirectiveError.

    The values of its kind, then the directive's ``not_yet`` rules on ``type``.
    """
    spec = GRAMMAR["create_persistent"]
    choices = KINDS[spec["keys"]["type"]]["values"]
    if value not in choices:
        raise DirectiveError(f"type {shorten(value)!r}: use one of {' | '.join(choices)}", 0, shorten(value),
                             "bad_enum")
    for rule in spec["rules"]:
        if rule["rule"] == "not_yet" and rule["key"] == "type" and rule["value"] == value:
            raise DirectiveError(f"type={value}: {rule['hint']}", 0, value, "not_yet")
    return value


def parse_job_script(text: str) -> JobRequest:
    """The burst buffer request in a batch script's leading comment block.

    Raises DirectiveError at the first offending token. Read script files with
    ``errors="surrogateescape"`` so that byte limits match the Lua validator's.
    """
    state = _State()
    for record in _directive_records(text, state):
        _parse_record(record, state)
    if state.first_command is not None:
        _check_late_directives(text, *state.first_command)
    _check_buffers(state)
    return state.request()


def _check_late_directives(text: str, first_command: int, offset: int) -> None:
    """Refuse a directive below the first command: Slurm never reads it (its staging would be lost).

    Published DataWarp scripts put ``#DW stage_out`` after ``srun``; Cray's own tools read the
    whole script, Slurm's plugins only the leading comment block. The scan goes on from the first
    command (line ``first_command``, at character ``offset``), where the leading block ended, to the
    end of the first script_bytes of the script (Slurm's default limit on a batch script), as the
    Lua validator does.
    """
    budget = max(0, LIMITS["script_bytes"] - _nbytes(text[:offset]))
    rest = text[offset:].encode("utf-8", "surrogateescape")[:budget].decode("utf-8", "surrogateescape")
    for number, line in enumerate(rest.split("\n")[1:], start=first_command + 1):
        prefix = next((p for p in PREFIXES if line.startswith(p)), None)
        words = line[len(prefix):] if prefix else ""
        if prefix and words[:1] in tuple(WHITESPACE) and _first_token(words) in GRAMMAR:
            _fail("late_directive", number, shorten(prefix + " " + _first_token(words)), first=first_command)


def _directive_records(text: str, state: _State) -> Iterator[_Record]:
    """Directive lines of the leading comment block, continuation lines joined.

    Where the block ends, the script's first command, goes to ``state.first_command``.
    """
    pending: _Record | None = None
    end = 0  # where the next line starts
    for number, line in enumerate(text.split("\n"), start=1):
        start, end = end, end + len(line) + 1
        if line == "":
            continue
        if not line.startswith("#"):
            state.first_command = (number, start)
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
    if "=" in name and record.prefix == IMPLICIT_JOBDW_PREFIX:
        name, args = "jobdw", tokens
    comment = next((i for i, token in enumerate(args) if token.startswith("#")), len(args))
    spec = GRAMMAR.get(name)
    if spec is None:
        message = "bare_options" if "=" in name else "unknown_directive"
        _fail(message, record.line, shorten(name), prefix=record.prefix, allowed=", ".join(GRAMMAR))
    where = _Where(record.line, record.prefix, name)
    if spec.get("once"):
        if name in state.first:
            _fail_at(where, "second_directive", name, first=state.first[name])
        state.first[name] = record.line
    values: dict[str, tuple[str, object]] = {}
    if "positional" in spec:
        values[""] = _positional(where, spec, args[:comment])
        args, comment = args[1:], comment - 1
    _check_slurm_reads(where, spec, args)  # Slurm reads a trailing comment's text too
    _check_capacity_separator(where, spec, record.body)
    values.update(_key_values(where, spec, args[:comment]))
    _check_required(where, spec, values)
    for rule in spec.get("rules", ()):
        _RULES[rule["rule"]](where, spec, rule, values)
    _BUILDERS[name](where, values, state)


def _positional(where: _Where, spec: dict[str, Any], args: list[str]) -> tuple[str, object]:
    if not args or "=" in args[0]:
        _fail_at(where, "missing_positional", "", expects=KINDS[spec["positional"]]["expects"])
    return args[0], _check_value(where, spec["positional"], "", args[0], args[0])


def _check_slurm_reads(where: _Where, spec: dict[str, Any], args: list[str]) -> None:
    """Refuse a line where Slurm's strstr would find ``key=`` inside another value first."""
    for key in spec.get("slurm_reads", ()):
        needle = key + "="
        first = next((token for token in args if needle in token), None)
        if first is not None and not first.startswith(needle):
            _fail_at(where, "slurm_reads_first", shorten(first), key=key)


def _check_capacity_separator(where: _Where, spec: dict[str, Any], body: str) -> None:
    """Slurm reads a size up to a space: a tab (or CR) after capacity= would change what it books."""
    if "capacity" not in spec.get("slurm_reads", ()):
        return
    start = body.find("capacity=")
    if start < 0:
        return
    end = _SEPARATOR_RE.search(body, start)
    if end and end.group() != " ":
        _fail_at(where, "capacity_separator", shorten(body[start:end.start()]))


def _key_values(where: _Where, spec: dict[str, Any], args: list[str]) -> dict[str, tuple[str, object]]:
    """key -> (token, checked value), in the order given; flags map to (token, True).

    An alias is stored under the key it means. A key given again with an equal value
    is accepted (the first token is kept); with another value it is refused.
    """
    values: dict[str, tuple[str, object]] = {}
    flags, aliases = spec.get("flags", ()), spec.get("aliases", {})
    for token in args:
        given, eq, value = token.partition("=")
        key = aliases.get(given, given)
        shown = shorten(token)
        if not eq and key not in flags:
            _fail_at(where, "not_key_value", shown, allowed=allowed(spec))
        if eq and key in flags:
            _fail_at(where, "flag_value", shown, key=key)
        if eq and key not in spec["keys"]:
            _fail_at(where, "unknown_key", shown, key=shorten(given), allowed=allowed(spec))
        checked = _check_value(where, spec["keys"][key], key, value, token) if eq else True
        if key in values:
            first_token, first_value = values[key]
            if first_value != checked:
                _fail_at(where, "conflicting_key", shown, key=key, first=shorten(first_token.partition("=")[2]),
                         second=shorten(value))
            continue
        values[key] = (token, checked)
    return values


def _check_required(where: _Where, spec: dict[str, Any], values: dict[str, tuple[str, object]]) -> None:
    for key in spec["required"]:
        if key not in values:
            _fail_at(where, "missing_key", key, key=key, required=", ".join(k + "=" for k in spec["required"]))


def _rule_not_yet(where: _Where, spec: dict[str, Any], rule: dict[str, Any], values: dict) -> None:
    if rule["key"] in values and values[rule["key"]][1] == rule["value"]:
        _fail_at(where, "not_yet", shorten(values[rule["key"]][0]), hint=rule["hint"])


def _rule_file_needs_name(where: _Where, spec: dict[str, Any], rule: dict[str, Any], values: dict) -> None:
    if values["type"][1] != "file":
        return
    for key in spec["keys"]:
        token, value = values[key]
        if value == "/" or (isinstance(value, BufferPath) and value.subpath == ""):
            _fail_at(where, "file_needs_name", shorten(token))


def _rule_cache(where: _Where, spec: dict[str, Any], rule: dict[str, Any], values: dict) -> None:
    """type=cache needs pfs= and is striped only."""
    if _value(values, "type", spec["defaults"]["type"]) != "cache":
        return
    if "pfs" not in values:
        _fail_at(where, "cache_needs_pfs", shorten(values["type"][0]))
    if _value(values, "access_mode", spec["defaults"]["access_mode"]) != "striped":
        _fail_at(where, "cache_access", shorten(values["access_mode"][0]))


_RULES = {"not_yet": _rule_not_yet, "file_needs_name": _rule_file_needs_name, "cache": _rule_cache}


# ----------------------------------------------------------------- values


def _check_value(where: _Where, kind_name: str, key: str, value: str, token: str) -> object:
    kind = KINDS[kind_name]
    shown = shorten(token)
    if value == "":
        _fail_at(where, "empty_value", shown, expects=expects(kind))
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
    if check == "swap_size":
        return _check_swap_size(where, value, shown)
    if _nbytes(value) > LIMITS["path_bytes"]:
        _fail_at(where, "path_too_long", shown, key=key, limit=LIMITS["path_bytes"])
    if check == "pfs_path":
        if value[:1] in ("$", "~"):
            _fail_at(where, "not_expanded", shown, key=key)
        if not value.startswith("/"):
            _fail_at(where, "not_absolute", shown, key=key)
        return _check_path_chars(where, value, shown)
    return _check_buffer_path(where, key, value, shown)


def _check_size(where: _Where, value: str, shown: str) -> int:
    match = _SIZE_RE.fullmatch(value)
    if not match:
        _fail_at(where, "bad_size", shown)
    number, fraction, unit = match.groups()
    if unit.upper() == "N":
        _fail_at(where, "node_size", shown)
    if unit.upper() not in UNITS:
        _fail_at(where, "bad_size", shown)
    nbytes = _whole_number(number) * UNITS[unit.upper()]
    if nbytes >= LIMITS["size_bytes"] and (fraction or nbytes > LIMITS["size_bytes"]):
        _fail_at(where, "huge_size", shown, limit=sizes.format_size(LIMITS["size_bytes"]))
    if fraction:
        _fail_at(where, "decimal_size", shown, suggest=_whole_size(number + fraction, unit.upper()))
    if nbytes == 0:
        _fail_at(where, "zero_size", shown)
    return nbytes


def _whole_number(digits: str) -> int:
    """The number ``digits`` writes, or 10**20 for anything larger (already beyond every size limit).

    int() refuses strings of more than 4300 digits (sys.get_int_max_str_digits), and a
    directive may hold 16 KiB of them.
    """
    digits = digits.lstrip("0")
    return int(digits or "0") if len(digits) <= 20 else 10**20


def _whole_size(number: str, unit: str) -> str:
    """A decimal size as a whole number of the largest exact unit of the same family (7.5GiB -> 7680MiB)."""
    nbytes = math.ceil(float(number) * UNITS[unit])
    family = SUGGEST_UNITS["decimal" if unit.endswith("B") and not unit.endswith("IB") else "binary"]
    for name in family:
        if nbytes % UNITS[name.upper()] == 0:
            return f"{nbytes // UNITS[name.upper()]}{name}"
    return str(nbytes)


def _check_swap_size(where: _Where, value: str, shown: str) -> int:
    match = _SWAP_RE.fullmatch(value)
    if not match or _whole_number(match.group(1)) == 0:
        _fail_at(where, "bad_swap", shown)
    nbytes = _whole_number(match.group(1)) * UNITS["G"]
    if nbytes > LIMITS["size_bytes"]:
        _fail_at(where, "huge_size", shown, limit=sizes.format_size(LIMITS["size_bytes"]))
    return nbytes


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
    """``path`` (starting with /) checked character and component wise, normalised as POSIX reads it.

    ``//``, ``.`` components and a trailing ``/`` go; ``..`` is refused (never resolved: the
    path would leave what its variable names). The result is ``/`` or ``/a/b``.
    """
    bad = _FORBIDDEN_RE.search(path)
    if bad:
        _fail_at(where, "bad_char", shown, char=bad.group())
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        _fail_at(where, "dotdot", shown)
    if any(_nbytes(part) > LIMITS["component_bytes"] for part in parts):
        _fail_at(where, "long_component", shown, limit=LIMITS["component_bytes"])
    return "/" + "/".join(parts)


# ----------------------------------------------------------------- builders and cross-line checks


def _value(values: dict[str, tuple[str, object]], key: str, default: object = None) -> Any:
    return values[key][1] if key in values else default


def _tokens(values: dict[str, tuple[str, object]]) -> dict[str, str]:
    return {key: shorten(token) for key, (token, _value) in values.items()}


def _build_jobdw(where: _Where, values: dict, state: _State) -> None:
    defaults = GRAMMAR["jobdw"]["defaults"]
    state.jobdw = JobDW(
        capacity=_value(values, "capacity"), pool=_value(values, "pool"),
        access_mode=_value(values, "access_mode", defaults["access_mode"]),
        type=_value(values, "type", defaults["type"]), fs=_value(values, "fs", defaults["fs"]),
        pfs=_value(values, "pfs"), line=where.line, preset=_value(values, "preset"), tokens=_tokens(values))


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
        line=where.line, preset=_value(values, "preset"), tokens=_tokens(values)))


def _build_destroy(where: _Where, values: dict, state: _State) -> None:
    name = _value(values, "name")
    _claim_name(where, name, state)
    state.destroy.append(DestroyPersistent(name=name, hurry=_value(values, "hurry", False), line=where.line))


def _build_swap(where: _Where, values: dict, state: _State) -> None:
    state.swap = (_value(values, ""), where.line)  # per node; its pool= is the job buffer's


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
        if path.area == "private":
            _fail_at(where, "stage_private", shown, var=path.variable)
        if path.area == "persistent":
            if path.name not in persistent:
                _fail_at(where, "needs_persistentdw", shown, var=path.variable, name=path.name)
        elif state.jobdw is None:
            _fail_at(where, "needs_jobdw", shown, var=path.variable)
        elif state.jobdw.type == "cache":
            _fail_at(where, "cache_stage", shown, first=state.jobdw.line)
        elif path.area not in state.jobdw.access_modes:
            _fail_at(where, "needs_access", shown, var=path.variable, first=state.jobdw.line,
                     mode=state.jobdw.access_mode)


