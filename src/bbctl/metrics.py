"""bbctl's Prometheus metrics, read from the state store at every scrape (prometheus_client).

Nothing is counted in this process: pools, buffers and the stages running now
come from the records, and the stage counters (runs, seconds, files, bytes,
failures, the duration histogram) from what every bbctl process added when a
stage ended (bbctl.state.timings). So any number of bbctl processes, on any
controller sharing an etcd store, are counted once, and a restarted exporter
loses nothing. ``bbctl metrics serve`` answers HTTP scrapes (loopback unless
told otherwise); ``bbctl metrics write PATH.prom`` writes the text format for
node_exporter's textfile collector, atomically.

Imported only by ``bbctl metrics``: the stages never pay for prometheus_client.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bbctl.errors import BBError
from bbctl.pools import Pool, load_pools, pools_document
from bbctl.site import Site
from bbctl.state import BufferState, StateError, StateStore, open_store
from bbctl.state.timings import DURATION_BUCKETS, OUTCOMES, STAGE_NOW, format_bound

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9841
PREFIX = "bbctl_"
# Seconds a scrape waits for an unreachable etcd: well inside Prometheus's default 10 s scrape timeout, so
# that a store that is down is a scrape saying state_store_up 0, not a failed scrape.
STORE_TIMEOUT = 3.0


class StateCollector(Collector):
    """Every family, from one look at the state store per scrape."""

    def __init__(self, site: Site, *, store_opener: Callable[..., StateStore] = open_store) -> None:
        self.site = site
        self.open_store = store_opener
        self._pools: dict[str, Pool] | None = None

    @property
    def pools(self) -> dict[str, Pool]:
        if self._pools is None:
            self._pools = load_pools(self.site.raw, self.site.inventory)
        return self._pools

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(PREFIX + "state_store_up", "1 if the state store answered this scrape, else 0")
        try:
            # A store per scrape: SQLite connections stay in the thread that made them.
            store = self.open_store(self.site.state, timeout=STORE_TIMEOUT)
            try:
                buffers = store.buffers()
                counters = store.stage_counters()
                allocated = {name: store.allocated_brick_ids(name) for name in self.pools}
                unusable = {name for name, server in store.servers().items() if server.unusable}
            finally:
                store.close()
        except StateError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from pool_families(pools_document(self.pools.values(), allocated, unusable=unusable)["pools"])
        yield from buffer_families([b.state for b in buffers],
                                   [b.meta.get(STAGE_NOW) for b in buffers])
        yield from stage_families(counters)


def pool_families(pools: list[Mapping]) -> Iterator[Metric]:
    capacity = GaugeMetricFamily(PREFIX + "pool_capacity_bytes", "Bytes a pool's bricks hold", labels=["pool"])
    free = GaugeMetricFamily(PREFIX + "pool_free_bytes", "Bytes of a pool's bricks no buffer holds", labels=["pool"])
    bricks = GaugeMetricFamily(PREFIX + "pool_bricks", "Bricks in a pool", labels=["pool"])
    free_bricks = GaugeMetricFamily(PREFIX + "pool_free_bricks", "Bricks of a pool no buffer holds", labels=["pool"])
    for pool in pools:
        capacity.add_metric([pool["id"]], pool["quantity"] * pool["granularity"])
        free.add_metric([pool["id"]], pool["free"] * pool["granularity"])
        bricks.add_metric([pool["id"]], pool["quantity"])
        free_bricks.add_metric([pool["id"]], pool["free"])
    yield from (capacity, free, bricks, free_bricks)


def buffer_families(states: list[BufferState], running: list[object]) -> Iterator[Metric]:
    by_state = GaugeMetricFamily(PREFIX + "buffers", "Buffers by state (every state, zeros included)",
                                 labels=["state"])
    for state in BufferState:
        by_state.add_metric([state.value], sum(1 for s in states if s is state))
    stages = GaugeMetricFamily(PREFIX + "stages_running", "Stages running now, by stage", labels=["stage"])
    counts: dict[str, int] = {}
    for now in running:
        if isinstance(now, dict) and isinstance(now.get("stage"), str):
            counts[now["stage"]] = counts.get(now["stage"], 0) + 1
    for stage, count in sorted(counts.items()):
        stages.add_metric([stage], count)
    yield from (by_state, stages)


def stage_families(counters: Mapping[str, Mapping[str, float]]) -> Iterator[Metric]:
    """The counters every finished stage added to (bbctl.state.timings.counter_increments)."""
    runs = CounterMetricFamily(PREFIX + "stage_runs", "Stages that ended, by stage and outcome",
                               labels=["stage", "outcome"])
    seconds = CounterMetricFamily(PREFIX + "stage_seconds", "Seconds stages took", labels=["stage"])
    files = CounterMetricFamily(PREFIX + "stage_files", "Files stages copied", labels=["stage"])
    copied = CounterMetricFamily(PREFIX + "stage_bytes", "Bytes stages copied", labels=["stage"])
    failures = CounterMetricFamily(PREFIX + "stage_failures", "Stages that failed, by stage and reason",
                                   labels=["stage", "reason"])
    durations = HistogramMetricFamily(PREFIX + "stage_duration_seconds",
                                      "How long stages took (setup and teardown among them)", labels=["stage"])
    for stage, counts in sorted(counters.items()):
        for outcome in OUTCOMES:
            runs.add_metric([stage, outcome], counts.get(f"runs:{outcome}", 0))
        seconds.add_metric([stage], counts.get("seconds", 0))
        if "files" in counts:
            files.add_metric([stage], counts["files"])
            copied.add_metric([stage], counts.get("bytes", 0))
        for name, value in sorted(counts.items()):
            if name.startswith("failures:"):
                failures.add_metric([stage, name.removeprefix("failures:")], value)
        durations.add_metric([stage], cumulative_buckets(counts), sum_value=counts.get("seconds", 0))
    yield from (runs, seconds, files, copied, failures, durations)


def cumulative_buckets(counts: Mapping[str, float]) -> list[tuple[str, float]]:
    """The histogram's buckets from the per-bucket counts ``le:<bound>``, made cumulative."""
    buckets, total = [], 0.0
    for bound in DURATION_BUCKETS:
        total += counts.get(f"le:{format_bound(bound)}", 0)
        buckets.append((floatToGoString(bound), total))
    buckets.append(("+Inf", total + counts.get("le:+Inf", 0)))
    return buckets


def registry_for(site: Site) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(site))
    return registry


def serve(site: Site, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT) -> tuple[WSGIServer, threading.Thread]:
    """Answer scrapes on address:port in a daemon thread (port 0: any free port; see server.server_port)."""
    try:
        return start_http_server(port, addr=address, registry=registry_for(site))
    except OSError as exc:
        raise BBError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}") from exc


def write(site: Site, path: Path) -> Path:
    """The metrics in node_exporter's textfile format at path (*.prom), replaced atomically, mode 0644."""
    if path.suffix != ".prom":
        raise BBError(f"{path}: node_exporter's textfile collector reads only *.prom files; name it so",
                      exit_code=2)
    text = generate_latest(registry_for(site))
    directory = path.parent
    try:
        # A hidden name without .prom: the collector never reads a half-written file.
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise BBError(f"cannot write metrics in {directory}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
