"""The Slurm half of the test bed: a private munged, slurmctld and slurmd.

Everything lives under ``<root>/slurm`` and ``<root>/munge``: our own munge key
and socket (named in slurm.conf by AuthInfo), our own slurm.conf (found by
SLURM_CONF, which also makes slurmctld look for burst_buffer.lua beside it). A
munged or Slurm that the site already runs is left alone.
"""

from __future__ import annotations

import os
import pwd
import string
import subprocess
import time
from importlib import resources
from pathlib import Path

from bbctl import host, site, slurm_install
from bbctl.errors import TestbedError
from bbctl.testbed.config import TestbedConfig

SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818


def slurm_env(config: TestbedConfig) -> dict[str, str]:
    """The environment every Slurm command of the test bed needs."""
    return {**host.C_LOCALE, "SLURM_CONF": str(config.slurm_conf), site.CONFIG_ENV: str(config.bbctl_config)}


# --- munge -----------------------------------------------------------------------

def _munge_paths(config: TestbedConfig) -> dict[str, Path]:
    d = config.munge_dir
    return {"key": d / "munge.key", "socket": d / "munge.socket", "pid": d / "munged.pid",
            "log": d / "munged.log", "seed": d / "munged.seed"}


def start_munged(config: TestbedConfig) -> None:
    paths = _munge_paths(config)
    if host.running_pid(paths["pid"]):
        return
    munge = pwd.getpwnam("munge")
    config.munge_dir.mkdir(parents=True, exist_ok=True)
    # munged refuses directories and keys that others could write or read.
    os.chmod(config.munge_dir, 0o755)
    if not paths["key"].exists():
        paths["key"].write_bytes(os.urandom(1024))
    os.chmod(paths["key"], 0o600)
    for path in (config.munge_dir, paths["key"]):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    paths["socket"].unlink(missing_ok=True)
    host.run(["runuser", "-u", "munge", "--", "munged",
              f"--socket={paths['socket']}", f"--key-file={paths['key']}",
              f"--pid-file={paths['pid']}", f"--log-file={paths['log']}",
              f"--seed-file={paths['seed']}"])
    _wait(lambda: paths["socket"].exists(), "munged socket", paths["log"])


# --- Slurm -----------------------------------------------------------------------

def _render(template: str, **values: object) -> str:
    text = resources.files("bbctl.testbed").joinpath("templates", template).read_text()
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def _cpus(config: TestbedConfig) -> dict[str, object]:
    """The node's CPUs and, when they exceed the machine's, the override that lets slurmd accept that."""
    real = os.cpu_count() or 1
    cpus = config.slurm_cpus or real
    return {"cpus": cpus, "slurmd_parameters": "SlurmdParameters=config_overrides" if cpus > real
            else "# SlurmdParameters: the node's CPUs are the machine's"}


def write_config(config: TestbedConfig) -> None:
    d = config.slurm_dir
    for sub in ("etc", "state", "spool", "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    flavour = "datawarp" if config.slurm == "datawarp" else "lua"
    values = {
        "hostname": config.hostname, "slurmctld_port": SLURMCTLD_PORT,
        "slurmd_port": SLURMD_PORT, "munge_socket": _munge_paths(config)["socket"],
        "slurm_dir": d, "burst_buffer_type": f"burst_buffer/{flavour}",
        **_cpus(config), "bin_dir": Path(config.python).parent,
    }
    config.slurm_conf.write_text(_render("slurm.conf", **values))
    (d / "etc" / "burst_buffer.conf").write_text(
        _render(f"burst_buffer-{flavour}.conf", **values))
    if flavour == "lua":
        slurm_install.install(site.load(config.bbctl_config), d / "etc")


def _daemon(config: TestbedConfig, name: str) -> Path:
    return config.slurm_dir / f"{name}.pid"


DAEMON_PORTS = (("slurmctld", SLURMCTLD_PORT), ("slurmd", SLURMD_PORT))


def check_ports(config: TestbedConfig) -> None:
    for daemon, port in DAEMON_PORTS:
        if not host.running_pid(_daemon(config, daemon)) and host.address_in_use("0.0.0.0", port):
            raise TestbedError(f"port {port} for {daemon} is already taken "
                               "(a Slurm of the site?); stop it first")


def start_slurm(config: TestbedConfig) -> None:
    env = slurm_env(config)
    for daemon, _port in DAEMON_PORTS:
        if host.running_pid(_daemon(config, daemon)):
            continue
        argv = [daemon] + (["-N", config.hostname] if daemon == "slurmd" else [])
        host.run(argv, env=env)
        _wait(lambda d=daemon: host.running_pid(_daemon(config, d)) is not None,
              daemon, config.slurm_dir / "log" / f"{daemon}.log")
    _wait(lambda: _node_state(config) in ("idle", "mixed", "allocated"),
          f"node {config.hostname} to become idle", config.slurm_dir / "log" / "slurmd.log")


def _node_state(config: TestbedConfig) -> str:
    proc = host.run(["sinfo", "-h", "-N", "-o", "%T"], env=slurm_env(config), check=False)
    return proc.stdout.strip().rstrip("*~#") if proc.returncode == 0 else ""


def slurm_status(config: TestbedConfig) -> dict[str, object]:
    return {
        "munged": host.running_pid(_munge_paths(config)["pid"]) is not None,
        "slurmctld": host.running_pid(_daemon(config, "slurmctld")) is not None,
        "slurmd": host.running_pid(_daemon(config, "slurmd")) is not None,
        "node_state": _node_state(config) if config.slurm_conf.exists() else "",
        "burst_buffer": config.slurm, "slurm_conf": str(config.slurm_conf),
    }


SWEEP_EVERY = 10  # s between the test bed's sweeps (a site's service: 30)


def start_sweeper(config: TestbedConfig) -> None:
    """`bbctl sweep --every`, the service that tears down buffers whose teardown Slurm lost (as a
    site runs it under systemd: docs/OPERATOR_GUIDE.md); its pid file and log under root."""
    pid_file = config.root / "bbctl-sweep.pid"
    if host.running_pid(pid_file):
        return
    with (config.root / "bbctl-sweep.log").open("ab") as log:
        argv = [str(slurm_install.bbctl_program()), "--config", str(config.bbctl_config), "sweep",
                "--every", str(SWEEP_EVERY)]
        proc = subprocess.Popen(argv, env=slurm_env(config), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(f"{proc.pid}\n")


def stop_slurm(config: TestbedConfig) -> list[str]:
    """Stop bbctl's sweeper, slurmd, slurmctld and munged by the pid files under root."""
    stopped = []
    for name, pid_file in (("bbctl sweep", config.root / "bbctl-sweep.pid"),
                           ("slurmd", _daemon(config, "slurmd")),
                           ("slurmctld", _daemon(config, "slurmctld")),
                           ("munged", _munge_paths(config)["pid"])):
        if host.stop_pid_file(pid_file):
            stopped.append(name)
    return stopped


def ensure_user(name: str) -> pwd.struct_passwd:
    """The unprivileged job owner (Slurm refuses burst buffers to root)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        host.run(["useradd", "--create-home", "--shell", "/bin/bash", name])
        return pwd.getpwnam(name)


def _wait(ready, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    raise TestbedError(f"{what} not ready within {timeout:.0f} s; see {log}")
