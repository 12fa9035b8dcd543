"""bbctl.site's configuration file: settings, defaults and what a mistake says."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from bbctl import cli, site  # site puts the collection on sys.path

WHERE = Path("/etc/bbctl/bbctl.yml")


def minimal(**more: object) -> dict:
    return {"inventory": "/etc/bbctl/inventory.yml", "pools": {"nvme": {}}, **more}


def test_stage_workers_default_is_bb_stages_own():
    bb_stage = importlib.import_module("ansible_collections.hpc.burstbuffer.plugins.modules.bb_stage")
    assert site.from_mapping(minimal(), WHERE).stage_workers == bb_stage.ARGUMENT_SPEC["workers"]["default"]
    assert site.from_mapping(minimal(stage_workers=8), WHERE).stage_workers == 8


def problem(data: object) -> str:
    with pytest.raises(site.ConfigError) as raised:
        site.from_mapping(data, WHERE)
    assert raised.value.exit_code == 1
    message = str(raised.value)
    assert message.startswith(f"{WHERE}: ")
    return message


def test_defaults_and_paths():
    config = site.from_mapping(minimal(work_dir="/srv/bb", slurm_dir=""), WHERE)
    assert (config.inventory, config.work_dir, config.mount_root) == (
        Path("/etc/bbctl/inventory.yml"), Path("/srv/bb"), Path("/mnt/bb"))
    assert config.state == "/srv/bb/state.db"  # beside the work directory unless given
    assert (config.slurm_dir, config.burst_buffer_conf, config.keep_runs) == (None, None, 200)
    assert site.from_mapping(minimal(state="http://etcd1:2379"), WHERE).state == "http://etcd1:2379"


def test_the_raw_settings_are_kept_for_the_pools():
    data = minimal(pools={"nvme": {"granularity": "4GiB", "hosts": "all"}})
    assert site.from_mapping(data, WHERE).raw is data


def test_unknown_settings_are_listed_with_the_known_ones():
    message = problem(minimal(stage_worker=8, bogus=1))
    assert "unknown setting(s) bogus, stage_worker; known: " in message
    assert "stage_workers" in message.split("known: ")[1]


@pytest.mark.parametrize("missing", ["inventory", "pools"])
def test_a_missing_required_setting_is_named(missing):
    data = minimal()
    del data[missing]
    assert f"missing required arguments: {missing}" in problem(data)


@pytest.mark.parametrize("key", ["keep_runs", "stage_workers"])
@pytest.mark.parametrize("value", [0, -3, True, "many", 2.5])
def test_counts_must_be_whole_numbers_above_0(key, value):
    message = problem(minimal(**{key: value}))
    assert f"'{key}'" in message
    assert f"expected a whole number above 0, not {value!r}" in message


def test_stage_nice_is_10_unless_set_from_0_to_19():
    assert site.from_mapping(minimal(), WHERE).stage_nice == 10
    assert site.from_mapping(minimal(stage_nice=0), WHERE).stage_nice == 0
    assert site.from_mapping(minimal(stage_nice="19"), WHERE).stage_nice == 19


@pytest.mark.parametrize("value", [20, -1, True, "low"])
def test_stage_nice_outside_0_to_19_is_named(value):
    message = problem(minimal(stage_nice=value))
    assert "'stage_nice'" in message and f"expected a niceness from 0 to 19, not {value!r}" in message


def test_every_problem_is_reported_at_once():
    message = problem({"pools": None, "keep_runs": 0, "colour": "blue"})
    for named in ("inventory", "'pools'", "'keep_runs'", "unknown setting(s) colour"):
        assert named in message


def test_not_a_mapping():
    assert problem(["inventory"]).endswith("expected a mapping of settings")


def test_a_wrong_setting_stops_the_cli_with_exit_1(tmp_path, capsys):
    path = tmp_path / "bbctl.yml"
    path.write_text("inventory: /etc/bbctl/inventory.yml\npools: {nvme: {}}\nkeep_runs: none\n")
    assert cli.main(["--config", str(path), "status"]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "'keep_runs'" in err
