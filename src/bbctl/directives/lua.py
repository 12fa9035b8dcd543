"""The Lua validator's grammar, rendered from bbctl.directives.grammar, and the command that refreshes it.

``python -m bbctl.directives --write-lua slurm/bbctl-directives.lua`` rewrites the block
between the markers; ``--check-lua`` fails when it is stale; script paths given as
arguments are validated with the reference parser.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

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
    allowed,
    expects,
    size_units,
)
from bbctl.directives.parser import DirectiveError, parse_job_script

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


def lua_value(value: object, indent: str = "") -> str:
    """Lua source for plain data: dicts keep their order, lists become arrays."""
    inner = indent + "    "
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _lua_string(value)
    if isinstance(value, dict):
        items = [f"{inner}{_lua_key(k)} = {lua_value(v, inner)}," for k, v in value.items()]
    else:
        items = [f"{inner}{lua_value(v, inner)}," for v in value]  # type: ignore[attr-defined]
    return "{\n" + "\n".join(items) + "\n" + indent + "}" if items else "{}"


_LUA_KEYWORDS = frozenset({"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in",
                           "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while"})


def _lua_key(key: str) -> str:
    return key if _LUA_IDENTIFIER.fullmatch(key) and key not in _LUA_KEYWORDS else f"[{_lua_string(key)}]"


def _lua_kinds() -> dict[str, dict[str, Any]]:
    kinds = {}
    for name, kind in KINDS.items():
        kind = dict(kind, expects=expects(kind))
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
            entry["allowed"] = allowed(spec)
            entry["required_text"] = ", ".join(k + "=" for k in spec["required"])
            entry["flags"] = {flag: True for flag in spec.get("flags", ())}
        directives[name] = entry
    return directives


def lua_grammar() -> str:
    """The Lua block between the markers in bbctl-directives.lua: every table the Lua validator reads."""
    grammar = {
        "prefixes": list(PREFIXES),
        "limits": LIMITS,
        "size_limit_text": sizes.format_size(LIMITS["size_bytes"]),
        "units": size_units(),
        "suggest_units": SUGGEST_UNITS,
        "implicit_jobdw_prefix": IMPLICIT_JOBDW_PREFIX,
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
        "-- Rendered from src/bbctl/directives/grammar.py; do not edit here. Refresh with:",
        "--   python -m bbctl.directives --write-lua slurm/bbctl-directives.lua",
        "local GRAMMAR = " + lua_value(grammar),
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

