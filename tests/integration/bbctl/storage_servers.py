"""The test bed's storage servers in fault tests: a server's glusterd found by its pid file, and started
again with every peer connected (test_faults.py, test_reconcile.py)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

from bbctl import host
from bbctl.errors import BBError
from bbctl.testbed import storage
from bbctl.testbed.config import TestbedConfig
from tests.conftest import TESTBED_ROOT


def config() -> TestbedConfig:
    return TestbedConfig.load(TESTBED_ROOT)


def node(index: int):
    return config().nodes[index - 1]


def glusterd_pid(index: int) -> int:
    pid = host.read_pid(node(index).pid_file)
    assert pid, f"glusterd of node {index} is not running"
    return pid


def restart_glusterd(index: int, timeout: float = 60) -> None:
    """Start glusterd of server ``index`` again and wait until every server sees every peer connected:
    ensure_peers asks server 1 only, and a volume deleted before server 3 itself saw its peers again
    was deleted on the others only (seen: server 3 kept bbjob-3 for good, and every teardown waited)."""
    storage.start_glusterd(node(index))
    storage.ensure_peers(config().nodes)
    deadline = time.monotonic() + timeout
    while not all_connected() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all_connected(), {n.name: storage.peers(n) for n in config().nodes}
    time.sleep(3)  # the handshake that follows "connected" syncs the volumes


def all_connected() -> bool:
    try:
        return all(all(storage.peers(n).values()) for n in config().nodes)
    except (BBError, ET.ParseError):  # a glusterd still starting answers with an error
        return False
