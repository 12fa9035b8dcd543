"""Property-based fuzzing of whole job scripts: the reference parser against itself and the Lua validator.

Scripts come from tests/unit/bbctl/directive_strategies.py (keys, kinds and units taken from
the grammar's own tables, with hostile values). For every generated script:

1. parse_job_script accepts it or raises DirectiveError, and nothing else: any other
   exception fails the round, and hypothesis shrinks the script first.
2. A rejection names its token (``assert_names_the_token``): the message starts with
   ``line N:``, quotes ``error.token``, and that token is what the script holds on line N
   (or on the lines that continue it): the key, value or word as written, cut to 60 bytes
   and "..." when longer. Four reasons quote something else, by design: control_char quotes
   the character escaped (``\\x07``), late_directive the prefix and directive name (the line
   may separate them by a tab), missing_key the absent key, missing_positional nothing (the
   directive has no value where one belongs); and second_directive on a ``#BB_LUA key=value``
   line quotes jobdw, the directive such a line is read as.
3. slurm_bb_job_process in slurm/burst_buffer.lua (through lua5.1) gives the same verdict and,
   for a rejection, the same message, byte for byte.

Lua runs in another process, so it cannot sit inside the hypothesis test: each round
collects the scripts hypothesis generated (their Python verdicts are checked on the spot,
where hypothesis can shrink a failure), then sends them all through one lua5.1 process.
A disagreement found that way is shrunk here instead (``reduce_script``: lines, then words,
dropped while the two still disagree) and reported with both answers.

Counts: BB_FUZZ_EXAMPLES scripts (default 10000) in rounds of 10000 (tests/unit/fuzzing.py);
``BB_FUZZ_EXAMPLES=1000000 pytest -q tests/unit/bbctl/test_directives_fuzz.py`` is the long
run (docs/RELIABILITY.md has its figures).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bbctl.directives import GRAMMAR, MESSAGES, DirectiveError, parse_job_script
from bbctl.directives.grammar import IMPLICIT_JOBDW_PREFIX
from tests.unit.bbctl.directive_strategies import job_scripts
from tests.unit.bbctl.test_lua_validator import run_lua
from tests.unit.fuzzing import EXAMPLES, rounds, run_round

pytestmark = pytest.mark.skipif(shutil.which("lua5.1") is None, reason="lua5.1 is not installed")

# Rejection reasons (of MESSAGES' 42) a run of 10000 scripts or more must reach (the default run
# reaches all 42, some of them a few times only): a change to the grammar or the strategies that
# stops them reaching deep rules shows.
MIN_REASONS = 40


def record_text(script: str, line: int) -> str:
    """Line ``line`` of the script and the lines continuing it (a trailing backslash joins the next)."""
    joined = []
    for text in script.split("\n")[line - 1:]:
        if text == "":
            continue  # blank lines may sit between continued lines
        joined.append(text)
        if not text.endswith("\\"):
            break
    return "\n".join(joined)


def assert_names_the_token(script: str, error: DirectiveError) -> None:
    message, token, reason = str(error), error.token, error.reason
    assert reason in MESSAGES, f"unknown reason {reason!r}: {message}"
    assert 1 <= error.line <= script.count("\n") + 1 and message.startswith(f"line {error.line}: "), message
    if reason == "missing_positional":
        assert token == "" and "missing" in message
        return
    assert token and token in message, f"the message does not quote its token {token!r}: {message}"
    where = record_text(script, error.line)
    if reason == "control_char":
        assert chr(int(token[2:], 16)) in where, (token, where)
    elif reason == "late_directive":
        prefix, name = token.split(" ")
        assert where.startswith(prefix) and name in GRAMMAR and name in where, (token, where)
    elif reason == "second_directive" and token not in where:  # "#BB_LUA capacity=1G": jobdw without the word
        words = [word for word in where.split() if word not in (IMPLICIT_JOBDW_PREFIX, "\\")]
        assert token == "jobdw" and where.startswith(IMPLICIT_JOBDW_PREFIX) and "=" in words[0], where
    elif reason == "missing_key":
        assert f"missing {token}=" in message, message
    else:
        cut = token[:-3] if token.endswith("...") and token not in where else token
        assert cut in where, f"{reason}: token {token!r} is not on line {error.line}: {where[:300]!r}"


def python_verdict(script: str) -> tuple[int, str, str]:
    """(0, "", "") or (-1, message, reason); anything but DirectiveError propagates."""
    try:
        parse_job_script(script)
    except DirectiveError as error:
        assert_names_the_token(script, error)
        return -1, str(error), error.reason
    return 0, "", ""


def disagreements(scripts: list[str], directory: Path) -> list[bool]:
    """Whether Python and Lua disagree (verdict or message) on each script, Lua in one process."""
    lua = run_lua(scripts, directory)
    return [python_verdict(script)[:2] != answer for script, answer in zip(scripts, lua, strict=True)]


def _smaller(script: str) -> list[str]:
    """The script less one line, then less one word of a line: reduce_script's candidates."""
    lines = script.split("\n")
    fewer_lines = ["\n".join(lines[:i] + lines[i + 1:]) for i in range(len(lines))]
    fewer_words = []
    for i, line in enumerate(lines):
        words = line.split(" ")
        fewer_words += ["\n".join([*lines[:i], " ".join(words[:j] + words[j + 1:]), *lines[i + 1:]])
                        for j in range(1, len(words))]
    return fewer_lines + fewer_words


def reduce_script(script: str, disagree: Callable[[list[str]], list[bool]]) -> str:
    """A smaller script on which the two still disagree: hypothesis's shrinking, redone across the
    process boundary. Each step tries every one-line and one-word deletion in one Lua batch."""
    while True:
        candidates = _smaller(script)
        verdicts = disagree(candidates) if candidates else []
        smaller = next((c for c, bad in zip(candidates, verdicts, strict=True) if bad), None)
        if smaller is None:
            return script
        script = smaller


def check_round(number: int, examples: int, directory: Path, reasons: Counter) -> None:
    """One round: the Python properties per script inside hypothesis, then Python against Lua in one batch."""
    scripts: list[str] = []
    verdicts: list[tuple[int, str]] = []

    def check(script: str) -> None:
        rc, message, reason = python_verdict(script)
        scripts.append(script)
        verdicts.append((rc, message))
        reasons[reason or "accepted"] += 1

    run_round(job_scripts(), check, number, examples)
    assert len(scripts) >= examples, f"round {number}: hypothesis generated only {len(scripts)} scripts"
    lua = run_lua(scripts, directory / f"round{number}")
    bad = [i for i, (python, answer) in enumerate(zip(verdicts, lua, strict=True)) if python != answer]
    if bad:
        first = min((scripts[i] for i in bad), key=len)
        small = reduce_script(first, lambda candidates: disagreements(candidates, directory / "reduce"))
        [answer] = run_lua([small], directory / "small")
        pytest.fail(f"round {number} (seed {number}): {len(bad)} of {len(scripts)} scripts get different answers; "
                    f"the smallest, reduced: {small!r}\npython: {python_verdict(small)[:2]!r}\nlua:    {answer!r}")


def test_fuzzed_job_scripts_are_refused_by_name_and_lua_agrees(tmp_path):
    reasons: Counter = Counter()
    for number, examples in rounds(EXAMPLES):
        started = time.perf_counter()
        check_round(number, examples, tmp_path, reasons)
        shutil.rmtree(tmp_path / f"round{number}")
        print(f"round {number}: {examples} scripts in {time.perf_counter() - started:.1f} s", flush=True)
    accepted, total = reasons["accepted"], sum(reasons.values())
    missed = sorted(set(MESSAGES) - set(reasons))
    print(f"\n{total} scripts, {accepted} accepted, {len(reasons) - 1} reasons: {dict(reasons.most_common())}; "
          f"never: {missed}")
    assert 0.1 * total <= accepted <= 0.6 * total, f"the generator is one-sided: {accepted} of {total} accepted"
    if total >= 10_000:
        assert len(reasons) - 1 >= MIN_REASONS, f"too few rules reached; never: {missed}"


def test_reduce_script_keeps_what_makes_the_difference():
    script = "#!/bin/bash\n#SBATCH -N 1\n#DW jobdw capacity=1G pool=x\nsrun a"
    assert reduce_script(script, lambda scripts: ["pool=x" in s for s in scripts]) == "#DW pool=x"


@pytest.mark.parametrize(("script", "line", "token"), [
    ("#!/bin/bash\n#DW jobdw capacity=1G \\\n\n#DW  pool=a/b\n", 2, "pool=a/b"),
    ("#!/bin/bash\n#DW jobdw capacity=1\n#BB_LUA  \\\n#BB_LUA capacity=1\n", 3, "jobdw"),  # found by the fuzzer
    ("#DW jobdw capacity=1G pool=" + "x" * 100 + "\n", 1, "pool=" + "x" * 55 + "..."),
])
def test_a_rejection_names_a_token_on_its_line_or_a_continuation(script, line, token):
    with pytest.raises(DirectiveError) as raised:
        parse_job_script(script)
    assert (raised.value.line, raised.value.token) == (line, token)
    assert_names_the_token(script, raised.value)
