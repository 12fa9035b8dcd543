"""Every reason bbctl and burst_buffer.lua can give Slurm for a failed stage, found in the source.

A stage that fails ends with one line: bbctl's ``bbctl STAGE: error: MESSAGE`` (or dw_wlm_cli's
MESSAGE), which Slurm shows as the job's Reason, or burst_buffer.lua's own message. So a reason
is the message of a BBError, and the rule that makes every reason findable is:

- Python: a BBError (or subclass) is raised with its message written where it is raised, as a
  string or f-string, or as ``CONSTANT.format(...)`` of a module-level string; or it relays
  another error's message (``str(exc)``); a subclass with its own ``__init__`` writes its message
  in its ``super().__init__(...)`` call. Anything else (a message computed elsewhere) is reported
  as unidentified, and the test fails on it.
- Lua: a message is a string literal (joined with ``..`` to values) that a hook or helper returns
  (``return slurm.ERROR, "..."``, ``return nil, "..."``, ``return false, "..."``, ``return "..."``)
  or assigns to a name (``POOLS_MISSING = "..."``).

A reason is its template: the literal text with each value replaced by a placeholder. The user
guide's table writes the same text with ``<name>`` for each value; a row matches a reason when
their literal parts are the same, in the same order (the placeholders' names are free).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HOLE = "\0"  # a placeholder inside a template
PLACEHOLDER_RE = re.compile(r"(?:<[^<>]*>)+")  # values side by side read as one


@dataclass(frozen=True)
class Reason:
    template: str  # literal text, HOLE for each value
    where: str  # file:line

    def parts(self) -> tuple[str, ...]:
        return _parts(re.split(HOLE + "+", self.template))

    def readable(self) -> str:
        return self.template.replace(HOLE, "<...>")


def _parts(chunks: Iterable[str]) -> tuple[str, ...]:
    return tuple(" ".join(chunk.split()) for chunk in chunks)


# --- Python --------------------------------------------------------------------------------------

def error_classes(sources: dict[str, str]) -> tuple[set[str], set[str]]:
    """The names of BBError and its subclasses, and those of them with an ``__init__`` of their own."""
    bases: dict[str, set[str]] = {}
    own_init: set[str] = set()
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {_name(base) for base in node.bases}
                if any(isinstance(item, ast.FunctionDef) and item.name == "__init__" for item in node.body):
                    own_init.add(node.name)
    family = {"BBError"}
    grown = True
    while grown:
        more = {name for name, parents in bases.items() if parents & family} - family
        family |= more
        grown = bool(more)
    return family, (own_init & family) - {"BBError"}


def module_constants(sources: dict[str, str]) -> dict[str, str | dict[str, str]]:
    """Module-level ``NAME = "text"`` (or parenthesised implicit concatenation) of every source, and
    ``NAME = {"key": "text", ...}`` tables of messages (their templates, by key)."""
    found: dict[str, str | dict[str, str]] = {}
    for source in sources.values():
        for node in ast.parse(source).body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                text: str | dict[str, str] = value.value
            elif isinstance(value, ast.Dict) and value.keys and all(
                    isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and isinstance(v.value, str)
                    for k, v in zip(value.keys, value.values, strict=True)):
                text = {k.value: v.value for k, v in zip(value.keys, value.values, strict=True)}  # type: ignore[union-attr]
            else:
                continue
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = text
    return found


def python_reasons(source: str, where: str, family: set[str], own_init: set[str],
                   constants: dict[str, str]) -> tuple[list[Reason], list[str]]:
    """(reasons, unidentified) of one module: see the module's docstring for the rule."""
    reasons: list[Reason] = []
    unidentified: list[str] = []
    tree = ast.parse(source)
    for cls, call in _message_calls(tree, family, own_init):
        at = f"{where}:{call.lineno}"
        if not call.args:
            if cls not in own_init:
                unidentified.append(f"{at}: {cls}() without a message")
            continue
        templates = _templates(call.args[0], constants)
        if templates is not None:
            reasons += [Reason(template, at) for template in templates]
        elif not _relays(call.args[0]):
            unidentified.append(f"{at}: {cls}({ast.unparse(call.args[0])}, ...): write the message there")
    return reasons, unidentified


def _message_calls(tree: ast.AST, family: set[str], own_init: set[str]) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in own_init:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Call) and _name(inner.func) == "__init__" \
                        and isinstance(inner.func, ast.Attribute) and _name(inner.func.value) == "super":
                    yield node.name, inner
        elif isinstance(node, ast.Call):
            cls = _name(node.func)
            if cls in family and cls not in own_init:
                yield cls, node


def _templates(node: ast.expr, constants: dict[str, str | dict[str, str]]) -> list[str] | None:
    """The message templates node can make: a literal, an f-string, a constant's ``.format``, a
    message table's entry ``.format`` (every entry when the key is a variable), a value (a local
    name: its text is found where it was made) joined with ``+`` to one of these; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(part.value if isinstance(part, ast.Constant) else HOLE for part in node.values)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left = [HOLE] if isinstance(node.left, ast.Name) else _templates(node.left, constants)
        right = _templates(node.right, constants)
        return None if left is None or right is None else [a + b for a in left for b in right]
    if isinstance(node, ast.Call) and _name(node.func) == "format" and isinstance(node.func, ast.Attribute):
        owner = node.func.value
        text = constants.get(_name(owner.value if isinstance(owner, ast.Subscript) else owner))
        if isinstance(owner, ast.Subscript) and isinstance(text, dict):
            key = owner.slice
            texts = [text[key.value]] if isinstance(key, ast.Constant) and key.value in text else list(text.values())
        elif isinstance(owner, ast.Name) and isinstance(text, str):
            texts = [text]
        else:
            return None
        return [re.sub(r"\{[^{}]*\}", HOLE, t) for t in texts]
    return None


def _relays(node: ast.expr) -> bool:
    """``str(exc)``: another error's message, found where that error is raised."""
    return isinstance(node, ast.Call) and _name(node.func) == "str"


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


# --- Lua -------------------------------------------------------------------------------------------

_LUA_START = re.compile(
    # (an assignment, not a string's own "NAME=" text: no quote right before the name)
    r"(?:\breturn\s+(?:slurm\.ERROR\s*,\s*|nil\s*,\s*|false\s*,\s*)?|(?<!\")\b[A-Za-z_][A-Za-z0-9_]*\s*=\s*)(?=\")")
_LUA_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_LUA_OPERAND = re.compile(r"\s*(?:[A-Za-z_][A-Za-z0-9_.:]*(?:\([^()\n]*\))?|\([^()\n]*\))")
_LUA_JOIN = re.compile(r"\s*\.\.\s*")


def lua_reasons(source: str, where: str) -> list[Reason]:
    """Messages (a string with a space in it, joined to values with ``..``) returned or assigned."""
    reasons = []
    for start in _LUA_START.finditer(source):
        template = _lua_expression(source, start.end())
        literal = template.replace(HOLE, "")
        if " " in literal.strip():
            line = source.count("\n", 0, start.start()) + 1
            reasons.append(Reason(template, f"{where}:{line}"))
    return reasons


def _lua_expression(source: str, pos: int) -> str:
    """The template of the ``..`` chain starting at pos (a string literal)."""
    pieces = []
    while True:
        string = _LUA_STRING.match(source, pos)
        if string:
            pieces.append(string.group(1).replace('\\"', '"').replace("\\\\", "\\"))
            pos = string.end()
        else:
            operand = _LUA_OPERAND.match(source, pos)
            if not operand or not operand.group().strip():
                break
            pieces.append(HOLE)
            pos = operand.end()
        join = _LUA_JOIN.match(source, pos)
        if not join:
            break
        pos = join.end()
    return "".join(pieces)


# --- the guide ---------------------------------------------------------------------------------------

def guide_rows(markdown: str, heading: str) -> list[tuple[str, ...]]:
    """The literal parts of the first cell of each row of the table under ``heading``."""
    section = markdown.split(heading, 1)[1] if heading in markdown else ""
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cell = re.split(r"(?<!\\)\|", line)[1].strip().replace("\\|", "|")
        match = re.fullmatch(r"(`+)\s?(.*?)\s?\1", cell)
        if match:
            rows.append(_parts(PLACEHOLDER_RE.split(match.group(2))))
    return rows


def missing_from(reasons: Iterable[Reason], rows: Iterable[tuple[str, ...]]) -> list[Reason]:
    known = set(rows)
    return [reason for reason in reasons if reason.parts() not in known]


# --- the project's sources -----------------------------------------------------------------------------

# Not on the path of any job's stage: the test bed, the operator-only commands, and the directive
# grammar (its refusals come at sbatch, from grammar.MESSAGES; the user guide's directive section).
PYTHON_SKIPPED = ("src/bbctl/testbed/", "src/bbctl/directives/", "src/bbctl/metrics.py",
                  "src/bbctl/operator_views.py", "src/bbctl/status_text.py", "src/bbctl/slurm_install.py",
                  "src/bbctl/config_reference.py", "src/bbctl/reconcile.py", "src/bbctl/warm/server.py")
LUA_FILES = ("slurm/burst_buffer.lua", "slurm/bbctl-layouts.lua")


def python_sources(root: Path = ROOT) -> dict[str, str]:
    return {str(path.relative_to(root)): path.read_text() for path in sorted((root / "src/bbctl").rglob("*.py"))}


def project_reasons(root: Path = ROOT) -> tuple[list[Reason], list[str]]:
    """Every reason in the stages' Python and Lua, and the raises whose message cannot be found."""
    sources = python_sources(root)
    family, own_init = error_classes(sources)
    constants = module_constants(sources)
    reasons: list[Reason] = []
    unidentified: list[str] = []
    for where, source in sources.items():
        if where.startswith(PYTHON_SKIPPED):
            continue
        found, odd = python_reasons(source, where, family, own_init, constants)
        reasons += found
        unidentified += odd
    for name in LUA_FILES:
        reasons += lua_reasons((root / name).read_text(), name)
    return reasons, unidentified
