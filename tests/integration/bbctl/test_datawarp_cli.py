"""The real dw_wlm_cli and dwstat against the test bed, called as slurmctld calls them.

Job tokens come from 880000-889999 so they never meet other tests' jobs. Every
call runs with stdin /dev/null and stderr merged into stdout, the reply Slurm
parses. Each test tears its buffers down in a finalizer (with --hurry), and
checks that no gluster volume and no mount is left behind.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbctl import site
from bbctl.datawarp.sessions import PERSISTENT_ID_BASE
from tests.conftest import TESTBED_ROOT, VENV_BIN

pytestmark = pytest.mark.testbed

DW_WLM_CLI = str(VENV_BIN / "dw_wlm_cli")
DWSTAT = str(VENV_BIN / "dwstat")
GiB = 1024**3
TOKENS = range(880000, 890000)


def reply(program: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run as slurmctld does: its own environment plus BBCTL_CONFIG, stdin /dev/null, stderr into stdout."""
    env = {**os.environ, site.CONFIG_ENV: str(TESTBED_ROOT / "bbctl.yml")}
    return subprocess.run([program, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout, check=False)


def dw(*args: str) -> str:
    proc = reply(DW_WLM_CLI, *args)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def dw_json(function: str) -> dict:
    return json.loads(dw("--function", function))


def sessions() -> dict[str, dict]:
    return {s["token"]: s for s in dw_json("show_sessions")["sessions"]}


def volumes() -> list[str]:
    proc = subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={TESTBED_ROOT}/node1/run/glusterd.socket",
                           "volume", "list"], capture_output=True, text=True, check=True, timeout=60)
    return proc.stdout.split()


def mounts_of(volume: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if volume in line]


def wait_for_free_bricks(count: int, timeout: float = 180) -> None:
    """The test bed is shared: wait until other tests leave enough bricks free."""
    deadline = time.monotonic() + timeout
    while dw_json("pools")["pools"][0]["free"] < count:
        if time.monotonic() > deadline:
            pytest.fail(f"the test bed's pool had fewer than {count} free brick(s) for {timeout} s")
        time.sleep(5)


def assert_gone(key: str) -> None:
    volume = site.volume_name(key)
    assert volume not in volumes()
    assert mounts_of(volume) == []
    assert key not in sessions()


@pytest.fixture
def bbuser() -> pwd.struct_passwd:
    return pwd.getpwnam("bbuser")


@pytest.fixture
def job_script(tmp_path: Path) -> Path:
    path = tmp_path / "script"
    path.write_text("#!/bin/bash\n#DW jobdw capacity=4GiB access_mode=striped\nsrun hostname\n")
    return path


@pytest.fixture
def token(testbed: Path, job_script: Path) -> Iterator[str]:
    taken = set(sessions())
    chosen = str(random.choice([t for t in random.sample(TOKENS, 50) if str(t) not in taken]))
    yield chosen
    reply(DW_WLM_CLI, "--function", "teardown", "--token", chosen, "--job", str(job_script), "--hurry")


@pytest.fixture
def persistent_name(testbed: Path, job_script: Path) -> Iterator[str]:
    name = f"dwcli{os.getpid()}_{random.randrange(10**6)}"
    yield name
    reply(DW_WLM_CLI, "--function", "teardown", "--token", name, "--job", str(job_script), "--hurry")


def test_a_job_buffer_from_setup_to_teardown(token, job_script, bbuser, tmp_path):
    wait_for_free_bricks(1)
    job = str(job_script)
    dw("--function", "job_process", "--job", job)
    dw("--function", "setup", "--token", token, "--caller", "SLURM", "--user", str(bbuser.pw_uid),
       "--groupid", str(bbuser.pw_gid), "--capacity", "nvme:4GiB", "--job", job)

    session = sessions()[token]
    assert type(session["id"]) is int and session["id"] == int(token)
    assert session["owner"] == bbuser.pw_uid and type(session["created"]) is int
    instance = next(i for i in dw_json("show_instances")["instances"] if i["links"]["session"] == session["id"])
    assert type(instance["id"]) is int and instance["capacity"]["bytes"] == 4 * GiB
    assert any(c["links"]["instance"] == instance["id"] for c in dw_json("show_configurations")["configurations"])

    path_file = tmp_path / "path"
    dw("--function", "paths", "--job", job, "--token", token, "--pathfile", str(path_file))
    env = dict(line.split("=", 1) for line in path_file.read_text().splitlines())
    mount = env["DW_JOB_STRIPED"]
    assert mount == str(TESTBED_ROOT / "mnt" / site.volume_name(token))
    assert json.loads(dw("--function", "real_size", "--token", token)) == {
        "token": token, "capacity": 4 * GiB, "units": "bytes"}
    dw("--function", "data_in", "--token", token, "--job", job)

    nodes = tmp_path / "client_nids"
    nodes.write_text("vm\n")
    dw("--function", "pre_run", "--token", token, "--job", job, "--nodehostnamefile", str(nodes))
    assert any(f" {mount} " in line for line in mounts_of(site.volume_name(token)))
    assert sessions()[token]["links"]["client_nodes"] == ["vm"]
    dw("--function", "post_run", "--token", token, "--job", job)
    assert mounts_of(mount) == []
    dw("--function", "data_out", "--token", token, "--job", job)

    out = dw("--function", "teardown", "--token", token, "--job", job)
    assert "token not found" not in out
    assert_gone(token)
    assert "token not found" in dw("--function", "teardown", "--token", token, "--job", job)


def test_a_persistent_buffer_is_created_and_torn_down_by_name(persistent_name, job_script, bbuser):
    wait_for_free_bricks(1)
    out = dw("--function", "create_persistent", "-c", "CLI", "-t", persistent_name, "-u", str(bbuser.pw_uid),
             "-C", "nvme:48", "-a", "striped", "-T", "scratch")
    assert "created" in out
    assert site.volume_name(persistent_name) in volumes()
    session = sessions()[persistent_name]
    assert type(session["id"]) is int and session["id"] >= PERSISTENT_ID_BASE
    assert session["owner"] == bbuser.pw_uid
    assert persistent_name in reply(DWSTAT, "sessions", timeout=2).stdout

    out = dw("--function", "teardown", "--token", persistent_name, "--job", str(job_script))
    assert "token not found" not in out
    assert_gone(persistent_name)


@pytest.mark.parametrize("unknown", ["889999", "never_created_here"])
def test_teardown_of_an_unknown_token_succeeds_as_token_not_found(unknown, testbed, job_script):
    assert unknown not in sessions()
    proc = reply(DW_WLM_CLI, "--function", "teardown", "--token", unknown, "--job", str(job_script), "--hurry")
    assert proc.returncode == 0 and "token not found" in proc.stdout


def test_staging_an_unknown_job_is_no_matching_session(testbed, job_script):
    for function in ("data_in", "data_out"):
        proc = reply(DW_WLM_CLI, "--function", function, "--token", "889998", "--job", str(job_script))
        assert proc.returncode == 0 and proc.stdout == "No matching session\n"


def test_dwstat_answers_within_slurms_two_seconds(testbed):
    for views in ([], ["sessions"], ["configurations"], ["all"]):
        started = time.monotonic()
        proc = reply(DWSTAT, *views, timeout=2)
        assert proc.returncode == 0, proc.stdout
        assert time.monotonic() - started < 2
    assert reply(DWSTAT, timeout=2).stdout.split("\n")[0].split() == ["pool", "units", "quantity", "free", "gran"]


def test_pools_reply_is_what_the_datawarp_plugin_parses(testbed):
    (pool,) = dw_json("pools")["pools"]
    assert pool["id"] == "nvme" and pool["units"] == "bytes"
    assert all(type(pool[key]) is int for key in ("granularity", "quantity", "free"))
    assert pool["granularity"] == 4 * GiB and 0 <= pool["free"] <= pool["quantity"] == 9
