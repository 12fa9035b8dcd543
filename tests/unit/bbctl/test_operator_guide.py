"""docs/OPERATOR_GUIDE.md's Slurm configuration lines say what the test bed really runs with."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import resources

import pytest

from tests.unit.bbctl import reason_finder

ROOT = reason_finder.ROOT
GUIDE = (ROOT / "docs" / "OPERATOR_GUIDE.md").read_text()
SECTIONS = {"lua": "## 2. Slurm, burst_buffer/lua", "datawarp": "## 3. Slurm, burst_buffer/datawarp"}


def section(text: str, heading: str) -> str:
    return re.split(r"\n## ", text.split(heading, 1)[1], maxsplit=1)[0]


def plain_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced block without an info string (```sh blocks are commands)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    info = ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if not info:
                    blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def settings(text: str) -> dict[str, str]:
    """Key=Value lines of the plain fenced blocks (slurm.conf, burst_buffer.conf) in text."""
    found = {}
    for block in plain_blocks(text):
        for line in block:
            match = re.match(r"^([A-Za-z]+)=(\S+)$", line.strip())
            if match:
                found[match.group(1)] = match.group(2)
    return found


def template(name: str) -> dict[str, str]:
    text = resources.files("bbctl.testbed").joinpath("templates", name).read_text()
    # A line that is a whole placeholder (${slurmd_parameters}) is filled in at up; it has no key here.
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


@pytest.mark.parametrize("plugin", ["lua", "datawarp"])
def test_each_plugins_section_gives_what_the_test_bed_configures(plugin):
    shown = settings(section(GUIDE, SECTIONS[plugin]))
    assert shown.get("BurstBufferType") == f"burst_buffer/{plugin}"
    assert shown.get("SlurmUser") == "root" == template("slurm.conf")["SlurmUser"]
    bed = template(f"burst_buffer-{plugin}.conf")
    assert set(bed) <= set(shown), f"keys the test bed sets that section {plugin} does not show"
    for key, value in bed.items():
        if "${" not in value:
            assert shown[key] == value, key


def test_the_datawarp_programs_are_bbctls_console_scripts():
    shown = settings(section(GUIDE, SECTIONS["datawarp"]))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for key, program in (("GetSysState", "dw_wlm_cli"), ("GetSysStatus", "dwstat")):
        assert shown[key].endswith(f"/bin/{program}") and program in scripts


def test_the_check_can_fail():
    text = ("## 2. Slurm, burst_buffer/lua\n\n```sh\nStageInTimeout=1\n```\n\n```\nBurstBufferType=burst_buffer/lua\n"
            "OtherTimeout=300\n```\n## 3. X\n")
    shown = settings(section(text, SECTIONS["lua"]))
    assert shown == {"BurstBufferType": "burst_buffer/lua", "OtherTimeout": "300"}
    assert not set(template("burst_buffer-lua.conf")) <= set(shown)


def test_no_file_links_to_the_old_name():
    """The operations note became docs/OPERATOR_GUIDE.md: only the changelog entry of the rename names its old file."""
    old = "docs/" + "OPERATIONS.md"  # written so that this file does not name it
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    naming = [path for path in tracked.decode().split("\0") if path and (ROOT / path).is_file()
              and old in (ROOT / path).read_text(errors="replace")]
    assert naming == ["changelogs/fragments/guides.yml"]
