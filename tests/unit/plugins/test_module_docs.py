"""Every module's DOCUMENTATION: the attributes block, and no pointer to a file the artifact drops."""

import ast
import fnmatch
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
MODULES = sorted((REPO / "plugins" / "modules").glob("*.py"))
# A repository path as module docs would write it: docs/X.md, tests/..., benchmarks/x.py
PATH_IN_TEXT = re.compile(r"\b(?:[\w.-]+/)+[\w.-]+\.\w+")


def documentation(module: Path) -> dict:
    tree = ast.parse(module.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DOCUMENTATION":
            return yaml.safe_load(node.value.value)
    raise AssertionError(f"{module.name} has no DOCUMENTATION")


def dropped_by_build(path: str) -> bool:
    """Whether galaxy.yml's build_ignore leaves this repository path out of the artifact."""
    patterns = yaml.safe_load((REPO / "galaxy.yml").read_text())["build_ignore"]
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.stem)
def test_module_documents_its_attributes(module):
    doc = documentation(module)
    assert "hpc.burstbuffer.attributes" in doc["extends_documentation_fragment"]
    for attribute in ("check_mode", "diff_mode"):
        assert doc["attributes"][attribute]["support"] in ("full", "partial", "none")


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.stem)
def test_module_docs_name_no_file_the_artifact_drops(module):
    text = yaml.safe_dump(documentation(module))
    named = [path for path in PATH_IN_TEXT.findall(text) if (REPO / path).exists()]
    assert [path for path in named if dropped_by_build(path)] == []


def test_dropped_by_build_reads_galaxy_yml():
    assert dropped_by_build("docs/BENCHMARKS.md")
    assert dropped_by_build("benchmarks/staging.py")
    assert dropped_by_build("tests/fakes/lustre/mount")
    assert not dropped_by_build("docs/LUSTRE.md")
    assert not dropped_by_build("plugins/modules/bb_stage.py")
