import json
import random

import pytest
import yaml

from bbctl.errors import BBError
from bbctl.pools import (
    Brick,
    NotEnoughBricks,
    Pool,
    PoolError,
    allocate_bricks,
    bricks_needed,
    build_pools,
    load_pools,
    pools_document,
    write_pools_json,
)

GiB = 1024**3


def bricks(layout: dict[str, int], pool: str = "nvme") -> list[Brick]:
    """layout: server -> number of free bricks on it."""
    return [Brick(pool, server, server, f"/bricks/nvme{k}", f"/dev/nvme{k}n1")
            for server, count in layout.items() for k in range(1, count + 1)]


def servers_of(chosen: list[Brick]) -> list[str]:
    return [brick.server for brick in chosen]


# --- bricks_needed ---------------------------------------------------------------

@pytest.mark.parametrize(("capacity", "granularity", "expected"), [
    (1, 4 * GiB, 1),
    (4 * GiB, 4 * GiB, 1),
    (4 * GiB + 1, 4 * GiB, 2),
    (10 * GiB, 4 * GiB, 3),
    (100 * 1000**3, 4 * GiB, 24),   # 100GB (decimal) = 23.28 x 4GiB
    (2**60 + 1, 1, 2**60 + 1),      # exact in integers, where floats would round
])
def test_bricks_needed_rounds_up_to_whole_bricks(capacity, granularity, expected):
    assert bricks_needed(capacity, granularity) == expected


@pytest.mark.parametrize("capacity", [0, -1, -4 * GiB])
def test_bricks_needed_refuses_zero_or_negative_capacity(capacity):
    with pytest.raises(BBError, match=f"capacity must be a positive number of bytes, not {capacity}"):
        bricks_needed(capacity, 4 * GiB)


def test_bricks_needed_refuses_zero_granularity():
    with pytest.raises(PoolError, match="granularity must be a positive"):
        bricks_needed(GiB, 0)


# --- allocate_bricks: spread ---------------------------------------------------------

@pytest.mark.parametrize(("layout", "n", "expected_servers"), [
    ({"a": 2, "b": 2, "c": 2}, 3, ["a", "b", "c"]),                 # one per server
    ({"a": 2, "b": 2, "c": 2}, 4, ["a", "b", "c", "a"]),            # then a second on the first
    ({"a": 1, "b": 3, "c": 2}, 3, ["b", "c", "a"]),                 # most free (least used) first
    ({"c": 2, "b": 2, "a": 2}, 2, ["a", "b"]),                      # ties by name, not input order
    ({"a": 4, "b": 1}, 4, ["a", "b", "a", "a"]),                    # a server runs dry: others go on
    ({"a": 1}, 1, ["a"]),
])
def test_allocate_spreads_one_per_server_before_two_on_any(layout, n, expected_servers):
    assert servers_of(allocate_bricks(bricks(layout), n, pool="nvme")) == expected_servers


def test_allocate_is_deterministic_and_takes_bricks_of_a_server_by_path():
    free = bricks({"a": 3, "b": 3})
    first = allocate_bricks(free, 4, pool="nvme")
    assert first == allocate_bricks(list(reversed(free)), 4, pool="nvme")
    assert [(b.server, b.path) for b in first] == [
        ("a", "/bricks/nvme1"), ("b", "/bricks/nvme1"), ("a", "/bricks/nvme2"), ("b", "/bricks/nvme2")]


def test_allocate_never_gives_a_brick_twice():
    chosen = allocate_bricks(bricks({"a": 3, "b": 2, "c": 1}), 6, pool="nvme")
    assert len({brick.id for brick in chosen}) == 6


@pytest.mark.parametrize(("layout", "n", "free"), [
    ({"a": 1, "b": 1}, 3, 2),
    ({}, 1, 0),
])
def test_not_enough_bricks_names_pool_needed_and_free(layout, n, free):
    with pytest.raises(NotEnoughBricks) as caught:
        allocate_bricks(bricks(layout), n, pool="nvme")
    assert str(caught.value).startswith(f"not enough free bricks in pool 'nvme': {n} needed, {free} free; ")
    assert (caught.value.pool, caught.value.needed, caught.value.free) == ("nvme", n, free)


def test_pool_choose_gives_exactly_what_allocate_bricks_gives():
    rng = random.Random(7)
    layout = {f"s{i:02d}": rng.randint(1, 5) for i in range(12)}
    pool = Pool("nvme", GiB, tuple(reversed(bricks(layout))))
    for _ in range(300):
        allocated = {b.id for b in pool.bricks if rng.random() < rng.random()}
        allocated.add("elsewhere:/not/in/this/pool")
        free = pool.free_bricks(allocated)
        for n in range(1, len(free) + 1):
            assert pool.choose(allocated, n) == allocate_bricks(free, n, pool="nvme")
        with pytest.raises(NotEnoughBricks, match=f"{len(free) + 1} needed, {len(free)} free"):
            pool.choose(allocated, len(free) + 1)


def test_choose_by_usage_trusts_brick_ids_over_counts_that_disagree():
    pool = Pool("nvme", GiB, tuple(bricks({"a": 2, "b": 1})))
    all_taken = {b.id for b in pool.bricks}
    with pytest.raises(NotEnoughBricks, match="3 needed, 0 free"):
        pool.choose_by_usage({}, lambda servers: all_taken, 3)  # counts say all free, ids say none


def test_allocating_no_brick_is_refused():
    with pytest.raises(BBError, match="at least one brick"):
        allocate_bricks(bricks({"a": 1}), 0, pool="nvme")


# --- pools from config + inventory -----------------------------------------------------

def inventory(hosts: dict[str, list[dict]]) -> dict:
    """Shaped like the test bed's inventory.yml."""
    return {"all": {"children": {"bb_storage": {"hosts": {
        name: {"ansible_host": f"127.1.1.{i}", "bb_gluster_host": f"127.1.1.{i}",
               "bb_glusterd_socket": f"/run/{name}/glusterd.socket", "bb_bricks": entries}
        for i, (name, entries) in enumerate(hosts.items(), start=1)}}}}}


TWO_NODES = {
    "bbnode1": [{"device": "/dev/loop0", "path": "/b/node1/nvme1"}, {"device": "/dev/loop1", "path": "/b/node1/nvme2"}],
    "bbnode2": [{"device": "/dev/loop2", "path": "/b/node2/nvme1"}],
}


def test_load_pools_reads_the_test_bed_inventory_shape(tmp_path):
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory(TWO_NODES)))
    pools = load_pools({"pools": {"nvme": {"granularity": "4GiB", "hosts": "all"}}}, path)
    pool = pools["nvme"]
    assert (pool.name, pool.granularity, pool.quantity) == ("nvme", 4 * GiB, 3)
    assert pool.bricks[0] == Brick("nvme", "bbnode1", "127.1.1.1", "/b/node1/nvme1", "/dev/loop0")
    assert pool.bricks[0].id == "bbnode1:/b/node1/nvme1"


def test_pools_split_by_hosts_and_by_a_brick_naming_its_pool():
    hosts = {**TWO_NODES, "bbnode3": [{"device": "/dev/loop3", "path": "/b/node3/ssd1", "pool": "ssd"},
                                      {"device": "/dev/loop4", "path": "/b/node3/nvme1"}]}
    config = {"pools": {"nvme": {"granularity": "4GiB", "hosts": ["bbnode1", "bbnode2"]},
                        "ssd": {"granularity": "1TiB", "hosts": ["bbnode3"]}}}
    pools = build_pools(config, inventory(hosts)["all"]["children"]["bb_storage"]["hosts"])
    assert [b.path for b in pools["nvme"].bricks] == ["/b/node1/nvme1", "/b/node1/nvme2", "/b/node2/nvme1"]
    assert [b.path for b in pools["ssd"].bricks] == ["/b/node3/ssd1", "/b/node3/nvme1"]


@pytest.mark.parametrize(("config", "message"), [
    ({}, "no pools configured"),
    ({"pools": {"nvme": {"hosts": "all"}}}, "pool 'nvme': give its granularity"),
    ({"pools": {"nvme": {"granularity": "4 lots"}}}, "pool 'nvme': granularity: cannot read size"),
    ({"pools": {"nvme": {"granularity": 0}}}, "granularity must be more than 0"),
    ({"pools": {"nvme": {"granularity": "4GiB", "host": "all"}}}, "unknown key"),
    ({"pools": {"nvme": {"granularity": "4GiB", "hosts": ["nope"]}}}, "host\\(s\\) nope not in group 'bb_storage'"),
    ({"pools": {"a": {"granularity": "4GiB"}, "b": {"granularity": "4GiB"}}}, "could be in pools a, b"),
    ({"pools": {"bad/name": {"granularity": "4GiB"}}}, "pool name 'bad/name'"),
])
def test_bad_pool_config_says_what_to_fix(config, message):
    with pytest.raises(PoolError, match=message):
        build_pools(config, inventory(TWO_NODES)["all"]["children"]["bb_storage"]["hosts"])


def test_inventory_without_storage_group_is_refused(tmp_path):
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"x": {}}}}))
    with pytest.raises(PoolError, match="no group 'bb_storage'"):
        load_pools({"pools": {"nvme": {"granularity": "4GiB"}}}, path)


# --- what Slurm reads ----------------------------------------------------------------------

def test_pools_json_for_lua_and_datawarp(tmp_path):
    pools = build_pools({"pools": {"nvme": {"granularity": "4GiB"}}},
                        inventory(TWO_NODES)["all"]["children"]["bb_storage"]["hosts"])
    allocated = {"nvme": {"bbnode1:/b/node1/nvme2", "gone:/brick/not/in/pool"}}
    assert pools_document(pools.values(), allocated) == {
        "pools": [{"id": "nvme", "granularity": 4 * GiB, "quantity": 3, "free": 2}]}
    assert pools_document(pools.values(), allocated, datawarp=True) == {
        "pools": [{"id": "nvme", "units": "bytes", "granularity": 4 * GiB, "quantity": 3, "free": 2}]}


def test_write_pools_json_replaces_atomically(tmp_path):
    target = tmp_path / "pools.json"
    target.write_text("old")
    write_pools_json(target, {"pools": []})
    assert json.loads(target.read_text()) == {"pools": []}
    assert [p.name for p in tmp_path.iterdir()] == ["pools.json"], "no temporary file left behind"
    assert target.stat().st_mode & 0o777 == 0o644


def test_write_pools_json_leaves_the_old_file_when_it_cannot_write(tmp_path):
    target = tmp_path / "pools.json"
    target.write_text('{"pools": []}')
    with pytest.raises(TypeError):
        write_pools_json(target, {"pools": [object()]})
    assert target.read_text() == '{"pools": []}'
    assert [p.name for p in tmp_path.iterdir()] == ["pools.json"]


def test_a_missing_slurm_dir_is_named_not_a_traceback(tmp_path):
    target = tmp_path / "no-such-dir" / "bbctl-pools.json"
    with pytest.raises(BBError, match=r"no-such-dir is not a directory \(slurm_dir in bbctl's configuration"):
        write_pools_json(target, {"pools": []})
    assert not target.parent.exists()
