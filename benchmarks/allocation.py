"""Allocation latency over a big pool: 1,000 servers x 8 bricks, every store side by side.

Run: ``.venv/bin/python benchmarks/allocation.py [--cycles N] [--round M] [--write-doc]``

Each cycle is what a setup and a teardown cost the store: one allocate (record
+ bricks in one transaction) and one release. Every store is first filled with
the same 1,000 other buffers (1-4 bricks each, about 30% of the pool), so
allocation sees a realistic set of bricks in use. Contenders, each on its own
state, taking turns M cycles at a time (the order rotating each round) so that
the machine's load falls on all of them alike:

- SQLite: a file in a temporary directory on the local disk (WAL,
  synchronous=FULL, as in production);
- etcd, one member and three members on loopback (Debian's etcd-server,
  bbctl.testbed.etcd: free ports, stopped by pid, data dirs removed), each
  with the current layout (one index key per pool) and the one before it
  (one key per brick, read whole by every allocation): that store's code is
  loaded from git at OLD_LAYOUT_COMMIT, so both run in the same process
  against the same members;
- the same SQLite and three etcd members (current layout) with their files on
  tmpfs (/dev/shm): an fsync that costs nothing, standing in for a disk whose
  fsync is cheap (an NVMe drive with power-loss protection), so that the
  stores' own cost is seen apart from this machine's shared disk;
- etcd's floor on the same three members: an "allocate" and a "release" that
  are each one read and one put of a 3 KB value (the pool index's size with
  2,500 bricks in use), the least that a read-then-compare-and-swap operation
  costs, with none of bbctl's work.

Target (DESIGN.md): allocate + release p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from results_doc import add_json_option, write_figures, write_section

from bbctl.pools import Brick, Pool
from bbctl.state import BufferSpec, SQLiteStore, StateStore
from bbctl.state.etcd import EtcdStore
from bbctl.state.etcd_gateway import Gateway, b64
from bbctl.testbed.etcd import EtcdCluster

GiB = 1024**3
SERVERS, BRICKS_PER_SERVER = 1000, 8
BACKGROUND_BUFFERS = 1000  # each 1-4 bricks: about 30% of the pool in use
OLD_LAYOUT_COMMIT = "46a32c3"  # the last etcd store that read one key per brick in use
REPO = Path(__file__).resolve().parent.parent
OPERATIONS = ("allocate", "release", "allocate + release")
BEGIN, END = "<!-- allocation-results:begin -->", "<!-- allocation-results:end -->"


def big_pool() -> Pool:
    return Pool("nvme", 4 * GiB, tuple(
        Brick("nvme", f"stor{s:04d}", f"10.0.{s // 250}.{s % 250}", f"/bricks/nvme{b}", f"/dev/nvme{b}n1")
        for s in range(SERVERS) for b in range(BRICKS_PER_SERVER)))


def fill(store: StateStore, pool: Pool, rng: random.Random) -> None:
    for i in range(BACKGROUND_BUFFERS):
        store.allocate(BufferSpec(f"bg{i}", 1000, 1000, rng.randint(1, 4) * pool.granularity), pool)


@dataclass
class Contender:
    name: str
    store: StateStore | EtcdFloor
    rng: random.Random = field(default_factory=lambda: random.Random(42))
    times: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})
    done: int = 0

    def run(self, pool: Pool, cycles: int) -> None:
        for _ in range(cycles):
            spec = BufferSpec(f"job{self.done}", 1000, 1000, self.rng.randint(1, 8) * pool.granularity)
            self.done += 1
            start = time.perf_counter()
            self.store.allocate(spec, pool)
            middle = time.perf_counter()
            self.store.release(spec.key)
            end = time.perf_counter()
            self.times["allocate"].append(middle - start)
            self.times["release"].append(end - middle)
            self.times["allocate + release"].append(end - start)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class EtcdFloor:
    """etcd's least cost for an operation that reads, then writes: one range, one 3 KB put."""

    KEY, VALUE = "/floor/index", "x" * 3000  # one key, as every operation in a pool writes its index

    def __init__(self, endpoints: list[str]) -> None:
        self.gateway = Gateway(endpoints, 10.0)

    def allocate(self, spec: BufferSpec, pool: Pool) -> None:
        self._read_then_put()

    def release(self, key: str) -> None:
        self._read_then_put()

    def _read_then_put(self) -> None:
        self.gateway.call("/v3/kv/range", {"key": b64(self.KEY)}, write=False)
        self.gateway.call("/v3/kv/put", {"key": b64(self.KEY), "value": b64(self.VALUE)}, write=True)

    def close(self) -> None:
        pass


def old_etcd_module() -> ModuleType:
    """bbctl.state.etcd as it was at OLD_LAYOUT_COMMIT (it uses only bbctl.state.base, unchanged since)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_LAYOUT_COMMIT}:src/bbctl/state/etcd.py"],
                            check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("bbctl_state_etcd_old_layout", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{OLD_LAYOUT_COMMIT}:src/bbctl/state/etcd.py", "exec"), module.__dict__)
    return module


def contenders(stack: ExitStack, tmp: Path, etcd: bool, shm: Path) -> list[Contender]:
    found = [Contender("SQLite", SQLiteStore(tmp / "state.db")),
             Contender("SQLite tmpfs", SQLiteStore(shm / "state.db"))]
    if not etcd:
        return found
    old = old_etcd_module()
    for members in (1, 3):
        (tmp / f"etcd{members}").mkdir()
        cluster = stack.enter_context(EtcdCluster(tmp / f"etcd{members}", members))
        found.append(Contender(f"etcd {members}m, key per brick (old)",
                               old.EtcdStore(cluster.endpoints[0], prefix="/old")))
        found.append(Contender(f"etcd {members}m, index per pool (new)",
                               EtcdStore(cluster.endpoints, prefix="/new")))
    found.append(Contender("etcd 3m floor, read + 3 KB put", EtcdFloor(cluster.endpoints)))
    (shm / "etcd3").mkdir()
    cluster = stack.enter_context(EtcdCluster(shm / "etcd3", 3))
    found.append(Contender("etcd 3m tmpfs, index per pool (new)", EtcdStore(cluster.endpoints, prefix="/new")))
    return found


def table(found: list[Contender]) -> list[str]:
    lines = ["| store | operation | p50 | p95 | p99 | max |", "| --- | --- | --- | --- | --- | --- |"]
    for contender in found:
        for op in OPERATIONS:
            values = contender.times[op]
            figures = [statistics.median(values), percentile(values, 0.95), percentile(values, 0.99), max(values)]
            cells = " | ".join(f"{v * 1e3:.2f}" for v in figures)
            if op == "allocate + release":
                cells = " | ".join(f"**{v * 1e3:.2f}**" for v in figures[:3]) + f" | {figures[3] * 1e3:.2f}"
            lines.append(f"| {contender.name} | {op} | {cells} |")
    return lines


def ratios(found: list[Contender]) -> list[str]:
    by_name = {c.name: c for c in found}
    stat: dict[str, Callable[[list[float]], float]] = {
        "p50": statistics.median, "p95": lambda v: percentile(v, 0.95), "p99": lambda v: percentile(v, 0.99)}
    pairs = [(f"etcd {m}m, key per brick (old)", f"etcd {m}m, index per pool (new)", f"old / new, {m} member(s)")
             for m in (1, 3)]
    pairs += [(f"etcd {m}m, index per pool (new)", "SQLite", f"etcd {m}m new / SQLite") for m in (1, 3)]
    pairs += [("etcd 3m, index per pool (new)", "etcd 3m floor, read + 3 KB put", "etcd 3m new / etcd's floor"),
              ("SQLite", "SQLite tmpfs", "SQLite, disk / tmpfs"),
              ("etcd 3m, index per pool (new)", "etcd 3m tmpfs, index per pool (new)", "etcd 3m new, disk / tmpfs")]
    lines = ["| ratio, allocate + release | p50 | p95 | p99 |", "| --- | --- | --- | --- |"]
    for top, bottom, label in pairs:
        if top in by_name and bottom in by_name:
            a, b = by_name[top].times["allocate + release"], by_name[bottom].times["allocate + release"]
            lines.append(f"| {label} | " + " | ".join(f"{f(a) / f(b):.1f}" for f in stat.values()) + " |")
    return lines


def figures(found: list[Contender]) -> dict[str, float]:
    """Allocate + release in ms per store: {sqlite_p50_ms, sqlite_p99_ms, etcd1m_new_p99_ms, etcd3m_old_p50_ms, ...}."""
    result = {}
    for contender in found:
        slug = contender.name.split(",")[0].replace(" ", "").lower()
        if "(" in contender.name:
            slug += "_" + contender.name.rsplit("(", 1)[1].rstrip(")")
        values = contender.times["allocate + release"]
        result |= {f"{slug}_p50_ms": statistics.median(values) * 1e3, f"{slug}_p99_ms": percentile(values, 0.99) * 1e3}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000, help="allocate + release cycles per store")
    parser.add_argument("--round", type=int, default=50, help="cycles a store runs before the next takes its turn")
    parser.add_argument("--no-etcd", action="store_true", help="SQLite only")
    parser.add_argument("--write-doc", action="store_true", help="replace the results in docs/BENCHMARKS.md")
    add_json_option(parser)
    args = parser.parse_args()
    started, load_before = time.gmtime(), os.getloadavg()
    pool = big_pool()
    with tempfile.TemporaryDirectory(prefix="bbctl-bench-", dir="/var/tmp") as tmp, \
            tempfile.TemporaryDirectory(prefix="bbctl-bench-", dir="/dev/shm") as shm, ExitStack() as stack:
        found = contenders(stack, Path(tmp), not args.no_etcd, Path(shm))
        for contender in found:
            fill(contender.store, pool, random.Random(7))
        for turn in range(-(-args.cycles // args.round)):
            for contender in found[turn % len(found):] + found[:turn % len(found)]:
                contender.run(pool, min(args.round, args.cycles - contender.done))
        for contender in found:
            contender.store.close()
    load_after = os.getloadavg()
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M', started)}-{time.strftime('%H:%M UTC', time.gmtime())}; "
        f"{platform.node()}, {len(os.sched_getaffinity(0))} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"(other engineers' work on the same cores). `.venv/bin/python benchmarks/allocation.py --cycles "
        f"{args.cycles} --round {args.round}`: {args.cycles} cycles per store, {args.round} at a time in turn; "
        f"old layout from commit {OLD_LAYOUT_COMMIT}. Milliseconds:",
        "", *table(found), "", *ratios(found)]
    print("\n".join(lines))
    write_figures(args.json, figures(found))
    if args.write_doc:
        write_section(BEGIN, END, lines, "Allocation", REPO / "docs" / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
