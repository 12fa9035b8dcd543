"""Every reference to a section of one of the project's documents (``BENCHMARKS.md, "Heading"``) names a
section that exists: a section lost in an edit fails here, not in a reader's hands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# where references are written: the documents themselves, the code's comments and docstrings, the roles
SOURCES = [ROOT / "README.md", *DOCS.glob("*.md"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("src/**/*.py"),
           *ROOT.glob("plugins/**/*.py"), *ROOT.glob("roles/**/*.yml"), *ROOT.glob("playbooks/*.yml")]
# DOC.md, "Heading" / DOC.md "Heading" / DOC.md ("Heading", with the heading wrapped over lines
REFERENCE = re.compile(r'\b([A-Z_]+)\.md,?\s+\(?"([^"]+)"')


def words(text: str) -> str:
    """Whitespace and comment leaders (``#``, a docstring's indent) folded, so a wrapped reference matches."""
    return " ".join(text.replace("#", " ").split())


def headings(doc: Path) -> list[str]:
    """The titles a reference may name: headings, their numbers dropped (``## 13. Draining ...``), and the
    bold words that open a paragraph (``**The privileged-port budget again, ...**``)."""
    titles = []
    for line in doc.read_text().splitlines():
        if line.startswith("#"):
            titles.append(re.sub(r"^\d+\.\s+", "", words(line.lstrip("#"))))
        elif line.startswith("**"):
            titles.append(words(line[2:]))
    return titles


def references() -> list[tuple[str, str, str]]:
    """(file that refers, document, heading) for every reference to a document under docs/."""
    found = []
    for source in SOURCES:
        for doc, heading in REFERENCE.findall(words(source.read_text(errors="replace"))):
            if (DOCS / f"{doc}.md").exists():
                found.append((str(source.relative_to(ROOT)), doc, heading))
    return found


def test_references_are_found_at_all():
    # the pattern is what this test rests on: it must see the references the documents are known to hold
    assert {("BENCHMARKS", "Staging"), ("OPERATOR_GUIDE", "Buffer layouts")} <= {(d, h) for _s, d, h in references()}


@pytest.mark.parametrize(("source", "doc", "heading"), references())
def test_each_reference_names_a_section_that_exists(source, doc, heading):
    titles = headings(DOCS / f"{doc}.md")
    assert any(title.startswith(heading) for title in titles), f'{source}: {doc}.md has no section "{heading}"'
