"""After playbooks/site.yml: every storage server's bricks are XFS with 512-byte
inodes, mounted where the inventory says, and the servers form one pool."""

import json
import subprocess

import testinfra

INVENTORY = "/var/lib/bbctl-testbed/inventory.yml"


def storage_hostvars():
    out = subprocess.run(["ansible-inventory", "-i", INVENTORY, "--list"], capture_output=True, text=True,
                         check=True).stdout
    inventory = json.loads(out)
    return {name: inventory["_meta"]["hostvars"][name] for name in inventory["bb_storage"]["hosts"]}


def test_every_brick_is_xfs_with_512_byte_inodes_at_its_path():
    local = testinfra.get_host("local://")
    servers = storage_hostvars()
    assert len(servers) == 3
    for hostvars in servers.values():
        for brick in hostvars["bb_bricks"]:
            mount = local.mount_point(brick["path"])
            assert mount.exists and mount.filesystem == "xfs"
            assert mount.device == brick["device"]
            assert "isize=512" in local.check_output("xfs_info %s", brick["path"])


def test_all_servers_are_connected_peers_of_each_other():
    local = testinfra.get_host("local://")
    for name, hostvars in storage_hostvars().items():
        out = local.check_output("gluster --mode=script --glusterd-sock=%s pool list --xml",
                                 hostvars["bb_glusterd_socket"])
        assert out.count("<connected>1</connected>") == 3, name
