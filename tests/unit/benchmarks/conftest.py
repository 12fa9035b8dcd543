"""Unit tests of benchmarks/ helpers: the benchmarks directory and the collection on the import path
(the benchmarks import the copy engine as ``ansible_collections.hpc.burstbuffer``, from collections/)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
for path in (REPO / "collections", REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
