"""What operators ask bbctl: the status of pools and buffers, one buffer's record, and garbage collection.

Views of the state store (and, for gc, the one repair: Lifecycle.destroy of buffers
that died mid-way); the stages themselves live in bbctl.lifecycle.
"""

from __future__ import annotations

import pwd
import time
from typing import Any

from bbctl import layouts
from bbctl import site as sitecfg
from bbctl.lifecycle import FAILED_STAGE, Lifecycle, stage_out_failed
from bbctl.site import Site
from bbctl.state import Buffer, BufferState


def status(life: Lifecycle) -> dict[str, Any]:
    """Pools (refreshing the file Slurm reads) and every buffer, described."""
    pools = life.refresh_pools()["pools"]
    return {"pools": pools, "buffers": [dict(describe(b, life.site), max_file=max_file(life, b))
                                        for b in life.store.buffers()]}


def max_file(life: Lifecycle, buffer: Buffer) -> int | None:
    """Bytes one file of the buffer can hold when less than the buffer (the job's BB_JOB_STRIPED_MAX_FILE)."""
    pool = life.pools.get(buffer.pool)
    return layouts.of(buffer).file_limit(pool.granularity) if pool is not None else None


def gc(life: Lifecycle, older_than: float, *, dry_run: bool) -> dict[str, Any]:
    """Tear down buffers whose stage died mid-way or that failed to come up, and list bricks no record holds.

    A buffer whose stage-out died is never torn down here (its data has not left): it is
    held as failed, for a stage-out run again or a teardown with hurry. A stage-out whose
    copy still reports progress is alive, however old its record."""
    orphans = life.store.orphans(older_than)
    held = [b.key for b in orphans.stale_buffers if b.state is BufferState.STAGING_OUT
            and not copy_progressed(life.site, b.key, "stage-out", older_than)]
    torn = [b.key for b in orphans.stale_buffers if b.state is not BufferState.STAGING_OUT]
    # Failed to come up or to go away (never a failed stage-out: its data has not left).
    torn += [b.key for b in orphans.failed_buffers if not stage_out_failed(b)]
    if not dry_run:
        for key in held:
            life.store.transition(
                key, BufferState.STAGING_OUT, BufferState.FAILED, meta={FAILED_STAGE: "stage-out"},
                last_error=f"stage-out: no progress for {older_than:.0f} s (did bbctl die?); the data is "
                           "kept: run stage-out again, or tear down with hurry")
            life.note(key, "gc", "stage-out without progress: held as failed, data kept")
        for key in torn:
            life.destroy(key, stage="gc")
    return {"stale_buffers": torn, "held_buffers": held,
            "stray_bricks": [a.brick_id for a in orphans.stray_bricks], "dry_run": dry_run}


def copy_progressed(site: Site, key: str, stage: str, within: float) -> bool:
    """bb_stage wrote a progress snapshot for key's stage in the last ``within`` seconds."""
    progress = sitecfg.progress_path(site, key, stage)
    try:
        return time.time() - progress.stat().st_mtime < within
    except FileNotFoundError:
        return False


def describe(buffer: Buffer, site: Site) -> dict[str, Any]:
    """A buffer's record with its volume, paths, owner's name and age, as bbctl show prints it."""
    data = buffer.to_dict()
    data.update(volume=sitecfg.volume_name(buffer.key), stage_path=str(sitecfg.stage_path(site, buffer.key)),
                mount_path=str(sitecfg.mount_path(site, buffer.key)), layout=layouts.of(buffer).describe(),
                owner=_user_name(buffer.owner_uid), age_seconds=round(time.time() - buffer.created_at, 1))
    return data


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
