"""Writing a benchmark's results into docs/BENCHMARKS.md between its markers, and its headline figures as
JSON for benchmarks/run_all.py (one helper for every benchmark)."""

from __future__ import annotations

import argparse
import json
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


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``: where the benchmark also writes its headline figures (benchmarks/run_all.py reads them)."""
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the headline figures to PATH as one JSON object (for run_all.py)")


def write_figures(path: Path | None, figures: dict[str, float | int | str | None]) -> None:
    """Write ``figures`` (name -> number; each name ends in its unit: _ms, _s, _us, _ratio, ...) to path as
    one JSON object, floats to 4 significant digits (more is noise here); nothing when path is None."""
    if path is not None:
        rounded = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in figures.items()}
        path.write_text(json.dumps(rounded, indent=1, sort_keys=True) + "\n")


def publish(lines: list[str], figures: dict[str, float | int | str | None], json_path: Path | None,
            section: tuple[str, str, str] | None) -> None:
    """What a benchmark does with its results: print ``lines``, write ``figures`` to ``json_path``
    (``--json``; see write_figures) and, when ``section`` (begin marker, end marker, heading) is given
    (``--write-doc``), put ``lines`` into docs/BENCHMARKS.md there (see write_section)."""
    print("\n".join(lines))
    write_figures(json_path, figures)
    if section is not None:
        write_section(*section[:2], lines, section[2])
