"""The target Python floor is declared once per place it must appear, and they agree.

meta/runtime.yml's requires_ansible decides which Pythons modules may run on (the oldest
ansible-core supported runs them on its oldest target Python); the doc fragment tells users,
scripts/sanity.sh tests from that Python up, and the plugins' syntax must parse for it.
"""

import ast
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
# The oldest target Python each ansible-core release runs modules on (its support matrix).
TARGET_FLOOR_OF_ANSIBLE_CORE = {(2, 16): (3, 6), (2, 17): (3, 7), (2, 18): (3, 8), (2, 19): (3, 8)}


def version(text: str) -> tuple:
    return tuple(int(part) for part in text.split("."))


def dotted(floor: tuple) -> str:
    return ".".join(map(str, floor))


def claimed_floor() -> tuple:
    requires = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"]
    oldest = re.fullmatch(r">=\s*(\d+\.\d+)(?:\.\d+)?", requires)
    assert oldest, f"requires_ansible {requires!r} should be a plain >=X.Y.Z"
    return TARGET_FLOOR_OF_ANSIBLE_CORE[version(oldest.group(1))]


def test_floor_is_what_the_code_needs():
    # from __future__ import annotations, namedtuple(defaults=), os.preadv: 3.7 at least
    assert claimed_floor() >= (3, 7)


def test_doc_fragment_states_the_floor():
    fragment = (REPO / "plugins" / "doc_fragments" / "attributes.py").read_text()
    assert f"Python {dotted(claimed_floor())} or later on the target host" in fragment


def test_sanity_tests_from_the_floor():
    script = (REPO / "scripts" / "sanity.sh").read_text()
    assert re.search(r"^python_floor=(\S+)$", script, re.M).group(1) == dotted(claimed_floor())


def test_plugins_parse_for_the_floor():
    for path in sorted((REPO / "plugins").rglob("*.py")):
        ast.parse(path.read_text(), filename=str(path), feature_version=claimed_floor())
