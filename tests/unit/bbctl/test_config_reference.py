"""docs/CONFIGURATION.md is what `bbctl config reference` renders from the settings' one definition."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbctl import cli, config_reference, pools, site

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "CONFIGURATION.md"


def test_the_committed_reference_is_the_generated_one():
    assert REFERENCE.read_text() == config_reference.render(), (
        f"{REFERENCE} differs from the definition: run `{config_reference.COMMAND}` and commit it")


def test_bbctl_config_reference_prints_it_without_a_configuration(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(site.CONFIG_ENV, str(tmp_path / "absent.yml"))  # no configuration needed
    assert cli.main(["config", "reference"]) == 0
    assert capsys.readouterr().out == config_reference.render()


def settings(spec: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """Every setting of spec, those in sections (options) too, with its dotted name."""
    found = []
    for name, entry in spec.items():
        found.append((prefix + name, entry))
        found += settings(entry.get("options") or {}, f"{prefix}{name}.")
    return found


def test_every_setting_and_pool_key_has_a_row_with_its_description():
    text = config_reference.render()
    for name, entry in settings(site.SETTINGS):
        assert entry.get("description"), f"setting {name} has no description in bbctl.site.SETTINGS"
        assert f"| `{name}` " in text
    for name, entry in pools.POOL_SETTINGS.items():
        assert entry.get("description"), f"pool key {name} has no description in bbctl.pools.POOL_SETTINGS"
        assert f"| `pools.NAME.{name}` |" in text


def test_the_reference_changes_when_the_definition_does(monkeypatch):
    """The comparison above can fail: a new setting (a section with options, as a later one may be)
    shows up in the text, with a placeholder where its description is missing."""
    before = config_reference.render()
    monkeypatch.setitem(site.SETTINGS, "policy", {
        "type": "dict", "description": "Limits.",
        "options": {"max_capacity": {"type": "str", "default": "1TiB"}}})
    after = config_reference.render()
    assert after != before
    assert "| `policy` | dict | - | Limits. |" in after
    assert "### `policy`" in after
    assert "| `policy.max_capacity` | str | `1TiB` | (no description: add one to the definition) |" in after
    assert "policy:\n  max_capacity: 1TiB\n" in after
    monkeypatch.setitem(site.SETTINGS["policy"]["options"]["max_capacity"], "description",
                        ["The largest buffer", "a job may ask for."])
    monkeypatch.setitem(site.SETTINGS["policy"]["options"]["max_capacity"], "aliases", ["max_size"])
    assert ("| `policy.max_capacity` (or `policy.max_size`) | str | `1TiB` | The largest buffer a job may ask "
            "for. |") in config_reference.render()


def test_the_rendering_is_deterministic():
    assert config_reference.render() == config_reference.render()


@pytest.mark.parametrize("key", sorted(pools.POOL_SETTINGS))
def test_pool_keys_are_the_ones_build_pools_accepts(key):
    """POOL_SETTINGS is the list the pool check uses: a key it names is accepted."""
    spec = {"granularity": "4GiB", key: pools.POOL_SETTINGS[key].get("default", "4GiB")}
    built = pools.build_pools({"pools": {"nvme": spec}}, {})
    assert list(built) == ["nvme"]
