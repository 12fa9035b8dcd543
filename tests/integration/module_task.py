"""Run module tasks through real ansible-playbook and return what each task registered.

One runner for every integration test that drives the collection's modules: a play of the
tasks (none stops it: each ignores errors), then a copy task that writes the registered
results to a file per host, so a failed module still returns its result.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
LOCALHOST = {"connection": "local", "vars": {"ansible_python_interpreter": str(VENV_BIN / "python")}}


def run_tasks(workdir, name, tasks, *, hosts="localhost", inventory="localhost,", play=None, flags=(),
              timeout=300):
    """{host: [the result each task registered, in order]} for one play of tasks on hosts.

    play: more keys of the play (vars, environment, connection); flags: ansible-playbook's
    (--check, --diff). Files go to workdir as NAME.yml and NAME-HOST.json.
    """
    workdir = Path(workdir)
    steps = [dict(task, register=f"result_{number}", ignore_errors=True) for number, task in enumerate(tasks)]
    collected = ", ".join(f"result_{number}" for number in range(len(tasks)))
    dest = f"{workdir}/{name}-{{{{ inventory_hostname }}}}.json"
    steps.append({"name": "keep the results", "ansible.builtin.copy": {
        "content": "{{ [" + collected + "] | to_json }}", "dest": dest}, "check_mode": False, "diff": False})
    playbook = workdir / f"{name}.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": hosts, "gather_facts": False, **(play or {}), "tasks": steps}],
                                       sort_keys=False))
    done = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")))
    found = {path.stem[len(name) + 1:]: json.loads(path.read_text()) for path in workdir.glob(f"{name}-*.json")}
    assert found, done.stdout + done.stderr
    return found


class ModuleTask:
    """Each call runs one task of module on localhost and returns its result.

    ``check=True`` adds --check (and --diff when ``diff_in_check``).
    """

    def __init__(self, module, workdir, *, diff_in_check=True, timeout=300):
        self.module = module
        self.workdir = Path(workdir)
        self.diff_in_check = diff_in_check
        self.timeout = timeout
        self.runs = 0

    def __call__(self, check=False, **args):
        self.runs += 1
        flags = (["--check", "--diff"] if self.diff_in_check else ["--check"]) if check else []
        results = run_tasks(self.workdir, f"run{self.runs}", [{self.module: args}], play=LOCALHOST, flags=flags,
                            timeout=self.timeout)
        return results["localhost"][0]
