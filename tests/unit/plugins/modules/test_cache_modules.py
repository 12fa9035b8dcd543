"""cache_overlay and cache_writeback: documented as their argument specs say, and run for real by Ansible.

The real run (root, bbuser and fuse-overlayfs needed) is the whole of a cache buffer's life on one
host, module by module as the buffer_client role and cache_writeback.yml run them: mount (changed,
then not), the job as the user, unmount (changed, then not), the write-back in check mode (nothing
moves), for real (DIR becomes what the same job run directly left), and again (nothing to do).
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from ansible_collections.hpc.burstbuffer.plugins.module_utils import cache_overlay as co
from ansible_collections.hpc.burstbuffer.plugins.modules import cache_overlay, cache_writeback

from tests.cache_job import differences, make_dir, run_job, snapshot

REPO = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize("module", [cache_overlay, cache_writeback], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_documented_options_match_the_argument_spec(module):
    documented = yaml.safe_load(module.DOCUMENTATION)["options"]
    assert set(documented) == set(module.ARGUMENT_SPEC)
    for name, spec in module.ARGUMENT_SPEC.items():
        assert documented[name]["type"] == spec["type"], name
        assert documented[name].get("default") == spec.get("default"), name


def run_module(name: str, check: bool = False, **args) -> dict:
    argv = [str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local", "-o",
            "-e", f"ansible_python_interpreter={sys.executable}", "-m", f"hpc.burstbuffer.{name}",
            "-a", json.dumps(args)] + (["--check"] if check else [])
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    status, _, answer = done.stdout.partition(" => ")  # one line: "localhost | CHANGED => {...}"
    assert answer, done.stdout + done.stderr
    return {**json.loads(answer), "failed": "FAILED" in status}


def missing() -> str:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("fuse-overlayfs") is None:
        return "no fuse-overlayfs"
    try:
        pwd.getpwnam("bbuser")
    except KeyError:
        return "no user bbuser"
    return ""


@pytest.mark.skipif(bool(missing()), reason=missing() or "-")
def test_a_cache_buffers_life_module_by_module():
    owner = pwd.getpwnam("bbuser")
    top = Path(tempfile.mkdtemp(prefix="bb-cache-mod-", dir="/tmp"))
    top.chmod(0o755)
    mountpoint = top / "mnt" / "bbjob-1"
    try:
        pfs = make_dir(top, owner)
        direct = top / "direct"
        subprocess.run(["cp", "-a", str(pfs), str(direct)], check=True)
        run_job(direct, owner)
        before = snapshot(pfs)
        buffer = top / "buffer"
        buffer.mkdir(mode=0o700)
        os.chown(buffer, owner.pw_uid, owner.pw_gid)
        mount = {"path": str(mountpoint), "lower": str(pfs), "buffer_dir": str(buffer), "uid": owner.pw_uid,
                 "gid": owner.pw_gid}

        first = run_module("cache_overlay", **mount)
        assert first["changed"] and first.get("pid"), first
        assert not run_module("cache_overlay", **mount)["changed"]
        run_job(mountpoint, owner)
        unmounted = run_module("cache_overlay", path=str(mountpoint), state="unmounted", remove_dir=True)
        assert unmounted["changed"] and not mountpoint.exists(), unmounted
        assert not run_module("cache_overlay", path=str(mountpoint), state="unmounted")["changed"]
        assert snapshot(pfs) == before

        back = {"lower": str(pfs), "buffer_dir": str(buffer), "uid": owner.pw_uid, "gid": owner.pw_gid}
        planned = run_module("cache_writeback", check=True, **back)
        assert planned["changed"] and planned["deletions"] > 0 and snapshot(pfs) == before, planned
        done = run_module("cache_writeback", **back)
        assert done["changed"] and done["failed_files"] == [] and done["deleted"] > 0, done
        assert differences(snapshot(pfs), snapshot(direct)) == []
        again = run_module("cache_writeback", **back)
        assert not again["changed"] and again["files"] == 0, again
        refused = run_module("cache_writeback", **{**back, "uid": 0})
        assert refused.get("failed") and "never as root" in refused["msg"]
    finally:
        if co.is_mounted(str(mountpoint)):  # root cannot stat it: os.path.ismount would say no
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        shutil.rmtree(top, ignore_errors=True)
