"""``bbctl testbed up|down|status``: a real storage cluster and Slurm on one machine.

``up`` ensures each piece (a crashed earlier run's leftovers are reused or
replaced, never duplicated); ``down`` finds what to remove by looking under the
test bed's root, in /proc/self/mountinfo and in the loop device table, so it
works after a crash too. Both are idempotent.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from bbctl import host, site
from bbctl.collection import sizes
from bbctl.errors import TestbedError
from bbctl.testbed import slurm, ssh, storage
from bbctl.testbed.config import GLUSTERD_PORT, TestbedConfig

# Command -> the Debian package that provides it (scripts/setup.sh installs them).
REQUIRED_COMMANDS = {
    "glusterd": "glusterfs-server", "gluster": "glusterfs-server",
    "mount.glusterfs": "glusterfs-client", "mkfs.xfs": "xfsprogs",
    "losetup": "mount", "blkid": "util-linux",
}
SLURM_COMMANDS = {
    "munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client",
    "lua5.1": "lua5.1",
}

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def preflight(config: TestbedConfig) -> None:
    """Refuse early, in one line, what would otherwise fail half-way."""
    wanted = {**REQUIRED_COMMANDS, **(SLURM_COMMANDS if config.slurm != "none" else {})}
    missing = host.missing_commands(list(wanted))
    if missing:
        packages = sorted({wanted[cmd] for cmd in missing})
        raise TestbedError(f"missing {', '.join(missing)}: install the Debian packages "
                           f"{' '.join(packages)} (scripts/setup.sh does)")
    _check_disk(config)
    _check_addresses(config)


def _check_addresses(config: TestbedConfig) -> None:
    for node in config.nodes:
        if not storage.glusterd_running(node) and host.address_in_use(node.address, GLUSTERD_PORT):
            raise TestbedError(
                f"{node.address}:{GLUSTERD_PORT} is already taken by another process "
                "(a system glusterd?); stop it or choose another --address-prefix")
    if config.slurm != "none":
        slurm.check_ports(config)


def _check_disk(config: TestbedConfig) -> None:
    existing = config.root
    while not existing.exists():
        existing = existing.parent
    already = sum(node.brick_image(k).stat().st_size for node in config.nodes
                  for k in range(1, node.brick_count + 1) if node.brick_image(k).exists())
    needed = config.disk_needed - already
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise TestbedError(
            f"too little disk under {existing}: the bricks may grow to "
            f"{sizes.format_size(needed)} but {free // 1024**2} MiB are free; "
            "use a smaller --brick-size or fewer --bricks/--servers, or another --root")


def up(config: TestbedConfig, progress: Progress = _quiet) -> dict[str, object]:
    _refuse_other_shape(config)
    preflight(config)
    config.root.mkdir(parents=True, exist_ok=True)
    if not config.up_since_file.exists():  # a second up keeps it: its mtime dates the first
        config.up_since_file.touch()
    config.save()
    for node in config.nodes:
        for k in range(1, node.brick_count + 1):
            device = storage.ensure_brick(node, k, config.image_size)
            progress(f"brick {node.name}:{node.brick_mount(k)} on {device} (XFS)")
        storage.start_glusterd(node)
        progress(f"glusterd {node.name} on {node.address}, socket {node.socket}")
    storage.ensure_peers(config.nodes)
    progress(f"peers connected: {', '.join(n.address for n in config.nodes)}")
    write_inventory(config)
    write_bbctl_config(config)
    progress(f"inventory {config.inventory_file}; bbctl configuration {config.bbctl_config}")
    if config.slurm != "none":
        user = slurm.ensure_user(config.user)
        slurm.start_munged(config)
        slurm.write_config(config)
        slurm.start_slurm(config)
        slurm.start_sweeper(config)
        progress(f"slurm ({config.slurm}) up; SLURM_CONF={config.slurm_conf}; "
                 f"job owner {user.pw_name} (uid {user.pw_uid}); bbctl sweep every {slurm.SWEEP_EVERY} s")
    return status(config)


def switch_slurm(root: Path, flavour: str, progress: Progress = _quiet) -> dict[str, object]:
    """Restart the test bed's Slurm with another burst buffer plugin; storage stays as it is."""
    current = TestbedConfig.load(root)
    if not current.config_file.exists():
        raise TestbedError(f"no test bed under {root}: run `bbctl testbed up` first")
    for what in slurm.stop_slurm(current):
        progress(f"stopped {what}")
    config = dataclasses.replace(current, slurm=flavour)
    config.save()
    if flavour != "none":
        slurm.ensure_user(config.user)
        slurm.start_munged(config)
        slurm.write_config(config)
        slurm.start_slurm(config)
        slurm.start_sweeper(config)
        progress(f"slurm ({flavour}) up; SLURM_CONF={config.slurm_conf}")
    return status(config)


def _refuse_other_shape(config: TestbedConfig) -> None:
    """A running test bed of another shape must be brought down first, not mutated."""
    if not config.config_file.exists():
        return
    current = TestbedConfig.load(config.root)
    running = any(storage.glusterd_running(n) for n in current.nodes)
    if running and current != config:
        raise TestbedError(f"a test bed of another shape runs under {config.root}: "
                           "run `bbctl testbed down` first")


def down(root: Path, progress: Progress = _quiet) -> None:
    config = TestbedConfig.load(root)
    for what in slurm.stop_slurm(config):
        progress(f"stopped {what}")
    for what in ssh.stop(root):
        progress(what)
    for target in storage.unmount_clients(config):
        progress(f"unmounted client {target}")
    for what in storage.stop_gluster_processes(config):
        progress(f"stopped {what}")
    for target in storage.unmount_clients(config):  # made meanwhile (a quota command's aux mount)
        progress(f"unmounted client {target}")
    for what in storage.remove_bricks(config):
        progress(what)
    if config.up_since_file.exists():
        leftovers = storage.remove_run_dir_leftovers(config.up_since_file.stat().st_mtime)
        if leftovers:
            progress(f"removed {len(leftovers)} stale sockets, pid files and aux mount directories "
                     f"from {storage.RUN_DIR}")
    if root.exists():
        shutil.rmtree(root)
        progress(f"removed {root}")


def status(config: TestbedConfig) -> dict[str, object]:
    nodes = [storage.describe(node) for node in config.nodes]
    result: dict[str, object] = {"root": str(config.root), "nodes": nodes,
                                 "inventory": str(config.inventory_file)}
    if config.slurm != "none":
        result["slurm"] = slurm.slurm_status(config)
    result["up"] = _is_up(result)
    return result


def _is_up(report: dict) -> bool:
    nodes_up = all(n["glusterd"] and all(b["mounted"] for b in n["bricks"])
                   for n in report["nodes"])
    slurm_report = report.get("slurm")
    slurm_up = slurm_report is None or (
        slurm_report["slurmctld"] and slurm_report["slurmd"] and slurm_report["munged"])
    return nodes_up and bool(slurm_up)


def write_inventory(config: TestbedConfig) -> None:
    """An Ansible inventory of the test bed, shaped like a real site's (inventories/example)."""
    storage_hosts = {}
    for node in config.nodes:
        storage_hosts[node.name] = {
            "ansible_host": node.address,
            "bb_gluster_host": node.address,
            "bb_glusterd_socket": str(node.socket),
            "bb_bricks": [
                {"device": dev, "path": str(node.brick_mount(k))}
                for k, dev in enumerate(storage.brick_devices(node), start=1)
            ],
        }
    inventory = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": config.python,
                 "bb_testbed_root": str(config.root)},
        "children": {
            # scripts/setup.sh installed the packages; the test bed runs its own glusterds.
            "bb_storage": {"hosts": storage_hosts, "vars": {"gluster_server_install": False}},
            # The one compute node, named as Slurm names it: bbctl mounts buffers on the job's nodes.
            "bb_clients": {"hosts": {config.hostname: {"ansible_host": "127.0.0.1"}}},
        },
    }}
    config.inventory_file.write_text(
        "# Written by `bbctl testbed up`; regenerated on every up.\n"
        + yaml.safe_dump(inventory, sort_keys=False))


def write_bbctl_config(config: TestbedConfig) -> None:
    """bbctl's configuration for the test bed: its inventory, one pool of every brick."""
    work = config.root / "bbctl"
    work.mkdir(parents=True, exist_ok=True)  # before any bbctl runs: the demo follows its log from the start
    site.dump({"inventory": str(config.inventory_file), "state": str(work / "state.db"),
               "pools": {"nvme": {"granularity": config.brick_size, "hosts": "all"}},
               "work_dir": str(work), "mount_root": str(config.root / "mnt"),
               "slurm_dir": str(config.slurm_dir / "etc")}, config.bbctl_config)
