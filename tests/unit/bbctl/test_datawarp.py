"""dw_wlm_cli and dwstat: every argv Slurm's datawarp plugin builds, the JSON it parses, the mapping onto Lifecycle.

The show_* functions and dwstat read a real SQLiteStore; stages that would run
Ansible are checked against a recording fake Lifecycle, since the mapping of
arguments is all the adapter adds.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from bbctl import site
from bbctl.datawarp import dw_wlm_cli, sessions
from bbctl.datawarp import dwstat as dwstat_program
from bbctl.errors import BBError, Refused
from bbctl.lifecycle import Lifecycle
from bbctl.state import BufferSpec, BufferState, SQLiteStore
from bbctl.state.timings import Running, StageTiming

GiB = 1024**3
JOB = "/var/spool/slurm/hash.3/job.123/script"
NIDS = "/var/spool/slurm/hash.3/job.123/client_nids"


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture
def config(tmp_path: Path) -> site.Site:
    """Two storage servers with two bricks each, one 4GiB pool."""
    hosts = {f"s{n}": {"bb_gluster_host": f"127.1.1.{n}",
                       "bb_bricks": [{"device": f"/dev/loop{n}{b}", "path": f"/bricks/nvme{b}"} for b in (1, 2)]}
             for n in (1, 2)}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"bb_storage": {"hosts": hosts}}}}))
    return site.from_mapping({"inventory": str(inventory), "state": str(tmp_path / "state.db"),
                              "pools": {"nvme": {"granularity": "4GiB", "hosts": "all"}},
                              "work_dir": str(tmp_path / "work"), "mount_root": "/mnt/bb"},
                             tmp_path / "bbctl.yml")


@pytest.fixture
def life(config: site.Site, tmp_path: Path):
    store = SQLiteStore(tmp_path / "state.db")
    yield Lifecycle(config, store=store)
    store.close()


def allocate(life: Lifecycle, key: str, capacity: int, uid: int = 1001, meta: dict[str, Any] | None = None) -> None:
    life.store.allocate(BufferSpec(key=key, owner_uid=uid, owner_gid=uid, capacity=capacity), life.pools["nvme"])
    life.store.transition(key, BufferState.ALLOCATING, BufferState.ALLOCATING, meta=meta)


class FakeLife:
    """Records every Lifecycle call; returns[name] is what it returns (or raises)."""

    cancel = None

    def __init__(self, returns: dict[str, Any] | None = None, existing: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.returns = returns or {}
        self.store = SimpleNamespace(get=lambda key: object() if key in existing else None)
        self.existing = existing

    def has_buffer(self, job_id: str) -> bool:  # a question, not a stage: not recorded in calls
        return job_id in self.existing

    def __getattr__(self, name: str):
        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            result = self.returns.get(name)
            if isinstance(result, Exception):
                raise result
            return result
        return record


def cli(argv: list[str], life: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = dw_wlm_cli.main(argv, lifecycle=lambda _config: life)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def show(function: str, life: Lifecycle, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out = cli(["--function", function], life, capsys)
    assert code == 0, out
    return json.loads(out)


def script(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "script"
    path.write_text("#!/bin/bash\n" + "".join(line + "\n" for line in lines) + "srun true\n")
    return path


# --- argument parsing: every form of docs/SLURM.md section 3, as the plugin builds it -------------

FORMS = [
    (["--function", "pools"], {}),
    (["--function", "show_instances"], {}),
    (["--function", "show_sessions"], {}),
    (["--function", "show_configurations"], {}),
    (["--function", "job_process", "--job", JOB], {"job": Path(JOB)}),
    (["--function", "setup", "--token", "123", "--caller", "SLURM", "--user", "1001", "--groupid", "1002",
      "--capacity", "nvme:200GiB", "--job", JOB, "--nodehostnamefile", NIDS],
     {"token": "123", "caller": "SLURM", "user": 1001, "groupid": 1002, "capacity": ("nvme", 200 * GiB),
      "job": Path(JOB), "node_file": Path(NIDS)}),
    (["--function", "setup", "--token", "123", "--caller", "SLURM", "--user", "1001", "--groupid", "1002",
      "--capacity", "nvme:0", "--job", JOB],
     {"capacity": ("nvme", 0), "node_file": None}),
    (["--function", "data_in", "--token", "123", "--job", JOB], {"token": "123", "job": Path(JOB)}),
    (["--function", "real_size", "--token", "123"], {"token": "123"}),
    (["--function", "paths", "--job", JOB, "--token", "123", "--pathfile", "/s/job.123/path"],
     {"job": Path(JOB), "token": "123", "pathfile": Path("/s/job.123/path")}),
    (["--function", "pre_run", "--token", "123", "--job", JOB, "--nodehostnamefile", NIDS],
     {"token": "123", "job": Path(JOB), "node_file": Path(NIDS)}),
    (["--function", "pre_run", "--token", "123", "--job", JOB, "--nidlistfile", NIDS], {"node_file": Path(NIDS)}),
    (["--function", "pre_run", "--token", "123", "--job", JOB], {"node_file": None}),
    (["--function", "post_run", "--token", "123", "--job", JOB], {"token": "123", "job": Path(JOB)}),
    (["--function", "data_out", "--token", "123", "--job", JOB], {"token": "123", "job": Path(JOB)}),
    (["--function", "teardown", "--token", "123", "--job", JOB], {"token": "123", "job": Path(JOB), "hurry": False}),
    (["--function", "teardown", "--token", "123", "--job", JOB, "--hurry"], {"hurry": True}),
    (["--function", "teardown", "--token", "scratch1", "--job", JOB, "--hurry"], {"token": "scratch1"}),
    (["--function", "create_persistent", "-c", "CLI", "-t", "scratch1", "-u", "1001", "-C", "nvme:4294967296",
      "-a", "striped", "-T", "scratch"],
     {"caller": "CLI", "name": "scratch1", "user": 1001, "capacity": ("nvme", 4 * GiB), "access": "striped",
      "type": "scratch"}),
    (["--function", "create_persistent", "-c", "CLI", "-t", "scratch1", "-u", "1001", "-C", "nvme:48"],
     {"capacity": ("nvme", 48), "access": None, "type": None}),
]


@pytest.mark.parametrize(("argv", "expected"), FORMS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_slurm_form_parses(argv, expected):
    config, args = dw_wlm_cli.parse_dw_wlm_cli(argv)
    assert config is None
    assert args.function == argv[1]
    assert {key: getattr(args, key) for key in expected} == expected


def test_every_function_has_a_handler_and_the_table_covers_slurm_md():
    assert set(dw_wlm_cli.FUNCTIONS) == set(dw_wlm_cli.OPTIONS) == {
        "pools", "show_instances", "show_sessions", "show_configurations", "job_process", "setup", "data_in",
        "real_size", "paths", "pre_run", "post_run", "data_out", "teardown", "create_persistent"}


@pytest.mark.parametrize("lead", [["--config", "/etc/x/bbctl.yml"], ["--config=/etc/x/bbctl.yml"]])
def test_a_leading_config_goes_to_the_lifecycle_factory(lead, capsys):
    seen = []
    code = dw_wlm_cli.main([*lead, "--function", "real_size", "--token", "7"],
                                    lifecycle=lambda config: seen.append(config) or FakeLife({"real_size": 0}))
    assert code == 0 and seen == [Path("/etc/x/bbctl.yml")]
    assert json.loads(capsys.readouterr().out) == {"token": "7", "capacity": 0, "units": "bytes"}


def test_without_config_the_factory_gets_none_so_bbctl_config_env_applies(capsys):
    seen = []
    dw_wlm_cli.main(["--function", "real_size", "--token", "7"],
                             lifecycle=lambda config: seen.append(config) or FakeLife({"real_size": 0}))
    assert seen == [None]


def test_unknown_function_answers_invalid_function_as_slurm_expects_of_an_older_cli(capsys):
    code, out = cli(["--function", "swap_status"], FakeLife(), capsys)
    assert code == 2 and out.startswith("invalid function 'swap_status'")


@pytest.mark.parametrize(("argv", "message"), [
    (["--function", "setup", "--token", "1"], "dw_wlm_cli --function setup: the following arguments are required"),
    (["--function", "setup", "--token", "1", "--user", "x", "--groupid", "1", "--capacity", "nvme:1G",
      "--job", JOB], "argument --user: invalid int value"),
    (["--function", "setup", "--token", "1", "--user", "1", "--groupid", "1", "--capacity", "200GiB",
      "--job", JOB], "expected POOL:SIZE"),
    (["--function", "setup", "--token", "1", "--user", "1", "--groupid", "1", "--capacity", "nvme:lots",
      "--job", JOB], "cannot read size 'lots'"),
    (["--function", "paths", "--job", JOB, "--token", "1", "--pathfile", "/p", "--extra", "1"],
     "unrecognized arguments: --extra 1"),
    (["--token", "1"], "dw_wlm_cli: the following arguments are required: --function"),
    (["--config"], "dw_wlm_cli: --config needs the path"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    life = FakeLife()
    code, out = cli(argv, life, capsys)
    assert code == 2 and message in out
    assert out.count("\n") == 1 and life.calls == []


# --- the JSON Slurm parses: field names and integer types -------------------------------------------

def is_int(value: Any) -> bool:
    return type(value) is int  # not bool, not str: json-c reads "12" as 0


def test_pools_has_datawarp_fields_with_integer_counts(life, capsys):
    allocate(life, "12345", 5 * GiB)  # 2 bricks
    assert show("pools", life, capsys) == {"pools": [
        {"id": "nvme", "units": "bytes", "granularity": 4 * GiB, "quantity": 4, "free": 2}]}


def test_show_sessions_ids_created_and_owner_are_integers(life, capsys):
    allocate(life, "12345", 4 * GiB, uid=1001)
    allocate(life, "scratch1", 4 * GiB, uid=1002)
    listed = {s["token"]: s for s in show("show_sessions", life, capsys)["sessions"]}
    assert set(listed) == {"12345", "scratch1"}
    for token, session in listed.items():
        assert {"id", "created", "owner", "token"} <= set(session)
        assert is_int(session["id"]) and is_int(session["created"]) and is_int(session["owner"])
        assert isinstance(session["token"], str)
        assert session["id"] == sessions.session_id(token)
    assert listed["12345"]["id"] == 12345 and listed["12345"]["owner"] == 1001
    assert listed["scratch1"]["owner"] == 1002
    assert abs(listed["12345"]["created"] - life.store.get("12345").created_at) < 1


def test_show_instances_links_integer_sessions_and_counts_whole_bricks(life, capsys):
    allocate(life, "12345", 5 * GiB)  # rounded up to 2 bricks of 4GiB
    allocate(life, "scratch1", 48)  # Slurm's test35.1 asks for 48 bytes: one brick
    instances = {i["links"]["session"]: i for i in show("show_instances", life, capsys)["instances"]}
    assert set(instances) == {12345, sessions.session_id("scratch1")}
    for session, instance in instances.items():
        assert is_int(instance["id"]) and is_int(instance["links"]["session"])
        assert is_int(instance["capacity"]["bytes"]) and instance["capacity"]["nodes"] == 0
        assert instance["id"] == session
    assert instances[12345]["capacity"]["bytes"] == 8 * GiB
    assert instances[sessions.session_id("scratch1")]["capacity"]["bytes"] == 4 * GiB


def test_show_configurations_link_integer_instances(life, capsys):
    allocate(life, "12345", GiB)
    allocate(life, "scratch1", GiB)
    instance_ids = {i["id"] for i in show("show_instances", life, capsys)["instances"]}
    configurations = show("show_configurations", life, capsys)["configurations"]
    assert len(configurations) == 2
    for configuration in configurations:
        assert is_int(configuration["id"]) and is_int(configuration["links"]["instance"])
    assert {c["links"]["instance"] for c in configurations} == instance_ids


def test_empty_store_gives_empty_lists(life, capsys):
    assert show("show_sessions", life, capsys) == {"sessions": []}
    assert show("show_instances", life, capsys) == {"instances": []}
    assert show("show_configurations", life, capsys) == {"configurations": []}


def test_sessions_list_the_nodes_a_buffer_is_mounted_on(life, capsys):
    allocate(life, "12345", GiB, meta={"nodes": ["n2", "n1"]})
    allocate(life, "scratch1", GiB, meta={"user:7": ["n3"], "user:8": ["n1", "n3"]})
    sessions = {s["token"]: s for s in show("show_sessions", life, capsys)["sessions"]}
    assert sessions["12345"]["links"]["client_nodes"] == ["n1", "n2"]
    assert sessions["scratch1"]["links"]["client_nodes"] == ["n1", "n3"]


# --- ids -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("job", ["1", "123", "67108863"])
def test_a_jobs_session_id_is_its_job_id(job):
    assert sessions.session_id(job) == int(job)


def test_persistent_ids_are_stable_and_never_a_slurm_job_id():
    names = ["scratch1", "test35_1", "a", "Z" * 64, "test35.1", "x_" + "9" * 20]
    names += [f"buf{n}" for n in range(20000)]
    ids = [sessions.session_id(name) for name in names]
    assert ids == [sessions.session_id(name) for name in names]  # stable across calls
    for ident in ids:
        assert sessions.MAX_SLURM_JOB_ID < sessions.PERSISTENT_ID_BASE <= ident < 2**31  # fits Slurm's int
    assert sessions.session_id("scratch1") == 0x40000000 + (zlib.crc32(b"scratch1") & 0x3FFFFFFF)


# --- job_process ----------------------------------------------------------------------------------

def test_job_process_accepts_valid_directives_silently(tmp_path, capsys):
    job = script(tmp_path, "#DW jobdw capacity=1GiB access_mode=striped,private type=scratch",
                 "#DW stage_in type=file source=/etc/hosts destination=$DW_JOB_STRIPED/hosts")
    assert cli(["--function", "job_process", "--job", str(job)], FakeLife(), capsys) == (0, "")


def test_job_process_refuses_bad_directives_with_the_message_on_stdout(tmp_path, capsys):
    job = script(tmp_path, "#DW jobdw capacity=2N")
    code = dw_wlm_cli.main(["--function", "job_process", "--job", str(job)], lifecycle=lambda _: FakeLife())
    captured = capsys.readouterr()
    assert code == 1 and captured.err == ""
    assert captured.out.startswith("line 2: jobdw: 'capacity=2N': node counts (N) are not supported")
    assert captured.out.count("\n") == 1


def test_job_process_refuses_a_buffer_its_pool_could_never_hold(tmp_path, capsys):
    job = script(tmp_path, "#DW jobdw capacity=36GiB")
    admitted = object()  # the request as the site's policy made it (presets expanded)
    life = FakeLife({"admit": admitted,
                     "check_fits": BBError("capacity=36GiB needs disperse 9+1, 10 bricks; ...", exit_code=2)})
    code, out = cli(["--function", "job_process", "--job", str(job)], life, capsys)
    assert code == 1 and out.startswith("capacity=36GiB needs disperse 9+1")
    assert [call[0] for call in life.calls] == ["admit", "check_fits"]
    assert life.calls[0][1][0].jobdw.capacity == 36 * 2**30 and life.calls[0][2] == {}  # no uid: Slurm gives none
    assert life.calls[1][1][0] is admitted


def test_job_process_refuses_what_the_site_policy_refuses(tmp_path, capsys):
    job = script(tmp_path, "#DW jobdw capacity=1GiB preset=nosuch")
    life = FakeLife({"admit": BBError("line 2: jobdw: 'preset=nosuch': no preset nosuch; the site's presets: "
                                      "fast", exit_code=2)})
    code, out = cli(["--function", "job_process", "--job", str(job)], life, capsys)
    assert (code, out) == (1, "line 2: jobdw: 'preset=nosuch': no preset nosuch; the site's presets: fast\n")
    assert [call[0] for call in life.calls] == ["admit"]


def test_job_process_of_a_missing_script_fails(tmp_path, capsys):
    code, out = cli(["--function", "job_process", "--job", str(tmp_path / "gone")], FakeLife(), capsys)
    assert code == 1 and "cannot read the job script" in out


# --- stages: argument mapping onto Lifecycle ------------------------------------------------------------

def test_setup_maps_token_user_group_pool_size_and_script(capsys):
    life = FakeLife({"setup": []})
    code, _ = cli(["--function", "setup", "--token", "123", "--caller", "SLURM", "--user", "1001", "--groupid",
                   "1002", "--capacity", "nvme:200GiB", "--job", JOB, "--nodehostnamefile", NIDS], life, capsys)
    assert code == 0
    [(name, args, kwargs)] = life.calls
    swap_nodes = kwargs.pop("swap_nodes")
    assert (name, args, kwargs) == ("setup", ("123", 1001, 1002, Path(JOB)),
                                    {"pool": "nvme", "size": 200 * GiB, "slurm_books_swap": True})
    assert callable(swap_nodes)


def test_setup_counts_swap_nodes_in_the_node_file(tmp_path, capsys):
    nids = tmp_path / "client_nids"
    nids.write_text("nid001\nnid002\n\nnid003\n")
    life = FakeLife({"setup": []})
    cli(["--function", "setup", "--token", "123", "--user", "1001", "--groupid", "1002", "--capacity",
         "nvme:8GiB", "--job", JOB, "--nodehostnamefile", str(nids)], life, capsys)
    assert life.calls[0][2]["swap_nodes"]() == 3


def test_setup_without_capacity_of_its_own_leaves_size_to_the_directives(capsys):
    life = FakeLife({"setup": []})
    cli(["--function", "setup", "--token", "123", "--caller", "SLURM", "--user", "1001", "--groupid", "1002",
         "--capacity", "nvme:0", "--job", JOB], life, capsys)
    [(_name, _args, kwargs)] = life.calls
    assert (kwargs["pool"], kwargs["size"]) == ("nvme", None)


@pytest.mark.parametrize(("function", "method"), [("data_in", "stage_in"), ("data_out", "stage_out")])
def test_staging_a_known_session_calls_the_lifecycle(function, method, capsys):
    life = FakeLife({method: 1}, existing=("123",))
    assert cli(["--function", function, "--token", "123", "--job", JOB], life, capsys) == (0, "")
    assert life.calls == [(method, ("123", Path(JOB)), {})]


def job_script(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "hash.3" / "job.123" / "script"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["#!/bin/bash", *lines, "srun a.out"]) + "\n")
    return str(path)


@pytest.mark.parametrize("function", ["data_in", "data_out"])
def test_staging_without_a_session_says_no_matching_session_and_succeeds(function, tmp_path, capsys):
    life = FakeLife()
    job = job_script(tmp_path, "#DW jobdw capacity=1GiB")
    assert cli(["--function", function, "--token", "123", "--job", job], life, capsys) == (
        0, "No matching session\n")
    assert life.calls == []


@pytest.mark.parametrize("function, stage", [("data_in", "stage_in"), ("data_out", "stage_out")])
def test_a_job_whose_only_buffer_is_persistent_is_staged(function, stage, tmp_path, capsys):
    """Slurm takes "No matching session" as success: it must never stand for staging skipped."""
    life = FakeLife()
    job = job_script(tmp_path, "#DW persistentdw name=P",
                     "#DW stage_in type=file source=/pfs/in destination=$DW_PERSISTENT_STRIPED_P/in",
                     "#DW stage_out type=file source=$DW_PERSISTENT_STRIPED_P/out destination=/pfs/out")
    assert cli(["--function", function, "--token", "123", "--job", job], life, capsys) == (0, "")
    assert life.calls == [(stage, ("123", Path(job)), {})]


def test_data_in_without_a_session_against_a_real_store(life, tmp_path, capsys):
    job = job_script(tmp_path, "#DW jobdw capacity=1GiB")
    assert cli(["--function", "data_in", "--token", "4242", "--job", job], life, capsys) == (
        0, "No matching session\n")


def test_pre_run_reads_nodes_from_the_node_file(tmp_path, capsys):
    nodes = tmp_path / "client_nids"
    nodes.write_text("nid001\nnid002\n\n")
    life = FakeLife()
    cli(["--function", "pre_run", "--token", "123", "--job", JOB, "--nodehostnamefile", str(nodes)], life, capsys)
    assert life.calls == [("pre_run", ("123", Path(JOB), ["nid001", "nid002"]), {})]


def test_pre_run_without_a_node_file_asks_slurm(monkeypatch, capsys):
    monkeypatch.setattr(dw_wlm_cli, "slurm_nodes", lambda _site, job: [f"node-of-{job}"])
    life = FakeLife()
    cli(["--function", "pre_run", "--token", "123", "--job", JOB], life, capsys)
    assert life.calls == [("pre_run", ("123", Path(JOB), ["node-of-123"]), {})]


def test_pre_run_with_a_missing_node_file_fails_with_one_line(tmp_path, capsys):
    code, out = cli(["--function", "pre_run", "--token", "123", "--job", JOB, "--nodehostnamefile",
                     str(tmp_path / "gone")], FakeLife(), capsys)
    assert code == 1 and out.startswith("dw_wlm_cli pre_run: cannot read the node file")


def test_post_run_maps_token_and_script(capsys):
    life = FakeLife()
    assert cli(["--function", "post_run", "--token", "123", "--job", JOB], life, capsys) == (0, "")
    assert life.calls == [("post_run", ("123", Path(JOB)), {})]


def test_real_size_prints_integer_bytes(life, capsys):
    allocate(life, "12345", 5 * GiB)
    for token, capacity in (("12345", 8 * GiB), ("999", 0)):
        code, out = cli(["--function", "real_size", "--token", token], life, capsys)
        document = json.loads(out)
        assert code == 0 and document == {"token": token, "capacity": capacity, "units": "bytes"}
        assert is_int(document["capacity"])


def test_paths_writes_the_job_environment_as_key_value_lines(life, tmp_path, capsys):
    job = script(tmp_path, "#DW jobdw capacity=4GiB access_mode=striped,private", "#DW persistentdw name=scratch1")
    path_file = tmp_path / "path"
    path_file.write_text("STALE=1\n")  # a rerun replaces, never appends
    code, out = cli(["--function", "paths", "--job", str(job), "--token", "123", "--pathfile", str(path_file)],
                    life, capsys)
    assert (code, out) == (0, "")
    lines = dict(line.split("=", 1) for line in path_file.read_text().splitlines())
    assert lines["DW_JOB_STRIPED"] == "/mnt/bb/bbjob-123"
    assert lines["DW_JOB_PRIVATE"] == "/mnt/bb/bbjob-123-private"
    assert lines["DW_PERSISTENT_STRIPED_scratch1"] == "/mnt/bb/bbp-scratch1"
    assert "STALE" not in lines


def test_paths_tell_the_job_the_largest_file_of_a_striped_buffer_of_several_sets(life, tmp_path, capsys):
    path_file = tmp_path / "path"
    for capacity, expected in (("64GiB", None), ("68GiB", str(9 * 4 * GiB))):  # 16 granules: one set; 17: two
        job = script(tmp_path, f"#DW jobdw capacity={capacity}")
        assert cli(["--function", "paths", "--job", str(job), "--token", "123", "--pathfile", str(path_file)],
                   life, capsys) == (0, "")
        lines = dict(line.split("=", 1) for line in path_file.read_text().splitlines())
        assert lines.get("BB_JOB_STRIPED_MAX_FILE") == expected and "DW_JOB_STRIPED_MAX_FILE" not in lines


def test_paths_into_an_unwritable_place_fails_with_one_line(life, tmp_path, capsys):
    job = script(tmp_path, "#DW jobdw capacity=4GiB")
    code, out = cli(["--function", "paths", "--job", str(job), "--token", "123", "--pathfile",
                     str(tmp_path / "no" / "such" / "dir" / "path")], life, capsys)
    assert code == 1 and out.startswith("dw_wlm_cli paths: cannot write the path file")


# --- teardown --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "hurry"), [([], False), (["--hurry"], True)])
def test_teardown_of_a_job_token_tears_down_the_job(extra, hurry, capsys):
    life = FakeLife({"teardown": True})
    assert cli(["--function", "teardown", "--token", "123", "--job", JOB, *extra], life, capsys) == (0, "")
    assert life.calls == [("teardown", ("123", Path(JOB)), {"hurry": hurry})]


@pytest.mark.parametrize(("extra", "hurry"), [([], False), (["--hurry"], True)])
def test_teardown_of_a_name_destroys_the_persistent_buffer(extra, hurry, capsys):
    life = FakeLife({"destroy_persistent": True})
    assert cli(["--function", "teardown", "--token", "scratch1", "--job", JOB, *extra], life, capsys) == (0, "")
    assert life.calls == [("destroy_persistent", ("scratch1",), {"hurry": hurry})]


@pytest.mark.parametrize("token", ["123", "scratch1"])
def test_teardown_of_an_unknown_token_says_token_not_found_and_succeeds(token, capsys):
    life = FakeLife({"teardown": False, "destroy_persistent": False})
    assert cli(["--function", "teardown", "--token", token, "--job", JOB], life, capsys) == (0, "token not found\n")


@pytest.mark.parametrize("token", ["424242", "never_made"])
def test_teardown_of_an_unknown_token_against_a_real_store(token, life, capsys):
    assert cli(["--function", "teardown", "--token", token, "--job", JOB], life, capsys) == (0, "token not found\n")


def test_teardown_tolerates_arguments_a_later_slurm_may_add(capsys):
    life = FakeLife({"teardown": True})
    code, _ = cli(["--function", "teardown", "--token", "123", "--job", JOB, "--hurry", "--uid", "1001",
                   "--gid", "1001", "--job-info", "x=y", "extra"], life, capsys)
    assert code == 0
    assert life.calls == [("teardown", ("123", Path(JOB)), {"hurry": True})]


def test_teardown_refused_exits_non_zero_so_slurm_retries(capsys):
    life = FakeLife({"teardown": Refused("buffer 123: its stage-out has not succeeded,\nso it is kept")})
    code, out = cli(["--function", "teardown", "--token", "123", "--job", JOB], life, capsys)
    assert code == 4
    assert out == "dw_wlm_cli teardown: buffer 123: its stage-out has not succeeded, so it is kept\n"
    assert "token not found" not in out


# --- create_persistent ---------------------------------------------------------------------------------

def test_create_persistent_uses_the_users_primary_group_and_says_created(capsys):
    me = pwd.getpwuid(os.getuid())
    life = FakeLife()
    code, out = cli(["--function", "create_persistent", "-c", "CLI", "-t", "scratch1", "-u", str(me.pw_uid),
                     "-C", "nvme:4294967296", "-a", "striped", "-T", "scratch"], life, capsys)
    assert code == 0 and "created" in out and "scratch1" in out
    assert life.calls == [("create_persistent", ("scratch1", me.pw_uid, me.pw_gid, 4 * GiB, "nvme"),
                           {"buffer_type": "scratch"})]


def test_create_persistent_with_a_dotted_name_allocates_one_valid_volume(life, capsys, monkeypatch):
    """Slurm's test35.1: the name reaches us through -t only, never through job_process."""
    built = []
    monkeypatch.setattr(Lifecycle, "_run", lambda self, buffer, stage, playbook, **kw: built.append(
        (playbook, site.volume_name(buffer.key))) or SimpleNamespace(status="successful"))
    me = pwd.getpwnam("bbuser")
    code, out = cli(["--function", "create_persistent", "-c", "CLI", "-t", "test35.1", "-u", str(me.pw_uid),
                     "-C", "nvme:48", "-a", "striped", "-T", "scratch"], life, capsys)
    assert code == 0 and "created" in out
    assert built == [("buffer_create.yml", site.volume_name("test35.1"))]
    assert built[0][1].startswith("bbp-test35_1-")


@pytest.mark.parametrize("name, why", [("1abc", "names are"), ("-x", "names are"), ("a" * 65, "names are")])
def test_create_persistent_refuses_a_bad_name_before_allocating(life, capsys, name, why):
    me = pwd.getpwnam("bbuser")
    code, out = cli(["--function", "create_persistent", "-c", "CLI", "-t", name, "-u", str(me.pw_uid),
                     "-C", "nvme:48"], life, capsys)
    assert code == 2 and why in out and "created" not in out
    assert life.store.buffers() == []


def test_create_persistent_refuses_cache_type_and_other_access(life, capsys):
    me = pwd.getpwnam("bbuser")
    for extra, why in ((["-T", "cache"], "cannot be a cache"), (["-a", "ldbalance"], "persistent buffers are striped")):
        code, out = cli(["--function", "create_persistent", "-t", "c1", "-u", str(me.pw_uid), "-C", "nvme:48",
                         *extra], life, capsys)
        assert code == 2 and why in out
    assert life.store.buffers() == []


def test_destroy_of_a_name_that_cannot_exist_holds_the_job(life, tmp_path, capsys, monkeypatch):
    """Slurm retries a failed destroy_persistent forever; one that can never succeed holds the job."""
    held = []
    monkeypatch.setattr(dw_wlm_cli, "hold_job", lambda settings, job_id: held.append(job_id))
    job = job_script(tmp_path, "#BB destroy_persistent name=-x")
    code, out = cli(["--function", "teardown", "--token", "-x", "--job", job], life, capsys)
    assert code == 2 and "names are" in out and held == ["123"]


def test_destroy_of_a_missing_dotted_name_is_token_not_found(life, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dw_wlm_cli, "hold_job", lambda settings, job_id: pytest.fail("held"))
    job = job_script(tmp_path, "#BB destroy_persistent name=test35.4")
    assert cli(["--function", "teardown", "--token", "test35.4", "--job", job], life, capsys) == (
        0, "token not found\n")


def test_destroy_refused_while_in_use_stays_pending_not_held(life, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dw_wlm_cli, "hold_job", lambda settings, job_id: pytest.fail("held"))
    allocate(life, "shared.1", GiB, meta={"user:77": ["n1"]})
    life.store.transition("shared.1", BufferState.ALLOCATING, BufferState.CREATED)
    job = job_script(tmp_path, "#BB destroy_persistent name=shared.1")
    code, out = cli(["--function", "teardown", "--token", "shared.1", "--job", job], life, capsys)
    assert code == 4 and "in use by job(s) 77" in out


def test_job_id_of_slurms_script_path():
    assert dw_wlm_cli.job_id_of_script(Path(JOB)) == "123"
    assert dw_wlm_cli.job_id_of_script(Path("/tmp/other")) is None


def test_create_persistent_for_an_unknown_uid_fails_without_saying_created(capsys):
    uid = next(u for u in range(60000, 70000) if not _has_uid(u))
    life = FakeLife()
    code, out = cli(["--function", "create_persistent", "-c", "CLI", "-t", "scratch1", "-u", str(uid),
                     "-C", "nvme:48"], life, capsys)
    assert code == 2 and "created" not in out and f"no user with uid {uid}" in out
    assert life.calls == []


def test_create_persistent_failure_is_one_line_without_created(capsys):
    life = FakeLife({"create_persistent": BBError("not enough free bricks in pool 'nvme': 2 needed, 1 free")})
    code, out = cli(["--function", "create_persistent", "-c", "CLI", "-t", "scratch1", "-u", str(os.getuid()),
                     "-C", "nvme:8GiB"], life, capsys)
    assert code == 1 and "created" not in out
    assert out == "dw_wlm_cli create_persistent: not enough free bricks in pool 'nvme': 2 needed, 1 free\n"


def _has_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


# --- failures and cancellation ------------------------------------------------------------------------------

def test_a_cancelled_stage_fails_even_if_the_lifecycle_returned(capsys):
    life = FakeLife({"post_run": None})
    life.cancel = lambda: True
    code, out = cli(["--function", "post_run", "--token", "123", "--job", JOB], life, capsys)
    assert code == 1 and out == "dw_wlm_cli post_run: cancelled (SIGTERM)\n"


def test_a_missing_configuration_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(site.CONFIG_ENV, str(tmp_path / "absent.yml"))
    code = dw_wlm_cli.main(["--function", "pools"])
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("dw_wlm_cli pools: no bbctl configuration at") and out.count("\n") == 1


def test_the_default_factory_reads_bbctl_config(monkeypatch, config, capsys):
    config.path.write_text(yaml.safe_dump(dict(config.raw)))
    monkeypatch.setenv(site.CONFIG_ENV, str(config.path))
    try:
        assert dw_wlm_cli.main(["--function", "pools"]) == 0
    finally:
        dw_wlm_cli._PROCESS_SCOPE.close()  # restores pytest's SIGTERM handler and closes the log
    assert json.loads(capsys.readouterr().out)["pools"][0]["quantity"] == 4


# --- dwstat --------------------------------------------------------------------------------------------

# What Slurm's testsuite/expect/test35.5 looks for in `scontrol show dwstat ...`.
POOLS_HEADER = re.compile(r"pool *units *quantity *free *gran")
SESSIONS_HEADER = re.compile(r"sess *state *token *creator *owner *created *expiration *nodes")
CONFIGURATIONS_HEADER = re.compile(r"conf *state *inst *type *activs")


def dwstat(argv: list[str], life: Lifecycle, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = dwstat_program.main(argv, lifecycle=lambda _config: life)
    return code, capsys.readouterr().out


@pytest.mark.parametrize("populated", [False, True])
def test_dwstat_headers_match_slurms_testsuite(populated, life, capsys):
    if populated:
        allocate(life, "12345", 5 * GiB, meta={"nodes": ["n1"]})
        allocate(life, "scratch1", 48)
    code, out = dwstat([], life, capsys)
    assert code == 0 and POOLS_HEADER.search(out) and SESSIONS_HEADER.search(out)
    assert out.index("pool") < out.index("sess") < out.index("inst")
    assert SESSIONS_HEADER.search(dwstat(["sessions"], life, capsys)[1])
    assert CONFIGURATIONS_HEADER.search(dwstat(["configurations"], life, capsys)[1])


def test_dwstat_rows_show_sizes_ids_and_states(life, capsys):
    allocate(life, "12345", 5 * GiB, uid=1001, meta={"nodes": ["n1", "n2"]})
    allocate(life, "scratch1", 48, uid=1002)
    life.store.transition("scratch1", BufferState.ALLOCATING, BufferState.CREATED)
    _, out = dwstat(["all"], life, capsys)
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert ["nvme", "bytes", "16GiB", "4GiB", "4GiB"] in rows
    persistent = str(sessions.session_id("scratch1"))
    session_rows = {row[0]: row for row in rows if len(row) == 8 and row[0] != "sess"}
    assert session_rows["12345"][1:5] == ["C--T-", "12345", "SLURM", "1001"]
    assert session_rows["12345"][6:] == ["never", "2"]
    assert session_rows[persistent][1:5] == ["CA---", "scratch1", "CLI", "1002"]
    assert next(r[:5] for r in rows if r[-1] == "bbjob-12345") == ["12345", "C--T-", "12345", "8GiB", "2"]
    assert [persistent, "CA---", persistent, "scratch", "0"] in rows


def test_dwstat_views_print_in_the_order_asked(life, capsys):
    _, out = dwstat(["configurations", "pools"], life, capsys)
    assert CONFIGURATIONS_HEADER.search(out) and POOLS_HEADER.search(out)
    assert out.index("conf") < out.index("pool") and not SESSIONS_HEADER.search(out)


def test_dwstat_refuses_an_unknown_view_with_one_line(life, capsys):
    code, out = dwstat(["fragments"], life, capsys)
    assert code == 2 and out == ("dwstat: unknown view 'fragments': use pools, sessions, instances, "
                                 "configurations, all, status, job=JOBID or name=NAME\n")


def test_dwstat_shows_a_jobs_stage_timings_and_the_status_view(life, capsys):
    allocate(life, "12345", 5 * GiB)
    life.store.finish_stage("12345", StageTiming("setup", 1_700_000_000.0, 4.25))
    life.store.start_stage("12345", Running("stage-in", 1_700_000_004.5))
    code, out = dwstat(["job=12345"], life, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("buffer 12345 (bbjob-12345): allocating"), out
    assert lines[1].startswith("  now: stage-in for ")
    setup = lines[3].split()
    assert setup[0] == "setup" and "4.2" in setup and setup[-1] == "ok", out
    code, out = dwstat(["status", "name=nothing"], life, capsys)
    assert code == 0 and out.splitlines()[0].split()[:2] == ["POOL", "IN"]
    assert "no buffer nothing" in out


def test_dwstat_accepts_a_leading_config():
    assert dwstat_program.parse_dwstat(["--config", "/x.yml", "sessions"]) == (Path("/x.yml"), ["sessions"])
    assert dwstat_program.parse_dwstat([]) == (None, ["pools", "sessions", "instances"])
