"""bbctl.policy: the policy section of bbctl.yml, and setup and create_persistent as its last word.

What sbatch decides (Lua against Python) is in test_lua_policy.py; here: the settings and
their mistakes, the system's user directory, and the stages that check again with the
user known, before anything is allocated.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

import pytest

from bbctl import lifecycle as lc
from bbctl import policy, site
from bbctl.datawarp import dw_wlm_cli
from bbctl.errors import BBError
from tests.unit.bbctl.test_lifecycle import Recorder, script
from tests.unit.bbctl.test_lua_policy import Directory, write_config

GiB = 1024**3
WHERE = Path("/etc/bbctl/bbctl.yml")
ALICE, BOB, CAROL, DAVE = (1001, 1001), (1002, 2001), (1003, 1003), (1004, 1004)


def settings(**policy_settings: object) -> dict:
    return {"inventory": "/etc/bbctl/inventory.yml", "pools": {"nvme": {}, "ssd": {}}, "policy": policy_settings}


def problem(**policy_settings: object) -> str:
    with pytest.raises(site.ConfigError) as raised:
        site.from_mapping(settings(**policy_settings), WHERE)
    assert str(raised.value).startswith(f"{WHERE}: ")
    return str(raised.value)


def test_no_policy_is_no_limit_and_every_setting_is_documented():
    assert site.from_mapping(settings(), WHERE).policy == policy.Policy()
    assert not policy.Policy().defined
    spec = site.SETTINGS["policy"]
    options = {**spec["options"], **spec["options"]["persistent_creators"]["options"]}
    assert spec["description"] and all(option["description"] for option in options.values())


def test_a_policy_reads_as_written():
    read = site.from_mapping(settings(
        max_capacity="1TiB", user_max_capacity={"alice": "4TiB"}, group_max_capacity={"bigdata": 8 * GiB},
        pool_max_capacity={"ssd": "2TB"}, persistent_creators={"groups": ["hpc"]},
        presets={"fast": {"pool": "ssd", "access_mode": "striped,private"}}), WHERE).policy
    assert read.max_capacity == policy.Limit(1024**4, "policy.max_capacity")
    assert read.users == {"alice": policy.Limit(4 * 1024**4, "policy.user_max_capacity.alice")}
    assert read.groups["bigdata"].bytes == 8 * GiB and read.pools["ssd"].bytes == 2 * 10**12
    assert read.creators == (frozenset(), frozenset({"hpc"}))
    assert read.presets == {"fast": {"pool": "ssd", "access_mode": "striped,private"}} and read.defined


@pytest.mark.parametrize(("bad", "message"), [
    ({"bogus": 1}, "unknown setting(s) policy.bogus; known there: group_max_capacity, max_capacity, "),
    ({"persistent_creators": {"user": ["a"]}}, "unknown setting(s) policy.persistent_creators.user; "
                                               "known there: groups, users"),
    ({"max_capacity": "lots"}, "policy.max_capacity: cannot read size 'lots'"),
    ({"user_max_capacity": {"bob": 0}}, "policy.user_max_capacity.bob: give a size above 0, e.g. 2TiB"),
    ({"group_max_capacity": {"g": None}}, "policy.group_max_capacity.g: give a size, e.g. 2TiB"),
    ({"pool_max_capacity": {"hdd": "1TiB"}}, "policy.pool_max_capacity.hdd: no pool 'hdd'; configured: nvme, ssd"),
    ({"presets": {"f": {"capacity": "1TiB"}}}, "policy.presets.f: unknown key 'capacity'; a preset sets some of "
                                               "pool, access_mode, type, fs"),
    ({"presets": {"f": {}}}, "policy.presets.f: give the keys it sets"),
    ({"presets": {"f/x": {"fs": "gluster"}}}, "policy.presets.f/x: preset names are 1 to 64 characters"),
    ({"presets": {"f": {"fs": "ceph"}}}, "policy.presets.f.fs: 'ceph': give one of gluster | lustre"),
    ({"presets": {"f": {"pool": "hdd"}}}, "policy.presets.f.pool: no pool 'hdd'; configured: nvme, ssd"),
    ({"presets": {"f": {"pool": "a b"}}}, "policy.presets.f.pool: 'a b': give 1 to 64 characters"),
    ({"presets": {"f": {"type": "cache"}}}, "policy.presets.f.type: type=cache: a preset cannot make a cache buffer"),
])
def test_a_wrong_policy_setting_is_named(bad, message):
    assert message in problem(**bad)


def test_the_system_directory_knows_this_process_and_its_groups():
    me = policy.SystemDirectory().identity(os.getuid(), os.getgid())
    assert me.uid == os.getuid() and grp.getgrgid(os.getgid()).gr_name in me.groups
    gid, members = policy.SystemDirectory().group(grp.getgrgid(os.getgid()).gr_name)
    assert gid == os.getgid() and (me.name is None or os.getuid() in members or members is not None)
    assert policy.SystemDirectory().uid("no-such-user-here") is None
    assert policy.SystemDirectory().group("no-such-group-here") is None


# ------------------------------------------------------------------ setup and create_persistent decide

POLICY = {"max_capacity": "100GiB", "user_max_capacity": {"alice": "4TiB"},
          "group_max_capacity": {"bigdata": "200GiB"}, "pool_max_capacity": {"ssd": "3TiB"},
          "persistent_creators": {"users": ["alice"]},
          "presets": {"priv": {"access_mode": "private", "pool": "ssd"}}}


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    from bbctl import runner

    recording = Recorder()
    monkeypatch.setattr(runner, "run_stage", recording)
    return recording


def make_site(tmp_path: Path, site_policy: dict) -> site.Site:
    (tmp_path / "slurm").mkdir()
    return write_config(tmp_path, site_policy)


@pytest.fixture
def life(tmp_path, recorder) -> lc.Lifecycle:
    return lc.Lifecycle(make_site(tmp_path, POLICY), directory=Directory())


def test_setup_refuses_what_the_users_limit_does_not_allow_before_allocating(life, recorder, tmp_path):
    job = script(tmp_path, "#DW jobdw capacity=150GiB pool=ssd")
    with pytest.raises(BBError) as refused:
        life.setup("42", *DAVE, job)  # no entry of his own, no group the policy lists: the default
    assert str(refused.value) == ("line 2: jobdw: 'capacity=150GiB' is more than uid 1004 may have in one buffer: "
                                  "at most 100GiB (policy.max_capacity)")
    assert refused.value.exit_code == 2 and life.store.buffers() == [] and recorder.runs == []
    assert [buffer.key for buffer in life.setup("43", *BOB, job)] == ["43"]  # bigdata: 200GiB


def test_setup_builds_what_the_preset_says(life, recorder, tmp_path):
    [buffer] = life.setup("42", *ALICE, script(tmp_path, "#DW jobdw capacity=2TiB preset=priv"))
    assert buffer.pool == "ssd" and len(buffer.bricks) == 2  # private: distributed, no redundancy brick
    env = life.paths("42", script(tmp_path, "#DW jobdw capacity=2TiB preset=priv"))
    assert env["DW_JOB_PRIVATE"] == "/mnt/bb/bbjob-42-private"


def test_persistent_creation_is_refused_to_users_the_policy_does_not_list(life, recorder, tmp_path):
    job = script(tmp_path, "#BB create_persistent name=keep capacity=1GiB")
    with pytest.raises(BBError, match=r"^line 2: create_persistent: 'name=keep': uid 1003 may not create "):
        life.setup("42", *CAROL, job)
    with pytest.raises(BBError) as refused:
        life.create_persistent("keep", *CAROL, GiB, None)
    assert str(refused.value) == ("create_persistent name=keep: 'name=keep': uid 1003 may not create persistent "
                                  "buffers (policy.persistent_creators): ask the site's administrators")
    assert life.store.buffers() == [] and recorder.runs == []
    assert life.create_persistent("keep", *ALICE, GiB, None).key == "keep"


def test_dw_wlm_cli_create_persistent_says_the_pools_limit(life, recorder, capsys):
    argv = ["--function", "create_persistent", "-c", "CLI", "-t", "big", "-u", "1001", "-C", "ssd:4398046511104"]
    code = dw_wlm_cli.main(argv, lifecycle=lambda _config: life)
    assert code == 2 and life.store.buffers() == []
    assert capsys.readouterr().out == (
        "dw_wlm_cli create_persistent: create_persistent name=big: 'capacity=4398046511104' is more than pool ssd "
        "allows in one buffer: at most 3TiB (policy.pool_max_capacity.ssd)\n")


def test_a_site_without_a_policy_looks_nobody_up(tmp_path, recorder):
    class Nobody:
        def identity(self, uid: int, gid: int) -> policy.Identity:
            raise AssertionError("looked up")

    life = lc.Lifecycle(make_site(tmp_path, {}), directory=Nobody())  # type: ignore[arg-type]
    assert [b.key for b in life.setup("42", *CAROL, script(tmp_path, "#DW jobdw capacity=1TiB pool=ssd"))] == ["42"]
