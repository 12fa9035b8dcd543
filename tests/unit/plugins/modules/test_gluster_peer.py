"""gluster_peer: (pool as gluster 10.3 listed it, nodes asked for) -> probe/detach argv lists."""

from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gluster as g
from ansible_collections.hpc.burstbuffer.plugins.modules import gluster_peer as gp

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "gluster"
SOCK = "/var/lib/bbctl-testbed/node1/run/glusterd.socket"
NODE1 = "497d64f7-ec53-4ed3-8e70-5fbf686acaa9"  # the test bed's node 1 (localhost in its pool)
NODE2 = "42bc47ad-6c3b-41d0-bdbf-b821a42b4388"


def fixture(name):
    return (FIXTURES / name).read_text()


def pool(name="pool_list_testbed.xml"):
    return g.parse_pool_list(fixture(name))


def probe(host):
    return ["gluster", "--mode=script", f"--glusterd-sock={SOCK}", "peer", "probe", host, "--xml"]


def detach(host):
    return ["gluster", "--mode=script", f"--glusterd-sock={SOCK}", "peer", "detach", host,
            "--xml"]


@pytest.mark.parametrize(("node", "uuid", "expected"), [
    ("127.1.1.2", None, "127.1.1.2"),           # by name
    ("127.1.1.2".upper(), None, "127.1.1.2"),   # names compare case-insensitively
    ("127.1.1.1", NODE1, gp.SELF),              # this glusterd, which lists itself as localhost
    ("stor2.example", NODE2, "127.1.1.2"),      # another name of a known peer
    ("127.1.1.4", "0b8d6c53-8f43-4e4f-9d55-4b0d3c1c1c1c", None),  # a stranger
    ("127.1.1.5", None, None),                  # could not be asked
])
def test_identify(node, uuid, expected):
    found = gp.identify(pool(), node, uuid)
    assert (found if found in (None, gp.SELF) else found["hostname"]) == expected


def test_present_probes_only_the_nodes_not_in_the_pool():
    peers = pool()
    identities = {"127.1.1.1": gp.SELF, "127.1.1.2": gp.peer_named(peers, "127.1.1.2"),
                  "127.1.1.4": None}
    assert gp.plan_peers(identities, "present", SOCK) == [probe("127.1.1.4")]


def test_absent_detaches_peers_by_the_name_the_pool_knows():
    peers = pool()
    identities = {"stor2.example": gp.peer_named(peers, "127.1.1.2"), "127.1.1.4": None}
    assert gp.plan_peers(identities, "absent", SOCK) == [detach("127.1.1.2")]


def test_this_glusterd_cannot_detach_itself():
    with pytest.raises(gp.PeerError, match=r"127\.1\.1\.1 is the node this task talks to"):
        gp.plan_peers({"127.1.1.1": gp.SELF}, "absent", SOCK)


def test_a_stopped_peer_is_not_ready():
    assert gp.not_ready(pool("pool_list_peer_down.xml"), ["127.1.9.2"]) == [
        "127.1.9.2 (Peer in Cluster, disconnected)"]
    assert gp.not_ready(pool(), ["127.1.1.2", "127.1.1.3"]) == []
    assert gp.not_ready(pool(), ["127.1.1.7"]) == ["127.1.1.7 (not in the pool)"]


def test_diff_names_leave_out_this_node():
    assert gp.peer_names(pool()) == ["127.1.1.2", "127.1.1.3"]


# --- running with recorded answers -------------------------------------------------------------

@pytest.fixture
def gluster_module(fake_module):
    class GlusterFakeModule(fake_module):
        _diff = True

        def get_bin_path(self, name, required=False):
            return "gluster"

    return GlusterFakeModule


def answer(name):
    return (0, fixture(name), "")


def test_check_mode_asks_an_unknown_node_who_it_is_and_probes_nothing(gluster_module):
    module = gluster_module([answer("pool_list_testbed.xml"), answer("node_uuid.xml")],
                            check_mode=True)
    # node_uuid.xml is node 2's UUID: "stor2.example" is node 2 under another name
    result = gp.run(module, g.GlusterCli(module, SOCK),
                    {"nodes": ["127.1.1.2", "stor2.example"], "state": "present",
                     "timeout": 1, "glusterd_socket": SOCK})
    assert (result["changed"], result["commands"]) == (False, [])
    assert module.calls[1][0][2:3] == ["--remote-host=stor2.example"]
    assert len(module.calls) == 2


def test_probe_then_wait_until_the_peer_is_in_the_cluster(gluster_module):
    module = gluster_module([
        answer("pool_list_alone.xml"),
        (1, "", "Connection failed. Please check if gluster daemon is operational."),
        answer("peer_probe_ok.xml"),
        answer("pool_list_peer_down.xml"),  # after the probe
        answer("pool_list_peer_down.xml"),  # waiting: not connected yet
        answer("pool_list_two_nodes.xml"),  # connected
    ])
    cli = g.GlusterCli(module, None, sleep=lambda _delay: None)
    result = gp.run(module, cli, {"nodes": ["127.1.9.2"], "state": "present", "timeout": 60,
                                  "glusterd_socket": None})
    assert result["commands"] == [["gluster", "--mode=script", "peer", "probe", "127.1.9.2",
                                   "--xml"]]
    assert [p["hostname"] for p in result["peers"]] == ["127.1.9.2"]
    assert result["diff"] == {"before": {"peers": []}, "after": {"peers": ["127.1.9.2"]}}


def test_waiting_gives_up_with_the_state_of_each_late_peer(gluster_module):
    module = gluster_module([answer("pool_list_peer_down.xml")] * 3)
    ticks = iter([0, 1, 2, 3])
    with pytest.raises(gp.PeerError) as raised:
        gp.wait_until_ready(g.GlusterCli(module, None), ["127.1.9.2"], 2,
                            clock=lambda: next(ticks), sleep=lambda _delay: None)
    assert str(raised.value) == (
        "after 2 s these peers are not connected members of the pool: 127.1.9.2 (Peer in "
        "Cluster, disconnected); check that glusterd runs on them and that they reach each "
        "other on port 24007")


def test_a_probe_answered_with_localhost_is_no_change(gluster_module):
    module = gluster_module([
        answer("pool_list_alone.xml"),
        (1, "", "Connection failed. Please check if gluster daemon is operational."),
        answer("peer_probe_self.xml"),
        answer("pool_list_alone.xml"),
        answer("pool_list_alone.xml"),
    ])
    result = gp.run(module, g.GlusterCli(module, None),
                    {"nodes": ["127.1.9.1"], "state": "present", "timeout": 5,
                     "glusterd_socket": None})
    assert (result["changed"], result["commands"]) == (False, [])


def test_an_unreachable_node_fails_with_glusters_reason(gluster_module):
    module = gluster_module([
        answer("pool_list_alone.xml"),
        (1, "", "Connection failed. Please check if gluster daemon is operational."),
        answer("peer_probe_unreachable.xml"),
    ])
    with pytest.raises(gp.PeerError) as raised:
        gp.run(module, g.GlusterCli(module, None),
               {"nodes": ["127.1.9.3"], "state": "present", "timeout": 5,
                "glusterd_socket": None})
    assert str(raised.value) == ("gluster peer probe 127.1.9.3: Probe returned with Transport "
                                 "endpoint is not connected")
