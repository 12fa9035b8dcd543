"""Drift between the state store and the servers: found by a survey, reported, and on request repaired.

Someone deletes a volume with the gluster CLI, a teardown dies after the volume went
but before a brick directory did, a compute node keeps a mount after a failed
post-run, a setup dies before its volume came up: the store and the machines then
disagree, and the pools' free figures lie. ``survey`` reads what exists (the
``buffer_survey`` playbook, read-only, over every storage server, the stage host and
the compute nodes); ``compare`` lists each difference as a ``Drift``; ``repair``
fixes them with the playbooks every teardown uses, so nothing is removed by a path
that a normal teardown would not take.

A storage server that does not answer the survey counts one failure towards its being
marked unusable (bbctl.server_health.record_unanswered): the survey is how a server that
hangs, rather than fails, is found.

Only names bbctl makes (``bbjob-*``, ``bbp-*``) are ever looked at. Lustre buffers are
surveyed by the targets mounted under the lustre_buffer role's target root (their MDT
missing, or targets of an fsname no record holds); Lustre never ran here, so that part is
tested with survey results, not on a live system (docs/LUSTRE.md).

``exit_code`` is what ``bbctl reconcile`` and ``bbctl gc`` (which reports the same drift)
exit with: 0 when no drift is left, EXIT_DRIFT when some was found and not repaired, so
that a monitoring check can run either.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bbctl import runner, server_health, slurmconf
from bbctl import site as sitecfg
from bbctl.errors import BBError
from bbctl.state import Buffer, BufferState

# A setup or teardown that is running now has a record in one of these states and may
# not have made (or removed) its volume yet: only an old one is drift.
MOVING = frozenset({BufferState.ALLOCATING, BufferState.CREATING, BufferState.DESTROYING})
PREFIXES = (sitecfg.JOB_VOLUME_PREFIX, sitecfg.PERSISTENT_VOLUME_PREFIX)
PRIVATE_SUFFIX = "-private"

VOLUME_MISSING = "volume_missing"     # a record whose volume is not there (deleted, or never came up)
ORPHAN_VOLUME = "orphan_volume"       # a volume no record holds
STRAY_BRICK_DIR = "stray_brick_dir"   # a brick directory of no record and no volume
STRAY_MOUNT = "stray_mount"           # a buffer mount of no record
STRAY_AUX_MOUNT = "stray_aux_mount"   # a gluster quota command's mount of a volume that is gone
ORPHAN_LUSTRE = "orphan_lustre"       # Lustre targets mounted of an fsname no record holds

# Exit code of a report with drift left (bbctl --help): found and not repaired, or a repair failed.
EXIT_DRIFT = 5


@dataclass(frozen=True)
class Reality:
    """What the survey found. Hosts are inventory names; brick roots are the pools' brick paths."""

    volumes: Mapping[str, list[tuple[str, str]]]  # volume name -> [(server, brick root)]
    brick_dirs: list[tuple[str, str, str]]        # (server, brick root, volume name)
    mounts: list[tuple[str, str]]                 # (host, mount target)
    answered: frozenset[str]                      # storage servers whose glusterd answered
    unanswered: Mapping[str, str] = field(default_factory=dict)  # host -> why it did not
    aux_mounts: list[tuple[str, str, str]] = field(default_factory=list)  # (server, target, volume)
    lustre_targets: list[LustreTarget] = field(default_factory=list)


@dataclass(frozen=True)
class LustreTarget:
    """A Lustre target mounted under the lustre_buffer role's target root (buffer_survey)."""

    server: str
    target: str  # its mount point
    device: str
    fsname: str
    kind: str  # mdt or ost
    index: int


@dataclass(frozen=True)
class Drift:
    kind: str
    volume: str
    key: str | None  # the record's key (volume_missing only)
    where: tuple[str, ...]  # host:path of each piece
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "where": list(self.where)}


def survey(life: Any) -> Reality:
    """Run buffer_survey.yml over every storage server, the stage host and the compute nodes."""
    site = life.site
    run = runner.run_stage(
        site, "reconcile", "survey", "buffer_survey.yml",
        extravars={"bb_survey_mount_roots": [str(site.stage_root), str(site.mount_root)]},
        hosts=["bb_storage", "bb_clients"], timeout=slurmconf.stage_timeout("setup", life._bb_settings),
        cancel=life.cancel)
    storage = storage_servers(life)
    return reality_of(run.results, address_map(life.pools.values()), storage=storage,
                      failures=[*run.failures, *silent(run, storage)])


def silent(run: runner.StageRun, storage: Iterable[str]) -> list[str]:
    """Failures ("host: why") for the storage servers that gave no result at all before the survey timed
    out (a server that hangs); none unless it timed out."""
    if run.status != "timeout":
        return []
    spoke = run.ok_hosts() | set(run.failed_hosts())
    return [f"{host}: no answer before the survey timed out after {run.seconds:.0f} s"
            for host in sorted(set(storage) - spoke)]


def address_map(pools: Iterable[Any]) -> dict[str, str]:
    """bb_gluster_host (what volume info names) -> inventory name, from the pools' bricks."""
    return {brick.address: brick.server for pool in pools for brick in pool.bricks}


def storage_servers(life: Any) -> frozenset[str]:
    return frozenset(brick.server for pool in life.pools.values() for brick in pool.bricks)


def reality_of(results: Iterable[tuple[str, Mapping[str, Any]]], addresses: Mapping[str, str], *,
               storage: frozenset[str], failures: Iterable[str] = ()) -> Reality:
    """Reality from buffer_survey's results, (host, result) in any order."""
    volumes: dict[str, list[tuple[str, str]]] = {}
    brick_dirs, mounts, aux_mounts, lustre, answered = [], [], [], [], set()
    for host, result in results:
        if "brick_dirs" not in result:
            continue  # not a buffer_survey result
        if host in storage:
            answered.add(host)
            for volume in result.get("volumes", []):
                volumes[volume["name"]] = [(addresses.get(b["host"], b["host"]), os.path.dirname(b["path"]))
                                           for b in volume["bricks"]]
        brick_dirs += [(host, d["root"], d["name"]) for d in result["brick_dirs"]]
        mounts += [(host, m["target"]) for m in result["mounts"]]
        aux_mounts += [(host, m["target"], m["volume"]) for m in result.get("aux_mounts", [])]
        lustre += [LustreTarget(host, m["target"], m["source"], m["fsname"], m["kind"], m["index"])
                   for m in result.get("lustre_targets", [])]
    unanswered = {}
    for failure in failures:
        host = failure.split(":", 1)[0]
        unanswered[host] = failure
        answered.discard(host)
    return Reality(volumes=volumes, brick_dirs=brick_dirs, mounts=mounts, answered=frozenset(answered),
                   unanswered=unanswered, aux_mounts=aux_mounts,
                   lustre_targets=[target for target in lustre if target.server in answered])


def compare(buffers: Iterable[Buffer], reality: Reality, *, now: float, older_than: float) -> list[Drift]:
    """Every difference between the live records and reality, records first, sorted within each kind."""
    live = {sitecfg.volume_name(b.key): b for b in buffers if b.state is not BufferState.DESTROYED}
    drifts = [d for b in live.values() if (d := _missing(b, reality, now=now, older_than=older_than))]
    drifts += [Drift(ORPHAN_VOLUME, name, None, tuple(f"{s}:{r}/{name}" for s, r in bricks),
                     "a volume no buffer record holds (made or left outside bbctl)")
               for name, bricks in sorted(reality.volumes.items()) if name not in live]
    drifts += _stray_dirs(live, reality)
    drifts += [Drift(STRAY_MOUNT, name, None, (f"{host}:{target}",), "a buffer mount no buffer record holds")
               for host, target in sorted(reality.mounts)
               if (name := mounted_volume(target)) not in live]
    drifts += [Drift(STRAY_AUX_MOUNT, volume, None, (f"{host}:{target}",),
                     "a gluster quota command's mount of a volume that no longer exists (the command timed out)")
               for host, target, volume in sorted(reality.aux_mounts)
               if host in reality.answered and volume not in reality.volumes]
    fsnames = {sitecfg.lustre_fsname(b.key) for b in live.values() if b.fs == "lustre"}
    orphans: dict[str, list[LustreTarget]] = defaultdict(list)
    for target in reality.lustre_targets:
        if target.fsname not in fsnames:
            orphans[target.fsname].append(target)
    drifts += [Drift(ORPHAN_LUSTRE, fsname, None, tuple(f"{t.server}:{t.target}" for t in _in_order(targets)),
                     "Lustre targets of a file system no buffer record holds (made or left outside bbctl)")
               for fsname, targets in sorted(orphans.items())]
    return drifts


def _in_order(targets: Iterable[LustreTarget]) -> list[LustreTarget]:
    """MDT first, then the OSTs by index: the order of a Lustre buffer's bricks (lustre_buffer role)."""
    return sorted(targets, key=lambda t: (t.kind != "mdt", t.index))


def _missing(buffer: Buffer, reality: Reality, *, now: float, older_than: float) -> Drift | None:
    name = sitecfg.volume_name(buffer.key)
    if buffer.fs == "lustre":
        # The MDT makes the file system: asked of the server that holds it (the first brick).
        mdt_server = buffer.bricks[0].server if buffer.bricks else None
        fsname = sitecfg.lustre_fsname(buffer.key)
        there = any(t.fsname == fsname and t.kind == "mdt" for t in reality.lustre_targets)
        if there or mdt_server not in reality.answered:
            return None
        gone = f"its Lustre MDT ({fsname}-MDT0000) is not mounted on {mdt_server}"
    else:
        if name in reality.volumes or not {brick.server for brick in buffer.bricks} & reality.answered:
            return None  # there, or nobody could say
        gone = "its volume"
    if buffer.state in MOVING and now - buffer.updated_at < older_than:
        return None  # a stage may be making or removing it right now
    if buffer.state in (BufferState.ALLOCATING, BufferState.CREATING, BufferState.FAILED):
        detail = f"the record is {buffer.state.value} and {gone} never came up or is gone"
    else:
        detail = f"the record is {buffer.state.value} but {gone} is gone (deleted outside bbctl?)"
    return Drift(VOLUME_MISSING, name, buffer.key, tuple(f"{b.server}:{b.path}/{name}" for b in buffer.bricks),
                 detail)


def _stray_dirs(live: Mapping[str, Buffer], reality: Reality) -> list[Drift]:
    owned = {(b.server, b.path, name) for name, buffer in live.items() for b in buffer.bricks}
    owned |= {(server, root, name) for name, bricks in reality.volumes.items() for server, root in bricks}
    by_volume: dict[str, list[str]] = defaultdict(list)
    for server, root, name in sorted(reality.brick_dirs):
        if (server, root, name) not in owned:
            by_volume[name].append(f"{server}:{root}/{name}")
    return [Drift(STRAY_BRICK_DIR, name, None, tuple(where), "brick directories of no volume and no record")
            for name, where in sorted(by_volume.items())]


def mounted_volume(target: str) -> str:
    name = os.path.basename(target.rstrip("/"))
    return name.removesuffix(PRIVATE_SUFFIX)


def repair(life: Any, drifts: list[Drift], reality: Reality | None = None) -> list[dict[str, Any]]:
    """Fix each drift with the teardown playbook; [{volume, kind, repaired, error}] in drift order.

    A record whose volume is missing is torn down as gc would (its bricks released); the
    pieces of a volume no record holds are removed by one buffer_destroy.yml run per volume,
    and so are the Lustre targets of an fsname no record holds (``reality``: the survey's).
    A repair that would touch a host that did not answer the survey is not tried: its
    teardown could only fail there, or time out, and leave a half-removed buffer; it is
    reported, to be repaired by a later run once the host answers."""
    unanswered = reality.unanswered if reality else {}
    targets = reality.lustre_targets if reality else []
    outcomes = []
    pieces: dict[str, list[Drift]] = defaultdict(list)
    aux = [drift for drift in drifts if drift.kind == STRAY_AUX_MOUNT]
    if aux:
        outcomes += _outcomes(aux, _error_of(lambda: unmount_aux(life, aux)))
    for drift in drifts:
        if drift.kind == STRAY_AUX_MOUNT:
            continue
        if drift.kind == VOLUME_MISSING and drift.key is not None:
            outcomes.append(_outcome(drift, lambda d=drift: life.destroy(d.key, stage="reconcile"), unanswered))
        elif drift.kind == ORPHAN_LUSTRE:
            mine = [target for target in targets if target.fsname == drift.volume]
            outcomes.append(_outcome(drift, lambda d=drift, m=mine: destroy_lustre(life, d.volume, m), unanswered))
        else:
            pieces[drift.volume].append(drift)
    for name, found in pieces.items():
        silent = _silent_hosts(found, unanswered)
        outcomes += _outcomes(found, silent or _error_of(lambda n=name, f=found: destroy_pieces(life, n, f)))
    return outcomes


def _silent_hosts(drifts: Iterable[Drift], unanswered: Mapping[str, str]) -> str | None:
    """Why drifts with a piece on a host that did not answer the survey are not repaired now, or None."""
    hosts = sorted({piece.split(":", 1)[0] for drift in drifts for piece in drift.where} & set(unanswered))
    if not hosts:
        return None
    return (f"not tried: {', '.join(hosts)} did not answer the survey ({'; '.join(unanswered[h] for h in hosts)});"
            " run `bbctl reconcile --repair` again once it answers")


def _outcome(drift: Drift, action: Any, unanswered: Mapping[str, str]) -> dict[str, Any]:
    return _outcomes([drift], _silent_hosts([drift], unanswered) or _error_of(action))[0]


def _outcomes(drifts: list[Drift], error: str | None) -> list[dict[str, Any]]:
    """One outcome per drift that one repair (which failed with error, or not) covered."""
    return [{"volume": d.volume, "kind": d.kind, "repaired": error is None, "error": error} for d in drifts]


def _error_of(action: Any) -> str | None:
    try:
        action()
    except BBError as exc:  # one failed repair must not stop the others; it is reported
        return str(exc)
    return None


def unmount_aux(life: Any, drifts: list[Drift]) -> None:
    """One buffer_aux_unmount.yml run over the storage servers holding the drifts' aux mounts."""
    paths: dict[str, list[str]] = defaultdict(list)
    for drift in drifts:
        for piece in drift.where:
            host, path = piece.split(":", 1)
            paths[host].append(path)
    run = runner.run_stage(life.site, "reconcile", "reconcile", "buffer_aux_unmount.yml",
                           extravars={"bb_aux_mounts": dict(paths)}, hosts=sorted(paths),
                           timeout=slurmconf.stage_timeout("teardown", life._bb_settings), cancel=life.cancel)
    run.raise_for_failure()


def destroy_pieces(life: Any, name: str, drifts: list[Drift]) -> None:
    """One buffer_destroy.yml run for a volume no record holds: the volume, its brick directories
    and its mounts on the stage host and the compute nodes (each place as the survey found it)."""
    site = life.site
    bricks, stage_targets, nodes, private = [], [], set(), False
    for drift in drifts:
        for piece in drift.where:
            host, path = piece.split(":", 1)
            if drift.kind != STRAY_MOUNT:
                bricks.append({"host": host, "path": os.path.dirname(path), "device": ""})
            elif host == runner.STAGE_HOST:
                stage_targets.append(path)
            else:
                nodes.add(host)
                private = private or path.endswith(PRIVATE_SUFFIX)
    # The stage host mounts under stage_root; on a machine that is also a compute node it sees
    # the node's mounts too, which the compute nodes' play removes.
    stage_targets.sort(key=lambda path: not path.startswith(str(site.stage_root) + "/"))
    buffer: dict[str, Any] = {"name": name, "fs": "gluster", "owner": 0, "group": 0, "layout": {},
                              "bricks": bricks,
                              "mount_path": stage_targets[0] if stage_targets else str(site.stage_root / name)}
    more: dict[str, Any] = {"bb_stage_mounted": bool(stage_targets)}
    if nodes:
        more["bb_client_mount_path"] = str(site.mount_root / name)
        if private:
            buffer["private_mount_path"] = str(site.mount_root / (name + PRIVATE_SUFFIX))
    run = runner.run_stage(site, "reconcile", "reconcile", "buffer_destroy.yml",
                           extravars={"bb_buffer": buffer, **more}, hosts=sorted({b["host"] for b in bricks}),
                           nodes=sorted(nodes), timeout=slurmconf.stage_timeout("teardown", life._bb_settings),
                           cancel=life.cancel)
    run.raise_for_failure()


def destroy_lustre(life: Any, fsname: str, targets: list[LustreTarget]) -> None:
    """One buffer_destroy.yml run for Lustre targets of no record: the lustre_buffer role unmounts
    and wipes each, OSTs first. It takes a buffer's bricks as MDT then OST 0, 1, ... (their index
    is their place), so only such a complete set is given to it; anything else is for a person."""
    ordered = _in_order(targets)
    osts = [target.index for target in ordered if target.kind == "ost"]
    if not ordered or ordered[0].kind != "mdt" or osts != list(range(len(osts))):
        found = ", ".join(f"{t.server}:{t.target} ({t.device})" for t in ordered)
        raise BBError(f"not tried: {fsname}'s targets are not one MDT and OSTs 0 to N-1 ({found}); "
                      "unmount them and wipe their devices by hand (docs/LUSTRE.md)")
    buffer = {"name": fsname, "fsname": fsname, "fs": "lustre", "owner": 0, "group": 0, "layout": {},
              "bricks": [{"host": t.server, "path": os.path.dirname(t.target), "device": t.device} for t in ordered],
              "mount_path": str(life.site.stage_root / fsname)}
    run = runner.run_stage(life.site, "reconcile", "reconcile", "buffer_destroy.yml",
                           extravars={"bb_buffer": buffer, "bb_stage_mounted": False},
                           hosts=sorted({t.server for t in ordered}),
                           timeout=slurmconf.stage_timeout("teardown", life._bb_settings), cancel=life.cancel)
    run.raise_for_failure()


def reconcile(life: Any, *, repair_drift: bool, older_than: float, count_silence: bool = True) -> dict[str, Any]:
    """Survey, compare and (with repair_drift) repair; the report ``bbctl reconcile --json`` prints.
    ``count_silence``: count a failure for each storage server that did not answer (not in a dry run)."""
    reality = survey(life)
    if count_silence:
        server_health.record_unanswered(life, reality.unanswered, storage_servers(life))
    drifts = compare(life.store.buffers(), reality, now=time.time(), older_than=older_than)
    report: dict[str, Any] = {"drift": [d.to_dict() for d in drifts], "unanswered": dict(reality.unanswered),
                              "repaired": []}
    if repair_drift and drifts:
        report["repaired"] = repair(life, drifts, reality)
        life.refresh_pools()
    return report


def unrepaired(report: Mapping[str, Any]) -> int:
    """How many drifts of a ``reconcile`` report are left: found and not repaired (without
    repair_drift, all of them; ``repaired`` holds one outcome per drift found)."""
    return len(report["drift"]) - sum(1 for outcome in report["repaired"] if outcome["repaired"])


def exit_code(report: Mapping[str, Any]) -> int:
    """0 when a report leaves no drift (none found, or every one repaired), else EXIT_DRIFT.

    Hosts that did not answer (``unanswered``) are not drift and do not change it: a record none
    of whose servers answered is not judged, so a check should also look at ``unanswered``."""
    return EXIT_DRIFT if unrepaired(report) else 0


def render(report: Mapping[str, Any]) -> str:
    """The report for people: one line per drift and per repair, or that there is none."""
    lines = [f"unanswered: {host}: {why}" for host, why in sorted(report["unanswered"].items())]
    lines += [f"{d['kind']} {d['volume']}{' (buffer ' + d['key'] + ')' if d['key'] else ''}: {d['detail']}; "
              f"at {', '.join(d['where'])}" for d in report["drift"]]
    lines += [f"repaired {r['kind']} {r['volume']}" if r["repaired"]
              else f"NOT repaired {r['kind']} {r['volume']}: {r['error']}" for r in report["repaired"]]
    if not report["drift"]:
        lines.append("no drift: the state store matches the servers")
    elif not report["repaired"]:
        lines.append(f"{len(report['drift'])} drift(s); `bbctl reconcile --repair` tears them down")
    return "\n".join(lines)
