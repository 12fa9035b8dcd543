"""bbctl.entry: stage processes start nicer before they import bbctl; quick calls keep their priority."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bbctl import entry, site

SRC = str(Path(__file__).resolve().parents[3] / "src")

# In a child (this test process's niceness is not the test's to change), through the entry itself: the
# real command's module is a stub whose main reports the niceness and what had been imported by then.
PROBE = """
import json, os, sys, types
sys.path.insert(0, sys.argv[1])
script, sys.argv = sys.argv[2], sys.argv[2:]
def report():
    print(json.dumps([os.getpriority(os.PRIO_PROCESS, 0),
                      sorted(m for m in sys.modules if m.startswith(("bbctl.", "yaml", "ansible")))]))
    return 0
for name in ("bbctl.cli", "bbctl.datawarp", "bbctl.datawarp.dw_wlm_cli"):
    sys.modules[name] = types.SimpleNamespace(main=report)
try:  # as root: start from 0 whatever this test process runs at (a stage test may have raised it)
    os.setpriority(os.PRIO_PROCESS, 0, 0)
except PermissionError:
    pass
print(os.getpriority(os.PRIO_PROCESS, 0))
from bbctl import entry
getattr(entry, script)()
"""
STUBS = ["bbctl.cli", "bbctl.datawarp", "bbctl.datawarp.dw_wlm_cli", "bbctl.entry"]


def probe(*argv: str) -> tuple[int, int, list[str]]:
    """(niceness the child started at, niceness at the real command's main, bbctl modules by then)."""
    done = subprocess.run([sys.executable, "-c", PROBE, SRC, *argv], capture_output=True, text=True, check=True)
    start, rest = done.stdout.split("\n", 1)
    nice, modules = json.loads(rest)
    return int(start), nice, [m for m in modules if m not in STUBS]


@pytest.mark.parametrize("argv", [("dw_wlm_cli", "--function", "setup", "--token", "7"),
                                  ("dw_wlm_cli", "--function=teardown", "--token", "7", "--hurry"),
                                  ("bbctl", "--config", "/etc/bbctl/bbctl.yml", "stage-in", "--job-id", "7"),
                                  ("bbctl", "--config=/b.yml", "stage-out", "--job-id", "7"),
                                  ("bbctl", "teardown", "--job-id", "7")])
def test_a_stage_starts_at_the_default_stage_nice_before_importing_bbctl(argv):
    start, nice, modules = probe(*argv)
    assert (nice, modules) == (max(start, entry.DEFAULT_STAGE_NICE), []), "nicer first, no bbctl imported yet"


@pytest.mark.parametrize("argv", [("dw_wlm_cli", "--function", "job_process", "--job", "/tmp/s"),
                                  ("dw_wlm_cli", "--function", "paths", "--token", "7"),
                                  ("dw_wlm_cli", "--function", "pools"),
                                  ("bbctl", "paths", "--job-id", "7"), ("bbctl", "status")])
def test_quick_calls_keep_their_priority(argv):
    start, nice, _modules = probe(*argv)
    assert nice == start


def test_the_default_is_the_sites():
    assert site.from_mapping({"inventory": "/i.yml", "pools": {"nvme": {}}}, Path("/b.yml")).stage_nice == \
        entry.DEFAULT_STAGE_NICE


def test_the_stage_names_are_the_commands_own():
    """The entry cannot import the commands it names (that is its point): a renamed one must fail here,
    not silently run at full priority."""
    import argparse

    from bbctl import cli
    from bbctl.datawarp import dw_wlm_cli

    [commands] = [a.choices for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert not entry.BBCTL_STAGES - set(commands), "bbctl has no such command"
    assert not entry.DW_WLM_CLI_STAGES - set(dw_wlm_cli.FUNCTIONS), "dw_wlm_cli has no such function"


def test_the_console_scripts_go_through_the_entry():
    text = (Path(SRC).parent / "pyproject.toml").read_text()
    assert 'bbctl = "bbctl.entry:bbctl"' in text and 'dw_wlm_cli = "bbctl.entry:dw_wlm_cli"' in text
