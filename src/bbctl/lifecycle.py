"""The life of a buffer, one method per Slurm stage; shared by bbctl, burst_buffer.lua and dw_wlm_cli.

Every stage reads the job's directives again from the script Slurm passes (the
reference parser; Slurm may have substituted ``%j``-style symbols), records its
intent in the state store *before* acting, runs one playbook through
ansible-runner, and records the outcome. Every step is idempotent: Slurm
retries teardown, and an operator may rerun any stage.

Every stage run for a buffer is timed into its record (Lifecycle.timed, see
bbctl.stage_meter). What a job's directives ask beyond a plain buffer (swap,
cache, what Slurm booked, node counts) is checked by bbctl.job_request.

Data safety: teardown refuses (without hurry) to destroy a buffer whose
requested stage-out has not been verified; a failed stage-out leaves the
buffer in place.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from bbctl import allocation, host, layouts, playbook_vars, policy, runner, server_health, slurmconf, stage_meter
from bbctl import job_request as job
from bbctl import site as sitecfg
from bbctl.directives import CreatePersistent, DirectiveError, JobRequest, check_buffer_type
from bbctl.errors import BBError, Refused
from bbctl.playbook_vars import CACHE, PRIVATE, SWAP
from bbctl.pools import NotEnoughBricks, Pool, load_pools, pools_document, write_pools_json
from bbctl.site import Site
from bbctl.stage_meter import StageMeter
from bbctl.state import Buffer, BufferSpec, BufferState, StateStore, open_store

log = logging.getLogger("bbctl")
ROLLBACK_MIN = 10  # seconds: a setup's rollback is not started with less of its budget left
ROLLBACK_STAGES = ("setup", "create-persistent")  # a destroy run by these stages is their rollback
BUILD_RESERVE = 60  # seconds of a build's budget kept for building the volume when it waits for bricks
USER_META = "user:"  # meta key prefix on a persistent buffer: a job that uses it
STAGE_MOUNTED = "stage_mounted"  # meta: mounted on the stage host (teardown must unmount it there)
FAILED_STAGE = "failed_stage"  # meta: the stage whose failure put the buffer in state failed
STAGE_OUT_SPECS = "stage_out_specs"  # meta: its stage-out's bb_stage requests by buffer key (to discard them)
BUILT = (BufferState.CREATED, BufferState.STAGED_IN, BufferState.MOUNTED, BufferState.STAGED_OUT,
         BufferState.STAGING_OUT)


class Lifecycle:
    def __init__(self, site: Site, *, say: Callable[[str], None] | None = None,
                 cancel: runner.Cancel | None = None, store: StateStore | None = None,
                 directory: policy.Directory | None = None) -> None:
        self.site = site
        self.directory = directory or policy.SystemDirectory()  # users and groups, for the site's policy
        self.say = say or (lambda _message: None)
        self.cancel = cancel
        self.store = store or open_store(site.state)
        self._pools: dict[str, Pool] | None = None
        self._bb_settings = slurmconf.read_settings(site.bb_conf)

    # --- configuration ------------------------------------------------------------------
    @property
    def pools(self) -> dict[str, Pool]:
        if self._pools is None:
            self._pools = load_pools(self.site.raw, self.site.inventory)
        return self._pools

    def pool(self, name: str | None) -> Pool:
        if name in (None, "", "(null)"):
            name = next(iter(self.pools))  # the first configured pool is the default
        if name not in self.pools:
            raise BBError(f"no pool {name!r}; configured: {', '.join(self.pools)}", exit_code=2)
        return self.pools[name]

    def request(self, script: Path | str | None) -> JobRequest:
        """The directives of a job script with the site's presets expanded (read_request, Policy.expand)."""
        try:
            return self.site.policy.expand(job.read_request(script))
        except policy.PolicyError as exc:
            raise BBError(str(exc), exit_code=2) from None

    def admit(self, request: JobRequest, *, pool: str | None = None, uid: int | None = None,
              gid: int | None = None) -> JobRequest:
        """``request`` with presets expanded if the site's policy allows it, else BBError (exit 2) saying why.

        ``pool``: the pool Slurm chose for buffers without pool= (default: the first configured);
        ``uid``/``gid``: who asks, when known (then the user's limit and persistent_creators apply too).
        """
        if request.jobdw is None and not request.create_persistent:
            return request  # no buffer to check (and no pools to read for a job that only uses one)
        who = self._identity(uid, gid)
        try:
            return self.site.policy.apply(request, default_pool=self.pool(pool).name, who=who)
        except policy.PolicyError as exc:
            raise BBError(str(exc), exit_code=2) from None

    def _identity(self, uid: int | None, gid: int | None) -> policy.Identity | None:
        """Who asks, for the policy; None when unknown, or when the site has no policy (no lookups then)."""
        if uid is None or not self.site.policy.defined:
            return None
        return self.directory.identity(uid, uid if gid is None else gid)

    def refresh_pools(self) -> dict[str, Any]:
        """Rewrite the pools file burst_buffer.lua returns to Slurm (atomic rename)."""
        document = self.pools_document()
        if self.site.pools_json is not None:
            write_pools_json(self.site.pools_json, document)
        return document

    def pools_document(self, *, datawarp: bool = False) -> dict[str, Any]:
        """What Slurm reads of the pools: only usable servers' bricks (bbctl.pools.pools_document)."""
        return pools_document(self.pools.values(), {name: self.store.allocated_brick_ids(name) for name in self.pools},
                              datawarp=datawarp, unusable=self.unusable_servers())

    def unusable_servers(self) -> set[str]:
        return {name for name, server in self.store.servers().items() if server.unusable}

    # --- storage servers' health ----------------------------------------------------------
    def storage_servers(self) -> list[str]:
        """The servers of the pools' bricks, by name: the servers bbctl allocates on."""
        return sorted({brick.server for pool in self.pools.values() for brick in pool.bricks})

    def note(self, key: str, stage: str, message: str) -> None:
        """Log a line about key's stage and tell whoever runs bbctl (say)."""
        log.info("%s %s: %s", key, stage, message)
        self.say(f"[{key} {stage}] {message}")

    # --- Slurm's stages ------------------------------------------------------------------
    def setup(self, job_id: str, uid: int, gid: int, script: Path | str | None, *,
              pool: str | None = None, size: int | None = None,
              swap_nodes: int | Callable[[], int] | None = None, slurm_books_swap: bool = False) -> list[Buffer]:
        """Create the job's buffer and any persistent buffers it asks for; destroy those it asks to.

        ``swap_nodes``: how many compute nodes get ``swap`` (required when the job asks for swap;
        a function is asked only then); the buffer holds the job's capacity plus swap for each.
        ``slurm_books_swap``: the caller is Slurm's datawarp plugin, whose ``size`` includes its
        own booking for swap.
        """
        key = sitecfg.job_key(job_id)
        job.refuse_root(uid)
        request = self.admit(job.read_request(script), pool=pool, uid=uid, gid=gid)
        self._check_persistent_use(request, uid)
        made = []
        for destroy in request.destroy_persistent:
            self.destroy_persistent(destroy.name, uid=uid, hurry=destroy.hurry)
        for create in request.create_persistent:
            made.append(self.create(create.name, uid, gid, create.capacity, create.pool or pool, "gluster",
                                    striped=create.access == "striped", stage="create-persistent"))
        if request.jobdw is not None:
            if callable(swap_nodes) and (request.swap or job.is_cache(request)):
                swap_nodes = job.node_count(swap_nodes, required=bool(request.swap))
            job.refuse_cache_on_nodes(key, request, swap_nodes)
            booked = job.booked_for_persistent(request, lambda name: self.pool(name or pool))
            if slurm_books_swap:
                booked += job.booked_for_swap(request, lambda: self.pool(request.jobdw.pool or pool), swap_nodes)
            capacity = max(request.jobdw.capacity, (size or 0) - booked)
            swap = job.swap_meta(key, request, swap_nodes)
            build = {"key": key, "uid": uid, "gid": gid, "capacity": capacity + job.swap_bytes(swap),
                     "pool_name": request.jobdw.pool or pool, "fs": request.jobdw.fs,
                     "striped": "striped" in request.jobdw.access_modes,
                     "meta": {**swap, **job.cache_meta(request)}}
            try:
                made.append(self.create(**build))
            except NotEnoughBricks as short:  # Slurm's books ran ahead of ours: build it in stage-in
                allocation.defer(self.site.work_dir, key, build)
                self.note(key, "setup", f"{short}; the buffer will be built by stage-in once bricks are free")
        return made

    def create(self, key: str, uid: int, gid: int, capacity: int, pool_name: str | None,
               fs: str, *, striped: bool = True, stage: str = "setup",
               meta: dict[str, Any] | None = None, budget: int | None = None,
               wait: float | None = None) -> Buffer:
        """Allocate bricks, build the file system and mount it on the stage host. Idempotent.

        ``striped``: files spread over all bricks (bbctl.layouts), as DataWarp's access_mode=striped.
        ``stage``: what the timing is recorded as (setup, or create-persistent).
        ``budget``: seconds for waiting for bricks and building (default: the stage's playbook timeout);
        ``wait``: the most of it spent waiting for bricks (default ``brick_wait``; never into the last
        BUILD_RESERVE s): NotEnoughBricks when too few came free.
        """
        existing = self.store.get(key)
        if existing is not None and existing.state in BUILT:
            if existing.owner_uid != uid:
                raise Refused(f"buffer {key} exists and belongs to uid {existing.owner_uid}")
            return existing
        budget = self._stage_timeout(stage) if budget is None else budget
        deadline = time.monotonic() + budget  # building and any rollback end by then: Slurm's kill comes next
        with self.timed(key, stage) as meter:
            waited = 0.0  # seconds spent waiting for bricks: the build gets the rest of the budget
            if existing is None:
                pool = self.pool(pool_name)
                self._refuse_volume_clash(key)
                layout = self.layout(capacity, pool, striped=striped and fs == "gluster")
                existing, waited = self._allocate(
                    BufferSpec(key=key, owner_uid=uid, owner_gid=gid, capacity=capacity, fs=fs,
                               bricks=layout.bricks,
                               meta={layouts.META: layout.to_meta(), **(meta or {})}), pool, stage,
                    wait=min(self.site.brick_wait if wait is None else wait, max(0, budget - BUILD_RESERVE)))
                self.refresh_pools()
                self.note(key, "setup", f"allocated {len(existing.bricks)} brick(s) of pool {pool.name} "
                           f"({layout.describe()}): " + ", ".join(b.id for b in existing.bricks))
                meter.started()  # the record exists now
            buffer = self.store.transition(key, (BufferState.ALLOCATING, BufferState.CREATING, BufferState.FAILED),
                                           BufferState.CREATING, last_error="")
            run = meter.ran(self._run(buffer, "setup", "buffer_create.yml", extra={},
                                      timeout=max(1, budget - int(waited))))
            if run.status != "successful":
                self._roll_back(buffer, run, left=deadline - time.monotonic())
            return self.store.transition(key, BufferState.CREATING, BufferState.CREATED)

    def _allocate(self, spec: BufferSpec, pool: Pool, stage: str, *, wait: float) -> tuple[Buffer, float]:
        """(record, seconds waited): spec's bricks, waiting in turn up to ``wait`` s when Slurm's books ran
        ahead of ours (bbctl.allocation)."""
        def waiting(short: BBError) -> None:
            self.note(spec.key, stage, f"waiting up to {wait:.0f} s for bricks: {short}")

        return allocation.allocate(self.store, spec, pool, lock=self.site.work_dir / "allocation.lock",
                                   wait=wait, on_wait=waiting)

    def _stage_timeout(self, stage: str) -> int:
        """Seconds a stage's playbook may take: Slurm's timeout for it less bbctl's margin (bbctl.slurmconf)."""
        return slurmconf.stage_timeout(_timeout_stage(stage), self._bb_settings)

    @staticmethod
    def layout(capacity: int, pool: Pool, *, striped: bool) -> layouts.Layout:
        """The layout of a new buffer; BBError (exit 2) if its pool could never hold it."""
        layout = layouts.plan(capacity, pool.granularity, striped=striped, striped_layout=pool.striped_layout)
        layouts.check_fits(layout, capacity, pool)
        return layout

    def check_fits(self, request: JobRequest, pool: str | None = None) -> None:
        """Refuse, before anything is allocated, a job whose buffers their pools could never hold."""
        for create in request.create_persistent:
            self.layout(create.capacity, self.pool(create.pool or pool), striped=create.access == "striped")
        jobdw = request.jobdw
        if jobdw is not None:
            self.layout(jobdw.capacity, self.pool(jobdw.pool or pool),
                        striped=jobdw.fs == "gluster" and "striped" in jobdw.access_modes)

    def _roll_back(self, buffer: Buffer, run: runner.StageRun, *, left: float) -> None:
        """A buffer that did not come up holds no brick: destroy what was built, release, raise run's failure.

        ``left``: seconds of the stage's budget still unspent; the rollback gets them, and none is tried
        with less than ROLLBACK_MIN (a build that timed out has spent it all: Slurm would kill the
        rollback half-way). The buffer is then left failed, for the job's teardown or bbctl gc."""
        try:
            self._failed(buffer, run)
        except runner.StageFailed as failure:
            if left < ROLLBACK_MIN:
                self.note(buffer.key, "setup", f"no time left to roll back ({max(left, 0):.0f} s of the stage's "
                                               "timeout); the job's teardown or bbctl gc will")
                raise failure from None
            try:
                self.destroy(buffer.key, stage="setup", timeout=int(left))
            except BBError as exc:  # left failed: gc destroys it later
                self.note(buffer.key, "setup", f"could not roll back ({exc}); bbctl gc will")
            raise failure from None

    def _refuse_volume_clash(self, key: str) -> None:
        volume = sitecfg.volume_name(key)
        for other in self.store.buffers():
            if other.key != key and sitecfg.volume_name(other.key) == volume:
                raise BBError(f"buffer {key} would share volume {volume} with buffer {other.key}: "
                              "choose another name", exit_code=2)

    def stage_in(self, job_id: str, script: Path | str | None) -> int:
        job_key, request = sitecfg.job_key(job_id), job.read_request(script)
        self._build_deferred(job_key)
        if not request.stage_in:
            return 0
        for key, specs in playbook_vars.stage_specs(self.site, job_key, request.stage_in).items():
            with self.timed(key, "stage-in", job_key=job_key) as meter:
                run = meter.ran(self._copy(key, specs, stage="stage-in", playbook="stage_in.yml", job_key=job_key))
                run.raise_for_failure()  # Slurm holds the job; its teardown decides what happens to the data
        if request.jobdw is not None:
            self.store.transition(job_key, BUILT, BufferState.STAGED_IN)
        return len(request.stage_in)

    def _build_deferred(self, job_key: str) -> None:
        """Build the job buffer setup left to stage-in (bbctl.allocation.defer), waiting for its bricks up
        to half of stage-in's time (the other half for the build and the copy)."""
        build = allocation.deferred(self.site.work_dir, job_key)
        if build is None:
            return
        budget = self._stage_timeout("stage-in") // 2
        self.create(**build, budget=budget, wait=budget)
        allocation.forget(self.site.work_dir, job_key)

    def has_buffer(self, job_id: str) -> bool:
        """Whether the job has a buffer of its own: recorded, or left by setup for stage-in to build."""
        key = sitecfg.job_key(job_id)
        return self.store.get(key) is not None or allocation.deferred(self.site.work_dir, key) is not None

    def real_size(self, job_id: str) -> int:
        """Bytes the job's buffer really has (whole data bricks, not redundancy), 0 without one."""
        buffer = self.store.get(sitecfg.job_key(job_id))
        if buffer is None:
            return 0
        return layouts.of(buffer).data_bricks * self.pool(buffer.pool).granularity

    def paths(self, job_id: str, script: Path | str | None) -> dict[str, str]:
        request = self.request(script)
        jobdw = request.jobdw
        return sitecfg.job_environment(
            self.site, job_id, jobdw=jobdw is not None,
            private=jobdw is not None and "private" in jobdw.access_modes,
            persistent=tuple(request.persistent), max_file=self.max_file(request),
            cache=jobdw is not None and jobdw.type == "cache")

    def max_file(self, request: JobRequest) -> int | None:
        """Bytes one file of the job's striped buffer can hold, when less than the buffer (else None).

        A pure function of the directives and the pools' configuration, as burst_buffer.lua computes
        it at the same stage: the buffer planned from the request is the one setup built.
        """
        jobdw = request.jobdw
        if jobdw is None or jobdw.fs != "gluster" or "striped" not in jobdw.access_modes:
            return None
        pool = self.pools.get(jobdw.pool or next(iter(self.pools)))
        if pool is None:  # setup refused it: there is no buffer
            return None
        layout = layouts.plan(jobdw.capacity, pool.granularity, striped=True, striped_layout=pool.striped_layout)
        return layout.file_limit(pool.granularity)

    def pre_run(self, job_id: str, script: Path | str | None, nodes: Iterable[str]) -> None:
        """Mount the job's buffer and the persistent buffers it uses on its compute nodes."""
        key, request, nodes = sitecfg.job_key(job_id), self.request(script), sorted(set(nodes))
        if not nodes:
            raise BBError(f"job {key}: no compute nodes given to mount the buffer on", exit_code=2)
        for name in request.persistent:
            persistent = self._require(name, BUILT)
            self.store.transition(name, BUILT, persistent.state, meta={USER_META + key: nodes})
            self._mount(persistent, nodes, stage="pre-run", job_key=key)
        if request.jobdw is not None:
            buffer = self._require(key, BUILT)
            job.check_swap_nodes(buffer, nodes)
            job.check_cache_nodes(buffer, nodes)
            private = "private" in request.jobdw.access_modes
            buffer = self.store.transition(key, BUILT, buffer.state, meta={"nodes": nodes, PRIVATE: private})
            self._mount(buffer, nodes, stage="pre-run", job_key=key)
            self.store.transition(key, BUILT, BufferState.MOUNTED)

    def post_run(self, job_id: str, script: Path | str | None) -> None:
        key, request = sitecfg.job_key(job_id), job.read_request(script)
        buffer = self.store.get(key)
        if buffer is not None and buffer.meta.get("nodes"):
            # Slurm 22.05 runs no stage-out after a failed post-run: the job would wait in stage-out
            # until an operator's `scancel --hurry` discarded its data. So a node that could not
            # unmount and is drained for it does not fail post-run: the job's data is staged out
            # from the stage host's own mount, and the teardown unmounts that node again.
            left = self._unmount(buffer, buffer.meta["nodes"], stage="post-run", job_key=key, leave_drained=True)
            self.store.transition(key, BUILT, buffer.state, meta={"nodes": left or None})
        for name in request.persistent:
            self._release_persistent_use(name, key)

    def stage_out(self, job_id: str, script: Path | str | None) -> int:
        job_key, request = sitecfg.job_key(job_id), job.read_request(script)
        if job.is_cache(request):  # its stage_out lines can only be a persistent buffer's
            return self.write_back(job_key, request) + self._stage_out_lines(job_key, request, own=False)
        if not request.stage_out:
            return 0
        return self._stage_out_lines(job_key, request, own=request.jobdw is not None)

    def _stage_out_lines(self, job_key: str, request: JobRequest, *, own: bool) -> int:
        """The stage_out lines; ``own``: the job's own buffer is staged out (its state follows)."""
        if not request.stage_out:
            return 0
        by_key = playbook_vars.stage_specs(self.site, job_key, request.stage_out)
        if own:
            # A failed stage-out left the data where it was: it may simply run again. Its requests are
            # kept so that a teardown without the job's script (bbctl sweep) can discard its temporaries.
            states = (BufferState.FAILED,) if stage_out_failed(self.store.get(job_key)) else BUILT
            self._require(job_key, states)
            self.store.transition(job_key, states, BufferState.STAGING_OUT, stage_out_verified=False, last_error="",
                                  meta={FAILED_STAGE: None, STAGE_OUT_SPECS: by_key})
        for key, specs in by_key.items():
            with self.timed(key, "stage-out", job_key=job_key) as meter:
                run = meter.ran(self._copy(key, specs, stage="stage-out", playbook="stage_out.yml",
                                           job_key=job_key))
                if run.status != "successful" and own:
                    # The buffer stays, in state failed: nothing is deleted until stage-out succeeds or hurry.
                    self._failed(self.store.get(job_key), run)
                run.raise_for_failure()
        if own:
            self.store.transition(job_key, BufferState.STAGING_OUT, BufferState.STAGED_OUT, stage_out_verified=True)
        return len(request.stage_out)

    def write_back(self, job_key: str, request: JobRequest) -> int:
        """Stage-out of a cache buffer: what the job changed in its cache goes back to pfs=DIR.

        As a stage_out line: the user's identity, temporary names, verified; a failure leaves the
        buffer in state failed (kept, the job held) and the stage may run again.
        """
        states = (BufferState.FAILED,) if stage_out_failed(self.store.get(job_key)) else BUILT
        buffer = self._require(job_key, states)
        if buffer.meta.get("nodes"):
            raise Refused(f"buffer {job_key}: its cache is still mounted on {', '.join(buffer.meta['nodes'])} "
                          "(post-run has not unmounted it), so the job may still be writing: end what uses it, "
                          "run post-run, then stage-out again")
        lower = buffer.meta.get(CACHE) or request.jobdw.pfs
        buffer = self.store.transition(job_key, states, BufferState.STAGING_OUT, stage_out_verified=False,
                                       last_error="", meta={FAILED_STAGE: None, STAGE_MOUNTED: True})
        with self.timed(job_key, "stage-out") as meter:
            run = meter.ran(self._run(buffer, "stage-out", "cache_writeback.yml",
                                      extra={"mount_path": str(self.stage_path(job_key))}, stages=[],
                                      more={"bb_cache": {"lower": lower}}))
            if run.status != "successful":
                self._failed(self.store.get(job_key), run)
            run.raise_for_failure()
        self.store.transition(job_key, BufferState.STAGING_OUT, BufferState.STAGED_OUT, stage_out_verified=True)
        return 1

    def teardown(self, job_id: str, script: Path | str | None, *, hurry: bool) -> bool:
        """Destroy the job's buffer; True if there was one. Unknown job: success, nothing to do."""
        key = sitecfg.job_key(job_id)
        request = job.request_or_empty(script)
        for name in request.persistent:
            self._release_persistent_use(name, key)
        if allocation.forget(self.site.work_dir, key):
            self.note(key, "teardown", "the build setup left to stage-in is forgotten")
        buffer = self.store.get(key)
        if buffer is None:
            self.note(key, "teardown", "no buffer recorded: nothing to tear down")
            return False
        with self.timed(key, "teardown"):
            writes_out = request.stage_out or job.is_cache(request) or buffer.meta.get(CACHE)
            if not hurry and writes_out and not buffer.stage_out_verified and buffer.state is not \
                    BufferState.ALLOCATING:
                raise Refused(f"buffer {key}: its stage-out has not succeeded, so it is kept "
                              f"(state {buffer.state.value}"
                              f"{': ' + buffer.last_error if buffer.last_error else ''}); "
                              "rerun stage-out, or tear down with hurry to discard the data")
            self.discard_interrupted(buffer, request, stage="teardown")
            self._destroy(key, stage="teardown")
        return True

    def discard_interrupted(self, buffer: Buffer, request: JobRequest | None = None, *, stage: str) -> None:
        """Before a job buffer is torn down with hurry (or by ``bbctl sweep`` for Slurm) while its
        stage-out was interrupted (state staging_out, or failed in stage-out): remove, as the user, the
        temporaries (``.NAME.bb-stage.tmp``) that stage-out or the cache's write-back left in the user's
        destinations. The stage_out lines come from the record (kept when the stage-out started), else
        from ``request``. Never fails the teardown (hurry discards the data anyway): what is left is
        named in bbctl.log."""
        if buffer.stage_out_verified or not (buffer.state is BufferState.STAGING_OUT or stage_out_failed(buffer)):
            return
        if buffer.meta.get(CACHE):
            self._discard(buffer.key, buffer.key, "cache_writeback.yml", stage, "write-back",
                          more={"bb_cache": {"lower": buffer.meta[CACHE]}})
        by_key = buffer.meta.get(STAGE_OUT_SPECS)
        if by_key is None and request is not None and request.stage_out:
            by_key = playbook_vars.stage_specs(self.site, buffer.key, request.stage_out)
        for key, specs in (by_key or {}).items():
            self._discard(key, buffer.key, "stage_out.yml", stage, "stage-out", stages=specs)

    def _discard(self, key: str, job_key: str, playbook: str, stage: str, what: str, *,
                 stages: list[dict[str, Any]] | None = None, more: dict[str, Any] | None = None) -> None:
        """One playbook run with bb_stage_discard on buffer ``key`` (mounted on the stage host for it)."""
        buffer = self.store.get(key)
        if buffer is None:
            return
        if not buffer.meta.get(STAGE_MOUNTED):  # recorded first: the destroy then unmounts it
            buffer = self.store.transition(key, {buffer.state}, buffer.state, meta={STAGE_MOUNTED: True})
        run = self._run(buffer, stage, playbook, extra={"mount_path": str(self.stage_path(key))},
                        stages=stages or [], job_key=job_key, more={**(more or {}), "bb_stage_discard": True},
                        timeout=max(1, self._stage_timeout(stage) // 2))
        if run.status == "successful":
            removed = sum(int(item.get("discarded") or 0) for _host, result in run.results
                          for item in result.get("results") or [result])  # a loop's result holds its items
            self.note(job_key, stage, f"removed {removed} temporary file(s) the interrupted {what} "
                                      "left in the destinations")
        else:
            self.note(job_key, stage, f"could not remove the interrupted {what}'s temporary files "
                                      f"(.NAME.bb-stage.tmp, the user's to delete): {run.status}; "
                                      f"{'; '.join(run.failures) or run.output_tail()}")

    # --- persistent buffers ------------------------------------------------------------------
    def create_persistent(self, name: str, uid: int, gid: int, capacity: int, pool: str | None, *,
                          buffer_type: str = "scratch") -> Buffer:
        """A named buffer outside any job; the name and type pass the directive grammar first, then the
        site's policy (persistent_creators, the pool's and the user's limits)."""
        key = job.persistent_key(name)
        try:
            check_buffer_type(buffer_type)
        except DirectiveError as exc:
            raise BBError(str(exc), exit_code=2) from None
        job.refuse_root(uid)
        asked = CreatePersistent(name=name, capacity=capacity, access="striped", type=buffer_type, pool=pool,
                                 pfs=None, line=0)
        try:
            self.site.policy.check(asked, default_pool=self.pool(pool).name, who=self._identity(uid, gid))
        except policy.PolicyError as exc:
            raise BBError(str(exc), exit_code=2) from None
        return self.create(key, uid, gid, capacity, pool, "gluster", stage="create-persistent")

    def destroy_persistent(self, name: str, *, uid: int | None = None, hurry: bool = False) -> bool:
        """Destroy a named buffer; False if there is none (a name no buffer can have is refused, exit 2).

        Every name a record was ever created under passes the grammar (it only grew), so checking
        the name first never leaves a buffer that cannot be destroyed."""
        key = job.persistent_key(name)
        buffer = self.store.get(key)
        if buffer is None:
            return False
        if uid is not None and uid not in (0, buffer.owner_uid):
            raise Refused(f"persistent buffer {name} belongs to uid {buffer.owner_uid}, not {uid}")
        with self.timed(key, "destroy-persistent"):
            users = sorted(k[len(USER_META):] for k in buffer.meta if k.startswith(USER_META))
            if users and not hurry:
                raise Refused(f"persistent buffer {name} is in use by job(s) {', '.join(users)}; "
                              "destroy it when they have ended")
            self._destroy(key, stage="destroy-persistent")
        return True

    # --- stage timings --------------------------------------------------------------------------
    def timed(self, key: str, stage: str, *, job_key: str | None = None) -> AbstractContextManager[StageMeter]:
        """Record the stage run within on key's record (bbctl.stage_meter.timed); never fails the stage."""
        return stage_meter.timed(self.store, self.note, key, stage, job_key=job_key)

    # --- shared steps --------------------------------------------------------------------------
    def destroy(self, key: str, *, stage: str, timeout: int | None = None) -> None:
        """Unmount everywhere, delete the file system, release the bricks. Idempotent.

        Timed as ``stage`` (gc), or as rollback when a setup undoes what it built; ``timeout``: seconds
        for its playbook (default: the stage's)."""
        if self.store.get(key) is None:
            return
        with self.timed(key, "rollback" if stage in ROLLBACK_STAGES else stage):
            self._destroy(key, stage=stage, timeout=timeout)

    def _destroy(self, key: str, *, stage: str, timeout: int | None = None) -> None:
        # One destroyer at a time: Slurm's teardown may start late while bbctl sweep or gc tears the
        # same buffer down; the second finds the record gone.
        with host.exclusive(self.site.runs_dir / key / "destroy.lock"):
            self._destroy_now(key, stage=stage, timeout=timeout)

    def _destroy_now(self, key: str, *, stage: str, timeout: int | None) -> None:
        buffer = self.store.get(key)
        if buffer is None:
            return
        if buffer.state is not BufferState.ALLOCATING:
            buffer = self.store.transition(key, set(BufferState) - {BufferState.DESTROYED},
                                           BufferState.DESTROYING)
            nodes = sorted({n for k, v in buffer.meta.items() if k == "nodes" or k.startswith(USER_META)
                            for n in v})
            more: dict[str, Any] = {"bb_stage_mounted": bool(buffer.meta.get(STAGE_MOUNTED))}
            if nodes:
                more["bb_client_mount_path"] = str(sitecfg.mount_path(self.site, key))
                if buffer.meta.get(CACHE):
                    more["bb_client_mount_path"] = str(sitecfg.cache_volume_path(self.site, key))
                    more["bb_client_cache_path"] = str(sitecfg.mount_path(self.site, key))
                if buffer.meta.get(SWAP):
                    more["bb_client_swap"] = str(buffer.meta[SWAP])
            extra = {"mount_path": str(self.stage_path(key))}
            if buffer.meta.get(PRIVATE):
                extra["private_mount_path"] = str(sitecfg.private_mount_path(self.site, key))
            # A rollback's run is not counted: the failed build was, once, and a rollback that succeeds
            # on a server must not reset the failure that made it necessary.
            run = self._run(buffer, stage, "buffer_destroy.yml", nodes=nodes, extra=extra, more=more,
                            timeout=timeout, count_health=stage not in ROLLBACK_STAGES)
            if nodes:
                server_health.drain_stuck(self, key, run, nodes, more["bb_client_mount_path"])
            if run.status != "successful":
                self._failed(buffer, run)
            self.store.transition(key, BufferState.DESTROYING, BufferState.DESTROYED)
        self.store.release(key)
        self.refresh_pools()
        runner.prune_runs(self.site, {b.key for b in self.store.buffers()})
        self.note(key, stage, "destroyed; bricks released")

    def stage_path(self, key: str) -> Path:
        return sitecfg.stage_path(self.site, key)

    def _mount(self, buffer: Buffer, nodes: list[str], *, stage: str, job_key: str) -> None:
        with self.timed(buffer.key, stage, job_key=job_key) as meter:
            paths = playbook_vars.client_paths(self.site, buffer)
            run = meter.ran(self._run(buffer, stage, "buffer_mount.yml", nodes=nodes, job_key=job_key,
                                      extra=paths))
            server_health.drain_stuck(self, job_key, run, nodes, paths["mount_path"], mounting=True)
            run.raise_for_failure()

    def _unmount(self, buffer: Buffer, nodes: list[str], *, stage: str, job_key: str,
                 leave_drained: bool = False) -> list[str]:
        """Unmount buffer from nodes; the nodes it stays mounted on (only with leave_drained: those
        drained in Slurm for it, when they are all that failed). Raises StageFailed otherwise."""
        with self.timed(buffer.key, stage, job_key=job_key) as meter:
            paths = playbook_vars.client_paths(self.site, buffer)
            run = meter.ran(self._run(buffer, stage, "buffer_unmount.yml", nodes=nodes, job_key=job_key,
                                      extra=paths))
            drained = server_health.drain_stuck(self, job_key, run, nodes, paths["mount_path"])
            if leave_drained and drained and run.status != "successful" and set(run.failed_hosts()) <= set(drained):
                self.note(job_key, stage, f"the buffer stays mounted on {', '.join(drained)} (drained): the job "
                                          "goes on to stage-out, and its teardown unmounts it there")
                return drained
            run.raise_for_failure()
            return []

    def _release_persistent_use(self, name: str, job_key: str) -> None:
        persistent = self.store.get(name)
        if persistent is None or USER_META + job_key not in persistent.meta:
            return
        self._unmount(persistent, persistent.meta[USER_META + job_key], stage="post-run", job_key=job_key)
        self.store.transition(name, BUILT, persistent.state, meta={USER_META + job_key: None})

    def _check_persistent_use(self, request: JobRequest, uid: int) -> None:
        for name in request.persistent:
            buffer = self._require(name, BUILT)
            if buffer.owner_uid != uid:
                raise Refused(f"persistent buffer {name} belongs to uid {buffer.owner_uid}; "
                              "only its owner's jobs may use it")

    def _require(self, key: str, states: Iterable[BufferState]) -> Buffer:
        buffer = self.store.get(key)
        if buffer is None:
            raise BBError(f"no buffer {key}: it was never set up, or is already torn down")
        if buffer.state not in set(states):
            error = f" ({buffer.last_error})" if buffer.last_error else ""
            raise Refused(f"buffer {key} is {buffer.state.value}{error}, not ready for this stage")
        return buffer

    def _copy(self, key: str, specs: list[dict[str, str]], *, stage: str, playbook: str,
              job_key: str) -> runner.StageRun:
        """Mount the buffer on the stage host (recorded first, so teardown unmounts it) and copy."""
        buffer = self._require(key, BUILT)
        if not buffer.meta.get(STAGE_MOUNTED):
            buffer = self.store.transition(key, BUILT, buffer.state, meta={STAGE_MOUNTED: True})
        return self._run(buffer, stage, playbook, extra={"mount_path": str(self.stage_path(key))}, stages=specs,
                         job_key=job_key)

    def _run(self, buffer: Buffer, stage: str, playbook: str, *, extra: dict[str, Any],
             nodes: Iterable[str] = (), stages: list[dict[str, str]] | None = None,
             job_key: str | None = None, more: dict[str, Any] | None = None,
             timeout: int | None = None, count_health: bool = True) -> runner.StageRun:
        """One playbook run for ``buffer``, recorded (run dir, log lines, progress) under the key of the
        job it serves (``job_key``; the buffer's own key for a run that serves no job), and counted in
        its storage servers' health (bbctl.server_health) unless ``count_health`` is false."""
        key = job_key or buffer.key
        self.note(key, stage, f"{playbook} for buffer {buffer.key} ...")
        extravars: dict[str, Any] = {"bb_buffer": playbook_vars.buffer_vars(buffer, extra), **(more or {})}
        if stages is not None:
            extravars.update(bb_stages=stages, bb_stage_uid=buffer.owner_uid, bb_stage_gid=buffer.owner_gid,
                             bb_stage_workers=self.site.stage_workers,
                             bb_stage_progress=str(sitecfg.progress_path(self.site, key, stage)))
        def note(message: str) -> None:
            self.note(key, stage, message)

        progress = runner.ProgressWatcher(Path(extravars["bb_stage_progress"]), note) if stages is not None \
            else contextlib.nullcontext()
        with progress:
            run = runner.run_stage(
                self.site, key, stage, playbook, extravars=extravars,
                hosts=sorted({b.server for b in buffer.bricks}), nodes=nodes,
                timeout=self._stage_timeout(stage) if timeout is None else timeout,
                on_event=note, cancel=self.cancel)
        self.note(key, stage, f"{run.status} in {run.seconds:.1f} s")
        if count_health:
            server_health.record(self, key, buffer, run)
        return run

    def _failed(self, buffer: Buffer, run: runner.StageRun) -> Buffer:
        """Record the failed run on the buffer (state failed, its message, its stage) and raise it."""
        try:
            run.raise_for_failure()
        except runner.StageFailed as exc:
            self.store.transition(buffer.key, set(BufferState) - {BufferState.DESTROYED}, BufferState.FAILED,
                                  last_error=str(exc), meta={FAILED_STAGE: run.stage})
            raise
        return buffer


def stage_out_failed(buffer: Buffer | None) -> bool:
    """The buffer failed in stage-out: its data has not left, and is kept."""
    return (buffer is not None and buffer.state is BufferState.FAILED
            and buffer.meta.get(FAILED_STAGE) == "stage-out")


def _timeout_stage(stage: str) -> str:
    return stage if stage in slurmconf.STAGE_TIMEOUT_KEYS else "teardown"
