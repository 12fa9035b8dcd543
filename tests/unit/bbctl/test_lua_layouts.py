"""burst_buffer.lua plans buffers as bbctl.layouts does: refusals at sbatch and BB_JOB_STRIPED_MAX_FILE.

The Lua side reads its pools from the bbctl-site.lua that ``bbctl slurm-install`` writes
(slurm_install.install, run here for real on a generated inventory). Its two in-slurmctld
hooks are run through lua5.1 (tests/lua/run_job_hooks.lua, one process for every case) and
compared with the reference: Lifecycle.check_fits (what dw_wlm_cli job_process and setup
refuse) and Lifecycle.paths (the job's environment through the datawarp plugin).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bbctl import layouts, site, slurm_install
from bbctl import lifecycle as lc
from bbctl.collection import sizes
from bbctl.directives import LIMITS, parse_job_script
from bbctl.directives.lua import lua_value
from bbctl.errors import BBError
from bbctl.pools import Brick, Pool, pools_document, write_pools_json

REPO = Path(__file__).resolve().parents[3]
HARNESS = REPO / "tests" / "lua" / "run_job_hooks.lua"
LUA = shutil.which("lua5.1")
pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.1 is not installed (scripts/setup.sh installs it)")

GiB, TiB, PiB = 1024**3, 1024**4, 1024**5
JOB_ID = "4711"
CASES = 3000
# name -> (granularity, bricks, striped_layout); the first is the default pool. Granularities
# odd, decimal, tiny and huge (8 granules of the largest reach the grammar's 2**53 bytes).
POOLS = {
    "nvme": (4 * GiB, 40, "disperse"),
    "tiny": (1, 37, "disperse"),
    "odd": (3_000_000_007, 17, "disperse"),
    "dec": (3_840_000_000_000, 35, "disperse"),
    "dist": (TiB, 5, "distribute"),
    "huge": (PiB, 5, "disperse"),
    "wide": (7 * GiB, 300, "disperse"),
    "empty": (GiB, 0, "disperse"),
}


def write_config(directory: Path, pools: dict[str, tuple[int, int, str]] | None = None,
                 **settings: object) -> site.Site:
    """A site whose inventory holds the bricks of pools ({name: (granularity, bricks, striped layout)},
    POOLS by default), spread over ten servers; settings are more of bbctl.yml's (e.g. policy)."""
    pools = POOLS if pools is None else pools
    hosts: dict[str, dict] = {f"s{n}": {"bb_bricks": []} for n in range(10)}
    number = 0
    for name, (_granularity, count, _layout) in pools.items():
        for _ in range(count):
            hosts[f"s{number % 10}"]["bb_bricks"].append(
                {"device": f"/dev/b{number}", "path": f"/bricks/b{number}", "pool": name})
            number += 1
    inventory = directory / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"bb_storage": {"hosts": hosts}}}}))
    configured = {name: {"granularity": granularity, "hosts": [], "striped_layout": layout}
                  for name, (granularity, _count, layout) in pools.items()}
    return site.from_mapping({"inventory": str(inventory), "pools": configured, "work_dir": str(directory / "work"),
                              "mount_root": "/mnt/bb", "slurm_dir": str(directory / "slurm"), **settings},
                             directory / "bbctl.yml")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, lc.Lifecycle]:
    """burst_buffer.lua installed by slurm_install.install, and the reference Lifecycle of the same site."""
    directory = tmp_path_factory.mktemp("site")
    config = write_config(directory)
    slurm_install.install(config)
    life = lc.Lifecycle(config, store=object())  # type: ignore[arg-type]  # check_fits and paths never use it
    assert {name: pool.quantity for name, pool in life.pools.items()} == {n: p[1] for n, p in POOLS.items()}
    return config.slurm_dir, life


def run_hooks(slurm_dir: Path, scripts: list[str], directory: Path) -> list[tuple[tuple[int, str], dict[str, str]]]:
    """((job_process rc, message), paths written) for each script, from one lua5.1 process."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, script in enumerate(scripts, start=1):
        (directory / str(number)).write_text(script)
    done = subprocess.run([LUA, str(HARNESS), str(slurm_dir / "burst_buffer.lua"), str(directory), JOB_ID],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    answers = []
    for number, line in enumerate(done.stdout.splitlines(), start=1):
        fields = line.split("\t")
        assert fields[0] == str(number) and fields[3] == "0", line  # paths never fails on valid directives
        written = (directory / f"{number}.paths").read_text()
        answers.append(((int(fields[1]), fields[2]), dict(row.split("=", 1) for row in written.splitlines())))
    assert len(answers) == len(scripts)
    return answers


def python_answer(life: lc.Lifecycle, script: str, path: Path) -> tuple[tuple[int, str], dict[str, str]]:
    path.write_text(script)
    try:
        life.check_fits(parse_job_script(script))
        verdict = (0, "")
    except BBError as exc:
        verdict = (-1, str(exc))
    return verdict, life.paths(JOB_ID, path)


# ------------------------------------------------------------------ generated cases

def capacity(rng: random.Random, granularity: int, quantity: int) -> int:
    """Around a whole number of granules: the boundaries (16/17 granules, the pool's size) weighted up."""
    granules = rng.choice([
        rng.randint(1, 3), rng.randint(14, 19), rng.randint(30, 35), rng.randint(1, max(quantity * 2, 2)),
        quantity, quantity + 1, rng.randint(1, 400)])
    nbytes = max(1, granules * granularity - rng.choice([0, 0, 1, granularity // 2, granularity - 1]))
    return min(nbytes, LIMITS["size_bytes"])


def size_text(rng: random.Random, nbytes: int) -> str:
    return sizes.format_size(nbytes) if rng.random() < 0.5 else str(nbytes)


def buffer_line(rng: random.Random, directive: str) -> str:
    pool = rng.choice([*POOLS, None])
    granularity, quantity, _layout = POOLS[pool or next(iter(POOLS))]
    words = [directive]
    if directive == "create_persistent":
        words.append(f"name=p{rng.randint(0, 10**6)}")
    words.append("capacity=" + size_text(rng, capacity(rng, granularity, quantity)))
    if pool is not None:
        words.append(f"pool={pool}")
    if directive == "jobdw":
        words += rng.sample([f"access_mode={rng.choice(['striped', 'private', 'striped,private'])}",
                             f"fs={rng.choice(['gluster', 'gluster', 'lustre'])}"], rng.randint(0, 2))
    elif rng.random() < 0.5:
        words.append(f"access={rng.choice(['striped', 'private'])}")
    rng.shuffle(words[1:])
    return " ".join(words)


def generated_script(rng: random.Random) -> str:
    lines = [f"#BB create_persistent {buffer_line(rng, 'create_persistent')[len('create_persistent '):]}"
             for _ in range(rng.choice([0, 0, 0, 1, 2]))]
    if not lines or rng.random() < 0.9:
        prefix = rng.choice(["#DW", "#BB", "#BB_LUA"])
        lines.insert(rng.randint(0, len(lines)), f"{prefix} {buffer_line(rng, 'jobdw')}")
    return "#!/bin/bash\n" + "\n".join(lines) + "\nsrun a.out\n"


def test_lua_refuses_and_tells_exactly_what_the_reference_does(installed, tmp_path):
    slurm_dir, life = installed
    rng = random.Random(10)
    scripts = [generated_script(rng) for _ in range(CASES)]
    lua = run_hooks(slurm_dir, scripts, tmp_path / "lua")
    python = [python_answer(life, script, tmp_path / "job.sh") for script in scripts]
    differ = [(script, mine, theirs) for script, mine, theirs in zip(scripts, python, lua, strict=True)
              if mine != theirs]
    assert not differ, f"{len(differ)} of {len(scripts)} differ; the first: {differ[0]}"
    # The cases reach what they are for: refusals, limits set, limits absent.
    refused = sum(verdict[0] != 0 for verdict, _env in python)
    limited = sum(site.MAX_FILE_VARIABLE in env for _verdict, env in python)
    assert CASES * 0.1 < refused < CASES * 0.8 and CASES * 0.05 < limited < CASES * 0.8, (refused, limited)


# ------------------------------------------------------------------ the cases people read

def answer(installed, tmp_path: Path, *lines: str) -> tuple[tuple[int, str], dict[str, str]]:
    slurm_dir, life = installed
    script = "#!/bin/bash\n" + "".join(line + "\n" for line in lines) + "srun a.out\n"
    [lua] = run_hooks(slurm_dir, [script], tmp_path / "one")
    assert lua == python_answer(life, script, tmp_path / "job.sh")
    return lua


@pytest.mark.parametrize(("capacity", "pool", "expected"), [
    ("64GiB", "nvme", None),                                      # 16 granules: one set 16+1, a file fills it
    ("68GiB", "nvme", 9 * 4 * GiB),                               # 17: two sets of 9+1, a file fits one set
    ("132GiB", "nvme", 11 * 4 * GiB),                             # 33: three sets of 11+1
    ("1TiB", "dist", None),                                       # one brick of a distribute pool: all of it
    ("1537GiB", "dist", TiB),                                     # two bricks: a file fits one
])
def test_the_job_is_told_the_largest_file_only_when_it_is_less_than_the_buffer(installed, tmp_path, capacity,
                                                                                pool, expected):
    verdict, env = answer(installed, tmp_path, f"#BB_LUA jobdw capacity={capacity} pool={pool}")
    assert verdict == (0, "")
    assert env.get("BB_JOB_STRIPED_MAX_FILE") == (None if expected is None else str(expected))
    assert "DW_JOB_STRIPED_MAX_FILE" not in env  # DataWarp has no such variable


def test_private_and_lustre_buffers_get_no_striped_limit(installed, tmp_path):
    for line in ("#DW jobdw capacity=68GiB access_mode=private", "#DW jobdw capacity=68GiB fs=lustre"):
        verdict, env = answer(installed, tmp_path, line)
        assert verdict == (0, "") and "BB_JOB_STRIPED_MAX_FILE" not in env
    _verdict, env = answer(installed, tmp_path, "#DW jobdw capacity=68GiB access_mode=striped,private")
    assert env["BB_JOB_STRIPED_MAX_FILE"] == str(36 * GiB)


def test_sbatch_refuses_a_buffer_its_pool_can_never_hold_with_check_fits_words(installed, tmp_path):
    # nvme: 40 bricks of 4 GiB. 160 GiB = 40 granules, three sets of 14+1 after rounding: 45 bricks.
    verdict, _env = answer(installed, tmp_path, "#BB_LUA jobdw capacity=160GiB pool=nvme")
    assert verdict == (-1, "capacity=160GiB needs 3 x disperse 14+1, 45 bricks; pool 'nvme' has 40 of 4GiB: "
                           "ask for at most 144GiB")
    verdict, _env = answer(installed, tmp_path, "#DW jobdw capacity=6TiB pool=dist")
    assert verdict == (-1, "capacity=6TiB needs 6 bricks; pool 'dist' has 5 of 1TiB: ask for at most 5TiB")
    verdict, _env = answer(installed, tmp_path, "#BB create_persistent name=big capacity=1 pool=empty",
                           "#DW jobdw capacity=1GiB")
    assert verdict == (-1, "capacity=1 needs 1 bricks; pool 'empty' has 0 of 1GiB: ask for at most 0")


def test_the_message_is_layouts_own(installed):
    """One source: the template in bbctl.layouts reaches the Lua through bbctl-site.lua."""
    slurm_dir, _life = installed
    assert lua_value(layouts.TOO_BIG) in (slurm_dir / "bbctl-site.lua").read_text()


def _site_and_pools(installed):
    _slurm_dir, life = installed
    return life.site, life.pools


def test_the_site_file_lists_the_pools_in_configuration_order(installed):
    values = slurm_install.site_values(*_site_and_pools(installed))
    assert [(p["name"], p["granularity"], p["striped_layout"]) for p in values["pools"]] == \
        [(name, granularity, layout) for name, (granularity, _bricks, layout) in POOLS.items()]
    assert values["max_data_bricks"] == layouts.MAX_DATA_BRICKS


def test_a_pool_the_site_does_not_list_is_left_to_slurm_and_setup(installed, tmp_path):
    slurm_dir, _life = installed
    [(verdict, env)] = run_hooks(slurm_dir, ["#!/bin/bash\n#DW jobdw capacity=1PiB pool=nosuch\n"], tmp_path / "x")
    assert verdict == (0, "") and "BB_JOB_STRIPED_MAX_FILE" not in env


def copy_install(installed, directory: Path) -> Path:
    slurm_dir, _life = installed
    shutil.copytree(slurm_dir, directory)
    return directory


def job_process(directory: Path, line: str) -> tuple[str, str]:
    """slurm_bb_job_process of the burst_buffer.lua installed in directory, on a script of one directive line."""
    job = directory / "job.sh"
    job.write_text(f"#!/bin/bash\n{line}\nsrun a.out\n")
    done = subprocess.run([LUA, str(REPO / "tests" / "lua" / "run_job_process.lua"),
                           str(directory / "burst_buffer.lua"), str(job)], capture_output=True, text=True, check=True)
    rc, message = done.stdout.rstrip("\n").split("\t", 1)
    return rc, message


def test_without_the_site_file_sbatch_says_how_to_make_it(installed, tmp_path):
    directory = copy_install(installed, tmp_path / "slurm")
    (directory / "bbctl-site.lua").unlink()
    rc, message = job_process(directory, "#DW jobdw capacity=1GiB")
    assert rc == "-1" and "bbctl-site.lua is missing: run bbctl slurm-install" in message
    assert job_process(directory, "#DW persistentdw name=x") == ("0", "")  # no capacity asked for: nothing to plan


def test_a_site_file_from_an_older_bbctl_is_named(installed, tmp_path):
    directory = copy_install(installed, tmp_path / "slurm")
    text = (directory / "bbctl-site.lua").read_text()
    (directory / "bbctl-site.lua").write_text(text[:text.index("    pools = {")] + "}\n")
    rc, message = job_process(directory, "#DW jobdw capacity=1GiB")
    assert rc == "-1" and "is older than burst_buffer.lua: run bbctl slurm-install" in message


def test_the_pools_bricks_are_read_from_the_pools_file_bbctl_keeps_current(installed, tmp_path):
    """Bricks added to the inventory count as soon as bbctl rewrites bbctl-pools.json: no reinstall."""
    directory = copy_install(installed, tmp_path / "slurm")
    line = "#DW jobdw capacity=6TiB pool=dist"  # six bricks; the pool has five
    assert job_process(directory, line) == ("-1", "capacity=6TiB needs 6 bricks; pool 'dist' has 5 of 1TiB: "
                                                  "ask for at most 5TiB")
    _slurm_dir, life = installed
    grown = {**life.pools, "dist": Pool("dist", TiB, tuple(Brick("dist", "s", "s", f"/b{n}", f"/d{n}")
                                                          for n in range(6)), "distribute")}
    write_pools_json(directory / "bbctl-pools.json", pools_document(grown.values(), {}))
    assert job_process(directory, line) == ("0", "")
    (directory / "bbctl-pools.json").unlink()
    rc, message = job_process(directory, line)
    assert rc == "-1" and "bbctl-pools.json is missing: run bbctl pools (it writes the file)" in message


def test_without_the_layouts_file_sbatch_and_paths_say_how_to_install_it(installed, tmp_path):
    directory = copy_install(installed, tmp_path / "slurm")
    for name in ("bbctl-layouts.lua", "bbctl-layouts.luac"):
        (directory / name).unlink(missing_ok=True)
    rc, message = job_process(directory, "#DW jobdw capacity=1GiB")
    assert rc == "-1" and "bbctl-layouts.lua cannot be loaded" in message
    assert message.endswith("run bbctl slurm-install")
    [(_verdict, env)] = run_hooks(directory, ["#!/bin/bash\n#DW persistentdw name=x\n"], tmp_path / "no-buffer")
    assert env == {"DW_PERSISTENT_STRIPED_x": "/mnt/bb/bbp-x", "BB_PERSISTENT_STRIPED_x": "/mnt/bb/bbp-x"}
