"""Writing a benchmark's results into docs/BENCHMARKS.md between its markers (one helper for every benchmark)."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def write_section(begin: str, end: str, lines: list[str], heading: str, doc: Path = BENCHMARKS_MD) -> None:
    """Replace what lies between ``begin`` and ``end`` with ``lines``; without the markers, append them
    under a new ``## heading``."""
    text = doc.read_text()
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    doc.write_text(text)
