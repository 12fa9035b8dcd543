"""What DataWarp users and Slurm's own burst buffer tests write, through real Slurm and both plugins (issue 9).

Each job is submitted by the unprivileged user; the shapes are those of Slurm's
testsuite/expect/test35.* (read, never copied: our own files and wording) and of
published DataWarp scripts: a repeated key, `$DW_JOB_STRIPED//abs/path`, dotted
persistent names, `access_mode=` on create_persistent, `sbatch --bb` requests,
staging for a job whose only buffer is persistent, list files that name the
buffer by its variable, and the refusals that must come at sbatch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.integration.bbctl.slurmjobs import (
    as_user,
    bbctl,
    leftovers,
    sbatch_error,
    submit,
    use_plugin,
    wait_for,
    wait_torn_down,
    write_job,
)

pytestmark = pytest.mark.testbed


@pytest.fixture
def datawarp(testbed):
    use_plugin("datawarp")
    yield testbed
    use_plugin("lua")


@pytest.fixture
def lua(testbed):
    use_plugin("lua")
    return testbed


def user_file(path: Path, data: bytes) -> Path:
    """A file (and its parent directory) owned by the job's user, as on the parallel filesystem."""
    owner = path.parent.parent.stat() if not path.parent.exists() else path.parent.stat()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    for made in (path, path.parent):
        os.chown(made, owner.st_uid, owner.st_gid)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output(directory: Path, job: int) -> str:
    return (directory / f"slurm-{job}.out").read_text()


# ---------------------------------------------------------------- burst_buffer/datawarp

def test_slurm_test35_2_shape_repeated_type_and_double_slash(datawarp, user_dir):
    """#DW jobdw ... type=scratch twice; stage paths $DW_JOB_STRIPED/<absolute path>, as test35.2 writes them."""
    source = user_file(user_dir / "data.in", b"DATA_IN_0123456789\n")
    inside = f"{user_dir}/tmp_file"  # absolute: the directive reads $DW_JOB_STRIPED//tmp/bb-user-.../tmp_file
    script = write_job(user_dir, "use.sh", f"""
#DW jobdw type=scratch capacity=1GiB access_mode=striped,private type=scratch
#DW stage_in type=file source={source} destination=$DW_JOB_STRIPED/{inside}
#DW stage_out type=file destination={user_dir}/data.out source=$DW_JOB_STRIPED/{inside}
cat $DW_JOB_STRIPED/{inside}
echo DATA_OUT_9876543210 > $DW_JOB_STRIPED/{inside}
""")
    job = submit(script, "-N1", "-t1")
    wait_torn_down(job, timeout=180)
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    assert "DATA_IN_0123456789" in output(user_dir, job)
    assert (user_dir / "data.out").read_text() == "DATA_OUT_9876543210\n"
    assert (user_dir / "data.out").stat().st_uid == user_dir.stat().st_uid
    assert leftovers(f"bbjob-{job}") == []


def test_dotted_persistent_buffer_created_staged_through_and_destroyed(datawarp, user_dir):
    """test35.1's names and capacity=48; a job whose only buffer is persistent stages in and out (item 6)."""
    name = f"t35.{os.getpid()}"
    create = submit(write_job(user_dir, "mk.sh",
                              f"#BB create_persistent name={name} capacity=48 access=striped type=scratch\nhostname\n"),
                    "-N1", "-t1")
    wait_torn_down(create, timeout=180)
    shown = json.loads(bbctl("show", name, "--json").stdout)
    volume = shown["volume"]
    assert volume.startswith("bbp-t35_") and len(shown["bricks"]) == 1

    source = user_file(user_dir / "pfs" / "in.dat", os.urandom(300_000))
    use = submit(write_job(user_dir, "use.sh", f"""
#DW persistentdw name={name}
#DW stage_in type=file source={source} destination=$DW_PERSISTENT_STRIPED_{name}/in.dat
#DW stage_out type=file source=$DW_PERSISTENT_STRIPED_{name}/out.dat destination={user_dir}/pfs/out.dat
root=$(printenv 'DW_PERSISTENT_STRIPED_{name}')
echo "root=$root"
cp "$root/in.dat" "$root/out.dat"
"""), "-N1", "-t1")
    wait_torn_down(use, timeout=180)
    assert wait_for(use, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    assert f"root={datawarp}/mnt/{volume}" in output(user_dir, use)
    out = user_dir / "pfs" / "out.dat"
    assert digest(out) == digest(source) and out.stat().st_uid == user_dir.stat().st_uid

    destroy = submit(write_job(user_dir, "rm.sh", f"#BB destroy_persistent name={name}\nhostname\n"), "-N1", "-t1")
    wait_torn_down(destroy, timeout=180)
    assert wait_for(destroy, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    assert bbctl("show", name).returncode == 3 and leftovers(volume) == []


def test_destroying_a_dotted_name_that_does_not_exist_lets_the_job_run(datawarp, user_dir):
    """test35.4's destroy_persistent: once stuck pending forever; "token not found" is done."""
    job = submit(write_job(user_dir, "rm.sh", f"#BB destroy_persistent name=t35.gone{os.getpid()}\nhostname\n"),
                 "-N1", "-t1")
    assert wait_for(job, {"COMPLETED"}, timeout=120)["ExitCode"] == "0:0"


def test_nersc_access_mode_on_create_persistent(datawarp, user_dir):
    name = f"results{os.getpid()}"
    create = submit(write_job(user_dir, "mk.sh",
                              f"#BB create_persistent name={name} capacity=2GB type=scratch access_mode=striped\n"
                              "hostname\n"), "-N1", "-t1")
    wait_torn_down(create, timeout=180)
    assert wait_for(create, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    assert bbctl("destroy-persistent", "--name", name).returncode == 0
    assert leftovers(f"bbp-{name}") == []


def test_sbatch_bb_option_through_datawarp(datawarp, user_dir):
    """Slurm turns --bb="capacity=4GB swap=2 pool=nvme" into '#DW swap 2GiB pool=nvme' + '#DW jobdw ...'."""
    script = write_job(user_dir, "job.sh", 'test -d "$DW_JOB_STRIPED" && echo "have $DW_JOB_STRIPED"\n')
    job = submit(script, "-N1", "-t1", "--bb=capacity=4GB swap=2 pool=nvme")
    wait_torn_down(job, timeout=180)
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    assert f"have {datawarp}/mnt/bbjob-{job}" in output(user_dir, job)


@pytest.mark.parametrize("lines, message", [
    ("#DW jobdw capacity=7.5GiB\n", "write a whole number, e.g. 7680MiB"),
    ("#DW jobdw capacity=1GiB access_mode=striped,private\n"
     "#DW stage_in type=file source=/etc/hostname destination=$DW_JOB_PRIVATE/in.dat\n",
     "$DW_JOB_PRIVATE is a different directory on every compute node and cannot be staged"),
    ("#DW jobdw capacity=1GiB\nhostname\n#DW stage_out type=file source=$DW_JOB_STRIPED/a destination=/tmp/a\n",
     "comes after the script's first command"),
])
def test_refused_at_sbatch_through_datawarp(datawarp, user_dir, lines, message):
    error = sbatch_error(write_job(user_dir, "bad.sh", lines))
    assert message in error, error


# ---------------------------------------------------------------- burst_buffer/lua

def test_sbatch_bb_option_and_slurms_bare_lua_form(lua, user_dir):
    """With lua, --bb holds directive lines; '#BB_LUA pool=nvme capacity=1K' is Slurm's own example."""
    script = write_job(user_dir, "job.sh", 'echo "have $DW_JOB_STRIPED"\n')
    job = submit(script, "-N1", "-t1", "--bb=#BB_LUA pool=nvme capacity=1K")
    wait_torn_down(job, timeout=180)
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    assert f"have {lua}/mnt/bbjob-{job}" in output(user_dir, job)


def test_persistent_only_job_stages_through_lua_and_a_list_names_the_buffer(lua, user_dir):
    """Staging for every buffer a job names; list lines use $DW_PERSISTENT_STRIPED_<name> or paths under
    destination=."""
    name = f"lst.{os.getpid()}"
    made = bbctl("create-persistent", "--name", name, "--capacity", "4GiB", "--uid", str(user_dir.stat().st_uid),
                 "--gid", str(user_dir.stat().st_gid))
    assert made.returncode == 0, made.stderr
    a = user_file(user_dir / "pfs" / "a.dat", os.urandom(70_000))
    b = user_file(user_dir / "pfs" / "b.dat", b"bee\n")
    listing = user_file(user_dir / "pfs" / "files.list",
                        f"{a} $DW_PERSISTENT_STRIPED_{name}/listed/a.dat\n{b} rel/b.dat\n".encode())
    job = submit(write_job(user_dir, "use.sh", f"""
#BB_LUA persistentdw name={name}
#BB_LUA stage_in type=list source={listing} destination=$DW_PERSISTENT_STRIPED_{name}/base
#BB_LUA stage_out type=directory source=$DW_PERSISTENT_STRIPED_{name} destination={user_dir}/back
ls -R "$(printenv 'BB_PERSISTENT_STRIPED_{name}')"
"""), "-N1", "-t1")
    wait_torn_down(job, timeout=180)
    assert wait_for(job, {"COMPLETED"}, timeout=5)["ExitCode"] == "0:0"
    back = user_dir / "back"
    assert digest(back / "listed" / "a.dat") == digest(a)
    assert (back / "base" / "rel" / "b.dat").read_bytes() == b"bee\n"
    assert (back / "listed" / "a.dat").stat().st_uid == user_dir.stat().st_uid
    volume = json.loads(bbctl("show", name, "--json").stdout)["volume"]
    assert bbctl("destroy-persistent", "--name", name).returncode == 0
    assert leftovers(volume) == []


def test_refused_at_sbatch_through_lua(lua, user_dir):
    error = sbatch_error(write_job(user_dir, "bad.sh", "#BB_LUA jobdw capacity=1.5TB pool=nvme\n"))
    assert "write a whole number, e.g. 1500GB" in error, error
    done = as_user("sbatch", "--parsable", "--bb=#BB_LUA jobdw capacity=4GiB pool=nvme access=striped "
                   "access_mode=private", str(write_job(user_dir, "ok.sh", "hostname\n")), cwd=user_dir)
    assert done.returncode != 0 and "given twice with different values" in done.stderr, done.stderr
