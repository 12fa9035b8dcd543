"""bbctl.site's configuration file: settings, defaults and what a mistake says."""

from __future__ import annotations

import importlib
from pathlib import Path

from bbctl import site  # puts the collection on sys.path

WHERE = Path("/etc/bbctl/bbctl.yml")


def minimal(**more: object) -> dict:
    return {"inventory": "/etc/bbctl/inventory.yml", "pools": {"nvme": {}}, **more}


def test_stage_workers_default_is_bb_stages_own():
    bb_stage = importlib.import_module("ansible_collections.hpc.burstbuffer.plugins.modules.bb_stage")
    assert site.from_mapping(minimal(), WHERE).stage_workers == bb_stage.ARGUMENT_SPEC["workers"]["default"]
    assert site.from_mapping(minimal(stage_workers=8), WHERE).stage_workers == 8
