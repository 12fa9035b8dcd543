"""Real SSH into the test bed's hosts: one sshd per host address, a key, a user who becomes root.

The test bed's inventory reaches its hosts with local connections. A site reaches
its NVMe servers and compute nodes over SSH as an ordinary user who becomes root
with sudo; ``start`` builds that path on this machine so a test can run the
playbooks and bbctl through it (tests/integration/test_ssh.py): an sshd bound to
each host's loopback address on ``PORT``, public-key logins only, for ``USER``
only, with a known_hosts file so Ansible checks host keys as it would at a site.

Everything lives under ``<root>/ssh`` except the user (kept, as the job owner
is) and a sudoers drop-in; ``stop``, which ``bbctl testbed down`` also calls,
ends the daemons by their pid files (and the sessions they forked), removes the
drop-in, the user's authorized key and the directory, whatever a crash left.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bbctl import host
from bbctl.errors import TestbedError

USER = "bbops"
PORT = 2222
SSHD = Path("/usr/sbin/sshd")
SUDOERS = Path("/etc/sudoers.d/bbctl-testbed-bbops")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it; the package's unit makes it


@dataclass(frozen=True)
class SshBed:
    """What a client needs: the key, the known hosts and the inventory variables that use them."""

    directory: Path
    addresses: tuple[str, ...]

    @property
    def key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    def sshd_log(self, address: str) -> Path:
        return self.directory / f"sshd-{address}.log"

    def inventory_vars(self) -> dict[str, object]:
        """Connection variables that send every host of an inventory through this SSH path."""
        return {
            "ansible_connection": "ssh",
            "ansible_user": USER,
            "ansible_port": PORT,
            "ansible_ssh_private_key_file": str(self.key),
            # Host keys are checked against our own file, never learnt on first use.
            "ansible_ssh_common_args": (f"-o UserKnownHostsFile={self.known_hosts} "
                                        "-o StrictHostKeyChecking=yes -o BatchMode=yes"),
            "ansible_become": True,
        }


def directory(root: Path) -> Path:
    return root / "ssh"


def start(root: Path, addresses: list[str]) -> SshBed:
    """Start one sshd per address (idempotent: running ones are kept) and return the client side.

    Raises TestbedError when sshd or sudo is missing or a daemon does not answer.
    """
    missing = [str(p) for p in (SSHD, Path("/usr/bin/sudo")) if not p.exists()]
    if missing:
        raise TestbedError(f"{', '.join(missing)} not found: run scripts/setup.sh "
                           "(it installs openssh-server and sudo)")
    bed = SshBed(directory(root), tuple(addresses))
    bed.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    account = _ensure_user()
    _write_keys(bed, account)
    _write_sudoers()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    for address in addresses:
        _start_sshd(bed, address)
    return bed


def stop(root: Path) -> list[str]:
    """End our sshds and their sessions, remove the sudoers drop-in and key; what was done."""
    done = []
    ssh_dir = directory(root)
    for pid_file in sorted(ssh_dir.glob("sshd-*.pid")) if ssh_dir.exists() else ():
        pid = host.running_pid(pid_file)
        if pid is not None:
            # Sessions (Ansible's ControlPersist connections) are forked children: end them too.
            for child in _children(pid):
                host.stop_pid(child, grace=2.0)
            host.stop_pid(pid)
            done.append(f"stopped sshd {pid_file.stem.removeprefix('sshd-')}")
        pid_file.unlink(missing_ok=True)
    if SUDOERS.exists():
        SUDOERS.unlink()
        done.append(f"removed {SUDOERS}")
    keys = _authorized_keys()
    if keys is not None and keys.exists():
        keys.unlink()
        done.append(f"removed {keys}")
    if ssh_dir.exists():
        shutil.rmtree(ssh_dir)
    return done


def _ensure_user() -> pwd.struct_passwd:
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        host.run(["useradd", "--create-home", "--shell", "/bin/sh", USER])
        account = pwd.getpwnam(USER)
    # useradd leaves the password "!", which sshd without PAM reads as a locked account;
    # "*" stays unusable for passwords but lets public keys in.
    host.run(["usermod", "--password", "*", USER])
    return account


def _authorized_keys() -> Path | None:
    try:
        return Path(pwd.getpwnam(USER).pw_dir) / ".ssh" / "authorized_keys"
    except KeyError:
        return None


def _write_keys(bed: SshBed, account: pwd.struct_passwd) -> None:
    host_key = bed.directory / "ssh_host_ed25519_key"
    for key in (bed.key, host_key):
        if not key.exists():
            host.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bbctl-testbed {key.name}",
                      "-f", str(key)])
    ssh_dir = Path(account.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(bed.key.with_suffix(".pub").read_text())
    for path, mode in ((ssh_dir, 0o700), (keys, 0o600)):
        os.chown(path, account.pw_uid, account.pw_gid)
        path.chmod(mode)
    public = host_key.with_suffix(".pub").read_text().split()[:2]
    bed.known_hosts.write_text("".join(f"[{a}]:{PORT} {' '.join(public)}\n" for a in bed.addresses))


def _write_sudoers() -> None:
    text = f"# bbctl test bed: the SSH user becomes root as a site's Ansible user does\n" \
           f"{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    staged = SUDOERS.with_name(".bbctl-testbed-bbops.new")  # sudo skips names with a dot
    staged.write_text(text)
    staged.chmod(0o440)
    host.run(["visudo", "-c", "-q", "-f", str(staged)])
    staged.replace(SUDOERS)


def _sshd_config(bed: SshBed, address: str) -> Path:
    config = bed.directory / f"sshd-{address}.conf"
    config.write_text("\n".join([
        f"ListenAddress {address}:{PORT}",
        f"HostKey {bed.directory / 'ssh_host_ed25519_key'}",
        f"PidFile {bed.directory / f'sshd-{address}.pid'}",
        "AuthorizedKeysFile .ssh/authorized_keys",
        f"AllowUsers {USER}",
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "LogLevel VERBOSE",
        # Ansible's pipelining runs modules over stdin; nothing else is needed.
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "",
    ]))
    return config


def _start_sshd(bed: SshBed, address: str) -> None:
    pid_file = bed.directory / f"sshd-{address}.pid"
    if host.running_pid(pid_file):
        return
    if host.address_in_use(address, PORT):
        raise TestbedError(f"{address}:{PORT} is taken by something else: stop it first")
    config = _sshd_config(bed, address)
    host.run([str(SSHD), "-t", "-f", str(config)])
    host.run([str(SSHD), "-f", str(config), "-E", str(bed.sshd_log(address))])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if host.running_pid(pid_file) and _answers(address):
            return
        time.sleep(0.1)
    raise TestbedError(f"sshd on {address}:{PORT} did not answer within 10 s; "
                       f"see {bed.sshd_log(address)}")


def _answers(address: str) -> bool:
    try:
        with socket.create_connection((address, PORT), timeout=1) as conn:
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """The pids whose parent is pid (from /proc, not by name)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children
