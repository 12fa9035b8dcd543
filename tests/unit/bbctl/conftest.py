"""Fixtures the bbctl command-line tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bbctl import runner
from tests.unit.bbctl.test_lifecycle import Recorder


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch) -> Path:
    """A bbctl.yml of two servers with one 1GiB brick each; playbook runs recorded (runner.run_stage)."""
    hosts = {f"s{n}": {"bb_bricks": [{"device": f"/dev/nvme{n}", "path": f"/bricks/s{n}"}]} for n in (1, 2)}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"bb_storage": {"hosts": hosts}}}}))
    path = tmp_path / "bbctl.yml"
    path.write_text(yaml.safe_dump({"inventory": str(inventory), "pools": {"nvme": {"granularity": "1GiB"}},
                                    "work_dir": str(tmp_path / "work"), "mount_root": "/mnt/bb"}))
    monkeypatch.setattr(runner, "run_stage", Recorder())
    return path
