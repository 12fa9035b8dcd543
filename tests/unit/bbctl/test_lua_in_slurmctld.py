"""burst_buffer.lua's in-slurmctld functions: no fork, and paths equal to bbctl.site's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bbctl import layouts, site, slurm_install
from bbctl.directives import parse_job_script
from bbctl.pools import Brick, Pool, pools_document, write_pools_json

REPO = Path(__file__).resolve().parents[3]
HARNESS = REPO / "tests" / "lua" / "run_in_slurmctld.lua"
LUA = shutil.which("lua5.1")
pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.1 is not installed (scripts/setup.sh installs it)")

GiB = 1024**3
POOLS = {"nvme": Pool("nvme", GiB, tuple(Brick("nvme", f"s{n}", f"s{n}", f"/b{k}", f"/dev/b{k}")
                                         for n in range(4) for k in range(5)))}  # 20 bricks of 1 GiB

SCRIPTS = {
    "jobdw": "#!/bin/bash\n#BB_LUA jobdw capacity=1GiB pool=nvme\n",
    "private": "#!/bin/bash\n#DW jobdw capacity=1GiB access_mode=striped,private\n",
    "persistent": "#!/bin/bash\n#DW persistentdw name=zeta\n#DW persistentdw name=alpha\n",
    "both": "#!/bin/bash\n#DW jobdw capacity=1GiB\n#DW persistentdw name=shared1\nsrun a.out\n",
    "dotted": "#!/bin/bash\n#DW persistentdw name=test35.1\n#DW persistentdw name=a-b.c_d\n",
    "long_dotted": "#!/bin/bash\n#DW persistentdw name=" + "x." * 32 + "\n#DW persistentdw name=_a\n",
    "none": "#!/bin/bash\nhostname\n",
    "several_sets": "#!/bin/bash\n#BB_LUA jobdw capacity=17GiB pool=nvme\n",  # two sets of 9+1: files up to 9 GiB
    "cache": "#!/bin/bash\n#BB_LUA jobdw capacity=1GiB pool=nvme type=cache pfs=/pfs/me/run\n#DW persistentdw name=p\n",
}


@pytest.fixture
def slurm_dir(tmp_path):
    config = site.from_mapping({"inventory": str(tmp_path / "inventory.yml"), "pools": {"nvme": {}},
                                "mount_root": "/mnt/bb", "slurm_dir": str(tmp_path)}, tmp_path / "bbctl.yml")
    for source in slurm_install.LUA_FILES:
        shutil.copyfile(source, tmp_path / source.name)
    for source in slurm_install.LUA_COMPILED:
        slurm_install.compile_lua(tmp_path / source.name)
    (tmp_path / "bbctl-site.lua").write_text(slurm_install.render_site_lua(slurm_install.site_values(config, POOLS)))
    write_pools_json(tmp_path / "bbctl-pools.json", pools_document(POOLS.values(), {}))
    return tmp_path, config


def run(directory: Path, job_id: str, text: str) -> tuple[dict[str, tuple[str, str]], str]:
    (directory / "job.sh").write_text(text)
    paths = directory / "paths"
    paths.write_text("")
    done = subprocess.run([LUA, str(HARNESS), str(directory / "burst_buffer.lua"), job_id,
                           str(directory / "job.sh"), str(paths)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("\t", 1) for line in done.stdout.splitlines())
    return {k: tuple(v.split("\t", 1)) for k, v in lines.items()}, paths.read_text()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_paths_are_bbctl_sites_job_environment(slurm_dir, name):
    directory, config = slurm_dir
    results, written = run(directory, "4711", SCRIPTS[name])
    assert results["paths"][0] == "0"
    request = parse_job_script(SCRIPTS[name])
    max_file = None
    if request.jobdw is not None and "striped" in request.jobdw.access_modes:
        max_file = layouts.plan(request.jobdw.capacity, GiB, striped=True).file_limit(GiB)
    expected = site.job_environment(
        config, "4711", jobdw=request.jobdw is not None,
        private=request.jobdw is not None and "private" in request.jobdw.access_modes,
        persistent=request.persistent, max_file=max_file,
        cache=request.jobdw is not None and request.jobdw.type == "cache")
    lua_env = dict(line.split("=", 1) for line in written.splitlines())
    assert lua_env == expected
    assert (site.MAX_FILE_VARIABLE in lua_env) == (name == "several_sets")
    cache_variables = {site.CACHE_VARIABLE, "BB_JOB_STRIPED_CACHE", site.CACHE_DIR_VARIABLE}
    assert (cache_variables <= set(lua_env)) == (name == "cache")
    if name == "cache":
        assert {lua_env[v] for v in cache_variables} == {lua_env["DW_JOB_STRIPED"]} == {"/mnt/bb/bbjob-4711"}


def test_pools_and_job_process_answer_without_forking(slurm_dir):
    directory, _config = slurm_dir
    results, _written = run(directory, "1", SCRIPTS["jobdw"])
    pools = (directory / "bbctl-pools.json").read_text()
    assert results["pools"] == ("0", pools.replace("\n", "\\n")) and '"quantity": 20' in pools
    assert results["job_process"] == ("0", "")


def test_job_process_refuses_a_buffer_its_pool_can_never_hold_without_forking(slurm_dir):
    directory, _config = slurm_dir
    results, _written = run(directory, "1", "#!/bin/bash\n#BB_LUA jobdw capacity=20GiB pool=nvme\n")
    assert results["job_process"] == ("-1", "capacity=20GiB needs 2 x disperse 10+1, 22 bricks; pool 'nvme' has 20 "
                                            "of 1GiB: ask for at most 18GiB")


def test_paths_refuses_a_script_whose_directives_are_wrong(slurm_dir):
    directory, _config = slurm_dir
    results, written = run(directory, "1", "#!/bin/bash\n#DW jobdw capacity=lots\n")
    assert results["paths"][0] == "-1"
    assert "capacity=lots" in results["paths"][1]
    assert written == ""


def test_paths_without_the_site_file_says_how_to_make_it(slurm_dir):
    directory, _config = slurm_dir
    (directory / "bbctl-site.lua").unlink()
    results, _written = run(directory, "1", SCRIPTS["jobdw"])
    assert results["paths"][0] == "-1"
    assert "run bbctl slurm-install" in results["paths"][1]


# Slurm 24.05+ refuses to start unless burst_buffer.lua defines every one of these
# (req_fxns in src/plugins/burst_buffer/lua/burst_buffer_lua.c); 22.05 calls all but the two test_ ones.
SLURM_REQUIRED_FUNCTIONS = (
    "slurm_bb_job_process", "slurm_bb_pools", "slurm_bb_job_teardown", "slurm_bb_setup", "slurm_bb_data_in",
    "slurm_bb_test_data_in", "slurm_bb_real_size", "slurm_bb_paths", "slurm_bb_pre_run", "slurm_bb_post_run",
    "slurm_bb_data_out", "slurm_bb_test_data_out", "slurm_bb_get_status",
)


def test_the_script_loads_without_slurm_conf_and_defines_every_function_slurm_requires(tmp_path):
    """Loaded the way slurmctld loads it: a fresh state, no SLURM_CONF in the environment."""
    probe = tmp_path / "probe.lua"
    probe.write_text("dofile(arg[1]); dofile(arg[2]); local missing = {}\n"
                     "for name in arg[3]:gmatch('%S+') do\n"
                     "    if type(_G[name]) ~= 'function' then missing[#missing + 1] = name end\n"
                     "end\nprint(table.concat(missing, ' '))\n")
    env = {key: value for key, value in os.environ.items() if key != "SLURM_CONF"}
    done = subprocess.run([LUA, str(probe), str(REPO / "tests" / "lua" / "slurm_stub.lua"),
                           str(slurm_install.LUA_SCRIPT), " ".join(SLURM_REQUIRED_FUNCTIONS)],
                          capture_output=True, text=True, check=False, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"missing: {done.stdout.strip()}"
    assert len(SLURM_REQUIRED_FUNCTIONS) == 13


def test_without_the_pools_file_slurm_and_sbatch_are_told_the_command_that_writes_it(slurm_dir):
    directory, _config = slurm_dir
    (directory / "bbctl-pools.json").unlink()
    results, _written = run(directory, "1", SCRIPTS["jobdw"])
    for hook in ("pools", "job_process"):
        rc, message = results[hook]
        assert rc == "-1" and message.endswith("bbctl-pools.json is missing: run bbctl pools (it writes the file)")


def test_paths_of_a_striped_buffer_without_the_layouts_file_says_how_to_install_it(slurm_dir):
    directory, _config = slurm_dir
    for source in slurm_install.LUA_COMPILED:
        if source.name == "bbctl-layouts.lua":
            (directory / source.name).unlink()
            slurm_install.bytecode_path(directory / source.name).unlink(missing_ok=True)
    results, written = run(directory, "1", SCRIPTS["several_sets"])
    assert results["paths"][0] == "-1" and "bbctl-layouts.lua cannot be loaded" in results["paths"][1]
    assert written == ""
