"""Throw-away etcd clusters on loopback, for the state tests and the allocation benchmark.

Debian's etcd-server, N members on free 127.0.0.1 ports, each with its own
data directory under a root the caller owns. Every member is stopped by its
pid (SIGTERM, then SIGKILL), never by name, and the data directories are
removed when the cluster stops.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType


class EtcdStartError(RuntimeError):
    """A member did not come up: the message carries the end of its log."""


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free: bound all at once to port 0 so they differ."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class EtcdCluster:
    """``with EtcdCluster(root, members=3) as cluster: EtcdStore(cluster.endpoints)``."""

    def __init__(self, root: Path, members: int = 1, *, executable: str | None = None,
                 start_timeout: float = 30.0) -> None:
        self.root = Path(root)
        self.executable = executable or shutil.which("etcd") or "/usr/bin/etcd"
        self.start_timeout = start_timeout
        ports = free_ports(2 * members)
        self.names = [f"m{n}" for n in range(members)]
        self.endpoints = [f"http://127.0.0.1:{ports[2 * n]}" for n in range(members)]
        self.peers = [f"http://127.0.0.1:{ports[2 * n + 1]}" for n in range(members)]
        self.procs: list[subprocess.Popen | None] = [None] * members

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def log(self, n: int) -> Path:
        return self.root / f"{self.names[n]}.log"

    def start(self) -> None:
        cluster = ",".join(f"{name}={peer}" for name, peer in zip(self.names, self.peers, strict=True))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}  # flags only, no ambient config
        try:
            for n, name in enumerate(self.names):
                argv = [self.executable, "--name", name, "--data-dir", str(self.root / name),
                        "--listen-client-urls", self.endpoints[n], "--advertise-client-urls", self.endpoints[n],
                        "--listen-peer-urls", self.peers[n], "--initial-advertise-peer-urls", self.peers[n],
                        "--initial-cluster", cluster, "--initial-cluster-state", "new",
                        "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000"]
                with self.log(n).open("w") as log:
                    self.procs[n] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                     stdin=subprocess.DEVNULL, env=env)
            deadline = time.monotonic() + self.start_timeout
            for n in range(len(self.names)):
                self._wait(n, deadline)
        except BaseException:
            self.stop()
            raise

    def _wait(self, n: int, deadline: float) -> None:
        """Until member n answers a KV read (the cluster has a leader)."""
        proc = self.procs[n]
        assert proc is not None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EtcdStartError(f"etcd member {self.names[n]} exited with status {proc.returncode}:\n"
                                     f"{self.log(n).read_text()[-2000:]}")
            request = urllib.request.Request(f"{self.endpoints[n]}/v3/kv/range", data=b'{"key": "AA=="}',
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)  # waiting for a server to start, not for a race to settle
        raise EtcdStartError(f"etcd member {self.names[n]} did not answer on {self.endpoints[n]} within "
                             f"{self.start_timeout:.0f} s:\n{self.log(n).read_text()[-2000:]}")

    def kill(self, n: int) -> None:
        """SIGKILL member n by its pid (a crash: no goodbye to its peers)."""
        proc = self.procs[n]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Every member stopped by its pid, reaped, and the data directories removed."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for name in self.names:
            shutil.rmtree(self.root / name, ignore_errors=True)
