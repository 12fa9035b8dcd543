"""The playbooks and a whole bbctl job over real SSH, as a site runs them.

The test bed's inventory uses local connections. Here `bbctl.testbed.ssh` starts
an sshd on each host's loopback address (storage servers 127.1.1.N and the
compute node 127.0.0.1), public keys only, for the ordinary user `bbops`, who
becomes root with sudo; host keys are checked against a known_hosts file. An
inventory identical to the test bed's except for those connection variables
drives site.yml (twice: the second run changes nothing) and bbctl's stages of
one job (setup, stage-in, pre-run, post-run, stage-out, teardown: buffer_create,
stage_in, buffer_mount, buffer_unmount, stage_out, buffer_destroy). Each sshd's
log must show bbops logging in with the key, so no host was reached locally.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from bbctl.testbed import ssh
from bbctl.testbed.config import TestbedConfig
from tests.conftest import BBCTL, REPO, VENV_BIN
from tests.integration.bbctl.slurmjobs import leftovers

pytestmark = pytest.mark.testbed
JOB_OWNER = "bbuser"


@pytest.fixture(scope="module")
def bed(testbed):
    """(TestbedConfig, SshBed) with an sshd on every host of the test bed; all of it removed after."""
    config = TestbedConfig.load(testbed)
    addresses = [node.address for node in config.nodes] + ["127.0.0.1"]
    try:
        sshbed = ssh.start(testbed, addresses)
        yield config, sshbed
    finally:
        ssh.stop(testbed)
    assert not ssh.directory(testbed).exists() and not ssh.SUDOERS.exists()


def ssh_inventory(config: TestbedConfig, sshbed: ssh.SshBed, directory: Path) -> Path:
    """The test bed's inventory with every host reached over SSH as bbops with become."""
    inventory = yaml.safe_load(config.inventory_file.read_text())
    inventory["all"]["vars"].pop("ansible_connection")
    inventory["all"]["vars"].update(sshbed.inventory_vars())
    path = directory / "inventory-ssh.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def playbook(inventory: Path, name: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook with its own ControlPersist sockets: no run reuses another's checked connection."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(inventory.parent / "cp")}
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory),
                           str(REPO / "playbooks" / name)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


def recap(output: str) -> dict[str, dict[str, int]]:
    """{host: {"ok": n, "changed": n, ...}} from ansible-playbook's PLAY RECAP."""
    table = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        table[host] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
    return table


def key_logins(sshbed: ssh.SshBed, address: str) -> int:
    text = sshbed.sshd_log(address).read_text() if sshbed.sshd_log(address).exists() else ""
    return len(re.findall(rf"Accepted publickey for {ssh.USER} from 127\.", text))


def test_site_playbook_over_ssh_twice_second_run_changes_nothing(bed, tmp_path):
    config, sshbed = bed
    inventory = ssh_inventory(config, sshbed, tmp_path)
    before = {node.address: key_logins(sshbed, node.address) for node in config.nodes}
    first = playbook(inventory, "site.yml")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    second = playbook(inventory, "site.yml")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    table = recap(second.stdout)
    assert sorted(table) == sorted(node.name for node in config.nodes), second.stdout[-2000:]
    assert all(counts["changed"] == 0 and counts["failed"] == 0 and counts["unreachable"] == 0
               for counts in table.values()), table
    for node in config.nodes:  # every server was reached over SSH with the key (one connection
        assert key_logins(sshbed, node.address) > before[node.address], node.address  # persists)


def test_a_changed_host_key_is_refused(bed, tmp_path):
    """Host keys are checked: a known_hosts entry that does not match makes the host unreachable."""
    config, sshbed = bed
    inventory = ssh_inventory(config, sshbed, tmp_path)
    wrong = tmp_path / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    wrong.write_text("".join(f"[{a}]:{ssh.PORT} {' '.join(other)}\n" for a in sshbed.addresses))
    inventory.write_text(inventory.read_text().replace(str(sshbed.known_hosts), str(wrong)))
    done = playbook(inventory, "site.yml")
    assert done.returncode != 0
    assert "UNREACHABLE" in done.stdout and "Host key verification failed" in done.stdout, done.stdout[-2000:]


@pytest.fixture
def job_dirs():
    """An input tree and an empty output parent, both the job owner's."""
    owner = pwd.getpwnam(JOB_OWNER)
    top = Path(tempfile.mkdtemp(prefix="bb-ssh-", dir="/var/tmp"))
    inputs = top / "in"
    (inputs / "sub").mkdir(parents=True)
    for k in range(20):
        (inputs / ("sub" if k % 2 else ".") / f"f{k}.dat").write_bytes(os.urandom(1000 + 97 * k))
    for path in [top, *top.rglob("*")]:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    yield owner, top
    shutil.rmtree(top, ignore_errors=True)


def digests(tree: Path) -> dict[str, str]:
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tree.rglob("*")) if p.is_file()}


def test_a_job_lifecycle_through_bbctl_over_ssh(bed, job_dirs, tmp_path):
    """setup .. teardown with every storage server and the compute node reached over SSH."""
    config, sshbed = bed
    owner, top = job_dirs
    site_config = yaml.safe_load(config.bbctl_config.read_text())
    site_config["inventory"] = str(ssh_inventory(config, sshbed, tmp_path))
    site_file = tmp_path / "bbctl-ssh.yml"
    site_file.write_text(yaml.safe_dump(site_config))
    script = top / "job.sh"
    script.write_text("#!/bin/bash\n#BB_LUA jobdw capacity=8GiB access_mode=striped\n"
                      f"#BB_LUA stage_in type=directory source={top}/in destination=$DW_JOB_STRIPED/data\n"
                      f"#BB_LUA stage_out type=directory source=$DW_JOB_STRIPED/data destination={top}/out\n")
    job = str(900000 + uuid.uuid4().int % 90000)
    before = {address: key_logins(sshbed, address) for address in sshbed.addresses}

    def bbctl(*args: str, job_args: tuple[str, ...] = ("--job-id", job, "--script", str(script))):
        done = subprocess.run([BBCTL, "--config", str(site_file), *args, *job_args],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"bbctl {args[0]}: {done.stderr[-3000:]}"
        return done

    addresses = {node.name: node.address for node in config.nodes}
    try:
        bbctl("setup", "--uid", str(owner.pw_uid), "--gid", str(owner.pw_gid))
        record = json.loads(bbctl("show", job, job_args=()).stdout)
        volume = record["volume"]
        servers = {addresses[brick["server"]] for brick in record["bricks"]}
        assert len(servers) >= 2, record["bricks"]  # a striped buffer over several servers
        bbctl("stage-in")
        bbctl("pre-run", "--nodes", config.hostname)
        striped = json.loads(bbctl("paths", "--json").stdout)["DW_JOB_STRIPED"]
        wrote = subprocess.run(["runuser", "-u", JOB_OWNER, "--", "sh", "-c",
                                'cat "$1"/data/f0.dat "$1"/data/sub/f1.dat > "$1"/data/joined.dat', "sh",
                                striped], capture_output=True, text=True, check=False)
        assert wrote.returncode == 0, wrote.stderr
        bbctl("post-run")
        bbctl("stage-out")
    finally:  # with hurry: a test failing before post-run must not leave its buffer mounted
        teardown = subprocess.run([BBCTL, "--config", str(site_file), "teardown", "--hurry", "--job-id", job,
                                   "--script", str(script)], capture_output=True, text=True, timeout=600,
                                  check=False)
    assert teardown.returncode == 0, teardown.stderr[-3000:]

    expected = digests(top / "in")
    expected["joined.dat"] = hashlib.sha256((top / "in" / "f0.dat").read_bytes()
                                            + (top / "in" / "sub" / "f1.dat").read_bytes()).hexdigest()
    assert digests(top / "out") == expected
    assert all(p.stat().st_uid == owner.pw_uid for p in (top / "out").rglob("*"))
    # The buffer's servers and the compute node were reached over SSH, as bbops with the key.
    for address in [*sorted(servers), "127.0.0.1"]:
        assert key_logins(sshbed, address) > before[address], f"{address} was not reached over SSH"
    assert not leftovers(volume)
