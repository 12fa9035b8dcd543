"""Property-based fuzzing of the site configuration loader (bbctl.site.load and from_mapping).

Properties, each over BB_FUZZ_EXAMPLES / 10 generated configurations (tests/unit/fuzzing.py):

- One fault in a valid configuration (an unknown setting, a required one missing, a known one
  given any value YAML can hold, a setting name that is not a string) gives a Site or a
  ConfigError whose message starts with the file and names the setting at fault. An unknown,
  missing or misnamed setting is always refused.
- Any file content (YAML of any shape, deep nesting, bytes that are not UTF-8) gives a Site or
  a ConfigError naming the file, never another exception.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import strategies as st

from bbctl import site
from tests.unit.fuzzing import EXAMPLES, rounds, run_round

WHERE = Path("/etc/bbctl/bbctl.yml")

paths = st.sampled_from(["/etc/bbctl/inventory.yml", "/srv/bb", "/var/lib/bbctl", "/mnt/bb", "relative/dir", "~/x",
                         "$HOME/x", "/données", "/a b"])
counts = st.integers(1, 10**6) | st.sampled_from(["5", " 7 ", "1_000"])
valid = st.fixed_dictionaries(
    {"inventory": paths, "pools": st.dictionaries(st.sampled_from(["nvme", "ssd", "p.1"]), st.just({}), min_size=1)},
    optional={"state": st.sampled_from(["/var/lib/bbctl/state.db", "http://etcd1:2379"]), "work_dir": paths,
              "mount_root": paths, "slurm_dir": paths, "burst_buffer_conf": paths, "keep_runs": counts,
              "stage_workers": counts})
# Anything a YAML file can hold, hostile text included.
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                    st.sampled_from(["", "\x00", "é" * 5000, "/x\x00y", "0", "-1", "1e400", "٣", ".inf", "yes"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                           max_size=3), max_leaves=8)
odd_names = st.one_of(st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False), st.tuples(st.integers()))


@st.composite
def faulty(draw) -> tuple[dict, object, str]:
    """(settings, the setting at fault, the fault): one thing wrong, or nothing when a value happens to do."""
    settings = draw(valid)
    fault = draw(st.sampled_from(["unknown", "missing", "value", "name"]))
    if fault == "unknown":
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in site.SETTINGS))
        settings[key] = draw(values)
    elif fault == "missing":
        key = draw(st.sampled_from([k for k, spec in site.SETTINGS.items() if spec.get("required")]))
        del settings[key]
    elif fault == "value":
        key = draw(st.sampled_from(sorted(site.SETTINGS)))
        settings[key] = draw(values)
    else:
        key = draw(odd_names)
        settings[key] = draw(values)
    return settings, key, fault


def shown(key: object) -> str:
    return key if isinstance(key, str) else repr(key)


def check_one_fault(case: tuple[dict, object, str]) -> None:
    settings, key, fault = case
    try:
        site.from_mapping(settings, WHERE)
    except site.ConfigError as error:
        message = str(error)
        assert message.startswith(f"{WHERE}: ") and shown(key) in message, f"{fault} {key!r}: {message}"
        return
    assert fault == "value", f"{fault} {key!r} was accepted"


contents = st.one_of(
    valid.map(lambda settings: yaml.safe_dump(settings).encode()),
    st.builds(lambda settings, key, value: yaml.safe_dump({**settings, key: value}).encode(), valid, odd_names, values),
    values.map(lambda value: yaml.safe_dump(value, allow_unicode=True).encode()),
    st.binary(max_size=40), st.text(max_size=40).map(str.encode),
    st.builds(lambda open_, depth: open_.encode() * depth, st.sampled_from(["[", "{a: ", "- "]),
              st.sampled_from([10, 100, 1000, 5000])),
    st.sampled_from([b"inventory: /x\npools: {a: {}}\nwork_dir: /\xff\n", b"\xef\xbb\xbfinventory: /x\npools: {}\n",
                     b"a: &a [*a]\n", b"inventory: !!python/object:os.system x\n", b"pools: {}\n" * 3]))


def check_any_file(content: bytes, directory: Path) -> None:
    path = directory / "bbctl.yml"
    path.write_bytes(content)
    try:
        loaded = site.load(path)
    except site.ConfigError as error:
        assert str(error).startswith(str(path)) or f" {path}" in str(error), str(error)
        return
    assert isinstance(loaded, site.Site) and isinstance(loaded.keep_runs, int)


def run_property(strategy: st.SearchStrategy, check) -> None:
    for number, examples in rounds(max(EXAMPLES // 10, 100)):
        run_round(strategy, check, number, examples)


def test_one_fault_is_refused_by_name():
    run_property(faulty(), check_one_fault)


def test_any_file_gives_a_site_or_a_config_error(tmp_path):
    run_property(contents, lambda content: check_any_file(content, tmp_path))


def test_what_fuzzing_found(tmp_path):
    """Each of these crashed the loader: UnicodeDecodeError, RecursionError, TypeError, OverflowError."""
    for content in [b"inventory: /x\npools: {a: {}}\nwork_dir: /\xff\n", b"[" * 5000,
                    b"{1: 2, inventory: /x, pools: {}}", b"inventory: /x\npools: {a: {}}\nkeep_runs: .inf\n"]:
        check_any_file(content, tmp_path)
    check_one_fault(({"inventory": "/x", "pools": {"a": {}}, "keep_runs": float("inf")}, "keep_runs", "value"))
