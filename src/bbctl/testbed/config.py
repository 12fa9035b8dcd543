"""The shape of a loopback test bed and where each of its files lives.

Every path the test bed uses is derived here from ``root``, so ``down`` can find
everything ``up`` made, even after a crash, by looking under one directory.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bbctl.collection import sizes
from bbctl.errors import TestbedError

DEFAULT_ROOT = Path("/var/lib/bbctl-testbed")
SLURM_FLAVOURS = ("lua", "datawarp", "none")
GLUSTERD_PORT = 24007


@dataclass(frozen=True)
class Node:
    """One storage server of the test bed: a glusterd on its own loopback address."""

    index: int
    address: str
    root: Path
    brick_count: int

    @property
    def name(self) -> str:
        return f"bbnode{self.index}"

    @property
    def glusterd_dir(self) -> Path:
        return self.root / "glusterd"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.run_dir / "glusterd.socket"

    @property
    def pid_file(self) -> Path:
        return self.root / "glusterd.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "glusterd.log"

    def brick_image(self, k: int) -> Path:
        return self.root / "disks" / f"nvme{k}.img"

    def brick_mount(self, k: int) -> Path:
        return self.root / "bricks" / f"nvme{k}"


@dataclass(frozen=True)
class TestbedConfig:
    __test__ = False  # not a pytest test class

    root: Path = DEFAULT_ROOT
    servers: int = 3
    bricks_per_server: int = 3  # nine bricks: room for a 24 GiB striped buffer (6 + 1) beside others
    brick_size: int = 4 * 1024**3
    address_prefix: str = "127.1.1"
    slurm: str = "lua"
    user: str = "bbuser"
    # CPUs of the test Slurm's one compute node; 0 = this machine's. More than the machine has lets a
    # load test run many small jobs at once (slurm.conf then says SlurmdParameters=config_overrides).
    slurm_cpus: int = 0
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self) -> None:
        if not 1 <= self.servers <= 32:
            raise TestbedError(f"--servers {self.servers}: choose 1 to 32")
        if not 1 <= self.bricks_per_server <= 16:
            raise TestbedError(f"--bricks {self.bricks_per_server}: choose 1 to 16")
        if self.brick_size < 300 * 1024**2:
            raise TestbedError(
                f"--brick-size {sizes.format_size(self.brick_size)}: XFS needs at least 300MiB")
        if not 0 <= self.slurm_cpus <= 4096:
            raise TestbedError(f"--slurm-cpus {self.slurm_cpus}: choose 1 to 4096 (0: this machine's)")
        if self.slurm not in SLURM_FLAVOURS:
            raise TestbedError(f"--slurm {self.slurm}: choose one of {', '.join(SLURM_FLAVOURS)}")
        self._check_prefix()

    def _check_prefix(self) -> None:
        try:
            first = ipaddress.IPv4Address(f"{self.address_prefix}.1")
        except ValueError:
            raise TestbedError(
                f"--address-prefix {self.address_prefix}: give three octets, e.g. 127.1.1") from None
        if not first.is_loopback or self.address_prefix.startswith("127.0.0"):
            raise TestbedError(
                f"--address-prefix {self.address_prefix}: must be inside 127.0.0.0/8 "
                "and not 127.0.0 (the test bed only uses loopback aliases)")

    @property
    def nodes(self) -> list[Node]:
        return [Node(i, f"{self.address_prefix}.{i}", self.root / f"node{i}",
                     self.bricks_per_server) for i in range(1, self.servers + 1)]

    @property
    def inventory_file(self) -> Path:
        return self.root / "inventory.yml"

    @property
    def config_file(self) -> Path:
        return self.root / "testbed.json"

    @property
    def up_since_file(self) -> Path:
        """Made by the first ``up``; its mtime dates what the bed's daemons left outside root."""
        return self.root / "up-since"

    @property
    def bbctl_config(self) -> Path:
        """bbctl's site configuration for the test bed (BBCTL_CONFIG of its Slurm)."""
        return self.root / "bbctl.yml"

    @property
    def slurm_dir(self) -> Path:
        return self.root / "slurm"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm_dir / "etc" / "slurm.conf"

    @property
    def munge_dir(self) -> Path:
        return self.root / "munge"

    @property
    def hostname(self) -> str:
        return socket.gethostname().split(".")[0]

    @property
    def image_size(self) -> int:
        """Bytes of one brick image: ``brick_size`` (the pool's granularity) plus XFS's own overhead.

        XFS on a 4 GiB image offers 3.88 GiB (log, inodes, reserve: about 3 %). A brick must really
        hold a granule, or a striped buffer's quota and ``df`` promise more than its bricks have
        (docs/BENCHMARKS.md, "Layouts for striped buffers").
        """
        return self.brick_size + self.brick_size // 25 + 64 * 1024**2

    @property
    def disk_needed(self) -> int:
        """Bytes the sparse brick images may grow to, with a margin for logs and state."""
        return self.servers * self.bricks_per_server * self.image_size + 512 * 1024**2

    def save(self) -> None:
        data = asdict(self)
        data["root"] = str(self.root)
        self.config_file.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, root: Path) -> TestbedConfig:
        """The shape a previous ``up`` saved under root (defaults if none)."""
        path = root / "testbed.json"
        if not path.exists():
            return cls(root=root)
        data = json.loads(path.read_text())
        data["root"] = Path(data["root"])
        return cls(**data)
