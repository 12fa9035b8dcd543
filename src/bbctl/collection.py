"""Where the hpc.burstbuffer collection lives, and access to its module_utils.

bbctl drives the collection's playbooks and shares its pure-Python helpers
(sizes, mounts, the prctl calls in linux_process, ...) so each fact has one source. The repository root is the
collection; ``collections/`` beside it links back so Ansible and Python both
find it as ``ansible_collections.hpc.burstbuffer``. An installation elsewhere
sets BBCTL_COLLECTION_ROOT to the collection's directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

COLLECTION_ROOT = Path(
    os.environ.get("BBCTL_COLLECTION_ROOT") or Path(__file__).resolve().parents[2])
COLLECTIONS_PATH = COLLECTION_ROOT / "collections"
PLAYBOOKS = COLLECTION_ROOT / "playbooks"

if str(COLLECTIONS_PATH) not in sys.path:
    sys.path.append(str(COLLECTIONS_PATH))

from ansible_collections.hpc.burstbuffer.plugins.module_utils import (  # noqa: E402
    block_devices,
    command_runner,
    linux_process,
    mounts,
    sizes,
    stage_threads,
)

__all__ = ["COLLECTIONS_PATH", "COLLECTION_ROOT", "PLAYBOOKS", "block_devices", "command_runner", "linux_process",
           "mounts", "sizes", "stage_threads"]
