"""Storage servers' health, counted from each playbook run, and compute nodes drained in Slurm where a
buffer could not be unmounted (issue 11 item 2).

A run that fails on a storage server of the buffer's bricks counts one failure for it; a run that
succeeds there resets its count. After ``server_fail_limit`` failures in a row the state store marks
the server unusable (``failing``): allocation skips its bricks and the pools Slurm reads no longer
count them, until an operator runs ``bbctl servers --resume NAME`` (docs/OPERATOR_GUIDE.md,
section 13). A compute node's or the stage host's failure is no storage server's.

A run that timed out blames nobody for the hang (the task that hangs is often another server's, waiting
on the one at fault). A server that hangs is counted by bbctl's survey instead (``bbctl reconcile``,
and every ``bbctl gc``): each server is asked alone, about its own glusterd and bricks, so a server
that does not answer it (its glusterd stopped: the CLI's request times out; or no result before the
survey's playbook timed out) is at fault itself and counts one failure (``record_unanswered``).

A compute node on which a run did not unmount a buffer (post-run or teardown failed there, or the run
timed out before the node had unmounted: a busy mount, or a FUSE client waiting on a brick that does
not answer), or on which pre-run's mount hung until the playbook's timeout, is drained in Slurm with
``drain_nodes`` (default on): the mount is the node's, and the next job there would meet it. Slurm
does the same to a node whose epilog fails.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from bbctl import runner, slurmconf
from bbctl.errors import BBError
from bbctl.state import Buffer

if TYPE_CHECKING:
    from bbctl.lifecycle import Lifecycle

log = logging.getLogger("bbctl")

# A server whose own glusterd cannot be asked, or that Ansible cannot reach, is the cause of a run's
# failure; what the other servers of the buffer report in the same run ("Some of the peers are down",
# "peer(s) 127.1.1.3 are disconnected") follows from it. Counting those would mark every server of
# the buffer failing when one is down (seen on the test bed: three teardown attempts, three servers).
OWN_FAULT = ("please check if gluster daemon is operational", "unreachable")


def blamed(failed: dict[str, str]) -> dict[str, str]:
    """The failures to count (host -> message): those of hosts at fault themselves when there are
    any, else all of them."""
    own = {host: message for host, message in failed.items() if any(p in message.lower() for p in OWN_FAULT)}
    return own or failed


def record(life: Lifecycle, key: str, buffer: Buffer, run: runner.StageRun) -> None:
    """Count run's failures on buffer's storage servers, reset the count of those it succeeded on.

    A run that timed out or was cancelled blames only the hosts whose tasks failed, and resets no
    count: a server that hung on a later task had its earlier tasks succeed (its hang is counted by
    nobody: the task hanging is often another server's, waiting on it). Bookkeeping never fails the
    stage: a state store or pools file that cannot be written is logged.
    """
    storage = {brick.server for brick in buffer.bricks}
    failed = blamed({host: message for host, message in run.failed_hosts().items() if host in storage})
    succeeded = (storage if run.status == "successful" else
                 run.ok_hosts() & storage if run.status == "failed" else set())
    _count(life, key, run.stage, failed, succeeded - set(failed))


def record_unanswered(life: Lifecycle, unanswered: Mapping[str, str], storage: Collection[str]) -> None:
    """Count one failure for each storage server of ``storage`` that did not answer bbctl's survey
    (``unanswered``: host -> why, as bbctl.reconcile.Reality has it); other hosts (the stage host, compute
    nodes) are no storage server's. Answering resets no count: a server that answers a read may still fail
    its stages."""
    failed = {host: f"did not answer bbctl's survey: {why}" for host, why in unanswered.items() if host in storage}
    _count(life, "reconcile", "survey", failed, set())


def _count(life: Lifecycle, key: str, stage: str, failed: Mapping[str, str], succeeded: Collection[str]) -> None:
    """One update of the servers' health; says which servers it made unusable. Never raises: a state store
    or pools file that cannot be written is logged."""
    if not failed and not succeeded:
        return
    try:
        marked = life.store.record_runs(failed, succeeded, limit=life.site.server_fail_limit)
        for server in marked:
            life.note(key, stage, f"storage server {server.name} is now unusable: {server.reason}; "
                                  f"no new buffer gets its bricks until `bbctl servers --resume {server.name}`")
        if marked:
            life.refresh_pools()
    except BBError as exc:  # StateError, or the pools file not written
        log.warning("%s %s: could not record the storage servers' health: %s", key, stage, exc)


def stuck_nodes(run: runner.StageRun, nodes: list[str], mount_path: str, *, mounting: bool) -> list[str]:
    """The nodes a mounting (``mounting``) or unmounting run left in a state they must not stay in: those
    on which the run timed out before hpc.burstbuffer.buffer_mount reported mount_path done (``mounted``
    true, or false), and for an unmount also those it failed on that had not unmounted (the mount is
    still there). A mount that failed cleanly leaves nothing on the node: Slurm holds the job, the node
    is fine. A run cancelled (Slurm's SIGTERM) blames no node, nor does a failure on no node
    (ansible-playbook that never ran a task: ours)."""
    if run.status != "timeout" and (mounting or run.status != "failed"):
        return []
    done = {host for host, result in run.results
            if result.get("path") == mount_path and result.get("mounted") is mounting}
    suspects = set(nodes) - done
    if run.status == "failed":
        suspects &= set(run.failed_hosts())
    return sorted(suspects)


def drain_stuck(life: Lifecycle, key: str, run: runner.StageRun, nodes: list[str], mount_path: str, *,
                mounting: bool = False) -> list[str]:
    """Drain in Slurm the nodes run left stuck (stuck_nodes), if the site drains nodes; the nodes
    drained. Never fails the stage: a drain Slurm refuses is logged."""
    culprits = stuck_nodes(run, nodes, mount_path, mounting=mounting)
    if not culprits or not life.site.drain_nodes:
        return []
    cause = "timed out" if run.status == "timeout" else "failed"
    reason = f"bbctl: job {key} {run.stage}: {'mount' if mounting else 'unmount'} of {mount_path} {cause}"
    try:
        slurmconf.drain(life.site.slurm_dir, culprits, reason)
    except BBError as exc:
        log.warning("%s %s: could not drain %s: %s", key, run.stage, ",".join(culprits), exc)
        return []
    life.note(key, run.stage, f"drained {', '.join(culprits)} in Slurm ({reason}); `scontrol update "
                              f"NodeName={','.join(culprits)} State=RESUME` once the node is clean")
    return culprits
