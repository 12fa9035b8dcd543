"""The Lua validator (slurm/bbctl-directives.lua, through burst_buffer.lua) against the table and the reference.

Each group of scripts goes through one lua5.1 process (tests/lua/run_job_process.lua
over a directory of numbered files), so thousands of cases cost well under a second.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bbctl import site, slurm_install
from bbctl.directives import GRAMMAR, KINDS, LIMITS, DirectiveError, parse_job_script

REPO = Path(__file__).resolve().parents[3]
CASES_FILE = REPO / "tests" / "fixtures" / "directives" / "cases.yaml"
LUA_SCRIPT = REPO / "slurm" / "burst_buffer.lua"
HARNESS = REPO / "tests" / "lua" / "run_job_process.lua"
LUA = shutil.which("lua5.1")
FUZZ_SCRIPTS = int(os.environ.get("BB_FUZZ_SCRIPTS", "2000"))  # more for a longer hunt

pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.1 is not installed (apt-get install lua5.1)")


def load_cases() -> list[dict]:
    cases = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
    for case in cases:
        repeat = case.get("repeat")
        if repeat:
            case["script"] = case["script"].replace(repeat["marker"], repeat["text"] * repeat["times"])
    return cases


def _unescape(message: str) -> str:
    out, chars = [], iter(message)
    for char in chars:
        if char == "\\":
            char = {"n": "\n", "t": "\t", "\\": "\\"}[next(chars)]
        out.append(char)
    return "".join(out)


def install_without_pools(directory: Path) -> Path:
    """burst_buffer.lua installed in directory with a bbctl-site.lua and a bbctl-pools.json that list no pools.

    slurm_bb_job_process then answers for the directives alone: a pool the site file does not
    list is left to Slurm and setup (test_lua_layouts.py tests the pools' part).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for source in slurm_install.LUA_FILES:
        shutil.copyfile(source, directory / source.name)
    config = site.from_mapping({"inventory": str(directory / "inventory.yml"), "pools": {"nvme": {}}},
                               directory / "bbctl.yml")
    (directory / "bbctl-site.lua").write_text(slurm_install.render_site_lua(slurm_install.site_values(config, {})))
    (directory / "bbctl-pools.json").write_text('{"pools": []}\n')
    return directory / LUA_SCRIPT.name


def run_lua(scripts: list[str], directory: Path) -> list[tuple[int, str]]:
    """(rc, message) of slurm_bb_job_process for each script, from one lua5.1 process."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, script in enumerate(scripts, start=1):
        (directory / str(number)).write_bytes(script.encode("utf-8", "surrogateescape"))
    lua_script = install_without_pools(directory / "install")
    done = subprocess.run([LUA, str(HARNESS), str(lua_script), str(directory)],
                          capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stderr == b"", "burst_buffer.lua logged an error: " + done.stderr.decode(errors="replace")
    results = {}
    for line in done.stdout.decode("utf-8", "surrogateescape").split("\n")[:-1]:  # not splitlines(): U+2028
        number, rc, message = line.split("\t", 2)
        results[int(number)] = (int(rc), _unescape(message))
    assert sorted(results) == list(range(1, len(scripts) + 1))
    return [results[n] for n in sorted(results)]


def run_python(script: str) -> tuple[int, str]:
    """The reference's answer in the Lua harness's shape: (0, "") or (-1, message)."""
    try:
        parse_job_script(script)
    except DirectiveError as error:
        return -1, str(error)
    return 0, ""


CASES = load_cases()


@pytest.fixture(scope="module")
def lua_answers(tmp_path_factory) -> dict[str, tuple[int, str]]:
    answers = run_lua([case["script"] for case in CASES], tmp_path_factory.mktemp("cases"))
    return {case["name"]: answer for case, answer in zip(CASES, answers, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_lua_follows_the_table_and_the_reference(case, lua_answers):
    rc, message = lua_answers[case["name"]]
    if case["accept"]:
        assert (rc, message) == (0, "")
    else:
        assert rc == -1
        assert case["error"] in message
    assert (rc, message) == run_python(case["script"]), "Lua and Python disagree"


def test_unreadable_script_is_an_error(tmp_path):
    done = subprocess.run([LUA, str(HARNESS), str(LUA_SCRIPT), str(tmp_path / "missing")],
                          capture_output=True, text=True, check=True)
    rc, message = done.stdout.rstrip("\n").split("\t", 1)
    assert rc == "-1" and message.startswith("cannot read the job script: ")


def test_leading_block_beyond_the_first_chunk_is_read(tmp_path):
    """The Lua reads 64 KiB first; a comment block longer than that must still be scanned whole."""
    filler = "# " + "x" * 100 + "\n"
    script = "#!/bin/bash\n" + filler * 700 + "#DW jobdw capacity=1N\nsrun app\n" + "echo\n" * 1000
    assert len(script) > 65536
    [(rc, message)] = run_lua([script], tmp_path / "long")
    assert rc == -1 and "line 702: jobdw: 'capacity=1N': node counts" in message
    assert (rc, message) == run_python(script)



LATE = "#DW stage_out type=file source=$DW_JOB_STRIPED/a destination=/pfs/a\n"


def late_directive_at(start: int, filler: str) -> str:
    """A script whose late stage_out line begins at byte start, after a comment of filler (bytes != chars)."""
    head, tail = "#!/bin/bash\n#DW jobdw capacity=1GiB\n# ", "\nsrun app\n"
    room = start - len((head + tail).encode())
    width = len(filler.encode())
    return head + filler * (room // width) + "x" * (room % width) + tail + LATE


@pytest.mark.parametrize("filler", ["x", "\u00e9\u65e5"])
def test_late_directives_are_looked_for_up_to_script_bytes_only(tmp_path, filler):
    """Slurm reads the first script_bytes: a late directive word inside them is refused, one cut by them is not."""
    limit = LIMITS["script_bytes"]
    inside = late_directive_at(limit - len("#DW stage_out"), filler)
    cut = late_directive_at(limit - len("#DW stage_ou"), filler)
    beyond = late_directive_at(limit + 1, filler)
    python = [run_python(script) for script in (inside, cut, beyond)]
    assert python[0][0] == -1 and python[0][1].startswith("line 5: '#DW stage_out' comes after the script's first "
                                                           "command (line 4)")
    assert python[1:] == [(0, ""), (0, "")]
    assert run_lua([inside, cut, beyond], tmp_path / "limit") == python


# ------------------------------------------------------------------ fuzzing: never crash, always agree

_GARBAGE = [
    "", "=", "==", "x", "..", "/..", "/a/../b", "$", "$(id)", "`id`", ";rm -rf /", "|", "&&", "'", '"', "\\",
    "*", "?", "[a]", "{{x}}", "%j", "%%", "é", "日本", "\u00a0", "\u2028", "\x00", "\x1b[0m", "\x7f", "\r",
    "\t", "\v", "1e9", "-1", "0", "1N", "1.5", "1.", ".5", "9" * 40, "8P", "8PiB", "9P", "x" * 300, "/" + "y" * 260,
    "$DW_JOB_STRIPED", "$DW_JOB_PRIVATE/a", "$DW_PERSISTENT_STRIPED_alpha/x", "$BB_JOB_STRIPED/b",
    "$DW_PERSISTENT_STRIPED_", "$DW_JOB_STRIPEDX", "//", "/./", "/pfs/a/", "#DW", "#BB", "hurry", "name",
]


_VALUES = {  # check -> (valid, near misses)
    "size": (["1G", "100GiB", "48", "4096", "10KB", "3pib", "8P"],
             ["0", "1N", "2E", "1e3", "9P", "-1", "1.G", "1.5T", "7.5GiB", "0.5g", "9" * 30 + ".5K"]),
    "swap_size": (["1", "2GiB", "4G", "16gib"], ["0", "500MiB", "2GB", "1.5G", "x", "G"]),
    "name": (["alpha", "beta", "nvme", "a_1", "Z9", "x" * 64, "test35.1", "a-b", "_x"],
             ["1abc", "x" * 65, "-a", ".a", "é", "a/b", "a=b"]),
    "pfs_path": (["/pfs/in", "/lustre/p/%u/%j", "/", "/a/b/", "/a;b", "/données", "/a//b", "/a/./b", "//x/"],
                 ["rel/path", "/a/../b", "/a/$x", "/" + "y" * 256, "/a/" + "b/" * 2100, "/capacity=1/x"]),
    "buffer_path": (["$DW_JOB_STRIPED/in", "$DW_JOB_PRIVATE/p", "$DW_JOB_STRIPED", "$BB_JOB_STRIPED/x/",
                     "$DW_PERSISTENT_STRIPED_alpha/d", "$BB_PERSISTENT_STRIPED_beta", "$DW_JOB_STRIPED//a/./b",
                     "$DW_PERSISTENT_STRIPED_test35.1/x"],
                    ["$HOME/x", "/abs", "$DW_PERSISTENT_STRIPED_/x", "$DW_PERSISTENT_STRIPED_1a",
                     "$DW_JOB_STRIPED/..", "$DW_PERSISTENT_STRIPED_a.b/pool=x"]),
}


def _value_for(kind: str, rng: random.Random) -> str:
    """Mostly valid values of a kind, sometimes near misses."""
    check = KINDS[kind]["check"]
    if check == "enum":
        valid, misses = KINDS[kind]["values"], ["striped,private,x", "Scratch", "cache,"]
    else:
        valid, misses = _VALUES[check]
    return rng.choice(valid if rng.random() < 0.9 else misses)


def _token(spec: dict, used: set[str], rng: random.Random) -> str | None:
    """One more token for a line: usually a fresh key with a plausible value, sometimes garbage."""
    roll = rng.random()
    keys = spec["keys"]
    unused = [key for key in keys if key not in used]
    if roll < 0.8:
        key = rng.choice(unused) if unused else None
        used.add(key)
        return key and f"{key}={_value_for(keys[key], rng)}"
    if roll < 0.85 and (used or spec.get("aliases")):  # a key again, or its alias
        given = rng.choice(sorted(k for k in [*used, *spec.get("aliases", {})] if k))
        return f"{given}={_value_for(keys[spec.get('aliases', {}).get(given, given)], rng)}"
    if roll < 0.93:
        return rng.choice([*keys, "k"]) + "=" + rng.choice(_GARBAGE)
    return rng.choice([*spec.get("flags", ()), *_GARBAGE])


def _directive_line(rng: random.Random) -> str:
    """Mostly well-formed lines (required keys first) with a few tokens that may be anything."""
    prefix = rng.choice(["#DW", "#BB", "#BB_LUA"]) if rng.random() < 0.95 else rng.choice(["#", "#DWx", "# DW"])
    name = rng.choice(list(GRAMMAR)) if rng.random() < 0.95 else rng.choice(["bogus", "capacity=1G", *_GARBAGE])
    spec = GRAMMAR.get(name, GRAMMAR["jobdw"])
    tokens, used = [name], set()
    if "positional" in spec:
        tokens.append(_value_for(spec["positional"], rng) if rng.random() < 0.9 else rng.choice(_GARBAGE))
    if rng.random() < 0.9:
        used.update(spec.get("required", ()))
        tokens += [f"{key}={_value_for(spec['keys'][key], rng)}" for key in spec.get("required", ())]
    extra = rng.choice([0, 1, 1, 2, 3])
    tokens += [token for token in (_token(spec, used, rng) for _ in range(extra)) if token is not None]
    separators = [" "] * 20 + ["  ", "\t", " \r", "\u00a0"]
    line = prefix + rng.choice(separators) + "".join(t + rng.choice(separators) for t in tokens).rstrip(" ")
    if rng.random() < 0.03:
        line += rng.choice([" \\", "\\"])
    return line


def fuzz_script(rng: random.Random) -> str:
    lines = ["#!/bin/bash"] if rng.random() < 0.9 else []
    for _ in range(rng.randint(1, 5)):
        lines.append(_directive_line(rng) if rng.random() < 0.95 else rng.choice(["", "srun app", "#SBATCH -N 1"]))
    return "\n".join(lines) + rng.choice(["\n", "", "\nsrun ./app\n"])


def test_fuzzed_scripts_never_crash_and_both_agree(tmp_path):
    rng = random.Random(20240611)
    scripts = [fuzz_script(rng) for _ in range(FUZZ_SCRIPTS)]
    python = [run_python(script) for script in scripts]  # any exception but DirectiveError fails here
    reasons = set()
    for script in scripts:
        try:
            parse_job_script(script)
        except DirectiveError as error:
            reasons.add(error.reason)
    assert len(reasons) >= 25, f"fuzzer reaches too few rules: {sorted(reasons)}"
    lua = run_lua(scripts, tmp_path / "fuzz")
    disagreements = [(s, p, q) for s, p, q in zip(scripts, python, lua, strict=True) if p != q]
    assert not disagreements, f"first disagreement (script, python, lua): {disagreements[0]!r}"
    accepted = sum(rc == 0 for rc, _ in python)
    assert 0.05 * FUZZ_SCRIPTS < accepted < 0.95 * FUZZ_SCRIPTS, f"fuzzer too one-sided: {accepted} accepted"
    assert not any("internal error" in message for _, message in lua)


_MUTATIONS = [*"\\\n=$/. \t#_-,%abcDW0123456789GiBN", "é", "\x00", "\u00a0", "\r", "..", "//", "$DW_JOB_STRIPED",
              "#DW ", "\\\n#DW "]


def mutate(script: str, rng: random.Random) -> str:
    """A table script with 1-4 characters inserted, deleted or replaced."""
    chars = list(script[:3000])
    for _ in range(rng.randint(1, 4)):
        at, roll = rng.randrange(len(chars) + 1), rng.random()
        if roll < 0.4:
            chars.insert(at, rng.choice(_MUTATIONS))
        elif at < len(chars):
            chars[at:at + 1] = [] if roll < 0.7 else [rng.choice(_MUTATIONS)]
    return "".join(chars)


def test_mutated_table_scripts_both_agree(tmp_path):
    rng = random.Random(7)
    scripts = [mutate(rng.choice(CASES)["script"], rng) for _ in range(FUZZ_SCRIPTS)]
    python = [run_python(script) for script in scripts]
    lua = run_lua(scripts, tmp_path / "mutated")
    disagreements = [(s, p, q) for s, p, q in zip(scripts, python, lua, strict=True) if p != q]
    assert not disagreements, f"first disagreement (script, python, lua): {disagreements[0]!r}"
    assert 0 < sum(rc == 0 for rc, _ in python) < FUZZ_SCRIPTS
