"""bbctl.layouts: which GlusterFS layout a buffer gets, and what it holds."""

from __future__ import annotations

import pytest

from bbctl import layouts
from bbctl.errors import BBError
from bbctl.layouts import Layout
from bbctl.pools import Brick, Pool

GiB = 1024**3


@pytest.mark.parametrize(("capacity", "expected"), [
    (1, Layout(1)),                                 # one granule: one brick, nothing to stripe over
    (4 * GiB, Layout(1)),
    (4 * GiB + 1, Layout(2, 1, 1)),                 # two data bricks and one of redundancy
    (24 * GiB, Layout(6, 1, 1)),
    (64 * GiB, Layout(16, 1, 1)),                   # the largest single disperse set GlusterFS 10 makes
    (68 * GiB, Layout(18, 2, 1)),                   # 17 granules: two equal sets of 9 + 1
    (128 * GiB, Layout(32, 2, 1)),
    (132 * GiB, Layout(33, 3, 1)),                  # 33 granules: three sets of 11 + 1
])
def test_striped_buffers_are_dispersed_in_sets_of_at_most_16_data_bricks(capacity, expected):
    layout = layouts.plan(capacity, 4 * GiB, striped=True)
    assert layout == expected
    assert layout.data_bricks * 4 * GiB >= capacity
    if layout.redundancy:
        assert layout.data_bricks // layout.sets <= layouts.MAX_DATA_BRICKS
        assert layout.bricks == layout.data_bricks + layout.sets
        assert layout.bricks % layout.disperse == 0  # GlusterFS: equal sets


@pytest.mark.parametrize("capacity", [1, 7 * GiB, 100 * GiB])
def test_private_buffers_and_distribute_pools_take_one_brick_per_granule(capacity):
    granules = -(-capacity // (4 * GiB))
    assert layouts.plan(capacity, 4 * GiB, striped=False) == Layout(granules)
    assert layouts.plan(capacity, 4 * GiB, striped=True, striped_layout="distribute") == Layout(granules)


def test_the_largest_file_is_the_buffer_while_one_set_holds_it():
    assert layouts.plan(24 * GiB, 4 * GiB, striped=True).largest_file(4 * GiB) == 24 * GiB
    assert layouts.plan(68 * GiB, 4 * GiB, striped=True).largest_file(4 * GiB) == 36 * GiB  # one set of 9
    assert layouts.plan(24 * GiB, 4 * GiB, striped=False).largest_file(4 * GiB) == 4 * GiB  # one brick


def test_volume_args_and_description():
    assert Layout(6, 1, 1).volume_args() == {"disperse": 7, "redundancy": 1}
    assert Layout(18, 2, 1).volume_args() == {"disperse": 10, "redundancy": 1}
    assert Layout(3).volume_args() == {}
    assert Layout(18, 2, 1).describe() == "2 x disperse 9+1"
    assert Layout(3).describe() == "distribute over 3 brick(s)"


def test_only_dispersed_buffers_need_quota():
    """A distributed buffer's whole bricks bound it; a dispersed one filled to its bricks answers EIO."""
    assert Layout(6, 1, 1).quota and Layout(18, 2, 1).quota
    assert not Layout(1).quota and not Layout(3).quota


def test_meta_round_trips_and_old_records_read_as_distribute():
    layout = Layout(18, 2, 1)
    assert Layout.from_meta(layout.to_meta(), 20) == layout
    assert Layout.from_meta(None, 3) == Layout(3)  # a record from before layouts: its bricks, distributed


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="striped_layout 'shard'"):
        layouts.plan(GiB, GiB, striped=True, striped_layout="shard")
    with pytest.raises(BBError, match="capacity must be a positive"):
        layouts.plan(0, GiB, striped=True)


def test_a_buffer_its_pool_can_never_hold_is_refused_naming_what_fits():
    pool = Pool("nvme", 4 * GiB, tuple(Brick("nvme", f"s{n}", f"s{n}", f"/b{k}", f"/dev/b{k}")
                                       for n in (1, 2, 3) for k in (1, 2, 3)))  # nine bricks
    layouts.check_fits(layouts.plan(32 * GiB, 4 * GiB, striped=True), 32 * GiB, pool)  # 8 + 1: fits
    with pytest.raises(BBError, match=r"capacity=36GiB needs disperse 9\+1, 10 bricks; pool 'nvme' has 9 of "
                                      r"4GiB: ask for at most 32GiB") as refused:
        layouts.check_fits(layouts.plan(36 * GiB, 4 * GiB, striped=True), 36 * GiB, pool)
    assert refused.value.exit_code == 2
    layouts.check_fits(layouts.plan(36 * GiB, 4 * GiB, striped=False), 36 * GiB, pool)  # private: 9 bricks


@pytest.mark.parametrize(("capacity", "striped", "striped_layout", "limit"), [
    (4 * GiB, True, "disperse", None),              # one brick: the buffer is the file's limit
    (64 * GiB, True, "disperse", None),             # one set of 16+1: a file can fill it
    (64 * GiB + 1, True, "disperse", 9 * 4 * GiB),  # 17 granules: two sets of 9+1, one file in one set
    (132 * GiB, True, "disperse", 11 * 4 * GiB),
    (8 * GiB, True, "distribute", 4 * GiB),         # a file lives on one brick
    (8 * GiB, False, "disperse", 4 * GiB),          # private-only buffers are distributed too
    (4 * GiB, True, "distribute", None),
])
def test_the_file_limit_is_set_only_when_a_file_holds_less_than_the_buffer(capacity, striped, striped_layout, limit):
    layout = layouts.plan(capacity, 4 * GiB, striped=striped, striped_layout=striped_layout)
    assert layout.file_limit(4 * GiB) == limit
    if limit is None:
        assert layout.largest_file(4 * GiB) == layout.data_bricks * 4 * GiB
    else:
        assert limit == layout.largest_file(4 * GiB) < capacity
