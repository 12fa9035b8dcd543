"""Fixtures the test-bed modules share; each module asks for the ones it wants (no autouse here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.bbctl.slurmjobs import use_plugin


@pytest.fixture(scope="module")
def lua_slurm(testbed: Path) -> Path:
    """The test bed's Slurm on burst_buffer/lua, switched to it if another plugin runs; the test bed's root.

    Modules that need it say so with ``pytestmark = [..., pytest.mark.usefixtures("lua_slurm")]``;
    the datawarp and plugin-switching modules choose their plugin themselves."""
    use_plugin("lua")
    return testbed
