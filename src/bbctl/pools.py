"""Pools of bricks: what the storage inventory offers, and how bricks are handed out.

A **brick** is one entry of a storage host's ``bb_bricks`` in the Ansible
inventory (group ``bb_storage``). A **pool** is a set of bricks of one
granularity (the capacity one brick provides). A buffer of capacity C takes
``ceil(C / granularity)`` bricks of its pool, spread across servers.

Pool configuration (a mapping, e.g. the ``pools:`` section of bbctl's config)::

    pools:
      nvme:                    # pool id, as Slurm and the directives' pool= see it
        granularity: 4GiB      # capacity of one brick (sizes as in bbctl.collection.sizes)
        hosts: all             # "all" (default) or a list of bb_storage host names
        striped_layout: disperse  # (default) or distribute: see bbctl.layouts
      ssd:
        granularity: 1TiB
        hosts: [bbnode3]

Which pool a brick belongs to: the ``pool:`` key of its ``bb_bricks`` entry
if present (``{device: /dev/nvme1n1, path: /bricks/nvme1, pool: ssd}``),
otherwise the one pool whose ``hosts`` include its host. A brick no pool
claims is not offered; a brick two pools claim without saying which is an
error. Host variables are read from the YAML inventory itself (inline under
the host, as ``bbctl testbed up`` writes them); ``host_vars/`` directories are
not read.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, islice
from pathlib import Path
from typing import Any

import yaml

from bbctl.collection import sizes
from bbctl.errors import BBError

STORAGE_GROUP = "bb_storage"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STRIPED_LAYOUTS = ("disperse", "distribute")  # how striped buffers are built (bbctl.layouts)
# The keys of one pool under bbctl.yml's `pools:` (checked by build_pools, not by the argument-spec
# validator: `pools` maps names of the site's choosing to these). docs/CONFIGURATION.md is generated
# from this and bbctl.site.SETTINGS (`bbctl config reference`).
POOL_SETTINGS: dict[str, dict[str, Any]] = {
    "granularity": {
        "type": "size", "required": True,
        "description": "What one brick holds, and so the unit a buffer is allocated in: a buffer of capacity "
                       "C takes ceil(C / granularity) bricks (striped buffers one more per disperse set). "
                       "Give what a brick really holds after its filesystem's overhead (XFS takes about 3 %)."},
    "hosts": {
        "type": "'all' or list", "default": "all",
        "description": "The `bb_storage` hosts whose bricks are in the pool. A brick entry may instead name "
                       "its pool (`pool:` in its `bb_bricks` entry); a brick two pools claim must."},
    "striped_layout": {
        "type": "str", "default": "disperse", "choices": list(STRIPED_LAYOUTS),
        "description": "How a striped buffer of 2 or more granules is built: `disperse` (erasure-coded, one "
                       "redundancy brick per set of at most 16+1, a file can be as large as its set) or "
                       "`distribute` (each file whole on one brick; faster for many small files)."},
}
_POOL_KEYS = set(POOL_SETTINGS)


class PoolError(BBError):
    """The pool configuration or the storage inventory cannot be used as written."""


class NotEnoughBricks(BBError):
    """A pool has fewer free bricks than a buffer needs.

    ``held_back``: free bricks on unusable servers (not counted in ``free``), ``servers``: those servers.
    """

    def __init__(self, pool: str, needed: int, free: int, *, held_back: int = 0,
                 servers: Collection[str] = ()) -> None:
        unusable = (f" ({held_back} more on unusable server(s) {', '.join(sorted(servers))}: "
                    "`bbctl servers` says why)" if held_back else "")
        super().__init__(
            f"not enough free bricks in pool {pool!r}: {needed} needed, {free} free{unusable}; "
            "ask for less capacity or wait for other buffers to be torn down")
        self.pool, self.needed, self.free = pool, needed, free
        self.held_back, self.servers = held_back, sorted(servers)


@dataclass(frozen=True)
class Brick:
    pool: str
    server: str   # inventory host name: what Ansible targets
    address: str  # bb_gluster_host: what `gluster volume create` names
    path: str     # brick root on the server
    device: str

    @property
    def id(self) -> str:
        """Unique across the site: one path exists once per server."""
        return f"{self.server}:{self.path}"

    def to_dict(self) -> dict[str, str]:
        return {"pool": self.pool, "server": self.server, "address": self.address,
                "path": self.path, "device": self.device}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Brick:
        return cls(pool=data["pool"], server=data["server"], address=data["address"],
                   path=data["path"], device=data["device"])


@dataclass(frozen=True)
class Pool:
    name: str
    granularity: int  # bytes per brick
    bricks: tuple[Brick, ...] = field(repr=False)
    striped_layout: str = "disperse"  # one of STRIPED_LAYOUTS

    @property
    def quantity(self) -> int:
        return len(self.bricks)

    def usable_bricks(self, unusable: Collection[str] = ()) -> list[Brick]:
        """The bricks not on an unusable server (bbctl.state.base.ServerHealth): what the pool offers."""
        return [brick for brick in self.bricks if brick.server not in unusable]

    def free_bricks(self, allocated_ids: Collection[str], unusable: Collection[str] = ()) -> list[Brick]:
        return [brick for brick in self.usable_bricks(unusable) if brick.id not in allocated_ids]

    def choose(self, allocated_ids: Collection[str], n: int, unusable: Collection[str] = ()) -> list[Brick]:
        """Exactly ``allocate_bricks(self.free_bricks(allocated_ids, unusable), n)``; allocated_ids is a set."""
        in_use = Counter(self._server_of[i] for i in allocated_ids if i in self._server_of)
        return self.choose_by_usage(in_use, lambda _servers: allocated_ids, n, unusable=unusable)

    def choose_by_usage(self, in_use: Mapping[str, int], taken_on: Callable[[list[str]], Collection[str]],
                        n: int, *, unusable: Collection[str] = ()) -> list[Brick]:
        """The same choice from counts of bricks in use per server, never on an unusable server.

        taken_on(servers) gives the ids in use on the few servers chosen. This
        costs O(servers) plus their bricks instead of O(bricks): at 1,000
        servers x 8 bricks that is what keeps an allocation within milliseconds.
        NotEnoughBricks names the free bricks the unusable servers hold back.
        """
        by_free: dict[int, list[str]] = {}  # free count -> servers, in name order
        total = held_back = 0
        for server, bricks in self._by_server.items():
            free = len(bricks) - in_use.get(server, 0)
            if free > 0 and server in unusable:
                held_back += free
            elif free > 0:
                by_free.setdefault(free, []).append(server)
                total += free
        if held_back and n > total:
            raise NotEnoughBricks(self.name, n, total, held_back=held_back,
                                  servers=[s for s in unusable if s in self._by_server])
        _check_request(self.name, n, total)
        # Least-loaded first, ties by name; round one takes one brick from each of
        # the first n servers, so no server beyond those can be needed.
        servers = list(islice(chain.from_iterable(by_free[f] for f in sorted(by_free, reverse=True)), n))
        taken = taken_on(servers)
        chosen = _round_robin([[b for b in self._by_server[s] if b.id not in taken] for s in servers], n)
        if len(chosen) < n:  # the counts said more were free than the ids show: trust the ids
            raise NotEnoughBricks(self.name, n, len(chosen))
        return chosen

    @cached_property
    def _by_server(self) -> dict[str, tuple[Brick, ...]]:
        by_server: dict[str, list[Brick]] = {}
        for brick in self.bricks:
            by_server.setdefault(brick.server, []).append(brick)
        return {server: tuple(sorted(by_server[server], key=_by_path)) for server in sorted(by_server)}

    @cached_property
    def _server_of(self) -> dict[str, str]:
        return {brick.id: brick.server for brick in self.bricks}


# --- allocation --------------------------------------------------------------

def bricks_needed(capacity: int, granularity: int) -> int:
    """Bricks a buffer of `capacity` bytes takes: capacity rounded up to whole bricks."""
    if capacity <= 0:
        raise BBError(f"capacity must be a positive number of bytes, not {capacity}")
    if granularity <= 0:
        raise PoolError(f"granularity must be a positive number of bytes, not {granularity}")
    return -(-capacity // granularity)  # ceil in integers: floats lose bytes above 2**53


def allocate_bricks(free_bricks: Sequence[Brick], n: int, *, pool: str) -> list[Brick]:
    """Choose n of free_bricks, one per server before two on any.

    Servers are taken least-loaded first (most free bricks), ties by name, and
    within a server bricks go by path, so the same free set always gives the
    same answer. Spreading puts a buffer's bandwidth on many servers and limits
    what one server's loss takes down.
    """
    _check_request(pool, n, len(free_bricks))
    by_server: dict[str, list[Brick]] = {}
    for brick in free_bricks:
        by_server.setdefault(brick.server, []).append(brick)
    servers = sorted(by_server, key=lambda server: (-len(by_server[server]), server))
    return _round_robin([sorted(by_server[server], key=_by_path) for server in servers], n)


def _check_request(pool: str, n: int, free: int) -> None:
    if n <= 0:
        raise BBError(f"a buffer needs at least one brick, not {n}")
    if n > free:
        raise NotEnoughBricks(pool, n, free)


def _round_robin(queues: list[list[Brick]], n: int) -> list[Brick]:
    """The first brick of each queue in turn, then the second of each, ... until n or none left."""
    chosen: list[Brick] = []
    for depth in range(max(map(len, queues), default=0)):
        for queue in queues:
            if depth < len(queue):
                chosen.append(queue[depth])
                if len(chosen) == n:
                    return chosen
    return chosen


def _by_path(brick: Brick) -> str:
    return brick.path


# --- from configuration and inventory -----------------------------------------

def load_pools(config: Mapping[str, Any], inventory_file: Path) -> dict[str, Pool]:
    """Pools from a config mapping (with a ``pools`` key) and a YAML inventory file."""
    try:
        inventory = yaml.safe_load(inventory_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PoolError(f"cannot read the storage inventory {inventory_file}: {exc}") from exc
    return build_pools(config, storage_hosts(inventory))


def storage_hosts(inventory: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Host name -> inline host vars of every host in group bb_storage (or its child groups)."""
    group = _find_group(inventory, STORAGE_GROUP)
    if group is None:
        raise PoolError(f"the inventory has no group {STORAGE_GROUP!r}: list the storage servers there")
    hosts: dict[str, Mapping[str, Any]] = {}
    _collect_hosts(group, hosts)
    return hosts


def _find_group(node: Any, name: str) -> Mapping[str, Any] | None:
    if not isinstance(node, Mapping):
        return None
    for key, child in node.items():
        if key == name and isinstance(child, Mapping):
            return child
    for key in ("all", "children"):
        found = _find_group(node.get(key), name)
        if found is not None:
            return found
    return None


def _collect_hosts(group: Mapping[str, Any], hosts: dict[str, Mapping[str, Any]]) -> None:
    for host, host_vars in (group.get("hosts") or {}).items():
        hosts[str(host)] = host_vars or {}
    for child in (group.get("children") or {}).values():
        if isinstance(child, Mapping):
            _collect_hosts(child, hosts)


def build_pools(config: Mapping[str, Any], hosts: Mapping[str, Mapping[str, Any]]) -> dict[str, Pool]:
    """Pools from the ``pools`` config and the storage hosts' variables."""
    settings = config.get("pools")
    if not isinstance(settings, Mapping) or not settings:
        raise PoolError("no pools configured: add e.g. `pools: {nvme: {granularity: 4GiB, hosts: all}}`")
    granularity = {name: _granularity(name, spec) for name, spec in settings.items()}
    members = {name: _pool_hosts(name, spec, hosts) for name, spec in settings.items()}
    bricks: dict[str, list[Brick]] = {name: [] for name in settings}
    seen: set[str] = set()
    for host, host_vars in hosts.items():
        for entry in _brick_entries(host, host_vars):
            pool = _pool_of(host, entry, members)
            if pool is None:
                continue
            brick = Brick(pool=pool, server=host, address=str(host_vars.get("bb_gluster_host") or host),
                          path=str(entry["path"]), device=str(entry["device"]))
            if brick.id in seen:
                raise PoolError(f"brick {brick.id} is listed twice in the inventory")
            seen.add(brick.id)
            bricks[pool].append(brick)
    return {name: Pool(name, granularity[name], tuple(bricks[name]), _striped_layout(name, settings[name]))
            for name in settings}


def _striped_layout(name: str, spec: Mapping[str, Any]) -> str:
    value = spec.get("striped_layout", "disperse")
    if value not in STRIPED_LAYOUTS:
        raise PoolError(f"pool {name!r}: striped_layout {value!r}: choose one of {', '.join(STRIPED_LAYOUTS)}")
    return str(value)


def _granularity(name: str, spec: Any) -> int:
    if not NAME_RE.match(str(name)):
        raise PoolError(f"pool name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    if not isinstance(spec, Mapping) or "granularity" not in spec:
        raise PoolError(f"pool {name!r}: give its granularity, e.g. `granularity: 4GiB`")
    unknown = set(spec) - _POOL_KEYS
    if unknown:
        raise PoolError(f"pool {name!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(_POOL_KEYS))}")
    try:
        value = sizes.parse_size(spec["granularity"])
    except sizes.SizeError as exc:
        raise PoolError(f"pool {name!r}: granularity: {exc}") from exc
    if value <= 0:
        raise PoolError(f"pool {name!r}: granularity must be more than 0 bytes")
    return value


def _pool_hosts(name: str, spec: Mapping[str, Any], hosts: Mapping[str, Any]) -> set[str]:
    wanted = spec.get("hosts", "all")
    if wanted == "all":
        return set(hosts)
    if not isinstance(wanted, list):
        raise PoolError(f"pool {name!r}: hosts must be 'all' or a list of host names")
    unknown = [str(host) for host in wanted if str(host) not in hosts]
    if unknown:
        raise PoolError(f"pool {name!r}: host(s) {', '.join(unknown)} not in group {STORAGE_GROUP!r}")
    return {str(host) for host in wanted}


def _brick_entries(host: str, host_vars: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = host_vars.get("bb_bricks") or []
    for entry in entries:
        if not isinstance(entry, Mapping) or not entry.get("path") or not entry.get("device"):
            raise PoolError(f"host {host}: each bb_bricks entry needs a device and a path, got {entry!r}")
    return entries


def _pool_of(host: str, entry: Mapping[str, Any], members: Mapping[str, set[str]]) -> str | None:
    named = entry.get("pool")
    if named is not None:
        if named not in members:
            raise PoolError(f"host {host}: brick {entry['path']} names pool {named!r}, which is not configured")
        return str(named)
    claiming = sorted(pool for pool, pool_hosts in members.items() if host in pool_hosts)
    if len(claiming) > 1:
        raise PoolError(f"host {host}: brick {entry['path']} could be in pools {', '.join(claiming)}; "
                        "add `pool: NAME` to its bb_bricks entry")
    return claiming[0] if claiming else None


# --- what Slurm reads ------------------------------------------------------------

def pools_document(pools: Iterable[Pool], allocated: Mapping[str, Collection[str]], *,
                   datawarp: bool = False, unusable: Collection[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """Slurm's pools JSON; quantity and free count bricks (granules), granularity is bytes.

    allocated maps pool name -> ids of its bricks in use. The datawarp plugin
    also wants ``"units": "bytes"``. Bricks of unusable servers are left out of
    both counts, so Slurm stops offering them (and its used space, quantity
    less free, counts only buffers on usable servers).
    """
    entries = []
    for pool in pools:
        in_use = allocated.get(pool.name, ())
        entry: dict[str, Any] = {"id": pool.name}
        if datawarp:
            entry["units"] = "bytes"
        entry.update(granularity=pool.granularity, quantity=len(pool.usable_bricks(unusable)),
                     free=len(pool.free_bricks(in_use, unusable)))
        entries.append(entry)
    return {"pools": entries}


def write_pools_json(path: Path, document: Mapping[str, Any]) -> None:
    """Replace path atomically: slurmctld may read it at any moment, never half-written."""
    if not path.parent.is_dir():
        raise PoolError(f"cannot write the pools file {path}: {path.parent} is not a directory "
                        "(slurm_dir in bbctl's configuration: Slurm's configuration directory)")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as tmp:
            json.dump(document, tmp, indent=1)
            tmp.write("\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; SlurmUser must read it
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
