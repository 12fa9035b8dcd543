"""Property-based fuzzing of the type=list parser (stage_rules.parse_stage_list).

Properties, each over BB_FUZZ_EXAMPLES / 10 generated lists (tests/unit/fuzzing.py):

- Round trip: pairs of paths, written one ``source destination`` a line with shlex quoting
  (the buffer side as ``$DW_JOB_STRIPED/...``, relative or absolute; blank lines and comments
  between), parse back to the same pairs, resolved. File names hold spaces, quotes, ``#``,
  shell metacharacters, ``~``, ``$``, control characters and non-ASCII.
- Any text gives pairs or StageError, never another exception, and a StageError names the
  list and the line: its message starts ``<list> line N:``, N counted as ``wc -l`` and
  editors count (newlines only); the lines above N parse and line N alone does not; or the
  list names no files.
"""

from __future__ import annotations

import shlex

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_rules as sr
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import StageError
from hypothesis import strategies as st

from tests.unit.fuzzing import EXAMPLES, rounds, run_round

ROOT, BASE, LIST = "/bb/job1", "/bb/job1/in", "/pfs/u/files.txt"
VARIABLES = {"DW_JOB_STRIPED": ROOT, "BB_JOB_STRIPED": ROOT}
NAMES = ["a", "data.tar", "a b", "it's", 'say "hi"', "#notes", "x#y", "a;b", "$HOME", "~", "~u", "%j", "日本", "é",
         "\t", "a\rb", "a\x0bb", "a\x0cb", "a\x1cb", "a\x85b", "a\u2028b", "a\u2029b", "\\", "*", "-n", "--"]
names = st.sampled_from(NAMES) | st.text(st.characters(blacklist_characters="/\n\x00"), min_size=1, max_size=8).filter(
    lambda name: name not in (".", ".."))
relative = st.lists(names, min_size=1, max_size=3).map("/".join)
slash = st.sampled_from(["", "", "", "/"])


def as_relative(path: str) -> str:
    """A relative path as a list line writes it: one starting with $ would name a variable, so ./ goes first."""
    return "./" + path if path.startswith("$") else path

noise = st.lists(st.sampled_from(["", "   ", "# a comment", "\t# indented comment", "\r"]), max_size=2)


@st.composite
def stage_in_lists(draw) -> tuple[str, list[tuple[str, str]]]:
    """A stage-in list and the pairs it means: pfs source, buffer destination in one of three forms."""
    lines, pairs = [], []
    for _ in range(draw(st.integers(1, 4))):
        source, rest, end = "/pfs/" + draw(relative), draw(relative), draw(slash)
        written = draw(st.sampled_from([f"$DW_JOB_STRIPED/{rest}", f"$BB_JOB_STRIPED/{rest}", as_relative(rest),
                                        f"{ROOT}/{rest}"]))
        meant = f"{BASE}/{rest}" if written == as_relative(rest) else f"{ROOT}/{rest}"
        lines += [*draw(noise), f"{shlex.quote(source)} {shlex.quote(written + end)}"]
        pairs.append((source, meant + end))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"])), pairs


@st.composite
def stage_out_lists(draw) -> tuple[str, list[tuple[str, str]]]:
    """A stage-out list: buffer source as $VAR/path, relative (under the root) or absolute; pfs destination."""
    lines, pairs = [], []
    for _ in range(draw(st.integers(1, 4))):
        rest, end = draw(relative), draw(slash)
        written = draw(st.sampled_from([f"$DW_JOB_STRIPED/{rest}", as_relative(rest), f"{ROOT}/{rest}"]))
        relative_destination = draw(relative)
        destination = draw(st.sampled_from([f"/pfs/out/{relative_destination}", as_relative(relative_destination)]))
        meant = destination if destination.startswith("/") else f"/pfs/results/{relative_destination}"
        lines += [*draw(noise), f"{shlex.quote(written)} {shlex.quote(destination + end)}"]
        pairs.append((f"{ROOT}/{rest}", meant + end))
    return "\n".join(lines), pairs


def check_stage_in(case: tuple[str, list[tuple[str, str]]]) -> None:
    text, pairs = case
    assert sr.parse_stage_list(text, ROOT, "in", LIST, variables=VARIABLES, base=BASE) == pairs


def check_stage_out(case: tuple[str, list[tuple[str, str]]]) -> None:
    text, pairs = case
    assert sr.parse_stage_list(text, ROOT, "out", LIST, variables=VARIABLES, base="/pfs/results") == pairs


def parse(text: str) -> list | None:
    """The pairs, or None for an empty list; StageError for anything else wrong."""
    try:
        return sr.parse_stage_list(text, ROOT, "in", LIST, variables=VARIABLES, base=BASE)
    except StageError as error:
        if str(error) == f"{LIST} names no files: write one 'source destination' pair a line.":
            return None
        raise


def check_any_text(text: str) -> None:
    try:
        parse(text)
    except StageError as error:
        message, lines = str(error), text.split("\n")
        assert message.startswith(f"{LIST} line "), message
        number = int(message[len(LIST) + 6:].split(":")[0].split(" ")[0])
        assert 1 <= number <= len(lines), message
        parse("\n".join(lines[:number - 1]))  # the lines above the one named are fine
        with pytest.raises(StageError):  # and the one named is wrong by itself (lines are read one by one)
            parse(lines[number - 1])


line_texts = st.lists(st.one_of(
    st.text(max_size=30), st.sampled_from(["a b", "/pfs/a $DW_JOB_STRIPED/a", "/pfs/a b c", "'a", "\\", "# x", ""]),
    st.builds(" ".join, st.lists(st.sampled_from(["/pfs/a", "$DW_JOB_STRIPED/x", "x/../y", "$HOME/x", "'q r'", "/"]),
                                 max_size=3))), max_size=5).map("\n".join)


def run_property(strategy: st.SearchStrategy, check) -> None:
    for number, examples in rounds(max(EXAMPLES // 10, 100)):
        run_round(strategy, check, number, examples)


def test_stage_in_lists_round_trip():
    run_property(stage_in_lists(), check_stage_in)


def test_stage_out_lists_round_trip():
    run_property(stage_out_lists(), check_stage_out)


def test_any_text_gives_pairs_or_an_error_naming_its_line():
    run_property(line_texts, check_any_text)


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028"])
def test_only_newlines_end_list_lines(separator):
    """splitlines() also broke lines at these (found by fuzzing): file names may hold them."""
    text = f"'/pfs/a{separator}b' $DW_JOB_STRIPED/x\n/pfs/c $DW_JOB_STRIPED/y\n"
    assert sr.parse_stage_list(text, ROOT, "in", LIST, variables=VARIABLES) == [
        (f"/pfs/a{separator}b", f"{ROOT}/x"), ("/pfs/c", f"{ROOT}/y")]
