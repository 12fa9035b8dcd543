"""The collection as published: build the tarball, install it into an empty collections path,
run a module and a role from the installed copy (never from this checkout).

Slow-ish (a build, an install and three Ansible runs: some seconds) but needs no test bed:
buffer_mount runs in check mode on a directory that is not a mount point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTALLED = Path("ansible_collections") / "hpc" / "burstbuffer"
# What the artifact must hold, and what it must not (galaxy.yml's build_ignore).
EXPECTED = ["README.md", "CHANGELOG.md", "meta/runtime.yml", "changelogs/config.yaml", "slurm/burst_buffer.lua"]
EXPECTED_DIRS = ["plugins/modules", "plugins/module_utils", "plugins/doc_fragments", "roles", "playbooks"]
FORBIDDEN_TOP = {"ansible.cfg", "requirements.yml", "pyproject.toml", "collections", "src", "scripts",
                 "benchmarks", "molecule", ".venv", ".venv-sanity"}


def run(argv: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifact")
    run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(out), str(REPO)],
        env=dict(os.environ), cwd=out)
    (built,) = out.glob("hpc-burstbuffer-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def installed(tarball, tmp_path_factory) -> dict:
    """An environment where Ansible sees only the collection installed from the tarball."""
    work = tmp_path_factory.mktemp("installed")
    collections = work / "collections"
    collections.mkdir()
    (work / "ansible.cfg").write_text("[defaults]\n")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("ANSIBLE_") and key not in ("PYTHONPATH", "BBCTL_COLLECTION_ROOT")}
    env.update(ANSIBLE_CONFIG=str(work / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(collections),
               ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false", ANSIBLE_HOME=str(work / "home"),
               ANSIBLE_LOCAL_TEMP=str(work / "tmp"), ANSIBLE_NOCOLOR="1")
    run([str(BIN / "ansible-galaxy"), "collection", "install", "--offline", str(tarball), "-p", str(collections)],
        env=env, cwd=work)
    return {"env": env, "work": work, "root": collections / INSTALLED}


def test_artifact_holds_the_collection_only(tarball):
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert not [name for name in EXPECTED if name not in names]
    assert not [name for name in EXPECTED_DIRS if not any(n.startswith(name + "/") for n in names)]
    assert sorted(path.name for path in (REPO / "plugins" / "modules").glob("*.py")) == sorted(
        Path(name).name for name in names if name.startswith("plugins/modules/") and name.endswith(".py"))
    assert not {name.split("/")[0] for name in names} & FORBIDDEN_TOP
    # tests/sanity (ansible-test's ignore files) may ship; no other test does.
    assert [name for name in names if name.startswith("tests/") and not name.startswith("tests/sanity")] == []
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_module_runs_from_the_installed_copy(installed, tmp_path):
    mount_point = tmp_path / "job-1"
    mount_point.mkdir()
    done = run([str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "--check", "-vvv",
                "-m", "hpc.burstbuffer.buffer_mount",
                "-a", json.dumps({"path": str(mount_point), "state": "unmounted", "remove_dir": True}),
                "-e", json.dumps({"ansible_python_interpreter": sys.executable})],
               env=installed["env"], cwd=installed["work"])
    module_file = installed["root"] / "plugins" / "modules" / "buffer_mount.py"
    assert f"Using module file {module_file}" in done.stdout
    start = done.stdout.index("localhost | ")
    status, _, rest = done.stdout[start:].partition(" => ")
    result, _ = json.JSONDecoder().raw_decode(rest)
    assert status == "localhost | CHANGED"
    assert result["path"] == str(mount_point) and result["mounted"] is False
    assert result["commands"] == [["rmdir", str(mount_point)]]
    assert mount_point.is_dir()  # check mode: nothing removed


def test_ansible_doc_finds_the_installed_copy(installed):
    done = run([str(BIN / "ansible-doc"), "--json", "hpc.burstbuffer.bb_stage"],
               env=installed["env"], cwd=installed["work"])
    doc = json.loads(done.stdout)["hpc.burstbuffer.bb_stage"]["doc"]
    assert doc["filename"] == str(installed["root"] / "plugins" / "modules" / "bb_stage.py")
    assert {"check_mode", "diff_mode", "platform"} <= set(doc["attributes"])


@pytest.mark.parametrize("inventory_path", [None, "from-inventory"])
def test_buffer_client_path_from_inventory(installed, tmp_path, inventory_path):
    """buffer_client_path is a role default: an inventory value wins over bb_buffer.mount_path."""
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    if inventory_path:
        host["buffer_client_path"] = str(tmp_path / inventory_path)
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"localhost": host}}}))
    (tmp_path / "play.yml").write_text(yaml.safe_dump([{
        "name": "Unmount", "hosts": "all", "gather_facts": False,
        "roles": [{"role": "hpc.burstbuffer.buffer_client", "buffer_client_state": "unmounted"}]}]))
    buffer = {"name": "job-1", "mount_path": str(tmp_path / "from-bb-buffer"), "bricks": [{"host": "localhost"}]}
    done = run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), "--check", "-v",
                "-e", json.dumps({"bb_buffer": buffer}), str(tmp_path / "play.yml")],
               env=installed["env"], cwd=installed["work"])
    task = done.stdout.index("TASK [hpc.burstbuffer.buffer_client : Unmount the buffer]")
    result, _ = json.JSONDecoder().raw_decode(done.stdout, done.stdout.index(" => ", task) + len(" => "))
    assert result["path"] == str(tmp_path / (inventory_path or "from-bb-buffer"))
