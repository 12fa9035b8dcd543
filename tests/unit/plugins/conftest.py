"""Unit tests of the collection's plugins: import path and a stand-in AnsibleModule.

The repository root is the collection and collections/ansible_collections/hpc/burstbuffer
links back to it, so putting collections/ on sys.path makes
``ansible_collections.hpc.burstbuffer`` importable.
"""

import sys
from pathlib import Path

import pytest

COLLECTIONS = Path(__file__).resolve().parents[3] / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))


class FakeModule:
    """Just enough of AnsibleModule: run_command answers from a script and records argv/env."""

    def __init__(self, answers=(), check_mode=False):
        self.answers = list(answers)
        self.check_mode = check_mode
        self.calls = []
        self.warnings = []

    def run_command(self, argv, environ_update=None, **_kwargs):
        self.calls.append((list(argv), dict(environ_update or {})))
        if not self.answers:
            raise AssertionError(f"unexpected command {argv}")
        return self.answers.pop(0)

    def warn(self, text):
        self.warnings.append(text)


@pytest.fixture
def fake_module():
    """The FakeModule class: fake_module(answers=[(rc, out, err), ...], check_mode=False)."""
    return FakeModule
