"""docs/USER_GUIDE.md's directive examples are what the reference parser accepts, or refuses as shown."""

from __future__ import annotations

import re

import pytest

from bbctl.directives import DirectiveError, parse_job_script
from bbctl.directives.grammar import PREFIXES
from tests.unit.bbctl import reason_finder
from tests.unit.bbctl.test_lua_validator import run_lua

GUIDE = reason_finder.ROOT / "docs" / "USER_GUIDE.md"
REFUSED_HEADING = "### Refused at sbatch"
SHEBANG = "#!/bin/bash\n"


def accepted_examples(markdown: str) -> list[str]:
    """Each ```sh block holding a directive line, as a job script."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)
    scripts = [block for block in blocks if any(line.startswith(PREFIXES) for line in block.splitlines())]
    return [script if script.startswith("#!") else SHEBANG + script for script in scripts]


def refused_examples(markdown: str) -> list[tuple[str, str]]:
    """(directive line, message) of each row of the table under REFUSED_HEADING."""
    section = re.split(r"\n#{1,3} ", markdown.split(REFUSED_HEADING, 1)[1], maxsplit=1)[0]
    rows = re.findall(r"^\| `(.+?)` \| `(.+?)` \|$", section, flags=re.MULTILINE)
    return [(line, message.replace("\\|", "|")) for line, message in rows]


TEXT = GUIDE.read_text()
ACCEPTED = accepted_examples(TEXT)
REFUSED = refused_examples(TEXT)


def test_the_guide_has_examples_of_every_directive():
    words = {line.split()[1] for script in ACCEPTED for line in script.splitlines() if line.startswith(PREFIXES)}
    assert {"jobdw", "stage_in", "stage_out", "persistentdw", "create_persistent", "destroy_persistent",
            "swap"} <= words
    assert len(REFUSED) >= 8


@pytest.mark.parametrize("script", ACCEPTED, ids=[f"example{n}" for n in range(len(ACCEPTED))])
def test_each_example_is_accepted(script):
    request = parse_job_script(script)
    assert request != type(request)(), f"the parser found no directive in:\n{script}"


@pytest.mark.parametrize(("line", "message"), REFUSED, ids=[line[:40] for line, _ in REFUSED])
def test_each_refused_example_gets_the_message_shown(line, message):
    with pytest.raises(DirectiveError) as refused:
        parse_job_script(SHEBANG + line + "\n")
    assert str(refused.value) == message


def test_burst_buffer_lua_answers_the_examples_alike(tmp_path):
    """What users of the lua plugin see at sbatch: slurm_bb_job_process in Lua, the same answers."""
    refused = [SHEBANG + line + "\n" for line, _ in REFUSED]
    answers = run_lua(ACCEPTED + refused, tmp_path / "scripts")
    assert answers[:len(ACCEPTED)] == [(0, "")] * len(ACCEPTED)
    assert answers[len(ACCEPTED):] == [(-1, message) for _, message in REFUSED]


def test_the_extraction_can_fail():
    """A wrong example in a guide is caught: a refused line shown as accepted, a wrong message."""
    guide = ("```sh\n#DW jobdw capacity=0 pool=nvme\n```\n\n```sh\nls\n```\n\n" + REFUSED_HEADING
             + "\n\n| directive | message |\n| --- | --- |\n"
             + "| `#DW persistentdw name=shared` | `line 2: fine` |\n\n## next\n")
    [script] = accepted_examples(guide)
    with pytest.raises(DirectiveError):
        parse_job_script(script)
    [(line, message)] = refused_examples(guide)
    assert (line, message) == ("#DW persistentdw name=shared", "line 2: fine")
    parse_job_script(SHEBANG + line + "\n")  # accepted: the refusal test would fail on this row
