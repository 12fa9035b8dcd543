"""How a buffer's bricks become a GlusterFS volume: its layout.

DataWarp's ``access_mode=striped`` spreads every file over all of the job's
servers. A plain distributed volume cannot: each file lives whole on one brick,
so a buffer of six bricks holds no file larger than one brick. Sharding spreads
files but hung writers when a brick filled (benchmarks/layouts.py). A dispersed
(erasure-coded) volume writes every file across all bricks of its set, fills
them evenly, and survives the loss of ``redundancy`` bricks, for the price of
one extra brick per set. So (docs/BENCHMARKS.md, "Layouts for striped buffers"):

- striped buffers of two or more granules: disperse sets of ``k`` data bricks
  plus one redundancy brick, ``k`` at most 16 (GlusterFS 10's
  ``EC_METHOD_MAX_FRAGMENTS``); larger buffers are several equal sets, and a
  file then lives in one set: the largest file is one set's data bricks (the
  job is told: ``Layout.file_limit``, its ``BB_JOB_STRIPED_MAX_FILE``);
- one-granule and private-only buffers, and pools with ``striped_layout:
  distribute``: plain distribute, one brick per granule.

The buffer's capacity (what Slurm books, quota and ``df`` show) stays the data
bricks' granules; the redundancy bricks are taken from the pool on top and
reach Slurm as space that is not free.

Only dispersed buffers get GlusterFS quota (``Layout.quota``). A brick is never
shared between buffers, so a distributed buffer is already bounded by its own
bricks, which hold the granules Slurm booked; and every quota enable or delete
of a quota-enabled volume restarts the quota daemon of every server of the pool,
which reconnects to every brick of every quota-enabled volume from a privileged
port (docs/RELIABILITY.md, "The privileged-port budget"). A dispersed buffer
keeps it: filled to its bricks it answered EIO and lost the file written last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bbctl.collection import sizes
from bbctl.errors import BBError
from bbctl.pools import STRIPED_LAYOUTS, Pool, bricks_needed

if TYPE_CHECKING:
    from bbctl.state import Buffer

META = "layout"  # the state record's meta key holding Layout.to_meta()
MAX_DATA_BRICKS = 16  # data fragments of one disperse set in GlusterFS 10 (ec-method.h)
# check_fits's refusal; pool names never hold a quote (bbctl.pools.NAME_RE).
TOO_BIG = ("capacity={capacity} needs {what}; pool '{pool}' has {quantity} of {granularity}: "
           "ask for at most {largest}")


@dataclass(frozen=True)
class Layout:
    """``data_bricks`` granules in ``sets`` disperse sets with ``redundancy`` extra bricks each (0: distribute)."""

    data_bricks: int
    sets: int = 1
    redundancy: int = 0

    @property
    def bricks(self) -> int:
        """Bricks to allocate: data plus redundancy."""
        return self.data_bricks + self.sets * self.redundancy

    @property
    def disperse(self) -> int | None:
        """Bricks per disperse set (GlusterFS's ``disperse`` count), None for distribute."""
        return self.data_bricks // self.sets + self.redundancy if self.redundancy else None

    @property
    def file_bricks(self) -> int:
        """Data bricks one file is spread over: one set's, or one brick when distributed."""
        return self.data_bricks // self.sets if self.redundancy else 1

    def largest_file(self, granularity: int) -> int:
        """Bytes one file can hold: one set's data bricks, or one brick when distributed."""
        return granularity * self.file_bricks

    def file_limit(self, granularity: int) -> int | None:
        """The largest file when it is less than the buffer (the job's BB_JOB_STRIPED_MAX_FILE), else None.

        None for one disperse set and for one brick: then a file can fill the whole buffer, as far as
        its capacity (quota) allows. slurm/bbctl-layouts.lua computes the same from bbctl-site.lua.
        """
        return self.largest_file(granularity) if self.file_bricks < self.data_bricks else None

    @property
    def quota(self) -> bool:
        """Whether the capacity needs GlusterFS quota: dispersed only (see the module's docstring)."""
        return bool(self.redundancy)

    def volume_args(self) -> dict[str, int]:
        """hpc.burstbuffer.gluster_volume's layout options: ``disperse`` and ``redundancy``, or nothing."""
        return {"disperse": self.disperse, "redundancy": self.redundancy} if self.redundancy else {}

    def describe(self) -> str:
        if not self.redundancy:
            return f"distribute over {self.data_bricks} brick(s)"
        sets = f"{self.sets} x " if self.sets > 1 else ""
        return f"{sets}disperse {self.data_bricks // self.sets}+{self.redundancy}"

    def to_meta(self) -> dict[str, int]:
        return {"data_bricks": self.data_bricks, "sets": self.sets, "redundancy": self.redundancy}

    @classmethod
    def from_meta(cls, meta: Any, brick_count: int) -> Layout:
        """The layout a state record holds; records made before layouts existed are distributed."""
        if not isinstance(meta, dict):
            return cls(brick_count)
        return cls(int(meta["data_bricks"]), int(meta.get("sets", 1)), int(meta.get("redundancy", 0)))


def plan(capacity: int, granularity: int, *, striped: bool, striped_layout: str = "disperse") -> Layout:
    """The layout of a GlusterFS buffer of ``capacity`` bytes in a pool of ``granularity`` bytes per brick.

    Raises BBError/PoolError (from bricks_needed) for a capacity or granularity that is not positive,
    ValueError for an unknown ``striped_layout``.
    """
    if striped_layout not in STRIPED_LAYOUTS:
        raise ValueError(f"striped_layout {striped_layout!r}: choose one of {', '.join(STRIPED_LAYOUTS)}")
    granules = bricks_needed(capacity, granularity)
    if not striped or striped_layout == "distribute" or granules < 2:
        return Layout(granules)
    sets = -(-granules // MAX_DATA_BRICKS)
    per_set = -(-granules // sets)  # equal sets, as GlusterFS requires; rounding up adds at most sets-1 granules
    return Layout(per_set * sets, sets, 1)


def check_fits(layout: Layout, capacity: int, pool: Pool) -> None:
    """Refuse (BBError, exit 2) a buffer its pool could never hold, naming the largest one it can.

    Slurm compares the capacity with the pool's size only; the redundancy bricks are ours to count.
    The message is TOO_BIG, which slurm/bbctl-layouts.lua renders too (bbctl-site.lua carries it).
    """
    if layout.bricks <= pool.quantity:
        return
    striped = layout.redundancy > 0
    largest = max((g for g in range(pool.quantity, 0, -1)
                   if plan(g * pool.granularity, pool.granularity, striped=striped,
                           striped_layout=pool.striped_layout).bricks <= pool.quantity), default=0)
    what = f"{layout.describe()}, {layout.bricks} bricks" if striped else f"{layout.bricks} bricks"
    size = sizes.format_size
    raise BBError(TOO_BIG.format(capacity=size(capacity), what=what, pool=pool.name, quantity=pool.quantity,
                                 granularity=size(pool.granularity), largest=size(largest * pool.granularity)),
                  exit_code=2)


def of(buffer: Buffer) -> Layout:
    """The layout a state record was built with."""
    return Layout.from_meta(buffer.meta.get(META), len(buffer.bricks))
