"""Allocation latency over a big pool: 1,000 servers x 8 bricks.

Run: ``.venv/bin/python benchmarks/allocation.py [--iterations N] [--no-etcd]``

Each cycle is what a setup and a teardown cost the store: one allocate (record
+ bricks in one transaction) and one release. The pool is first partly filled
by other buffers, so allocation reads a realistic set of bricks in use. SQLite
runs on a file in a temporary directory on the local disk (synchronous=FULL,
as in production); etcd is a throw-away server on free loopback ports, stopped
by its pid at the end. Target (DESIGN.md): p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bbctl.pools import Brick, Pool
from bbctl.state import BufferSpec, EtcdStore, SQLiteStore, StateStore

GiB = 1024**3
SERVERS, BRICKS_PER_SERVER = 1000, 8
BACKGROUND_BUFFERS = 1000  # each 1-4 bricks: about 30% of the pool in use


def big_pool() -> Pool:
    return Pool("nvme", 4 * GiB, tuple(
        Brick("nvme", f"stor{s:04d}", f"10.0.{s // 250}.{s % 250}", f"/bricks/nvme{b}", f"/dev/nvme{b}n1")
        for s in range(SERVERS) for b in range(BRICKS_PER_SERVER)))


def fill(store: StateStore, pool: Pool, rng: random.Random) -> None:
    for i in range(BACKGROUND_BUFFERS):
        store.allocate(BufferSpec(f"bg{i}", 1000, 1000, rng.randint(1, 4) * pool.granularity), pool)


def measure(store: StateStore, pool: Pool, iterations: int, rng: random.Random) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"allocate": [], "release": [], "cycle": []}
    for i in range(iterations):
        spec = BufferSpec(f"job{i}", 1000, 1000, rng.randint(1, 8) * pool.granularity)
        start = time.perf_counter()
        store.allocate(spec, pool)
        middle = time.perf_counter()
        store.release(spec.key)
        end = time.perf_counter()
        times["allocate"].append(middle - start)
        times["release"].append(end - middle)
        times["cycle"].append(end - start)
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, times: dict[str, list[float]]) -> None:
    for what, values in times.items():
        print(f"| {name} | {what} | {len(values)} | {statistics.median(values) * 1e3:.2f} | "
              f"{percentile(values, 0.99) * 1e3:.2f} | {max(values) * 1e3:.2f} |")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@contextmanager
def etcd_server(root: Path) -> Iterator[str]:
    """A throw-away etcd on free loopback ports, stopped by its pid (never by name)."""
    client, peer = free_ports(2)
    endpoint, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    argv = [shutil.which("etcd") or "/usr/bin/etcd", "--name", "bench", "--data-dir", str(root / "etcd"),
            "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"bench={peer_url}"]
    with (root / "etcd.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start:\n{(root / 'etcd.log').read_text()[-2000:]}")
            try:
                request = urllib.request.Request(f"{endpoint}/v3/kv/range", data=b'{"key":"AA=="}', method="POST")
                urllib.request.urlopen(request, timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(name: str, store: StateStore, iterations: int) -> None:
    rng = random.Random(42)
    pool = big_pool()
    fill(store, pool, rng)
    report(name, measure(store, pool, iterations, rng))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--no-etcd", action="store_true", help="SQLite only")
    args = parser.parse_args()
    print(f"{SERVERS} servers x {BRICKS_PER_SERVER} bricks, {BACKGROUND_BUFFERS} buffers already allocated; "
          f"{args.iterations} cycles of allocate (1-8 bricks) + release")
    print(f"machine: {platform.platform()}, Python {platform.python_version()}, "
          f"{len(__import__('os').sched_getaffinity(0))} cores; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print("\n| store | operation | n | p50 ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="bbctl-bench-", dir="/var/tmp") as tmp:
        store = SQLiteStore(Path(tmp) / "state.db")
        run("SQLite", store, args.iterations)
        store.close()
        if not args.no_etcd:
            with etcd_server(Path(tmp)) as endpoint:
                run("etcd", EtcdStore(endpoint), args.iterations)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
