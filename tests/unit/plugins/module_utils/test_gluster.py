"""gluster module_utils: argv builders, parsers of XML recorded from gluster 10.3, validation (gluster_rules).

Every fixture under tests/fixtures/gluster was printed by the real gluster 10.3 CLI of the
loopback test bed (or of two private glusterd for the peer cases); the test names say what
situation each one records.
"""

import os
import socket
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gluster as g
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gluster_rules as rules

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "gluster"
SOCK = "/var/lib/bbctl-testbed/node1/run/glusterd.socket"
BRICK_ROOT = "/var/lib/bbctl-testbed/node{}/bricks/nvme1"


def fixture(name):
    return (FIXTURES / name).read_text()


# --- argv builders ---------------------------------------------------------------------------

def test_every_command_runs_in_script_mode_with_xml_and_the_socket_when_given():
    assert g.pool_list_argv(None) == ["gluster", "--mode=script", "pool", "list", "--xml"]
    assert g.volume_info_argv(SOCK, "gv1") == [
        "gluster", "--mode=script", f"--glusterd-sock={SOCK}", "volume", "info", "gv1", "--xml"]


def test_a_read_with_a_timeout_gives_glusterd_that_many_seconds_and_none_leaves_the_clis_own():
    argv = g.volume_info_argv(SOCK)
    assert g.with_timeout(argv, 30) == [
        "gluster", "--mode=script", "--timeout=30", f"--glusterd-sock={SOCK}", "volume", "info", "--xml"]
    assert g.with_timeout(argv, None) == argv


@pytest.mark.parametrize(("layout", "transport", "force", "middle"), [
    (None, "tcp", False, ["transport", "tcp"]),
    ({"replica": 3}, "tcp", False, ["replica", "3", "transport", "tcp"]),
    ({"replica": 3, "arbiter": 1}, "tcp", False,
     ["replica", "3", "arbiter", "1", "transport", "tcp"]),
    ({"disperse": 3, "redundancy": 1, "replica": None}, "tcp,rdma", False,
     ["disperse", "3", "redundancy", "1", "transport", "tcp,rdma"]),
])
def test_volume_create_argv_puts_layout_and_transport_before_the_bricks(
        layout, transport, force, middle):
    bricks = ["h1:/b/1/gv", "h2:/b/1/gv"]
    argv = g.volume_create_argv(None, "gv", bricks, layout, transport, force)
    assert argv == ["gluster", "--mode=script", "volume", "create", "gv", *middle, *bricks,
                    "--xml"]


def test_force_is_the_last_word_of_volume_create():
    argv = g.volume_create_argv(SOCK, "gv", ["h:/b/gv"], force=True)
    assert argv[-2:] == ["force", "--xml"]


def test_quota_limit_is_handed_over_in_bytes_because_gluster_reads_gb_as_gib():
    assert g.quota_limit_argv(None, "gv", "/", 8 * 1024**3)[-4:] == [
        "limit-usage", "/", "8589934592", "--xml"]


def test_volume_set_turns_yaml_booleans_into_on_and_off():
    assert g.volume_set_argv(None, "gv", "performance.readdir-ahead", True)[-3:] == [
        "performance.readdir-ahead", "on", "--xml"]
    assert g.volume_set_argv(None, "gv", "cluster.min-free-disk", "5%")[-2] == "5%"


def test_questions_to_another_node_are_read_only_and_time_limited():
    assert g.node_uuid_argv("127.1.1.2") == [
        "gluster", "--mode=script", "--remote-host=127.1.1.2", "--timeout=10",
        "system::", "uuid", "get", "--xml"]


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "errno", "message"), [
    ("error_create_brick_in_use.xml", 30800,
     "Brick: 127.1.1.1:/var/lib/bbctl-testbed/node1/bricks/nvme1/gv-exp1 not available. "
     "Brick may be containing or be contained by an existing brick."),
    ("error_create_parent_missing.xml", 30800,
     "Failed to create brick directory for brick "
     "127.1.1.1:/var/lib/bbctl-testbed/node1/bricks/nvme2/nope/gv-e1. "
     "Reason : No such file or directory"),
    ("error_create_volume_exists.xml", 0, "Volume gv-exp1 already exists"),
    ("error_delete_started.xml", 30800,
     "Volume gv-rec has been started.Volume needs to be stopped before deletion."),
    ("volume_start_already.xml", 30800, "Volume gv-exp1 already started"),
    ("error_lock_contention.xml", 30802,
     "Another transaction is in progress for gv-rec. Please try again after some time."),
])
def test_a_failed_operation_is_read_from_opret_although_gluster_exits_0(name, errno, message):
    with pytest.raises(g.GlusterError) as raised:
        g.parse_cli_xml(fixture(name), argv=["gluster", "x"])
    assert str(raised.value) == message
    assert raised.value.op_errno == errno
    assert raised.value.argv == ["gluster", "x"]


@pytest.mark.parametrize(("name", "message"), [
    ("error_cli_bad_name.txt",
     'Volume name should not contain "." character. '
     "Volume names can onlycontain alphanumeric, '-' and '_' characters."),
    ("error_cli_duplicate_brick.txt",
     "Found duplicate exports 127.1.1.1:/var/lib/bbctl-testbed/node1/bricks/nvme1/gv-dup"),
    ("error_connection_failed.txt",
     "Connection failed. Please check if gluster daemon is operational."),
])
def test_plain_text_complaints_of_the_cli_parser_lose_their_usage_text(name, message):
    with pytest.raises(g.GlusterError) as raised:
        g.parse_cli_xml(fixture(name))
    assert str(raised.value) == message


def test_lock_contention_is_recognised_and_nothing_else_is():
    assert g.is_lock_contention(fixture("error_lock_contention.xml"))
    assert not g.is_lock_contention(fixture("error_create_brick_in_use.xml"))
    assert not g.is_lock_contention(fixture("volume_start_ok.xml"))


def test_a_quota_aux_mount_that_did_not_come_up_is_transient_and_nothing_else_new_is():
    """error_quota_aux_mount.xml: glusterd 10.3's answer to ``volume quota bbjob-28 list /`` in the
    130-job load run (2026-12-06), its aux mount failing with "Transport endpoint is not connected"."""
    assert g.is_transient(fixture("error_quota_aux_mount.xml"))
    assert g.is_transient(fixture("error_lock_contention.xml"))
    assert not g.is_lock_contention(fixture("error_quota_aux_mount.xml"))
    assert not g.is_transient(fixture("error_create_brick_in_use.xml"))


def test_successful_answers_carry_their_message():
    assert g.cli_message(g.parse_cli_xml(fixture("peer_probe_self.xml"))) == (
        "Probe on localhost not needed")
    assert g.cli_message(g.parse_cli_xml(fixture("peer_probe_already.xml"))) == (
        "Host 127.1.9.2 port 24007 already in peer list")


# --- pool list ---------------------------------------------------------------------------------

def test_pool_list_of_the_test_bed_lists_two_peers_and_this_node_as_localhost():
    pool = g.parse_pool_list(fixture("pool_list_testbed.xml"))
    assert [(p["hostname"], p["connected"], p["state"], p["local"]) for p in pool] == [
        ("127.1.1.2", True, 3, False), ("127.1.1.3", True, 3, False),
        ("localhost", True, None, True)]
    assert pool[0]["uuid"] == "42bc47ad-6c3b-41d0-bdbf-b821a42b4388"
    assert pool[0]["hostnames"] == ["127.1.1.2"]
    assert pool[0]["state_str"] == "Peer in Cluster"


def test_a_stopped_peer_stays_in_cluster_but_disconnected():
    peer, local = g.parse_pool_list(fixture("pool_list_peer_down.xml"))
    assert (peer["hostname"], peer["connected"], peer["state"]) == ("127.1.9.2", False, 3)
    assert local["local"] is True


def test_a_lonely_glusterd_lists_only_itself():
    assert [p["hostname"] for p in g.parse_pool_list(fixture("pool_list_alone.xml"))] == [
        "localhost"]


def test_node_uuid_from_the_remote_question():
    assert g.parse_node_uuid(fixture("node_uuid.xml")) == "42bc47ad-6c3b-41d0-bdbf-b821a42b4388"


# --- volume info -------------------------------------------------------------------------------

def test_volume_info_of_a_new_distributed_volume():
    (volume,) = g.parse_volume_info(fixture("volume_info_distributed_created.xml"))
    assert volume["name"] == "gv-exp1"
    assert volume["id"] == "a16102d7-05e9-4f25-8be5-bd6825bd3d20"
    assert (volume["status"], volume["started"], volume["type"]) == ("created", False, "Distribute")
    assert (volume["brick_count"], volume["dist_count"], volume["replica"]) == (3, 3, 1)
    assert volume["transport"] == "tcp"
    assert [b["name"] for b in volume["bricks"]] == [
        f"127.1.1.{n}:{BRICK_ROOT.format(n)}/gv-exp1" for n in (1, 2, 3)]
    assert volume["bricks"][1] == {
        "name": f"127.1.1.2:{BRICK_ROOT.format(2)}/gv-exp1", "host": "127.1.1.2",
        "path": f"{BRICK_ROOT.format(2)}/gv-exp1",
        "host_uuid": "42bc47ad-6c3b-41d0-bdbf-b821a42b4388", "arbiter": False}
    assert volume["options"] == {"storage.fips-mode-rchecksum": "on",
                                 "transport.address-family": "inet", "nfs.disable": "on"}


def test_volume_info_of_a_started_volume_with_options_and_quota():
    (volume,) = g.parse_volume_info(fixture("volume_info_started_options_quota.xml"))
    assert (volume["status"], volume["started"]) == ("started", True)
    assert volume["options"]["performance.readdir-ahead"] == "on"
    assert volume["options"]["cluster.min-free-disk"] == "5%"
    assert volume["options"]["features.quota"] == "on"


def test_volume_info_of_a_stopped_volume():
    (volume,) = g.parse_volume_info(fixture("volume_info_stopped.xml"))
    assert (volume["status"], volume["started"]) == ("stopped", False)


@pytest.mark.parametrize(("name", "kind", "counts", "arbiters"), [
    ("volume_info_replica3.xml", "Replicate", (1, 3, 0, 0, 0), [False, False, False]),
    ("volume_info_arbiter.xml", "Replicate", (1, 3, 1, 0, 0), [False, False, True]),
    ("volume_info_disperse.xml", "Disperse", (1, 1, 0, 3, 1), [False, False, False]),
])
def test_volume_info_layouts(name, kind, counts, arbiters):
    (volume,) = g.parse_volume_info(fixture(name))
    assert volume["type"] == kind
    keys = ("dist_count", "replica", "arbiter", "disperse", "redundancy")
    assert tuple(volume[key] for key in keys) == counts
    assert [b["arbiter"] for b in volume["bricks"]] == arbiters


def test_volume_info_of_a_missing_volume_is_an_empty_list_not_an_error():
    assert g.parse_volume_info(fixture("volume_info_missing.xml")) == []


# --- volume status, get, quota -------------------------------------------------------------

def test_volume_status_lists_bricks_with_online_flag_and_port():
    status = g.parse_volume_status(fixture("volume_status_started.xml"))
    assert status["name"] == "gv-exp1"
    assert [(b["host"], b["online"]) for b in status["bricks"]] == [
        ("127.1.1.1", True), ("127.1.1.2", True), ("127.1.1.3", True)]
    assert status["bricks"][0]["port"] == 58583
    assert status["bricks"][0]["pid"] == 7037


def test_volume_status_leaves_out_the_quota_daemons_gluster_lists_as_nodes():
    status = g.parse_volume_status(fixture("volume_status_started_quota.xml"))
    assert [b["path"] for b in status["bricks"]] == [
        f"{BRICK_ROOT.format(1)}/gv-rec", f"{BRICK_ROOT.format(2)}/gv-rec"]


def test_volume_status_of_a_volume_that_is_not_started_is_an_error():
    with pytest.raises(g.GlusterError, match="Volume gv-exp1 is not started"):
        g.parse_volume_status(fixture("volume_status_not_started.xml"))


def test_volume_get_all_strips_default_marks_and_nulls():
    options = g.parse_volume_get(fixture("volume_get_all.xml"))
    assert len(options) == 336  # 342 entries: six options are listed twice
    assert options["cluster.min-free-disk"] == "10%"
    assert options["performance.cache-size"] is None  # listed with 32MB and with 128MB
    assert options["cluster.heal-timeout"] == "600"  # listed twice, the same both times
    assert options["cluster.subvols-per-directory"] is None
    assert options["performance.write-behind"] == "on"
    assert options["features.quota"] == "off"


def test_quota_list_of_root_in_bytes():
    assert g.parse_quota_list(fixture("quota_list_root_8gib.xml")) == {
        "/": {"hard_limit": 8589934592, "soft_limit_percent": "80%", "used": 0}}


def test_quota_list_without_a_limit_is_empty():
    assert g.parse_quota_list(fixture("quota_list_root_nolimit.xml")) == {}


@pytest.mark.parametrize(("name", "message"), [
    ("quota_list_disabled.xml", "Quota is disabled, please enable quota"),
    ("quota_list_root_stopped.xml",
     "Volume is stopped, start volume before executing quota command."),
    # "list" without a path reads /var/lib/glusterd: wrong for a glusterd with its own workdir
    ("quota_list_all_testbed_quirk.xml", "No quota configured on volume gv-exp1"),
])
def test_quota_list_errors(name, message):
    with pytest.raises(g.GlusterError) as raised:
        g.parse_quota_list(fixture(name))
    assert str(raised.value) == message


# --- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gv-a", "1gv-a", "123", "_gv", "GV-Upper", "a" * 200])
def test_volume_names_gluster_10_3_accepts(name):
    assert rules.volume_name_problem(name) is None


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"),
    ("-gv", "do not start with '-'"),
    ("gv.a", "only letters, digits"),
    ("gv a", "only letters, digits"),
    ("gv/a", "only letters, digits"),
    ("gv-\u00e4", "only letters, digits"),
    ("all", "reserved"),
    ("ALL", "reserved"),  # gluster creates it, then can never stop or delete it
    ("Force", "reserved"),
    ("volume", "reserved"),
    ("snap-max-hard-limit", "reserved"),
])
def test_volume_names_refused(name, why):
    assert why in rules.volume_name_problem(name)


@pytest.mark.parametrize(("bricks", "problems"), [
    (["h:/b/gv", "h:/c/gv", "fe80::1:/b/gv"], []),
    (["h/b/gv"], ["brick 'h/b/gv': write it as host:/absolute/path"]),
    (["h:b/gv"], ["brick 'h:b/gv': write it as host:/absolute/path"]),
    (["h:/b/../gv"], ["brick h:/b/../gv: '..' is not allowed in a brick path"]),
    (["h:/b/gv/"], ["brick h:/b/gv/: give a normalised directory path below / (no '//', "
                    "'.', trailing '/'), e.g. h:/b/gv"]),
    (["h:/"], ["brick h:/: give a normalised directory path below / (no '//', '.', "
               "trailing '/'), e.g. h:/"]),
    (["h:/b/gv", "h:/b/gv"], ["brick h:/b/gv is given twice; each brick must be a different "
                              "directory"]),
])
def test_brick_problems(bricks, problems):
    assert rules.brick_problems(bricks) == problems


def test_volfile_name_budget_counts_name_host_and_path():
    host, path = "127.1.1.1", "/var/lib/bbctl-testbed/node1/bricks/nvme2/xx"  # 9 + 44
    fits = "g" * (239 - 53)
    assert rules.volfile_name_problem(fits, [f"{host}:{path}"]) is None
    problem = rules.volfile_name_problem(fits + "g", [f"{host}:{path}"])
    assert "at most 239 characters (they have 240)" in problem
    # 190 characters: gluster 10.3 created and started it, but quota enable silently failed
    assert rules.volfile_name_problem("g" * 190, [f"{host}:{path}"]) is not None


@pytest.mark.parametrize(("count", "layout", "problems"), [
    (3, {}, []),
    (3, {"replica": 3}, []),
    (6, {"replica": 3, "arbiter": 1}, []),
    (3, {"disperse": 3, "redundancy": 1}, []),
    (4, {"replica": 3}, ["4 bricks cannot be grouped in replica sets of 3; "
                         "give a multiple of 3 bricks"]),
    (3, {"replica": 1}, ["replica must be at least 2 (leave it out for a distributed volume)"]),
    (3, {"replica": 3, "arbiter": 2}, ["arbiter: gluster supports only replica 3 with arbiter 1"]),
    (2, {"disperse": 2}, ["disperse must be at least 3"]),
    (3, {"disperse": 3, "redundancy": 2},
     ["redundancy must be at least 1 and less than half of disperse (3)"]),
])
def test_layout_problems(count, layout, problems):
    bricks = [f"h{n}:/b/gv" for n in range(count)]
    assert rules.layout_problems(bricks, **layout) == problems


# --- options -------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "normal"), [
    (True, "on"), (False, "off"), ("on", "on"), ("Enable", "on"), ("yes", "on"),
    ("true", "on"), ("off", "off"), ("disable", "off"), ("No", "off"), ("5%", "5%"),
    (64, "64"), ("64MB", "64mb"), (None, None),
])
def test_option_values_are_compared_in_a_normal_form(value, normal):
    assert rules.normalise_option_value(value) == normal


def test_short_option_names_resolve_to_the_full_name_gluster_stores():
    known = g.parse_volume_get(fixture("volume_get_all.xml"))
    assert rules.resolve_option_key("readdir-ahead", known) == "performance.readdir-ahead"
    assert rules.resolve_option_key("performance.readdir-ahead", known) == "performance.readdir-ahead"
    assert rules.resolve_option_key("no-such-option", known) == "no-such-option"


def test_option_changes_only_lists_what_differs():
    current = g.parse_volume_get(fixture("volume_get_all.xml"))
    wanted = {"readdir-ahead": "on", "performance.write-behind": True,
              "cluster.min-free-disk": "10%", "cluster.lookup-optimize": "disable"}
    # readdir-ahead was off on that volume, write-behind on, min-free-disk at its default
    assert rules.option_changes(current, wanted) == [
        ("performance.readdir-ahead", "on"), ("cluster.lookup-optimize", "disable")]


# --- bricks against the pool and this host -----------------------------------------------------

def test_bricks_in_use_names_the_volume_they_belong_to():
    volumes = g.parse_volume_info(fixture("volume_info_distributed_created.xml"))
    used = f"127.1.1.1:{BRICK_ROOT.format(1)}/gv-exp1"
    assert rules.bricks_in_use([used], volumes) == [f"brick {used} is already part of volume gv-exp1"]
    inside = f"127.1.1.1:{BRICK_ROOT.format(1)}/gv-exp1/sub"
    assert rules.bricks_in_use([inside], volumes) == [
        f"brick {inside} overlaps brick {used} of volume gv-exp1; choose a directory outside it"]
    assert rules.bricks_in_use([f"127.1.1.1:{BRICK_ROOT.format(1)}/gv-exp10"], volumes) == []
    assert rules.bricks_in_use([f"127.1.1.9:{BRICK_ROOT.format(1)}/gv-exp1"], volumes) == []


def test_loopback_and_unresolvable_hosts():
    assert rules.is_local_host("127.0.0.1") is True
    assert rules.is_local_host("no-such-host.invalid") is False


def test_an_address_of_no_interface_is_not_local():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("192.0.2.1", 0))  # TEST-NET-1: never assigned here
            pytest.skip("this machine has 192.0.2.1")
        except OSError:
            pass
    assert rules.is_local_host("192.0.2.1") is False


def set_volume_id(path, volume_id):
    try:
        os.setxattr(path, "trusted.glusterfs.volume-id", bytes.fromhex(volume_id.replace("-", "")))
    except OSError as error:
        pytest.skip(f"cannot set trusted.* xattrs here: {error}")


def test_volume_id_of_reads_the_xattr_as_a_uuid(tmp_path):
    assert rules.volume_id_of(str(tmp_path)) is None
    set_volume_id(str(tmp_path), "a16102d7-05e9-4f25-8be5-bd6825bd3d20")
    assert rules.volume_id_of(str(tmp_path)) == "a16102d7-05e9-4f25-8be5-bd6825bd3d20"


@pytest.mark.parametrize(("raw", "shown"), [
    (bytes.fromhex("a16102d705e94f258be5bd6825bd3d20"), "a16102d7-05e9-4f25-8be5-bd6825bd3d20"),
    (b"\x01\x02", "0102"),  # not a UUID glusterd wrote: shown as it is
])
def test_volume_id_of_formats_the_raw_bytes(monkeypatch, raw, shown):
    monkeypatch.setattr(rules.os, "getxattr", lambda _path, _name, follow_symlinks=True: raw)
    assert rules.volume_id_of("/bricks/b1") == shown


def test_local_brick_with_a_missing_parent(tmp_path):
    brick = f"h:{tmp_path}/nope/gv"
    assert rules.local_brick_problem(brick, True, {}) == (
        f"brick {brick}: its parent directory {tmp_path}/nope does not exist on h; gluster "
        "creates only the last directory of a brick path (mount the brick root first)")


def test_local_brick_directory_left_by_a_deleted_or_living_volume(tmp_path):
    path = tmp_path / "gv"
    path.mkdir()
    set_volume_id(str(path), "a16102d7-05e9-4f25-8be5-bd6825bd3d20")
    brick = f"h:{path}"
    assert rules.local_brick_problem(brick, True, {}) == (
        f"brick {brick} holds the brick directory of a deleted volume (volume-id "
        "a16102d7-05e9-4f25-8be5-bd6825bd3d20); remove it with hpc.burstbuffer.gluster_brick_dir "
        "(state: absent) on h, or choose another path")
    living = {"a16102d7-05e9-4f25-8be5-bd6825bd3d20": "gv-exp1"}
    assert rules.local_brick_problem(brick, False, living) == (
        f"brick {brick} is already part of volume gv-exp1")


def test_local_brick_on_the_root_filesystem_needs_force(tmp_path):
    if os.stat(tmp_path).st_dev != os.stat("/").st_dev:
        pytest.skip(f"{tmp_path} is not on the root filesystem")
    brick = f"h:{tmp_path}/gv"
    assert "is on the root filesystem of h" in rules.local_brick_problem(brick, False, {})
    assert rules.local_brick_problem(brick, True, {}) is None


def test_local_brick_that_is_a_mount_point_needs_force():
    assert "is a mount point itself" in rules.local_brick_problem("h:/proc", False, {})
    assert rules.local_brick_problem("h:/proc", True, {}) is None


def test_a_file_is_no_brick(tmp_path):
    (tmp_path / "gv").write_text("")
    assert rules.local_brick_problem(f"h:{tmp_path}/gv", True, {}) == (
        f"brick h:{tmp_path}/gv exists and is not a directory")


# --- running -----------------------------------------------------------------------------------

@pytest.fixture
def gluster_module(fake_module):
    class GlusterFakeModule(fake_module):
        def get_bin_path(self, name, required=False):
            return f"/usr/sbin/{name}"
    return GlusterFakeModule


def test_the_cli_runs_the_binary_found_in_the_c_locale(gluster_module):
    module = gluster_module([(0, fixture("pool_list_testbed.xml"), "")])
    pool = g.GlusterCli(module, SOCK).pool()
    assert len(pool) == 3
    ((argv, env),) = module.calls
    assert argv == ["/usr/sbin/gluster", "--mode=script", f"--glusterd-sock={SOCK}", "pool",
                    "list", "--xml"]
    assert (env["LANG"], env["LC_ALL"]) == ("C", "C")


def test_the_cli_retries_while_another_transaction_holds_the_lock(gluster_module):
    lock = (0, fixture("error_lock_contention.xml"), "")
    module = gluster_module([lock, lock, (0, fixture("volume_start_ok.xml"), "")])
    slept = []
    cli = g.GlusterCli(module, None, sleep=slept.append)
    cli.execute(g.volume_start_argv(None, "gv-exp1"))
    assert len(module.calls) == 3
    assert slept == [0.5, 1]


def test_the_cli_asks_the_quota_again_when_its_aux_mount_did_not_come_up(gluster_module):
    failed = (0, fixture("error_quota_aux_mount.xml"), "")
    listed = (0, fixture("quota_list_root_8gib.xml"), "")
    module = gluster_module([failed, listed])
    slept = []
    assert g.GlusterCli(module, None, sleep=slept.append).quota_limit("gv-q") == 8 * 1024**3
    assert len(module.calls) == 2 and slept == [0.5]


def test_the_cli_gives_up_on_the_lock_after_its_delays(gluster_module):
    lock = (0, fixture("error_lock_contention.xml"), "")
    module = gluster_module([lock] * (len(g.RETRY_DELAYS) + 1))
    cli = g.GlusterCli(module, None, sleep=lambda _delay: None)
    with pytest.raises(g.GlusterError, match="Another transaction is in progress"):
        cli.execute(g.volume_start_argv(None, "gv-rec"))


def test_the_cli_reports_plain_text_errors_with_the_command(gluster_module):
    module = gluster_module([(1, "", fixture("error_connection_failed.txt"))])
    with pytest.raises(g.GlusterError) as raised:
        g.GlusterCli(module, "/nonexistent.socket").volumes()
    assert str(raised.value) == "Connection failed. Please check if gluster daemon is operational."
    assert raised.value.argv[-3:] == ["volume", "info", "--xml"]


def test_effective_options_overlay_volume_settings_on_defaults(gluster_module):
    (volume,) = g.parse_volume_info(fixture("volume_info_started_options_quota.xml"))
    module = gluster_module([(0, fixture("volume_get_all.xml"), "")])
    options = g.GlusterCli(module, None).effective_options(volume)
    assert options["cluster.min-free-disk"] == "5%"  # set on the volume; the default is 10%
    assert options["performance.readdir-ahead"] == "on"
    assert options["cluster.lookup-optimize"] == "on"  # a default


def test_quota_limit_asks_for_the_root_path_only(gluster_module):
    module = gluster_module([(0, fixture("quota_list_root_8gib.xml"), "")])
    assert g.GlusterCli(module, None).quota_limit("gv-exp1") == 8 * 1024**3
    assert module.calls[0][0][-5:] == ["quota", "gv-exp1", "list", "/", "--xml"]


def test_node_uuid_is_none_when_the_node_cannot_be_asked(gluster_module):
    module = gluster_module([(1, "", "Connection failed. Please check if gluster daemon is "
                                     "operational.\n")])
    assert g.GlusterCli(module, None).node_uuid("127.1.9.7") is None


TIMED_OUT = (1, "", "Error : Request timed out\n")  # the CLI's words after its 120 s (or --timeout)


def test_a_read_that_timed_out_is_asked_once_more_where_asked_for(gluster_module):
    """50 jobs at once (2026-12-07): one setup's `quota list` timed out behind a dozen setups' locks."""
    listed = (0, fixture("quota_list_root_8gib.xml"), "")
    lock = (0, fixture("error_lock_contention.xml"), "")
    # glusterd holds the timed-out transaction's lock until its 180 s lock timer ends: 60 s more.
    held = 17  # TRANSIENT_RETRY alone gives up after 10
    module = gluster_module([TIMED_OUT, *[lock] * held, listed])
    slept = []
    assert g.GlusterCli(module, None, sleep=slept.append, reask_timed_out=True).quota_limit("gv-q") == 8 * 1024**3
    assert len(module.calls) == held + 2 and sum(slept) > 60

    twice = gluster_module([TIMED_OUT, TIMED_OUT])
    with pytest.raises(g.GlusterError, match="Request timed out"):
        g.GlusterCli(twice, None, reask_timed_out=True).quota_limit("gv-q")
    assert len(twice.calls) == 2  # once more, not again and again: each costs the CLI's timeout


def test_a_read_that_timed_out_is_not_asked_again_by_default(gluster_module):
    module = gluster_module([TIMED_OUT])  # buffer_survey: a glusterd that hangs is the finding
    with pytest.raises(g.GlusterError, match="Request timed out"):
        g.GlusterCli(module, None, timeout=30).volumes()
    assert len(module.calls) == 1
