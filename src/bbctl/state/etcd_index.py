"""A pool's bricks in use as one small etcd value: what an etcd allocation reads and rewrites.

Per server, a bit mask over a table of brick paths (``paths[i]`` is bit i;
a path is added at the end the first time it is used, and a server the
first time one of its bricks is, so bits and positions never move). At
1,000 servers x 8 bricks that is one byte per server and the servers' names
once: ~2 KB after zlib, decoded, counted and encoded again with a few
C-level calls (no Python loop over the servers), where reading one key per
brick in use took ~25 ms. The value is self-contained: a release clears its
bricks' bits without knowing the pool's inventory.

Encoding: zlib of ``{"v": 1, "paths": [...], "width": W}`` (JSON), a newline,
the servers' names separated by tabs (a host name holds no tab), a newline,
then W bytes per server, in the servers' order: its mask, big-endian.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from bbctl.pools import Brick, Pool
from bbctl.state.base import StateError

VERSION = 1
REBUILD = ("delete it (`etcdctl del <prefix>/pools/<pool>`, no bbctl running) and the next allocation rebuilds it "
           "from the brick keys (docs/OPERATOR_GUIDE.md section 16)")
_POPCOUNT = bytes(bin(n).count("1") for n in range(256))


@dataclass
class PoolIndex:
    revision: int = 0  # mod_revision of the key as read; 0: the key does not exist
    paths: list[str] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    masks: bytearray = field(default_factory=bytearray)  # width bytes per server
    width: int = 1
    _position: dict[str, int] | None = field(default=None, repr=False, compare=False)  # server -> n, when built

    @classmethod
    def decode(cls, value: bytes, revision: int) -> PoolIndex:
        try:
            header, servers, masks = zlib.decompress(value).split(b"\n", 2)
            meta = json.loads(header)
        except (zlib.error, ValueError) as exc:
            raise StateError(f"an etcd pool index is not bbctl's ({exc}): {REBUILD}") from exc
        if meta.get("v") != VERSION:
            raise StateError(f"an etcd pool index has layout version {meta.get('v')!r}, not {VERSION}: "
                             "written by another bbctl version; upgrade bbctl")
        names = servers.decode().split("\t") if servers else []
        if len(masks) != len(names) * meta["width"]:
            raise StateError(f"an etcd pool index is cut short: {REBUILD}")
        return cls(revision, meta["paths"], names, bytearray(masks), meta["width"])

    @classmethod
    def from_brick_ids(cls, brick_ids: Iterable[str], revision: int = 0) -> PoolIndex:
        """Built from brick ids (``server:path``): what the per-brick keys say is in use."""
        index = cls(revision)
        for brick_id in brick_ids:
            index._set(*brick_id.split(":", 1), on=True)
        return index

    def encode(self) -> bytes:
        header = json.dumps({"v": VERSION, "paths": self.paths, "width": self.width}, separators=(",", ":"))
        return zlib.compress(b"\n".join((header.encode(), "\t".join(self.servers).encode(), bytes(self.masks))), 1)

    def in_use(self) -> dict[str, int]:
        """Bricks in use per server (0 for a server whose bricks were all released)."""
        if self.width == 1:
            return dict(zip(self.servers, self.masks.translate(_POPCOUNT), strict=True))
        return {server: self._mask(n).bit_count() for n, server in enumerate(self.servers)}

    def ids_on(self, servers: Collection[str]) -> set[str]:
        ids = set()
        position = self._positions()
        for server in servers:
            mask = self._mask(position[server]) if server in position else 0
            ids.update(f"{server}:{path}" for bit, path in enumerate(self.paths) if mask >> bit & 1)
        return ids

    def ids(self) -> set[str]:
        return self.ids_on(self.servers)

    def choose(self, pool: Pool, n: int, unusable: Collection[str] = ()) -> list[Brick]:
        """Pool.choose_by_usage on this index: the same choice SQLite makes from the same bricks in use."""
        return pool.choose_by_usage(self.in_use(), self.ids_on, n, unusable=unusable)

    def holds(self, brick: Brick) -> bool:
        return f"{brick.server}:{brick.path}" in self.ids_on([brick.server])

    def taking(self, bricks: Iterable[Brick]) -> PoolIndex:
        """A copy with bricks marked in use."""
        index = self._copy()
        for brick in bricks:
            index._set(brick.server, brick.path, on=True)
        return index

    def freeing(self, bricks: Iterable[Brick]) -> PoolIndex:
        """A copy with bricks marked free."""
        index = self._copy()
        for brick in bricks:
            index._set(brick.server, brick.path, on=False)
        return index

    def _copy(self) -> PoolIndex:
        return PoolIndex(self.revision, list(self.paths), list(self.servers), bytearray(self.masks), self.width,
                         dict(self._positions()))

    def _positions(self) -> dict[str, int]:
        if self._position is None:
            self._position = dict(zip(self.servers, range(len(self.servers)), strict=True))
        return self._position

    def _mask(self, n: int) -> int:
        return int.from_bytes(self.masks[n * self.width:(n + 1) * self.width], "big")

    def _set(self, server: str, path: str, *, on: bool) -> None:
        if path not in self.paths:
            if not on:
                return
            self.paths.append(path)
            if len(self.paths) > 8 * self.width:
                self._widen()
        position = self._positions()
        if server not in position:
            if not on:
                return
            position[server] = len(self.servers)
            self.servers.append(server)
            self.masks += bytes(self.width)
        n, bit = position[server], 1 << self.paths.index(path)
        mask = self._mask(n) | bit if on else self._mask(n) & ~bit
        self.masks[n * self.width:(n + 1) * self.width] = mask.to_bytes(self.width, "big")

    def _widen(self) -> None:
        masks = [self._mask(n) for n in range(len(self.servers))]
        self.width += 1
        self.masks = bytearray(b"".join(mask.to_bytes(self.width, "big") for mask in masks))
