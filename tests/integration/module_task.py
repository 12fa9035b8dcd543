"""Run one module task through ansible-playbook on localhost; return what it registered."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


class ModuleTask:
    """Each call writes a one-task playbook into workdir, runs it and returns the task's result.

    ``check=True`` adds --check (and --diff when ``diff_in_check``). The result is
    copied to a file by a second task, so a failed module still returns its result.
    """

    def __init__(self, module, workdir, *, diff_in_check=True, timeout=300):
        self.module = module
        self.workdir = Path(workdir)
        self.diff_in_check = diff_in_check
        self.timeout = timeout
        self.runs = 0

    def __call__(self, check=False, **args):
        self.runs += 1
        result = self.workdir / f"result{self.runs}.json"
        playbook = self.workdir / f"play{self.runs}.yml"
        playbook.write_text(yaml.safe_dump([{
            "hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars": {"ansible_python_interpreter": str(VENV_BIN / "python")},
            "tasks": [
                {self.module: args, "register": "outcome", "ignore_errors": True},
                {"ansible.builtin.copy": {"content": "{{ outcome | to_json }}", "dest": str(result)},
                 "check_mode": False, "diff": False},
            ],
        }]))
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook)]
        if check:
            argv += ["--check", "--diff"] if self.diff_in_check else ["--check"]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=self.timeout, check=False,
                              env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")))
        assert result.exists(), done.stdout + done.stderr
        return json.loads(result.read_text())
