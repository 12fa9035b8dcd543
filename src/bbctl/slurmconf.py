"""Stage timeouts, from Slurm's burst_buffer.conf.

Slurm kills a stage script when its timeout runs out (SIGTERM, then SIGKILL to
the process group). bbctl gives ansible-runner a little less, so a stage that
runs long fails with bbctl's own message and leaves a state record an
operator or the next teardown can act on, instead of being killed mid-write.
"""

from __future__ import annotations

import re
from pathlib import Path

# burst_buffer.conf key and Slurm's default (seconds), per bbctl stage.
STAGE_TIMEOUT_KEYS = {
    "setup": ("OtherTimeout", 300),
    "stage-in": ("StageInTimeout", 86400),
    "pre-run": ("OtherTimeout", 300),
    "post-run": ("OtherTimeout", 300),
    "stage-out": ("StageOutTimeout", 86400),
    "teardown": ("OtherTimeout", 300),
    "create-persistent": ("OtherTimeout", 300),
}
# What bbctl keeps for itself: to record the failure and answer Slurm.
MARGIN_FRACTION = 0.1
MARGIN_MAX = 30
_LINE_RE = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(\S+)")


def read_settings(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    settings = {}
    for line in path.read_text().splitlines():
        match = _LINE_RE.match(line.split("#", 1)[0])
        if match:
            settings[match.group(1).lower()] = match.group(2)
    return settings


def stage_timeout(stage: str, settings: dict[str, str]) -> int:
    """Seconds ansible-runner may take for stage: Slurm's timeout less a margin."""
    key, default = STAGE_TIMEOUT_KEYS[stage]
    try:
        slurm = int(settings.get(key.lower(), default))
    except ValueError:
        slurm = default
    return max(1, slurm - min(MARGIN_MAX, int(slurm * MARGIN_FRACTION)))
