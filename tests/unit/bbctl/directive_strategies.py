"""Hypothesis strategies for whole batch scripts with burst buffer directives, as users write them.

The directives, keys, kinds, prefixes, units and buffer variables come from
bbctl.directives.grammar, so the scripts follow the grammar as it changes. Most scripts are
near-valid: real keys with plausible values and the odd hostile one, so that the generator
reaches the rules deep inside a line and the cross-line checks, not only the first check of
every line.

Speed decides how many scripts a run can afford. A draw from sampled_from costs some 30 µs,
a nested strategy (one_of, flatmap, composite) three times that, and one_of does not even
weigh its branches evenly. So values come from pools computed here once from the grammar,
weighted by repetition and drawn with one sampled_from each (simplest first: that is where
hypothesis shrinks to); a line draws one "twist" that decides which single thing, if any, is
odd about it. Long values are computed once: a draw picks one, it does not spell it out.
"""

from __future__ import annotations

from functools import cache
from itertools import product
from typing import Any

from hypothesis import strategies as st

from bbctl.directives.grammar import (
    BUFFER_VARIABLES,
    GRAMMAR,
    IMPLICIT_JOBDW_PREFIX,
    KINDS,
    LIMITS,
    PATH_FORBIDDEN,
    PERSISTENT_VARIABLE_PREFIXES,
    PREFIXES,
    UNITS,
)

# A few persistent names, so that persistentdw lines and $DW_PERSISTENT_STRIPED_<name> paths meet.
NAMES = ["alpha", "test35.1", "_x", "a-b"]

HOSTILE = [
    "..", "/..", "/a/../b", "//", "/./", ".", "", "=", "==", "$", "$(id)", "`id`", ";rm -rf /", "|", "&&", ">", "<",
    "'", '"', "\\", "*", "?", "[a]", "{{x}}", "{", "%j", "%x", "~", "~/x", "é", "日本", "\u00a0", "\u2028", "\x00",
    "\x1b[0m", "\x7f", "\x85", "\r", "\t", "\v", "\f", "\n", "\n#DW ", "#", "# note",
    "\udcff",  # the byte 0xff: scripts are read with surrogateescape, the Lua side gets the raw byte
    "capacity=1G", "pool=x", "name=alpha", "type=file", "access=private", "hurry", "hurry=yes",
]
# Thousands of characters, around every byte limit of a line (the echo limit, NAME_MAX, PATH_MAX, a directive).
LONG = [(piece * length)[:length] for piece, length in product(
    ["x", "/y", "é", "a/", "9", "/" + "z" * 99], [61, 64, 65, 255, 256, 1000, 4095, 4096, 5000, 17000])]
GARBAGE = [*HOSTILE, *LONG, *[before + text for before, text in product(["x", "/a", " "], HOSTILE)]]

COMMANDS = ["srun ./app", "echo $DW_JOB_STRIPED", "  srun -n 4 a.out", "module load x", "\r", "set -e #DW"]
HEADER_LINES = ["#SBATCH -N 1", "#SBATCH --time=01:00:00", "#SBATCH -J test", "# a comment", "#", "",
                "#DW", "#BB", "#BB_LUA", "#dw jobdw capacity=1G", "# DW jobdw capacity=1G", "#DWjobdw capacity=1G",
                "# " + "x" * (LIMITS["directive_bytes"] // 4)]
COMMENTS = ["# burst buffer", "#", "#capacity=2G", "#x pool=y", "#name=alpha"]

# Sizes: the grammar's units in three spellings by small numbers, and by numbers around the limits.
_UNITS = sorted({spelling for unit in UNITS for spelling in (unit, unit.lower(), unit.title())})
_NUMBERS = ["1", "2", "4", "10", "100", "512", "4096", "007", "1" + "0" * 6]
_EDGES = ["8192", "8388608", "8388609", str(2**53 // 1024), str(2**53 // 1024 + 1), str(2**53 - 1), str(2**53),
          str(2**53 + 1), "9007199254741000", "0" * 30 + "1", "9" * 40]
ODD_SIZES = ["0", "0G", "00", "1N", "2n", "1E", "1EiB", "1X", "1iB", "1Gi", "1K B", "G", "-1", "1e3", "1,5G",
             "1.", "1.5", "7.5GiB", "0.5g", "1.0", "1.999999T", "8.0P", "9" * 30 + ".5K", "1." + "5" * 40,
             str(2**53) + ".5", "1" * 5000, "0" * 5000 + "1", "9" * 400 + "G"]
SWAP_SIZES = [number + unit for number, unit in product(["1", "4", "16", "007", "8388608"], ["", "G", "g", "GiB"])]
ODD_SWAP_SIZES = [number + unit for number, unit in product(["1", "0", "8388609"], ["GB", "M", "MiB", "T", "N", ""])]
COMPONENTS = ["in", "out", "data", "%j", "%u", "a;b", "a|b&c", "données", "日本", "x.tar.gz", "-", "x", "a>b",
              ".", "", "..", "...", "a b", *PATH_FORBIDDEN, "z" * 255, "z" * 256]
PFS_ODD = ["rel/path", "$HOME/x", "~/x", "/capacity=1/x", "/a/pool=b", "/", "/" + "a/" * 2100]
VARIABLE_ODD = ["HOME", "DW_JOB_STRIPEDX", *PERSISTENT_VARIABLE_PREFIXES, "DW_JOB_STRIPED.x"]


def mix(*parts: tuple[int, list[Any]]) -> list[Any]:
    """One pool from several, each part's share of it by weight (a part repeated to its share)."""
    size = max(len(items) for _, items in parts)
    return [items[i % len(items)] for weight, items in parts for i in range(weight * size)]


def _chars(spec: str) -> str:
    """The characters of a regex-style class such as 'A-Za-z0-9_.-'."""
    out, i = [], 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            out.extend(chr(c) for c in range(ord(spec[i]), ord(spec[i + 2]) + 1))
            i += 3
        else:
            out.append(spec[i])
            i += 1
    return "".join(out)


def _is_name(name: str, first: str, rest: str, most: int) -> bool:
    return 0 < len(name) <= most and name[0] in first and all(char in rest for char in name[1:])


@cache
def name_pool(kind_name: str) -> list[str]:
    """Names by KINDS' own character classes and length limit; a tenth with one rule broken."""
    kind = KINDS[kind_name]
    first, rest, most = _chars(kind["first"]), _chars(kind["rest"]), kind["max"]
    candidates = [*NAMES, "nvme", "ssd.fast", "pool-1", "9a", "round_robin", "4", first[0],
                  *(a + b for a, b in product(first[::5], rest[::7])), first[-1] + rest[-1] * (most - 1),
                  first[0] + rest[0] * most, rest[-1] + first[0], *(bad + "a" for bad in "0-.é/= ")]
    valid = [name for name in candidates if _is_name(name, first, rest, most)]
    broken = [name for name in candidates if name not in valid]
    known = [name for name in NAMES if name in valid]
    return mix((2, known or valid), (8, valid), (1, broken))


@cache
def value_pool(kind_name: str) -> list[str]:
    """Values of a kind for pooled draws: mostly plausible, about one in ten a near miss or garbage."""
    kind = KINDS[kind_name]
    check = kind["check"]
    if check == "enum":
        misses = [value + end for value, end in product(kind["values"], [",", ",x"])]
        misses += [value.title() for value in kind["values"]] + ["striped,private"]
        return mix((16, kind["values"]), (2, misses), (1, GARBAGE))
    if check == "name":
        return mix((18, name_pool(kind_name)), (1, GARBAGE))
    if check == "size":
        sizes = [number + unit for number, unit in product(_NUMBERS, _UNITS)]
        edges = [number + unit for number, unit in product(_EDGES, ["", "K", "KiB", "kb", "P"])]
        return mix((15, sizes), (1, edges), (2, ODD_SIZES), (1, GARBAGE))
    if check == "swap_size":
        return mix((16, SWAP_SIZES), (1, ODD_SWAP_SIZES), (1, ODD_SIZES), (1, GARBAGE))
    raise ValueError(f"{kind_name}: paths are composed, not pooled")


hostile = st.sampled_from(HOSTILE)
components = st.sampled_from(mix((12, COMPONENTS[:13]), (2, COMPONENTS[13:]), (1, LONG)))
counts = st.sampled_from([0, 1, 1, 2, 2, 3])
rest_counts = st.sampled_from([0, 1, 1, 1, 1, 1, 2, 2, 3])
path_ends = st.sampled_from(["", "", "", "", "/", "//"])
variables = st.sampled_from(mix(
    (4, sorted(BUFFER_VARIABLES, key=lambda variable: BUFFER_VARIABLES[variable] != "striped")[:2]),
    (1, sorted(BUFFER_VARIABLES)),
    (3, [prefix + name for prefix, name in product(PERSISTENT_VARIABLE_PREFIXES, name_pool("buffer_name"))]),
    (1, VARIABLE_ODD)))
dollars = st.sampled_from(["$"] * 40 + ["", "${", "$$"])
odd_paths = st.sampled_from(mix((4, PFS_ODD), (1, GARBAGE)))


@st.composite
def paths(draw: Any) -> str:
    """An absolute path of up to three components, some of them hostile or long."""
    parts = [draw(components) for _ in range(draw(counts))]
    return "/" + "/".join(parts) + draw(path_ends)


@st.composite
def buffer_paths(draw: Any) -> str:
    """$VARIABLE/path: the grammar's own variables, persistent buffers' by name, near misses."""
    rest = draw(path_values) if draw(rest_counts) else ""
    return draw(dollars) + draw(variables) + rest


path_values, buffer_path_values = paths(), buffer_paths()  # built once: a strategy per draw costs more


@cache
def values(kind_name: str) -> st.SearchStrategy[str]:
    check = KINDS[kind_name]["check"]
    if check == "pfs_path":
        return path_values
    if check == "buffer_path":
        return buffer_path_values
    return st.sampled_from(value_pool(kind_name))


# What is odd about a line, if anything: one draw decides, then only that twist draws more.
TWISTS = mix((60, ["none"]), (1, ["prefix"]), (1, ["separator"]), (2, ["continued"]), (1, ["line_end"]),
             (1, ["name"]), (3, ["stray"]), (1, ["repeat"]), (1, ["reverse"]), (1, ["comment"]), (2, ["no_required"]),
             (2, ["odd_value"]), (1, ["inside"]))
twists = st.sampled_from(TWISTS)
prefixes = st.sampled_from(PREFIXES)
bad_prefixes = st.sampled_from(["#DWX", "#BB_LUAx", "#BB_", "#Dw"])
separators = st.sampled_from(["  ", "\t", " \r", "\u00a0", "\v", " \f", " \t"])
line_ends = st.sampled_from(["\\", " \\", " ", "\t"])
directive_names = st.sampled_from(list(GRAMMAR))
bad_names = st.sampled_from(["bogus", "JOBDW", "capacity=1G", "stage-in", "pool=x", "", *HOSTILE])
other_prefixes = st.sampled_from(["", "", "", "", "", "#BB", "#", "#SBATCH", "#DW"])
comments = st.sampled_from(COMMENTS)
optional_counts = st.sampled_from([0, 0, 1, 1, 2])
booleans = st.booleans()


@cache
def optional_keys(name: str, given: frozenset[str]) -> st.SearchStrategy[str | None]:
    """A key (alias, flag) the line does not have yet; the repeat twist repeats keys."""
    spec = GRAMMAR[name]
    aliases = spec.get("aliases", {})
    keys = [key for key in [*spec["keys"], *aliases, *spec.get("flags", [])] if aliases.get(key, key) not in given]
    return st.sampled_from(keys) if keys else st.none()


def _key_value(draw: Any, spec: dict[str, Any], given: str, twist: str) -> str:
    """``given=value`` (a flag alone), the value by the key's kind; with the odd_value twist a
    path is odd and a flag has a value."""
    if given in spec.get("flags", ()):
        return given + "=yes" if twist == "odd_value" else given
    kind = spec["keys"][spec.get("aliases", {}).get(given, given)]
    odd = twist == "odd_value" and KINDS[kind]["check"] in ("pfs_path", "buffer_path")
    return f"{given}={draw(odd_paths) if odd else draw(values(kind))}"


def _tokens(draw: Any, name: str, twist: str) -> list[str]:
    """The tokens after a directive's name: positional, required keys, a few optional keys."""
    spec = GRAMMAR[name]
    found = [draw(values(spec["positional"]))] if "positional" in spec else []
    required = spec["required"][1:] if twist == "no_required" else spec["required"]
    found += [_key_value(draw, spec, key, twist) for key in required]
    given = set(required)
    for _ in range(draw(optional_counts)):
        key = draw(optional_keys(name, frozenset(given)))
        if key is not None:
            given.add(spec.get("aliases", {}).get(key, key))
            found.append(_key_value(draw, spec, key, twist))
    if twist == "repeat" and found:
        found.append(found[-1 if len(found) == 1 else 1])
    if twist == "stray":
        found.insert(draw(st.integers(0, len(found))), draw(hostile))
    if twist == "reverse":
        found.reverse()
    if twist == "inside" and spec.get("slurm_reads"):  # a key Slurm finds by strstr, inside an earlier value
        read = draw(st.sampled_from(spec["slurm_reads"]))
        found.insert(0, f"{next((key for key in spec['keys'] if key != read), 'x')}=/{read}=1")
    return found


@cache
def directive_line(name: str) -> st.SearchStrategy[str]:
    return directive_lines(name)


@st.composite
def directive_lines(draw: Any, name: str) -> str:
    """One directive as it sits in a script, with at most one twist: prefix, name, tokens, separators."""
    twist = draw(twists)
    prefix = draw(bad_prefixes if twist == "prefix" else prefixes)
    words = [draw(bad_names) if twist == "name" else name, *_tokens(draw, name, twist)]
    if twist == "comment":
        words.append(draw(comments))
    if prefix == IMPLICIT_JOBDW_PREFIX and words[0] == "jobdw" and draw(booleans):
        words = words[1:]  # Slurm's "#BB_LUA pool=P capacity=SIZE"
    if twist == "continued":  # on a second line with the same prefix, or a mistaken one
        cut = draw(st.integers(0, len(words)))
        other = draw(other_prefixes) or prefix
        return f"{prefix} {' '.join(words[:cut])} \\\n{other} {' '.join(words[cut:])}"
    separator = draw(separators) if twist == "separator" else " "
    return prefix + separator + separator.join(words) + (draw(line_ends) if twist == "line_end" else "")


ONCE = [name for name, spec in GRAMMAR.items() if spec.get("once")]
repeatable_names = st.sampled_from([name for name in GRAMMAR if name not in ONCE])
again = st.sampled_from([False] * 9 + [True])
with_jobdw = st.sampled_from([True, True, False])
header_kinds = st.sampled_from(["directive"] * 5 + ["other"])
header_lines = st.sampled_from(HEADER_LINES)
header_counts = st.sampled_from([1, 2, 2, 3, 3, 4, 5])
shebangs = st.sampled_from(["#!/bin/bash", "#!/bin/bash", "#!/bin/sh", ""])
bodies = st.sampled_from([[], ["srun ./app"], *([command] for command in COMMANDS), COMMANDS[:2]])
late = st.sampled_from(["none"] * 12 + ["late"])
endings = st.sampled_from(["\n", "\n", "\n", "", "\r\n", "\n\n"])


@st.composite
def job_scripts(draw: Any) -> str:
    """A whole batch script: shebang, header (#SBATCH, comments, directives), commands, maybe late directives.

    Usually a job buffer first, as stage lines need one; a directive Slurm takes once per job
    (jobdw, swap) seldom comes twice.
    """
    lines, given = [draw(shebangs)], set()
    if draw(with_jobdw):
        lines.append(draw(directive_line("jobdw")))
        given.add("jobdw")
    for _ in range(draw(header_counts)):
        if draw(header_kinds) != "directive":
            lines.append(draw(header_lines))
            continue
        name = draw(directive_names)
        if name in given and name in ONCE and not draw(again):
            name = draw(repeatable_names)
        given.add(name)
        lines.append(draw(directive_line(name)))
    lines += draw(bodies)
    if draw(late) == "late":
        lines.append(draw(directive_line(draw(directive_names))))  # below the first command
    return "\n".join(lines) + draw(endings)
