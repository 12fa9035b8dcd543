"""burst_buffer.lua applies the site's policy as bbctl.policy does: the same verdicts, the same words.

The site (pools, a policy with every kind of setting) is installed for real by
slurm_install.install, its users and groups resolved through a directory of this test's
own (the Python side asks the same directory, at "setup" time). lua5.1 runs
slurm_bb_job_process and slurm_bb_paths on thousands of generated scripts, with and
without the uid and gid Slurm 23.02+ passes (tests/lua/run_job_hooks.lua, one process for
all); the reference is what dw_wlm_cli job_process and setup do (Lifecycle.admit, then
Lifecycle.check_fits) and Lifecycle.paths.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from bbctl import lifecycle as lc
from bbctl import policy, site, slurm_install
from bbctl.directives import parse_job_script
from bbctl.errors import BBError
from tests.unit.bbctl.test_lua_layouts import write_config as write_site

REPO = Path(__file__).resolve().parents[3]
HARNESS = REPO / "tests" / "lua" / "run_job_hooks.lua"
LUA = shutil.which("lua5.1")
pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.1 is not installed (scripts/setup.sh installs it)")

GiB, TiB = 1024**3, 1024**4
JOB_ID = "4711"
CASES = 2500
# name -> (granularity, bricks, striped_layout); the first is the default pool.
POOLS = {"nvme": (4 * GiB, 60, "disperse"), "ssd": (TiB, 8, "distribute"), "tiny": (1, 37, "disperse")}
# user -> (uid, primary gid); group -> (gid, listed members).
USERS = {"alice": (1001, 1001), "bob": (1002, 2001), "carol": (1003, 1003), "dave": (1004, 1004),
         "erin": (1005, 1005)}
GROUPS = {"bigdata": (2001, {"carol"}), "hpcadmin": (2002, {"dave"}), "staff": (2003, {"carol", "erin"})}
POLICY = {
    "max_capacity": "100GiB",
    "user_max_capacity": {"alice": "400GiB", "bob": "10GiB", "ghost": "1TiB"},  # ghost: no such user
    "group_max_capacity": {"bigdata": "200GiB", "staff": "150GiB", "nosuchgroup": "1TiB"},
    "pool_max_capacity": {"ssd": "3TiB", "tiny": "20"},
    "persistent_creators": {"users": ["alice", "ghost"], "groups": ["hpcadmin"]},
    "presets": {
        "fast": {"pool": "nvme", "access_mode": "striped"},
        "priv": {"access_mode": "private", "pool": "ssd"},
        "both": {"access_mode": "striped,private", "fs": "gluster"},
        "lus": {"fs": "lustre", "type": "scratch"},
        "big": {"pool": "ssd"},
    },
}


class Directory:
    """USERS and GROUPS as a policy.Directory: what NSS would answer on a host that has them."""

    def uid(self, user: str) -> int | None:
        return USERS[user][0] if user in USERS else None

    def group(self, group: str) -> tuple[int, frozenset[int]] | None:
        if group not in GROUPS:
            return None
        gid, listed = GROUPS[group]
        members = {USERS[name][0] for name in listed} | {uid for uid, primary in USERS.values() if primary == gid}
        return gid, frozenset(members)

    def identity(self, uid: int, gid: int) -> policy.Identity:
        name = next((user for user, (number, _gid) in USERS.items() if number == uid), None)
        groups = {group for group in GROUPS if self.group(group)[0] == gid or uid in self.group(group)[1]}
        return policy.Identity(uid, name, frozenset(groups))


def write_config(directory: Path, site_policy: dict) -> site.Site:
    return write_site(directory, POOLS, policy=site_policy)


def install(directory: Path, site_policy: dict) -> tuple[Path, lc.Lifecycle, dict]:
    config = write_config(directory, site_policy)
    report = slurm_install.install(config, users=Directory())
    life = lc.Lifecycle(config, store=object(), directory=Directory())  # type: ignore[arg-type]
    return config.slurm_dir, life, report


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, lc.Lifecycle]:
    slurm_dir, life, report = install(tmp_path_factory.mktemp("site"), POLICY)
    assert report["unknown"] == ["group nosuchgroup", "user ghost"]
    return slurm_dir, life


Who = tuple[int, int] | None
Answer = tuple[tuple[int, str], tuple[int, str], dict[str, str]]


def run_hooks(slurm_dir: Path, cases: list[tuple[str, Who]], directory: Path) -> list[Answer]:
    """(job_process verdict, paths verdict, paths written) of each (script, uid and gid) from one lua5.1."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, (script, who) in enumerate(cases, start=1):
        (directory / str(number)).write_text(script)
        (directory / f"{number}.who").unlink(missing_ok=True)  # an earlier call's
        if who is not None:
            (directory / f"{number}.who").write_text(f"{who[0]} {who[1]}")
    done = subprocess.run([LUA, str(HARNESS), str(slurm_dir / "burst_buffer.lua"), str(directory), JOB_ID],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    answers = []
    for number, line in enumerate(done.stdout.splitlines(), start=1):
        fields = line.split("\t")
        assert fields[0] == str(number), line
        written = (directory / f"{number}.paths").read_text()
        env = dict(row.split("=", 1) for row in written.splitlines())
        answers.append(((int(fields[1]), fields[2]), (int(fields[3]), fields[4]), env))
    assert len(answers) == len(cases)
    return answers


def python_answer(life: lc.Lifecycle, script: str, who: Who, path: Path) -> Answer:
    """What dw_wlm_cli job_process (no uid) or setup (the uid known) decides, and what paths writes."""
    path.write_text(script)
    uid, gid = who if who is not None else (None, None)
    try:
        life.check_fits(life.admit(parse_job_script(script), uid=uid, gid=gid))
        verdict = (0, "")
    except BBError as exc:
        verdict = (-1, str(exc))
    try:
        return verdict, (0, ""), life.paths(JOB_ID, path)
    except BBError as exc:
        return verdict, (-1, str(exc)), {}


# ------------------------------------------------------------------ generated cases

SIZES = ["1", "20", "21", "4GiB", "10GiB", "10241MiB", "100GiB", "102401MiB", "150GiB", "150GB", "200GiB",
         "204801MiB", "400GiB", "401GiB", "1TiB", "3TiB", "3073GiB", "4TiB"]
PRESETS = [*POLICY["presets"], "nosuch", "Fast"]


def buffer_words(rng: random.Random, directive: str) -> list[str]:
    words = [f"capacity={rng.choice(SIZES)}"]
    if rng.random() < 0.6:
        words.append(f"preset={rng.choice(PRESETS)}")
    if rng.random() < 0.4:
        words.append(f"pool={rng.choice(list(POOLS))}")
    if directive == "jobdw":
        if rng.random() < 0.3:
            words.append(f"access_mode={rng.choice(['striped', 'private', 'striped,private'])}")
        if rng.random() < 0.2:
            words.append(f"fs={rng.choice(['gluster', 'lustre'])}")
    elif rng.random() < 0.3:
        words.append(f"{rng.choice(['access', 'access_mode'])}={rng.choice(['striped', 'private'])}")
    rng.shuffle(words)
    return words


def generated_case(rng: random.Random) -> tuple[str, Who]:
    lines = [f"#BB create_persistent name=p{n} " + " ".join(buffer_words(rng, "create_persistent"))
             for n in range(rng.choice([0, 0, 0, 1, 2]))]
    if not lines or rng.random() < 0.85:
        lines.insert(rng.randint(0, len(lines)), f"#{rng.choice(['DW', 'BB'])} jobdw "
                     + " ".join(buffer_words(rng, "jobdw")))
        if rng.random() < 0.4:
            lines.append("#DW stage_in type=directory source=/pfs/in destination=$DW_JOB_STRIPED/in")
        if rng.random() < 0.2:
            lines.append("#DW stage_out type=file source=$DW_JOB_STRIPED//out/./x destination=/pfs/x")
    script = "#!/bin/bash\n" + "\n".join(lines) + "\nsrun a.out\n"
    known = [(uid, gid) for uid, gid in USERS.values()]
    who = rng.choice([None, None, *known, *known, (1002, 2002), (1005, 2001), (4242, 4242), (4242, 2002)])
    return script, who


def test_lua_applies_the_policy_exactly_as_the_reference_does(installed, tmp_path):
    slurm_dir, life = installed
    rng = random.Random(14)
    cases = [generated_case(rng) for _ in range(CASES)]
    lua = run_hooks(slurm_dir, cases, tmp_path / "lua")
    python = [python_answer(life, script, who, tmp_path / "job.sh") for script, who in cases]
    differ = [(case, mine, theirs) for case, mine, theirs in zip(cases, python, lua, strict=True) if mine != theirs]
    assert not differ, f"{len(differ)} of {len(cases)} differ; the first: {differ[0]}"
    # The cases reach every refusal, and plenty pass.
    reasons = {name: sum(name_of(verdict[1]) == name for verdict, _paths, _env in python)
               for name in ("unknown_preset", "preset_not_for", "pool_max", "user_max", "not_creator",
                            "needs_access", "too_big", "")}
    assert all(count > 10 for count in reasons.values()), reasons


def name_of(message: str) -> str:
    """Which refusal a message is, by its words (empty: accepted)."""
    words = {"no preset": "unknown_preset", "cannot take": "preset_not_for", "allows in one buffer": "pool_max",
             "may have in one buffer": "user_max", "may not create": "not_creator", "but jobdw": "needs_access",
             "ask for at most": "too_big"}
    return next((name for text, name in words.items() if text in message), message)


# ------------------------------------------------------------------ the cases people read

def answer(installed, tmp_path: Path, *lines: str, who: Who = None) -> Answer:
    slurm_dir, life = installed
    script = "#!/bin/bash\n" + "".join(line + "\n" for line in lines) + "srun a.out\n"
    [lua] = run_hooks(slurm_dir, [(script, who)], tmp_path / "one")
    assert lua == python_answer(life, script, who, tmp_path / "job.sh")
    return lua


BOB, CAROL, DAVE, ALICE, ERIN = (1002, 2001), (1003, 1003), (1004, 1004), (1001, 1001), (1005, 1005)


def test_a_pool_limit_refuses_anyone_naming_the_token_the_limit_and_the_setting(installed, tmp_path):
    verdict, _paths, _env = answer(installed, tmp_path, "#DW jobdw capacity=3073GiB pool=ssd")
    assert verdict == (-1, "line 2: jobdw: 'capacity=3073GiB' is more than pool ssd allows in one buffer: at most "
                           "3TiB (policy.pool_max_capacity.ssd)")
    assert answer(installed, tmp_path, "#DW jobdw capacity=3TiB pool=ssd")[0] == (0, "")


def test_the_user_limit_is_the_most_specific_entry(installed, tmp_path):
    line = "#DW jobdw capacity=150GiB pool=ssd"
    assert answer(installed, tmp_path, line)[0] == (0, "")  # no uid (Slurm 22.05, datawarp): left to setup
    verdict = answer(installed, tmp_path, line, who=BOB)[0]  # bob's own 10GiB wins over his group's 200GiB
    assert verdict == (-1, "line 2: jobdw: 'capacity=150GiB' is more than uid 1002 may have in one buffer: at "
                           "most 10GiB (policy.user_max_capacity.bob)")
    assert answer(installed, tmp_path, line, who=CAROL)[0] == (0, "")  # bigdata 200GiB beats staff 150GiB
    verdict = answer(installed, tmp_path, "#DW jobdw capacity=101GiB pool=ssd", who=DAVE)[0]  # no entry: default
    assert verdict == (-1, "line 2: jobdw: 'capacity=101GiB' is more than uid 1004 may have in one buffer: at "
                           "most 100GiB (policy.max_capacity)")
    assert answer(installed, tmp_path, "#DW jobdw capacity=400GiB pool=ssd", who=ALICE)[0] == (0, "")  # above it


def test_a_supplementary_group_counts_and_the_primary_group_is_the_one_slurm_gives(installed, tmp_path):
    line = "#DW jobdw capacity=150GiB pool=ssd"
    assert answer(installed, tmp_path, line, who=ERIN)[0] == (0, "")  # staff lists erin: 150GiB
    assert answer(installed, tmp_path, line, who=(4242, 2001))[0] == (0, "")  # no passwd entry; gid bigdata


def test_persistent_buffers_are_created_only_by_listed_users_and_groups(installed, tmp_path):
    line = "#BB create_persistent name=keep capacity=1GiB"
    assert answer(installed, tmp_path, line, who=ALICE)[0] == (0, "")
    assert answer(installed, tmp_path, line, who=DAVE)[0] == (0, "")  # in hpcadmin
    verdict = answer(installed, tmp_path, line, who=CAROL)[0]
    assert verdict == (-1, "line 2: create_persistent: 'name=keep': uid 1003 may not create persistent buffers "
                           "(policy.persistent_creators): ask the site's administrators")
    assert answer(installed, tmp_path, line)[0] == (0, "")  # no uid: setup decides


def test_a_preset_fills_what_the_line_leaves_out_and_the_line_wins(installed, tmp_path):
    verdict, paths, env = answer(installed, tmp_path, "#DW jobdw capacity=8GiB preset=priv")
    assert (verdict, paths) == ((0, ""), (0, ""))
    assert env["DW_JOB_PRIVATE"] == "/mnt/bb/bbjob-4711-private"  # access_mode=private came from the preset
    _verdict, _paths, env = answer(installed, tmp_path, "#DW jobdw capacity=8GiB preset=priv access_mode=striped")
    assert "DW_JOB_PRIVATE" not in env
    # The preset's pool (ssd, distribute) decides the largest file; the line's pool wins over it.
    _verdict, _paths, env = answer(installed, tmp_path, "#DW jobdw capacity=68GiB preset=fast")
    assert env["BB_JOB_STRIPED_MAX_FILE"] == str(36 * GiB)
    verdict = answer(installed, tmp_path, "#DW jobdw capacity=4TiB preset=big")[0]
    assert verdict == (-1, "line 2: jobdw: 'capacity=4TiB' is more than pool ssd allows in one buffer: at most "
                           "3TiB (policy.pool_max_capacity.ssd)")


def test_an_unknown_preset_is_refused_by_name_listing_the_sites(installed, tmp_path):
    verdict, paths, _env = answer(installed, tmp_path, "#DW jobdw capacity=1GiB preset=nosuch")
    expected = "line 2: jobdw: 'preset=nosuch': no preset nosuch; the site's presets: fast, priv, both, lus, big"
    assert verdict == paths == (-1, expected)


def test_a_preset_create_persistent_cannot_take_is_refused(installed, tmp_path):
    verdict = answer(installed, tmp_path, "#BB create_persistent name=k capacity=1GiB preset=both")[0]
    assert verdict == (-1, "line 2: create_persistent: 'preset=both': preset both sets "
                           "access_mode=striped,private, which create_persistent cannot take: use another preset")
    verdict = answer(installed, tmp_path, "#BB create_persistent name=k capacity=1GiB preset=lus")[0]
    assert verdict[1].endswith("preset lus sets fs=lustre, which create_persistent cannot take: use another preset")
    assert answer(installed, tmp_path, "#BB create_persistent name=k capacity=1GiB preset=fast")[0] == (0, "")


def test_staging_into_the_striped_part_of_a_buffer_a_preset_made_private_is_refused(installed, tmp_path):
    verdict = answer(installed, tmp_path, "#DW jobdw capacity=8GiB preset=priv",
                     "#DW stage_in type=directory source=/pfs/in destination=$DW_JOB_STRIPED/in")[0]
    assert verdict == (-1, "line 3: stage_in: 'destination=$DW_JOB_STRIPED/in' uses $DW_JOB_STRIPED, but jobdw "
                           "(line 2) has access_mode=private: use access_mode=striped,private")


def test_a_site_without_a_policy_loads_no_policy_file(tmp_path):
    slurm_dir, life, report = install(tmp_path, {})
    assert "defined = false," in (slurm_dir / "bbctl-site.lua").read_text() and "unknown" not in report
    for name in ("bbctl-policy.lua", "bbctl-policy.luac"):
        (slurm_dir / name).unlink(missing_ok=True)
    assert answer((slurm_dir, life), tmp_path, "#DW jobdw capacity=1GiB")[0] == (0, "")
    shutil.copyfile(slurm_install.LUA_POLICY, slurm_dir / "bbctl-policy.lua")  # a preset= loads it to refuse
    verdict, paths, _env = answer((slurm_dir, life), tmp_path, "#DW jobdw capacity=1GiB preset=fast")
    assert verdict == paths == (-1, "line 2: jobdw: 'preset=fast': no preset fast; the site's presets: none")


def test_without_the_policy_file_sbatch_says_how_to_install_it(installed, tmp_path):
    slurm_dir = shutil.copytree(installed[0], tmp_path / "slurm")
    for name in ("bbctl-policy.lua", "bbctl-policy.luac"):
        (slurm_dir / name).unlink(missing_ok=True)
    [(verdict, _paths, _env)] = run_hooks(slurm_dir, [("#!/bin/bash\n#DW jobdw capacity=1GiB\n", None)],
                                          tmp_path / "x")
    assert verdict[0] == -1 and "bbctl-policy.lua cannot be loaded" in verdict[1]
    assert verdict[1].endswith("run bbctl slurm-install")
