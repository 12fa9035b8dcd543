"""Shared pytest setup: where things are, and whether the test bed is up."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
BBCTL = str(VENV_BIN / "bbctl")
TESTBED_ROOT = Path("/var/lib/bbctl-testbed")


def testbed_is_up() -> bool:
    return subprocess.run([BBCTL, "testbed", "status"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def testbed() -> Path:
    """The root of the running test bed; skips when it is not up."""
    if not testbed_is_up():
        pytest.skip("the test bed is not up: run `bbctl testbed up` (scripts/test.sh does)")
    return TESTBED_ROOT


@pytest.fixture
def user_dir():
    """A directory owned by the unprivileged job owner (pytest's tmp_path is root-only)."""
    owner = pwd.getpwnam("bbuser")
    path = Path(tempfile.mkdtemp(prefix="bb-user-", dir="/tmp"))
    os.chown(path, owner.pw_uid, owner.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)
