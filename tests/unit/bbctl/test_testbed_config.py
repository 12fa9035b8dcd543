import os
from pathlib import Path

import pytest

from bbctl import host
from bbctl.errors import TestbedError
from bbctl.testbed import manager, slurm
from bbctl.testbed.config import TestbedConfig


def test_nodes_and_paths_derive_from_root(tmp_path):
    config = TestbedConfig(root=tmp_path, servers=2, bricks_per_server=3, slurm="none")
    nodes = config.nodes
    assert [n.address for n in nodes] == ["127.1.1.1", "127.1.1.2"]
    assert nodes[1].socket == tmp_path / "node2" / "run" / "glusterd.socket"
    assert nodes[0].brick_mount(3) == tmp_path / "node1" / "bricks" / "nvme3"
    # each image holds a granule plus XFS's overhead: 4 GiB + 4 % + 64 MiB
    assert config.image_size == 4 * 1024**3 + 4 * 1024**3 // 25 + 64 * 1024**2
    assert config.disk_needed == 6 * config.image_size + 512 * 1024**2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"servers": 0}, "--servers 0"),
    ({"bricks_per_server": 17}, "--bricks 17"),
    ({"brick_size": 1024**2}, "--brick-size 1MiB"),
    ({"address_prefix": "10.0.0"}, "inside 127.0.0.0/8"),
    ({"address_prefix": "127.0.0"}, "not 127.0.0"),
    ({"address_prefix": "127.1"}, "give three octets"),
    ({"slurm": "pbs"}, "--slurm pbs"),
    ({"slurm_cpus": -1}, "--slurm-cpus -1"),
])
def test_bad_shapes_are_refused_with_the_option_named(kwargs, message):
    with pytest.raises(TestbedError, match=message):
        TestbedConfig(root=Path("/nonexistent"), **kwargs)


def test_config_round_trips_through_its_file(tmp_path):
    config = TestbedConfig(root=tmp_path, servers=1, address_prefix="127.1.7", slurm="datawarp")
    config.save()
    assert TestbedConfig.load(tmp_path) == config


def test_too_little_disk_is_a_one_line_reason(tmp_path):
    config = TestbedConfig(root=tmp_path / "tb", brick_size=1024**5, slurm="none")
    with pytest.raises(TestbedError, match=r"too little disk under .*: the bricks may grow to"):
        manager._check_disk(config)


def test_missing_commands_name_their_debian_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "missing_commands", lambda cmds: ["glusterd", "munged"])
    with pytest.raises(TestbedError, match="missing glusterd, munged: install the Debian packages "
                                           "glusterfs-server munge"):
        manager.preflight(TestbedConfig(root=tmp_path))


@pytest.mark.parametrize(("asked", "overrides"), [(0, False), (10_000 // 10, True)])
def test_the_slurm_node_gets_the_cpus_asked_and_slurmd_is_told_to_accept_more_than_real(asked, overrides):
    values = slurm._cpus(TestbedConfig(root=Path("/nonexistent"), slurm_cpus=asked))
    assert values["cpus"] == (asked or os.cpu_count())
    assert (values["slurmd_parameters"] == "SlurmdParameters=config_overrides") is overrides
    assert overrides or values["slurmd_parameters"].startswith("#")
