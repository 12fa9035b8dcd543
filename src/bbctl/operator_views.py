"""What operators ask bbctl: the status of pools and buffers, one buffer's record, and garbage collection.

Views of the state store (and, for gc, the one repair: Lifecycle.destroy of buffers
that died mid-way); the stages themselves live in bbctl.lifecycle.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bbctl import allocation, host, layouts, slurmconf
from bbctl import site as sitecfg
from bbctl.errors import BBError
from bbctl.lifecycle import FAILED_STAGE, Lifecycle, stage_out_failed
from bbctl.site import Site
from bbctl.state import Buffer, BufferState, ServerHealth
from bbctl.state.timings import STAGE_NOW, TIMINGS, sorted_timings

log = logging.getLogger("bbctl")


def status(life: Lifecycle) -> dict[str, Any]:
    """Pools (refreshing the file Slurm reads) with their bytes, and every buffer, described."""
    pools = [pool_view(pool) for pool in life.refresh_pools()["pools"]]
    now = time.time()
    return {"pools": pools, "buffers": [dict(describe(b, life.site, now=now), max_file=max_file(life, b))
                                        for b in life.store.buffers()]}


class UnknownServer(BBError):
    """An operator named a server no pool has (exit 2: bad input)."""

    exit_code = 2

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no storage server {name!r} in any pool; known: {', '.join(known) or 'none'}")


def drain_server(life: Lifecycle, name: str, reason: str = "") -> ServerHealth:
    """Take name out of the pools by hand, and rewrite the pools file; UnknownServer for a name no pool has."""
    server = life.store.drain_server(_known_server(life, name), reason)
    log.warning("storage server %s drained: %s", name, server.reason)
    life.refresh_pools()
    return server


def resume_server(life: Lifecycle, name: str) -> ServerHealth:
    """Give name back to the pools, its failure count cleared, and rewrite the pools file; UnknownServer."""
    server = life.store.resume_server(_known_server(life, name))
    log.warning("storage server %s resumed: its bricks are offered again", name)
    life.refresh_pools()
    return server


def _known_server(life: Lifecycle, name: str) -> str:
    known = life.storage_servers()
    if name not in known:
        raise UnknownServer(name, known)
    return name


def servers_command(life: Lifecycle, *, drain: str | None, resume: str | None, reason: str) -> dict[str, Any]:
    """`bbctl servers`: the drain or resume asked, then the servers view (BBError, exit 2: --reason alone)."""
    if reason and not drain:
        raise BBError("--reason goes with --drain NAME", exit_code=2)
    if drain:
        drain_server(life, drain, reason)
    elif resume:
        resume_server(life, resume)
    return servers(life)


def servers(life: Lifecycle) -> dict[str, Any]:
    """Every storage server of the pools, and any other the store keeps health for (gone from the inventory)::

        {"servers": [{"name", "state": "usable" | "failing" | "drained", "failures", "last_error",
                      "last_error_at", "reason", "since", "bricks", "bricks_in_use", "buffers": [keys]}],
         "server_fail_limit": N}
    """
    health = life.store.servers()
    bricks: dict[str, int] = {}
    for pool in life.pools.values():
        for brick in pool.bricks:
            bricks[brick.server] = bricks.get(brick.server, 0) + 1
    in_use: dict[str, list[str]] = {}
    for buffer in life.store.buffers():
        for brick in buffer.bricks:
            in_use.setdefault(brick.server, []).append(buffer.key)
    rows = []
    for name in sorted(set(bricks) | set(health)):
        server = health.get(name) or ServerHealth(name)
        rows.append({**server.to_dict(), "state": server.unusable or "usable", "bricks": bricks.get(name, 0),
                     "bricks_in_use": len(in_use.get(name, [])), "buffers": sorted(set(in_use.get(name, [])))})
    return {"servers": rows, "server_fail_limit": life.site.server_fail_limit}


def max_file(life: Lifecycle, buffer: Buffer) -> int | None:
    """Bytes one file of the buffer can hold when less than the buffer (the job's BB_JOB_STRIPED_MAX_FILE)."""
    pool = life.pools.get(buffer.pool)
    return layouts.of(buffer).file_limit(pool.granularity) if pool is not None else None


BBSTAT_KEYS = ("job", "jobid", "name", "buffer")


def bbstat_key(words: list[str]) -> str | None:
    """The buffer `scontrol show bbstat WORDS` asks about: job=N, name=X or a bare key; None for all.

    Slurm 23.02+ calls slurm_bb_get_status(uid, gid, words...), 22.05 only with the words:
    two leading numbers are taken for uid and gid and dropped (so on 22.05, `bbstat 12 13`
    shows everything)."""
    words = [word for word in words if word]
    if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
        words = words[2:]
    for word in words:
        name, equals, value = word.partition("=")
        if not equals:
            return word
        if name.lower() in BBSTAT_KEYS and value:
            return value
    if words:
        raise BBError(f"bbstat: cannot read {' '.join(words)!r}: give job=JOBID, name=NAME, a key, or nothing",
                      exit_code=2)
    return None


def pool_view(pool: dict[str, Any]) -> dict[str, Any]:
    """A pool of the pools document (bricks) with its bytes: capacity, used and free."""
    granularity = pool["granularity"]
    return {**pool, "capacity_bytes": pool["quantity"] * granularity, "free_bytes": pool["free"] * granularity,
            "used_bytes": (pool["quantity"] - pool["free"]) * granularity}


def show(life: Lifecycle, key: str) -> dict[str, Any] | None:
    """key's live record described, else what the history kept of it (``torn_down``: true), else None."""
    buffer = life.store.get(key)
    if buffer is not None:
        return describe(buffer, life.site)
    kept = life.store.history(key)
    return None if kept is None else describe_finished(kept)


def gc(life: Lifecycle, older_than: float, *, dry_run: bool) -> dict[str, Any]:
    """Tear down buffers whose stage died mid-way or that failed to come up, and list bricks no record holds.

    A buffer whose stage-out died is never torn down here (its data has not left): it is
    held as failed, for a stage-out run again or a teardown with hurry. A stage-out whose
    copy still reports progress is alive, however old its record; so is any buffer whose
    record names a running stage process (``stage_now``), whatever ``older_than`` says."""
    orphans = life.store.orphans(older_than)
    # A stage still running (a teardown Slurm retries, a setup's rollback) is its own: never taken from it.
    stale = [b for b in orphans.stale_buffers if not stage_alive(b.meta.get(STAGE_NOW))]
    held = [b.key for b in stale if b.state is BufferState.STAGING_OUT
            and not copy_progressed(life.site, b.key, "stage-out", older_than)]
    torn = [b.key for b in stale if b.state is not BufferState.STAGING_OUT]
    # Failed to come up or to go away (never a failed stage-out: its data has not left).
    torn += [b.key for b in orphans.failed_buffers if not stage_out_failed(b)
             and not stage_alive(b.meta.get(STAGE_NOW))]
    forgotten, kept = abandoned(life, older_than)
    torn += forgotten
    lapsed = lapsed_builds(life)
    if not dry_run:
        for key in lapsed:
            allocation.forget(life.site.work_dir, key)
            life.note(key, "gc", "forgot the build setup left to a stage-in that will never come")
        for key in held:
            life.store.transition(
                key, BufferState.STAGING_OUT, BufferState.FAILED, meta={FAILED_STAGE: "stage-out"},
                last_error=f"stage-out: no progress for {older_than:.0f} s (did bbctl die?); the data is "
                           "kept: run stage-out again, or tear down with hurry")
            life.note(key, "gc", "stage-out without progress: held as failed, data kept")
        for key in torn:
            life.destroy(key, stage="gc")
    return {"stale_buffers": torn, "held_buffers": held, "abandoned_kept": kept, "lapsed_builds": lapsed,
            "stray_bricks": [a.brick_id for a in orphans.stray_bricks], "dry_run": dry_run}


# States of a built job buffer that holds nothing a stage-out still owes the user: it never ran.
NOTHING_OWED = (BufferState.CREATED, BufferState.STAGED_IN)
JOB_RAN = (BufferState.MOUNTED, BufferState.STAGED_OUT)  # built, and the job may have written results


def abandoned(life: Lifecycle, older_than: float) -> tuple[list[str], list[str]]:
    """(keys to tear down, keys kept): built job buffers, quiet for ``older_than`` s with no live stage,
    for which no teardown will come: slurmctld no longer has the job (a controller restored from an old
    state), or the job has ended with its buffer shown in teardown (a teardown Slurm killed as it
    started it, before bbctl could detach, and never retries). Torn down when Slurm asked for it, when
    the job never ran, or when its stage-out was verified; otherwise kept and listed: its results may
    not have left."""
    now, torn, kept, jobs = time.time(), [], [], _Jobs(life)
    for buffer in life.store.buffers():
        if not buffer.key.isdigit() or buffer.state not in (*NOTHING_OWED, *JOB_RAN):
            continue  # persistent buffers, and buffers in flight or failed (the rules above)
        if now - buffer.updated_at <= older_than or stage_alive(buffer.meta.get(STAGE_NOW)):
            continue
        verdict = teardown_verdict(buffer, jobs.get())
        if verdict is not None:
            (torn if verdict else kept).append(buffer.key)
    return torn, kept


def teardown_verdict(buffer: Buffer, jobs: dict[str, slurmconf.SlurmJob] | None) -> bool | None:
    """For a job buffer no stage is working on: None while Slurm has the job in hand (its teardown will
    come) or gives no answer; True when no teardown will come and the buffer is to be torn down (Slurm
    asked for the teardown, or slurmctld no longer has the job and the buffer owes the user nothing);
    False when slurmctld no longer has the job and its results may not have left (kept for an operator).
    ``jobs``: slurmconf.jobs()'s answer."""
    if jobs is None:
        return None
    job = jobs.get(buffer.key)
    if job is not None and not job.teardown_lost:
        return None
    owed = job is None and buffer.state not in NOTHING_OWED and not buffer.stage_out_verified
    return not owed


class _Jobs:
    """slurmconf.jobs(), asked once and only if needed (it lists the whole queue)."""

    def __init__(self, life: Lifecycle) -> None:
        self.life = life
        self.asked = False
        self.answer: dict[str, slurmconf.SlurmJob] | None = None

    def get(self) -> dict[str, slurmconf.SlurmJob] | None:
        if not self.asked:
            self.answer, self.asked = slurmconf.jobs(self.life.site.slurm_dir), True
        return self.answer


SWEEP_GRACE = 20.0  # s after the job ended: Slurm starts its teardown within a second or two


def sweep(life: Lifecycle, *, grace: float = SWEEP_GRACE, now: float | None = None) -> list[str]:
    """Tear down the job buffers whose teardown Slurm lost; the keys torn down.

    Slurm 22.05 SIGKILLs every script it is running for a job it cancels, and the teardown it has
    just queued for that job can be one of them, killed before bbctl runs ("teardown for JobId=N
    terminated by slurmctld"); it never starts another. Seen in CI (2026-12-06) for a job cancelled
    in stage-in and for one cancelled while held. Such a buffer is known by: slurmctld shows the job
    ended at least ``grace`` s ago with its buffer in teardown, no stage of ours is running for it,
    and no teardown has run for it since the job ended (one that ran and failed is Slurm's: it
    retries it). One ``squeue --json`` call for all jobs; ``bbctl sweep --every`` runs this as a service.
    """
    buffers = [b for b in life.store.buffers() if b.key.isdigit() and not stage_alive(b.meta.get(STAGE_NOW))]
    jobs = slurmconf.jobs(life.site.slurm_dir) if buffers else None
    if not jobs:
        return []
    now = time.time() if now is None else now
    torn = []
    for buffer in buffers:
        job = jobs.get(buffer.key)
        if job is None or not job.teardown_lost or job.end_time is None or now - job.end_time < grace:
            continue
        ended = job.end_time
        if any(t.get("stage") == "teardown" and float(t.get("start") or 0) >= ended - 1
               for t in buffer.meta.get(TIMINGS) or []):
            continue  # a teardown ran since the job ended: Slurm has it in hand
        life.note(buffer.key, "sweep", f"the job ended {now - ended:.0f} s ago and Slurm's teardown never ran "
                                       "(Slurm killed it as it started, and never retries one): tearing down")
        try:
            life.discard_interrupted(buffer, stage="sweep")  # as a teardown with hurry would have
            life.destroy(buffer.key, stage="sweep")  # timed as sweep: a teardown timing is Slurm's
        except BBError as exc:
            life.note(buffer.key, "sweep", f"teardown failed: {exc}; the next sweep or bbctl gc tries again")
            continue
        torn.append(buffer.key)
    return torn


def sweep_every(life: Lifecycle, seconds: float, *, stop: Callable[[], bool] = lambda: False) -> None:
    """sweep() every ``seconds`` until stop() (bbctl sweep --every, a site service): a state store or
    Slurm that does not answer is logged and tried again next time."""
    while not stop():
        try:
            sweep(life)
        except BBError as exc:
            log.warning("sweep: %s", exc)
        deadline = time.monotonic() + seconds
        while not stop() and time.monotonic() < deadline:
            time.sleep(min(1.0, seconds))


def lapsed_builds(life: Lifecycle) -> list[str]:
    """Deferred builds (bbctl.allocation.defer) whose job has ended or that slurmctld no longer has: no
    stage-in will build them and no teardown forget them. They hold no brick; this keeps the notes few."""
    lapsed, jobs = [], _Jobs(life)
    for key in allocation.deferred_keys(life.site.work_dir):
        answer = jobs.get()
        job = answer.get(key) if answer is not None else None
        if answer is not None and (job is None or job.ended):
            lapsed.append(key)
    return lapsed


def stage_alive(running: Any) -> bool:
    """A stage is recorded as running, by a process that exists here or on another host (not ours to judge)."""
    if not isinstance(running, dict):
        return False
    pid, where = running.get("pid"), running.get("host")
    if not pid or where != socket.gethostname():
        return bool(running)  # no pid recorded (an older bbctl) or another controller: assume alive
    return host.pid_alive(int(pid))


def copy_progressed(site: Site, key: str, stage: str, within: float) -> bool:
    """bb_stage wrote a progress snapshot for key's stage in the last ``within`` seconds."""
    progress = sitecfg.progress_path(site, key, stage)
    try:
        return time.time() - progress.stat().st_mtime < within
    except FileNotFoundError:
        return False


def describe(buffer: Buffer, site: Site, *, now: float | None = None) -> dict[str, Any]:
    """A buffer's record with its volume, paths, owner's name and age, as bbctl show prints it; its
    stage timings (oldest first) and the stage running now, with the copy's progress, lifted out of meta."""
    now = time.time() if now is None else now
    data = buffer.to_dict()
    meta = dict(data["meta"])
    finished, running = meta.pop(TIMINGS, []), meta.pop(STAGE_NOW, None)
    data.update(meta=meta, volume=sitecfg.volume_name(buffer.key),
                stage_path=str(sitecfg.stage_path(site, buffer.key)),
                mount_path=str(sitecfg.mount_path(site, buffer.key)), layout=layouts.of(buffer).describe(),
                owner=_user_name(buffer.owner_uid), age_seconds=round(now - buffer.created_at, 1),
                brick_count=len(buffer.bricks), timings=sorted_timings(finished),
                stage_now=running_stage(site, buffer.key, running, now), torn_down=False)
    return data


def describe_finished(kept: dict[str, Any]) -> dict[str, Any]:
    """A history record (bbctl.state.timings.history_record) in the shape of describe's, as far as it goes."""
    data = dict(kept)
    meta = dict(data.get("meta") or {})
    finished = meta.pop(TIMINGS, [])
    data.update(meta=meta, volume=sitecfg.volume_name(kept["key"]), owner=_user_name(kept["owner_uid"]),
                timings=sorted_timings(finished), stage_now=None, torn_down=True)
    return data


def running_stage(site: Site, key: str, running: Any, now: float) -> dict[str, Any] | None:
    """The stage running now on key: name, job, start, seconds so far and, for a copy, its last progress."""
    if not isinstance(running, dict) or "stage" not in running:
        return None
    start = float(running.get("start", now))
    view = {**running, "seconds": round(max(now - start, 0.0), 1), "progress": None}
    if running["stage"] in ("stage-in", "stage-out"):
        view["progress"] = last_progress(sitecfg.progress_path(site, running.get("job") or key, running["stage"]),
                                         since=start)
    return view


def last_progress(path: Path, *, since: float) -> dict[str, Any] | None:
    """The last complete snapshot bb_stage appended to path, if path was written since ``since``."""
    try:
        with path.open("rb") as stream:
            if os.fstat(stream.fileno()).st_mtime < since:
                return None  # an earlier run's
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(size - 4096, 0))
            tail = stream.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()[1:] if len(tail) >= 4096 else tail.splitlines()):
        try:
            snapshot = json.loads(line)
        except ValueError:
            continue
        if isinstance(snapshot, dict):
            return snapshot
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
