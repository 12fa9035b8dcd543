"""The cache of validated site settings (bbctl.site.load) and the file it lives in (bbctl.cache_file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bbctl import cache_file, cli, site

SETTINGS = "inventory: /etc/bbctl/inventory.yml\npools:\n  nvme: {{granularity: 4GiB}}\nwork_dir: {work}\n{more}"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bbctl.yml"
    write_config(path)
    return path


def write_config(path: Path, more: str = "") -> None:
    path.write_text(SETTINGS.format(work=path.parent / "work", more=more))


def cache_of(config: Path) -> Path:
    return config.parent / "work" / site.SETTINGS_CACHE


@pytest.fixture
def validations(monkeypatch) -> list[Path]:
    """Every call of ansible-core's validator through bbctl.site, by the file it checked."""
    calls: list[Path] = []
    validate = site._validated_settings

    def counted(data, where):
        calls.append(where)
        return validate(data, where)

    monkeypatch.setattr(site, "_validated_settings", counted)
    return calls


# --- bbctl.site.load ----------------------------------------------------------------------------

def test_an_unchanged_file_is_validated_once(config, validations):
    first = site.load(config)
    assert validations == [config] and cache_of(config).is_file()
    again = site.load(config)
    assert validations == [config]  # the second load never reached the validator
    assert again == first and again.keep_runs == 200 and again.pools == {"nvme": {"granularity": "4GiB"}}


def test_the_cache_is_root_only_beside_the_state(config):
    loaded = site.load(config)
    cache = cache_of(config)
    assert cache.parent.parent == loaded.work_dir == Path(loaded.state).parent
    assert (cache.stat().st_mode & 0o777, cache.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert cache.stat().st_uid == os.geteuid()


def test_a_changed_file_is_validated_again(config, validations):
    site.load(config)
    write_config(config, "keep_runs: 5\n")
    assert site.load(config).keep_runs == 5
    assert validations == [config, config]
    assert site.load(config).keep_runs == 5 and len(validations) == 2


def test_a_changed_argument_spec_is_validated_again(config, validations, monkeypatch):
    site.load(config)
    monkeypatch.setitem(site.SETTINGS, "keep_runs", {**site.SETTINGS["keep_runs"], "default": 7})
    assert site.load(config).keep_runs == 7 and len(validations) == 2


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666], ids=oct)
def test_a_cache_others_could_write_is_not_read(config, validations, mode):
    site.load(config)
    planted = tamper(cache_of(config), keep_runs=99)
    cache_of(config).chmod(mode)
    assert site.load(config).keep_runs == 200 and len(validations) == 2
    assert cache_of(config).read_text() != planted  # rebuilt, 0600 again
    assert cache_of(config).stat().st_mode & 0o777 == 0o600


def test_a_cache_in_a_directory_others_could_write_is_neither_read_nor_written(config, validations):
    site.load(config)
    tamper(cache_of(config), keep_runs=99)
    cache_of(config).parent.chmod(0o777)
    for _ in range(2):
        assert site.load(config).keep_runs == 200
    assert len(validations) == 3
    assert json.loads(cache_of(config).read_text())["value"]["keep_runs"] == 99  # left as it was


def test_a_cache_another_user_owns_is_not_read(config, validations, monkeypatch):
    site.load(config)
    tamper(cache_of(config), keep_runs=99)
    monkeypatch.setattr(cache_file.os, "geteuid", lambda: os.stat(cache_of(config)).st_uid + 1)
    assert site.load(config).keep_runs == 200 and len(validations) == 2


def test_a_symlink_in_place_of_the_cache_is_not_followed(config, validations, tmp_path):
    site.load(config)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(cache_of(config).read_text())
    elsewhere.chmod(0o600)
    tamper(elsewhere, keep_runs=99)
    cache_of(config).unlink()
    cache_of(config).symlink_to(elsewhere)
    assert site.load(config).keep_runs == 200 and len(validations) == 2


@pytest.mark.parametrize("garbage", [b"", b"{", b"\xff\xfe", b"[]", b'{"key": 1}', b'{"key": "x", "value": {}}'])
def test_a_corrupted_cache_is_ignored_and_rebuilt(config, validations, garbage):
    site.load(config)
    cache_of(config).write_bytes(garbage)
    assert site.load(config).keep_runs == 200 and len(validations) == 2
    site.load(config)
    assert len(validations) == 2  # rebuilt by the second load


def test_a_cached_entry_without_every_setting_is_validated_again(config, validations):
    site.load(config)
    stored = json.loads(cache_of(config).read_text())
    del stored["value"]["stage_workers"]
    cache_of(config).write_text(json.dumps(stored))
    assert site.load(config).stage_workers == 32 and len(validations) == 2


def test_a_cached_file_changed_into_a_wrong_one_is_refused_as_without_a_cache(config, validations):
    site.load(config)
    write_config(config, "keep_runs: 0\n")
    with pytest.raises(site.ConfigError) as cached:
        site.load(config)
    shutil.rmtree(cache_of(config).parent)
    with pytest.raises(site.ConfigError) as uncached:
        site.load(config)
    assert str(cached.value) == str(uncached.value) and "keep_runs" in str(cached.value)
    assert validations == [config, config, config]


def test_mistakes_are_never_cached(config, validations, capsys):
    write_config(config, "keep_runs: none\n")
    for _ in range(2):
        assert cli.main(["--config", str(config), "status"]) == 1
        assert "'keep_runs'" in capsys.readouterr().err
    assert len(validations) == 2 and not cache_of(config).exists()


def test_paths_that_depend_on_the_environment_are_not_cached(config, validations, monkeypatch):
    write_config(config, "mount_root: $BB_MOUNTS/bb\n")
    monkeypatch.setenv("BB_MOUNTS", "/one")
    assert site.load(config).mount_root == Path("/one/bb")
    monkeypatch.setenv("BB_MOUNTS", "/two")
    assert site.load(config).mount_root == Path("/two/bb")
    assert len(validations) == 2 and not cache_of(config).exists()


def test_a_relative_work_dir_is_not_cached(tmp_path, validations, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bbctl.yml"
    path.write_text("inventory: /etc/bbctl/inventory.yml\npools: {nvme: {}}\nwork_dir: work\n")
    site.load(path)
    site.load(path)
    assert len(validations) == 2 and not (tmp_path / "work").exists()


def test_a_typical_call_imports_neither_ansible_core_nor_ansible_runner(config, tmp_path):
    """The point of the cache: Slurm's calls that run no playbook stay as fast as before the validator."""
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#DW jobdw capacity=1GiB\nsrun app\n")
    code = ("import sys; from bbctl import cli; cli.main(sys.argv[1:]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ansible', 'ansible_runner'}))")
    args = [sys.executable, "-c", code, "--config", str(config), "paths", "--job-id", "7", "--script", str(script)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    second = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    assert first.stdout.splitlines()[-1] == "['ansible']"  # validated (and cached) once
    assert second.stdout.splitlines()[-1] == "[]"


# --- bbctl.cache_file ---------------------------------------------------------------------------

def tamper(path: Path, **settings: object) -> str:
    """Change the stored settings in place, key kept: what only a writer of the file could do."""
    stored = json.loads(path.read_text())
    stored["value"].update(settings)
    text = json.dumps(stored)
    with path.open("w") as handle:  # same inode, owner and mode
        handle.write(text)
    return text


def test_write_then_read_under_the_same_key(tmp_path):
    path = tmp_path / "cache" / "value.json"
    assert cache_file.write(path, "k1", {"a": [1, 2.5, None, True, "x"]})
    assert cache_file.read(path, "k1") == {"a": [1, 2.5, None, True, "x"]}
    assert cache_file.read(path, "k2") is None
    assert cache_file.read(tmp_path / "cache" / "missing.json", "k1") is None
    assert [p.name for p in path.parent.iterdir()] == ["value.json"]  # no temporary file left


@pytest.mark.parametrize("value", [{1: "int key"}, {"t": (1, 2)}, {"s": {1}}, {"b": b"x"}, {"n": float("nan")}])
def test_values_json_would_not_give_back_equal_are_not_written(tmp_path, value):
    path = tmp_path / "cache" / "value.json"
    assert cache_file.write(path, "k", value) is False
    assert not path.exists()


def test_a_failed_write_leaves_the_old_value_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "value.json"
    cache_file.write(path, "k", {"old": 1})

    def refuse(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(cache_file.os, "replace", refuse)
    assert cache_file.write(path, "k", {"new": 2}) is False
    assert cache_file.read(path, "k") == {"old": 1}
    assert [p.name for p in path.parent.iterdir()] == ["value.json"]
