"""Many jobs at once through Slurm (burst_buffer/lua): more buffers asked for than the pool holds.

Issue 11's load case, sized for CI: 18 jobs on the test bed's nine bricks, one or two granules
each (a two-granule striped buffer is disperse 2+1: three bricks), 36 bricks asked for in all.
Every job must complete with its staged data intact; the jobs the pool cannot hold yet wait as
pending (never held, never failed); no brick is ever in two buffers; afterwards the state store and
GlusterFS agree and nothing is left. The 50- and 130-job runs with figures are benchmarks/load.py.
"""

from __future__ import annotations

import pytest

from tests.integration.bbctl import load
from tests.integration.bbctl.slurmjobs import bbctl, use_plugin, volumes

pytestmark = pytest.mark.testbed

JOBS = 18


@pytest.fixture(scope="module", autouse=True)
def lua_slurm(testbed):
    """This module needs the lua plugin; switch the test bed to it if another one runs."""
    use_plugin("lua")
    return testbed


def test_more_buffers_than_the_pool_holds_all_run_in_turn_and_nothing_overlaps():
    bricks, granule_gib = load.pool_shape()
    run = load.LoadRun(count=JOBS, max_granules=2, granule_gib=granule_gib)
    asked = sum(1 if i % 2 == 0 else 3 for i in range(JOBS))
    assert asked > 2 * bricks, "the test must ask for more bricks than the pool has"
    watcher = load.Watcher(run.jobs)
    try:
        run.submit_all()
        watcher.start()
        run.wait(watcher, timeout=1500)
    finally:
        watcher.stop()
        ok, failed_checks = run.ok(), run.failed_checks()
        run.cleanup()
    states = {job: seen.state for job, seen in run.jobs.items()}
    assert set(states.values()) == {"COMPLETED"}, states
    assert all(ok.values()), f"jobs that did not read back their staged data: {failed_checks}"
    assert run.strange_reasons() == {}, "a job was held or failed a stage instead of waiting its turn"
    assert watcher.overlaps == [], f"bricks in two buffers at once: {watcher.overlaps}"
    assert watcher.most_buffers >= 2, "the jobs never overlapped in time: the test proved nothing"
    assert not [up for _, up in watcher.pings if not up], "slurmctld stopped answering scontrol ping"
    assert volumes() == [] and load.gluster_matches_store() == []
    drift = bbctl("reconcile")
    assert drift.returncode == 0 and "no drift" in drift.stdout.lower(), drift.stdout + drift.stderr
