"""The reference directive parser against the shared table of cases, plus typed results and the Lua rendering."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bbctl import directives
from bbctl.collection import sizes
from bbctl.directives import (
    MESSAGES,
    BufferPath,
    DirectiveError,
    JobRequest,
    check_buffer_type,
    lua_block,
    lua_grammar,
    parse_job_script,
    size_units,
    write_lua,
)

REPO = Path(__file__).resolve().parents[3]
CASES_FILE = REPO / "tests" / "fixtures" / "directives" / "cases.yaml"
LUA_SCRIPT = REPO / "slurm" / "burst_buffer.lua"
LUA_VALIDATOR = REPO / "slurm" / "bbctl-directives.lua"
GiB = 1024**3


def load_cases() -> list[dict]:
    """The cases with their scripts expanded (``repeat`` markers replaced)."""
    cases = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
    for case in cases:
        repeat = case.get("repeat")
        if repeat:
            case["script"] = case["script"].replace(repeat["marker"], repeat["text"] * repeat["times"])
    return cases


CASES = load_cases()
ACCEPTED = {case["name"]: case["script"] for case in CASES if case["accept"]}


def outcome(script: str) -> tuple[JobRequest | None, DirectiveError | None]:
    try:
        return parse_job_script(script), None
    except DirectiveError as error:
        return None, error


def test_the_table_is_big_and_well_formed():
    names = [case["name"] for case in CASES]
    assert len(CASES) >= 60
    assert len(set(names)) == len(names), "case names must be unique"
    for case in CASES:
        assert isinstance(case["accept"], bool), case["name"]
        assert case["accept"] or case.get("error"), f"{case['name']}: a rejection needs an error substring"


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_python_parser_follows_the_table(case):
    request, error = outcome(case["script"])
    if case["accept"]:
        assert error is None, f"rejected: {error}"
        assert isinstance(request, JobRequest)
    else:
        assert error is not None, "accepted a script the table rejects"
        assert case["error"] in str(error)
        assert error.token in str(error), "the message must quote the offending token"
        assert str(error).startswith(f"line {error.line}: ")


def test_every_message_is_exercised_by_the_table():
    reasons = {outcome(case["script"])[1].reason for case in CASES if not case["accept"]}
    assert reasons == set(MESSAGES)


def test_error_carries_line_and_token():
    _, error = outcome("#!/bin/bash\n#SBATCH -N 1\n#DW jobdw capacity=1e9 pool=nvme\n")
    assert isinstance(error, ValueError)
    assert (error.line, error.token, error.reason) == (3, "capacity=1e9", "bad_size")


def test_tokens_are_shortened_on_a_character_boundary():
    token = "é" * 100  # 2 bytes each
    shown = directives.shorten(token)
    assert shown.endswith("...") and len(shown.encode()) <= directives.LIMITS["echo_bytes"]
    assert shown == "é" * 30 + "..."


# ------------------------------------------------------------------ typed results of the accepted cases


def parsed(name: str) -> JobRequest:
    return parse_job_script(ACCEPTED[name])


def check_minimal_jobdw(r: JobRequest) -> None:
    assert r.jobdw is not None
    assert (r.jobdw.capacity, r.jobdw.pool, r.jobdw.access_modes) == (GiB, None, ("striped",))
    assert (r.jobdw.type, r.jobdw.fs, r.jobdw.pfs, r.jobdw.line) == ("scratch", "gluster", None, 2)
    assert (r.stage_in, r.stage_out, r.persistent, r.swap) == ((), (), (), None)


def check_bb_lua_pool(r: JobRequest) -> None:
    assert (r.jobdw.pool, r.jobdw.capacity) == ("nvme", 10 * GiB)


def check_datawarp_full(r: JobRequest) -> None:
    assert r.jobdw.capacity == 200 * GiB and r.jobdw.pool == "nvme"
    assert r.jobdw.access_modes == ("striped", "private")
    assert [(s.type, s.source, str(s.destination)) for s in r.stage_in] == [
        ("directory", "/lustre/proj/input", "$DW_JOB_STRIPED/input"),
        ("file", "/lustre/proj/config.yaml", "$DW_JOB_STRIPED/config.yaml"),
        ("list", "/lustre/proj/files.txt", "$DW_JOB_STRIPED/lists"),
    ]
    assert [s.line for s in r.stage_in] == [5, 6, 7]
    out = r.stage_out[1]
    assert (out.direction, out.type, out.destination, out.line) == ("out", "file", "/lustre/proj/logs/log.txt", 9)
    assert out.source == BufferPath("DW_JOB_STRIPED", "striped", None, "/log.txt")


def check_continuation(r: JobRequest) -> None:
    assert r.jobdw.access_mode == "striped,private" and r.jobdw.capacity == GiB and r.jobdw.line == 2


def check_three_lines(r: JobRequest) -> None:
    (stage,) = r.stage_in
    assert (stage.source, stage.buffer_path.subpath, stage.line) == ("/lustre/a.dat", "/a.dat", 2)
    assert r.jobdw.line == 5


def check_only_jobdw(r: JobRequest) -> None:
    assert r.jobdw.capacity == GiB and r.stage_in == () and r.create_persistent == ()


def check_empty(r: JobRequest) -> None:
    assert r == JobRequest()


def check_bb_twins(r: JobRequest) -> None:
    assert r.jobdw.capacity == 1024**4 and r.jobdw.pool == "nvme"
    assert r.stage_in[0].buffer_path == BufferPath("BB_JOB_STRIPED", "striped", None, "/a")
    assert r.stage_out[0].buffer_path == BufferPath("BB_JOB_STRIPED", "striped", None, "/b")


def check_persistent(r: JobRequest) -> None:
    assert r.persistent == ("alpha",) and r.jobdw is None
    assert r.stage_in[0].buffer_path == BufferPath("DW_PERSISTENT_STRIPED_alpha", "persistent", "alpha", "/d")
    assert str(r.stage_out[0].source) == "$BB_PERSISTENT_STRIPED_alpha/d"


def check_create_two(r: JobRequest) -> None:
    alpha, beta = r.create_persistent
    assert (alpha.name, alpha.capacity, alpha.access, alpha.type, alpha.pool) == (
        "alpha", 32 * 10**9, "striped", "scratch", None)
    assert (beta.name, beta.capacity, beta.pool, beta.line) == ("beta", 16 * 10**9, "nvme", 3)


def check_destroy_two(r: JobRequest) -> None:
    assert [(d.name, d.hurry) for d in r.destroy_persistent] == [("alpha", False), ("beta", True)]


def check_swap(r: JobRequest) -> None:
    assert r.swap == 4 * GiB and r.jobdw.capacity == 10 * GiB


def check_lustre(r: JobRequest) -> None:
    assert (r.jobdw.fs, r.jobdw.capacity) == ("lustre", 10**12)


def check_symbols(r: JobRequest) -> None:
    assert r.stage_out[0].destination == "/pfs/%u/run_%j_%x_%A_%a%%"


def check_lowercase(r: JobRequest) -> None:
    assert r.jobdw.capacity == 15 * GiB and r.swap == 2 * GiB


def check_bytes(r: JobRequest) -> None:
    assert [c.capacity for c in r.create_persistent] == [4096, 1048576]


def check_trailing_slash(r: JobRequest) -> None:
    stage = r.stage_in[0]
    assert (stage.source, stage.buffer_path.subpath, str(stage.destination)) == ("/pfs/dir", "", "$DW_JOB_STRIPED")


def check_metacharacters(r: JobRequest) -> None:
    stage = r.stage_out[0]
    assert (stage.buffer_path.subpath, stage.destination) == ("/a;b", "/pfs/x|y&z>w")


def check_unicode(r: JobRequest) -> None:
    assert r.stage_out[0].destination == "/pfs/données/résultat.h5"


def check_tabs(r: JobRequest) -> None:
    assert (r.jobdw.capacity, r.jobdw.pool) == (GiB, "nvme")


def check_stage_before_jobdw(r: JobRequest) -> None:
    assert r.stage_in[0].line == 2 and r.jobdw.line == 3


def check_private_only(r: JobRequest) -> None:
    assert r.jobdw.access_modes == ("private",) and r.stage_in == ()


def check_mixed(r: JobRequest) -> None:
    assert r.create_persistent[0].capacity == 1024**4 and r.persistent == ("delta",) and r.jobdw.capacity == GiB


def check_size_limit(r: JobRequest) -> None:
    assert r.jobdw.capacity == 2**53 == directives.LIMITS["size_bytes"]


def check_one_gib(r: JobRequest) -> None:
    assert r.jobdw.capacity == 2**30


def check_long_name(r: JobRequest) -> None:
    assert len(r.persistent[0]) == 64


def check_pool(r: JobRequest) -> None:
    assert r.jobdw.pool == "nvme-fast.1"


def check_shadow(r: JobRequest) -> None:
    assert r.stage_in[0].source == "/etc/shadow"


def check_test35_repeated(r: JobRequest) -> None:
    assert (r.jobdw.type, r.jobdw.access_modes, r.jobdw.capacity) == ("scratch", ("striped", "private"), GiB)
    assert str(r.stage_in[0].destination) == "$DW_JOB_STRIPED/home/u/t/tmp_file"
    assert str(r.stage_out[0].source) == "$DW_JOB_STRIPED/home/u/t/tmp_file"


def check_test35_names(r: JobRequest) -> None:
    create, = r.create_persistent
    assert (create.name, create.capacity, create.access, create.type) == ("test35.1", 48, "striped", "scratch")
    assert [d.name for d in r.destroy_persistent] == ["test35.4"]


def check_dotted_paths(r: JobRequest) -> None:
    assert r.persistent == ("test35.1",)
    path = r.stage_in[0].buffer_path
    assert (path.area, path.name, path.subpath) == ("persistent", "test35.1", "/in.dat")
    assert r.stage_out[0].buffer_path.name == "test35.1"


def check_nersc_access_mode(r: JobRequest) -> None:
    assert (r.create_persistent[0].access, r.create_persistent[0].capacity) == ("striped", 2 * 10**12)


def check_bb_translation(r: JobRequest) -> None:
    assert r.swap == 2 * GiB and (r.jobdw.capacity, r.jobdw.pool, r.jobdw.line) == (100 * 10**9, "nvme", 3)


def check_access_alias(r: JobRequest) -> None:
    assert r.jobdw.access_mode == "striped"


def check_normalised_repeat(r: JobRequest) -> None:
    assert r.stage_in[0].source == "/pfs/a"


def check_swap_bare(r: JobRequest) -> None:
    assert r.swap == 2 * GiB


def check_bytes_without_unit(r: JobRequest) -> None:
    assert r.create_persistent[0].capacity == 48


def check_bare_lua(r: JobRequest) -> None:
    assert (r.jobdw.capacity, r.jobdw.pool, r.jobdw.access_mode) == (1024, "nvme", "striped")


def check_pfs_scratch(r: JobRequest) -> None:
    assert (r.jobdw.type, r.jobdw.pfs) == ("scratch", "/scratch")


def check_dash_name(r: JobRequest) -> None:
    assert r.create_persistent[0].name == "my-buffer"


def check_double_slash(r: JobRequest) -> None:
    assert r.stage_in[0].source == "/pfs/a"


def check_dot(r: JobRequest) -> None:
    assert (r.stage_in[0].source, r.stage_in[0].buffer_path.subpath) == ("/pfs/a", "/a")


def check_dash_variable(r: JobRequest) -> None:
    assert r.stage_in[0].buffer_path.name == "my-buf" and r.persistent == ("my-buf",)


def check_published(r: JobRequest) -> None:
    assert (r.jobdw.capacity, r.persistent) == (5 * GiB, ("Run20p",))
    assert [(s.type, str(s.destination)) for s in r.stage_in] == [("directory", "$DW_JOB_STRIPED/model0112")]
    assert (str(r.stage_out[0].source), r.stage_out[0].destination) == ("$DW_JOB_STRIPED", "/project/k01/u/stageout")


def check_late_comments(r: JobRequest) -> None:
    assert r.jobdw.capacity == GiB and r.stage_out == () and r.create_persistent == ()


def check_cache(r: JobRequest) -> None:
    assert (r.jobdw.type, r.jobdw.pfs, r.jobdw.access_modes, r.jobdw.capacity) == ("cache", "/lustre/project",
                                                                                   ("striped",), 2**40)


def check_cache_lua(r: JobRequest) -> None:
    assert (r.jobdw.type, r.jobdw.pfs, r.jobdw.pool) == ("cache", "/pfs/me/run", "nvme")


def check_cache_swap(r: JobRequest) -> None:
    assert (r.jobdw.type, r.swap, r.persistent, len(r.stage_in)) == ("cache", 2**30, ("shared",), 1)


def check_presets(r: JobRequest) -> None:
    [create] = r.create_persistent
    assert (create.preset, create.tokens["preset"], create.tokens["capacity"]) == (
        "archive-2.0", "preset=archive-2.0", "capacity=1TiB")
    assert (r.jobdw.preset, r.jobdw.access_mode, sorted(r.jobdw.tokens)) == (
        "fast", "striped,private", ["access_mode", "capacity", "preset"])  # the keys the line gave


def check_preset_twice(r: JobRequest) -> None:
    assert r.jobdw.preset == "fast" and r.jobdw.tokens["preset"] == "preset=fast"


TYPED: dict[str, Callable[[JobRequest], None]] = {
    "cache_mode": check_cache,
    "cache_mode_lua_form": check_cache_lua,
    "cache_mode_with_swap_and_persistent": check_cache_swap,
    "preset_on_jobdw_and_create_persistent": check_presets,
    "preset_given_twice_alike": check_preset_twice,
    "published_forms_with_comments_hints_and_spacing": check_published,
    "comments_and_commented_out_directives_after_the_first_command": check_late_comments,
    "slurm_test35_repeated_key_and_double_slash": check_test35_repeated,
    "slurm_test35_dotted_persistent_names": check_test35_names,
    "dotted_persistent_name_in_stage_paths": check_dotted_paths,
    "nersc_create_persistent_access_mode": check_nersc_access_mode,
    "sbatch_bb_option_translated_by_slurm": check_bb_translation,
    "access_and_access_mode_agree": check_access_alias,
    "repeated_key_equal_after_normalising": check_normalised_repeat,
    "swap_bare_number_is_gib": check_swap_bare,
    "size_without_unit_is_bytes": check_bytes_without_unit,
    "bare_slurm_lua_options": check_bare_lua,
    "pfs_with_scratch": check_pfs_scratch,
    "name_with_dash": check_dash_name,
    "double_slash_in_source": check_double_slash,
    "dot_component": check_dot,
    "persistent_variable_with_dash": check_dash_variable,
    "minimal_jobdw": check_minimal_jobdw,
    "bb_lua_prefix_with_pool": check_bb_lua_pool,
    "bare_bb_lua_line": check_empty,
    "no_directives": check_empty,
    "datawarp_full": check_datawarp_full,
    "continuation_with_space": check_continuation,
    "continuation_three_lines": check_three_lines,
    "stops_at_first_non_comment": check_only_jobdw,
    "blank_lines_do_not_stop_the_scan": check_only_jobdw,
    "bb_twins": check_bb_twins,
    "persistent_use_and_stage": check_persistent,
    "create_two_persistent": check_create_two,
    "destroy_two_persistent": check_destroy_two,
    "swap_with_jobdw": check_swap,
    "lustre_fs": check_lustre,
    "slurm_symbols_in_paths": check_symbols,
    "lowercase_sizes": check_lowercase,
    "bytes_sizes": check_bytes,
    "trailing_slash_dropped": check_trailing_slash,
    "shell_metacharacters_are_literal": check_metacharacters,
    "unicode_paths": check_unicode,
    "tabs_separate_tokens": check_tabs,
    "crlf_line_ends": check_only_jobdw,
    "jobdw_after_stage": check_stage_before_jobdw,
    "private_only": check_private_only,
    "mixed_prefixes": check_mixed,
    "size_at_limit": check_size_limit,
    "size_at_the_limit_in_bytes": check_size_limit,
    "size_with_5000_leading_zeros": check_one_gib,
    "name_of_64_characters": check_long_name,
    "pool_with_dot_and_dash": check_pool,
    "root_owned_source_is_syntax_ok": check_shadow,
    "whitespace_only_directive": check_only_jobdw,
    "control_character_in_plain_comment_is_ignored": check_only_jobdw,
}


def test_every_accepted_case_has_typed_checks():
    assert set(ACCEPTED) == set(TYPED)


@pytest.mark.parametrize("name", sorted(TYPED))
def test_typed_result(name):
    TYPED[name](parsed(name))


def test_results_are_frozen():
    request = parsed("minimal_jobdw")
    with pytest.raises(AttributeError):
        request.jobdw.capacity = 1  # type: ignore[misc]



@pytest.mark.parametrize("value", directives.KINDS["buffer_type"]["values"])
def test_a_buffer_type_alone_gets_the_verdict_of_a_create_persistent_line(value):
    """dw_wlm_cli's -T has no script line: it is checked by the same table as ``create_persistent type=``."""
    line = f"#!/bin/bash\n#BB create_persistent name=p capacity=1GiB type={value}\n"
    try:
        parse_job_script(line)
    except DirectiveError as in_script:
        with pytest.raises(DirectiveError) as alone:
            check_buffer_type(value)
        assert alone.value.reason == in_script.reason == "not_yet"
        assert str(alone.value) == f"type={value}: " + str(in_script).split("': ", 1)[1]
    else:
        assert check_buffer_type(value) == value


# ------------------------------------------------------------------ one source of truth: sizes and Lua


def test_size_units_come_from_sizes_py_in_every_case():
    units = size_units()
    assert units["GIB"] == units["G"] == GiB and units["GB"] == 10**9 and units[""] == units["B"] == 1
    assert "N" not in units and "E" not in units
    for unit, multiplier in units.items():
        for spelling in {unit, unit.lower(), unit.capitalize(), unit[:1] + unit[1:].lower()}:
            assert sizes.parse_size("3" + spelling) == 3 * multiplier, spelling


def test_lua_block_in_the_lua_validator_is_current():
    current = lua_block(LUA_VALIDATOR.read_text(encoding="utf-8"))
    assert current == lua_grammar(), "run: python -m bbctl.directives --write-lua slurm/bbctl-directives.lua"


def test_write_lua_refreshes_a_stale_block(tmp_path):
    copy = tmp_path / "bbctl-directives.lua"
    shutil.copy(LUA_VALIDATOR, copy)
    copy.write_text(copy.read_text().replace('"#BB_LUA",', '"#BB_OLD",', 1))
    assert directives.main(["--check-lua", str(copy)]) == 1
    assert write_lua(copy) is True
    assert directives.main(["--check-lua", str(copy)]) == 0
    assert copy.read_text() == LUA_VALIDATOR.read_text()
    assert write_lua(copy) is False


def test_write_lua_refuses_a_file_without_markers(tmp_path):
    lua = tmp_path / "other.lua"
    lua.write_text("return 1\n")
    with pytest.raises(ValueError, match="markers"):
        write_lua(lua)


def test_cli_validates_scripts(tmp_path, capsys):
    good, bad = tmp_path / "good.sh", tmp_path / "bad.sh"
    good.write_text(ACCEPTED["datawarp_full"])
    bad.write_text("#!/bin/bash\n#DW jobdw capacity=10N\n")
    assert directives.main([str(good)]) == 0
    assert directives.main([str(good), str(bad)]) == 1
    assert "line 2: jobdw: 'capacity=10N': node counts" in capsys.readouterr().err


@pytest.mark.parametrize("lua", [LUA_SCRIPT, LUA_VALIDATOR, REPO / "slurm" / "bbctl-layouts.lua",
                                 REPO / "slurm" / "bbctl-policy.lua"], ids=lambda path: path.name)
def test_lua_loads_only_its_own_installed_files(lua):
    # Forking is allowed only in the stages slurmscriptd forks (tests/unit/bbctl/test_lua_in_slurmctld.py
    # proves the in-slurmctld functions never do); the script loads only the files installed beside it.
    source = lua.read_text(encoding="utf-8")
    for call in (r"os\.exit", r"\brequire\s*[(\"']", r"\bdofile\b"):
        assert not re.search(call, source), f"{lua.name} must not use {call}"
    installed = ("SITE_FILE", "DIRECTIVES_FILE", "DIRECTIVES_BYTECODE", "LAYOUTS_FILE", "LAYOUTS_BYTECODE",
                 "POLICY_FILE", "POLICY_BYTECODE")
    for loaded in re.findall(r"\bloadfile\(([^)]*)\)", source):
        assert loaded in (*installed, "source", "bytecode"), f"{lua.name} loads {loaded}"
    for source_file, bytecode in re.findall(r"(?<!function )helpers\.load_installed\(([^,]*), ([^,]*),", source):
        assert {source_file, bytecode} <= set(installed), f"{lua.name} loads {source_file}, {bytecode}"


@pytest.mark.parametrize("size, suggestion", [
    ("7.5GiB", "7680MiB"), ("7.5G", "7680MiB"), ("1.5TB", "1500GB"), ("0.5g", "512MiB"), ("2.25kb", "2250"),
    ("1.3K", "1332"),
])
def test_a_decimal_size_is_refused_with_a_whole_number_that_means_the_same(size, suggestion):
    """Slurm 22.05 books the digits before the '.' as bytes; the message says what to write instead."""
    _, error = outcome(f"#!/bin/bash\n#DW jobdw capacity={size}\n")
    assert error.reason == "decimal_size" and str(error).endswith(f"e.g. {suggestion}")
    assert outcome(f"#!/bin/bash\n#DW jobdw capacity={suggestion}\n")[1] is None
