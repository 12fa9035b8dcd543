"""gluster_volume: (volume as gluster 10.3 described it, parameters) -> exact gluster argv lists.

The volumes are parsed from XML recorded on the loopback test bed
(tests/fixtures/gluster), so the planner is tested against what gluster really prints.
"""

from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gluster as g
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gluster_rules as rules
from ansible_collections.hpc.burstbuffer.plugins.module_utils import mounts
from ansible_collections.hpc.burstbuffer.plugins.modules import gluster_volume as gv

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "gluster"
SOCK = "/var/lib/bbctl-testbed/node1/run/glusterd.socket"
G = ["gluster", "--mode=script", f"--glusterd-sock={SOCK}"]
BRICKS = [f"127.1.1.{n}:/var/lib/bbctl-testbed/node{n}/bricks/nvme1/gv-exp1" for n in (1, 2, 3)]
GIB = 1024**3


def fixture(name):
    return (FIXTURES / name).read_text()


def volume(name):
    """The one volume of a recorded ``volume info --xml``."""
    (parsed,) = g.parse_volume_info(fixture(name))
    return parsed


def params(**overrides):
    """Module parameters with the argument spec's defaults."""
    base = {"name": "gv-exp1", "state": "present", "bricks": None, "replica": None,
            "arbiter": None, "disperse": None, "redundancy": None, "transport": "tcp",
            "options": {}, "quota": None, "force": False, "remove_brick_dirs": [],
            "glusterd_socket": SOCK}
    base.update(overrides)
    return base


def observed(info=None, quota=None, options_from="volume_get_all.xml"):
    """What observe() would have read: the volume, its effective options, its quota."""
    vol = volume(info) if info else None
    effective = {}
    if vol:
        effective = g.parse_volume_get(fixture(options_from))
        effective.update(vol["options"])
    return {"volumes": [vol] if vol else [], "volume": vol, "options": effective, "quota": quota}


def cmd(*words):
    return [*G, *[str(w) for w in words], "--xml"]


CREATE = cmd("volume", "create", "gv-exp1", "transport", "tcp", *BRICKS)
START = cmd("volume", "start", "gv-exp1")
STOP = cmd("volume", "stop", "gv-exp1")
DELETE = cmd("volume", "delete", "gv-exp1")
QUOTA_ON = cmd("volume", "quota", "gv-exp1", "enable")


def limit(nbytes):
    return cmd("volume", "quota", "gv-exp1", "limit-usage", "/", nbytes)


def set_option(key, value):
    return cmd("volume", "set", "gv-exp1", key, value)


ENABLED_8G = {"enabled": True, "readable": True, "limit": 8 * GIB}
ENABLED_STOPPED = {"enabled": True, "readable": False, "limit": None}
DISABLED = {"enabled": False, "readable": True, "limit": None}

# (what is there, what is asked) -> the exact commands, in order
PLANS = [
    ("absent -> started, options and quota, in one task",
     observed(), params(state="started", bricks=BRICKS, quota="1GiB",
                        options={"performance.readdir-ahead": True, "cluster.min-free-disk": "5%"}),
     [CREATE, set_option("performance.readdir-ahead", "on"),
      set_option("cluster.min-free-disk", "5%"), START, QUOTA_ON, limit(GIB)]),
    ("absent -> present creates and leaves it stopped",
     observed(), params(bricks=BRICKS), [CREATE]),
    ("absent -> stopped creates only",
     observed(), params(state="stopped", bricks=BRICKS), [CREATE]),
    ("absent -> absent", observed(), params(state="absent"), []),
    ("created -> started", observed("volume_info_distributed_created.xml"),
     params(state="started"), [START]),
    ("created -> present", observed("volume_info_distributed_created.xml"), params(), []),
    ("created -> stopped: never started counts as stopped",
     observed("volume_info_distributed_created.xml"), params(state="stopped"), []),
    ("created -> absent", observed("volume_info_distributed_created.xml"),
     params(state="absent"), [DELETE]),
    ("started -> absent straight away",
     observed("volume_info_started_options_quota.xml", ENABLED_8G), params(state="absent"),
     [STOP, DELETE]),
    ("started -> started with the same options and quota",
     observed("volume_info_started_options_quota.xml", ENABLED_8G),
     params(state="started", bricks=BRICKS, quota="8GiB",
            options={"readdir-ahead": "enable", "cluster.min-free-disk": "5%",
                     "performance.write-behind": True}),
     []),
    ("started -> started with one option changed",
     observed("volume_info_started_options_quota.xml", ENABLED_8G),
     params(state="started", options={"readdir-ahead": "off", "cluster.min-free-disk": "5%"}),
     [set_option("performance.readdir-ahead", "off")]),
    ("started -> started with a smaller quota",
     observed("volume_info_started_options_quota.xml", ENABLED_8G),
     params(state="started", quota="4G"), [limit(4 * GIB)]),
    ("started, quota disabled -> quota",
     observed("volume_info_started_options_quota.xml", DISABLED),
     params(state="present", quota="100GB"), [QUOTA_ON, limit(100 * 1000**3)]),
    ("started -> stopped applies the quota first, while gluster can still read it",
     observed("volume_info_started_options_quota.xml", ENABLED_8G),
     params(state="stopped", quota="2GiB"), [limit(2 * GIB), STOP]),
    ("stopped -> started with quota: the limit cannot be read, so it is set",
     observed("volume_info_stopped.xml", ENABLED_STOPPED),
     params(state="started", quota="8GiB"), [START, limit(8 * GIB)]),
    ("stopped -> stopped with quota: not checkable, nothing run",
     observed("volume_info_stopped.xml", ENABLED_STOPPED),
     params(state="stopped", quota="8GiB"), []),
    ("stopped -> absent", observed("volume_info_stopped.xml"), params(state="absent"),
     [DELETE]),
    ("absent -> started on privileged ports: server.allow-insecure turns off after quota",
     observed(), params(state="started", bricks=BRICKS, quota="1GiB",
                        options={"server.allow-insecure": "off", "client.bind-insecure": False}),
     [CREATE, set_option("client.bind-insecure", "off"), START, QUOTA_ON, limit(GIB),
      set_option("server.allow-insecure", "off")]),
    ("absent -> stopped on privileged ports: no quota to wait for",
     observed(), params(state="stopped", bricks=BRICKS, options={"allow-insecure": "off"}),
     [CREATE, set_option("allow-insecure", "off")]),
    ("started, quota disabled -> quota and server.allow-insecure off: quota first",
     observed("volume_info_started_options_quota.xml", DISABLED),
     params(quota="1GiB", options={"server.allow-insecure": "off"}),
     [QUOTA_ON, limit(GIB), set_option("server.allow-insecure", "off")]),
    ("stopped -> started with quota and server.allow-insecure off: start, quota, then the option",
     observed("volume_info_stopped.xml", ENABLED_STOPPED),
     params(state="started", quota="8GiB", options={"server.allow-insecure": "no"}),
     [START, limit(8 * GIB), set_option("server.allow-insecure", "no")]),
]


@pytest.mark.parametrize(("why", "seen", "asked", "commands"), PLANS,
                         ids=[case[0] for case in PLANS])
def test_plan(why, seen, asked, commands):
    assert gv.plan(seen, asked)[0] == commands


def test_create_with_a_replica_layout_and_force():
    bricks = [f"127.1.1.{n}:/srv/b/gv-r" for n in (1, 2, 3)]
    commands, _diff = gv.plan(observed(), params(name="gv-r", bricks=bricks, replica=3, arbiter=1,
                                                 force=True, glusterd_socket=None))
    assert commands == [["gluster", "--mode=script", "volume", "create", "gv-r", "replica", "3",
                         "arbiter", "1", "transport", "tcp", *bricks, "force", "--xml"]]


def test_quota_on_a_volume_that_will_not_be_started_is_a_warning():
    commands, warnings = gv.plan(observed(), params(bricks=BRICKS, quota="1GiB"))
    assert commands == [CREATE]
    assert warnings == ["quota of volume gv-exp1 not checked or applied: gluster reads and sets "
                        "quota only on a started volume; a task with state: started applies it"]
    assert gv.plan(observed(), params(state="started", bricks=BRICKS, quota="1GiB"))[1] == []


# --- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize(("seen", "asked", "problems"), [
    (None, params(name="gv.a", state="absent"),
     ["volume name 'gv.a': use only letters, digits, '-' and '_', and do not start with '-'"]),
    (None, params(name="ALL", bricks=BRICKS),
     ["'ALL' is reserved by gluster and cannot name a volume"]),
    (None, params(), ["volume gv-exp1 does not exist: give bricks to create it"]),
    (None, params(bricks=[BRICKS[0], BRICKS[0]]),
     [f"brick {BRICKS[0]} is given twice; each brick must be a different directory"]),
    (None, params(bricks=BRICKS, replica=2),
     ["3 bricks cannot be grouped in replica sets of 2; give a multiple of 2 bricks"]),
    (None, params(bricks=BRICKS, quota="lots"),
     ["quota: cannot read size 'lots': use a number with an optional unit K, M, G, T, P "
      "(or KiB..PiB: powers of 1024) or KB..PB (powers of 1000)"]),
    (None, params(bricks=BRICKS, quota="0"), ["quota must be larger than 0"]),
    (None, params(bricks=BRICKS, options={"features.quota": "on"}),
     ["options features.quota: set the quota with the quota option"]),
    (None, params(bricks=BRICKS, options={"cluster.min-free-disk": None}),
     ["option cluster.min-free-disk has no value; give one (gluster volume reset is not done "
      "here)"]),
    ("volume_info_distributed_created.xml", params(bricks=BRICKS[:2]),
     [f"volume gv-exp1 exists with bricks {BRICKS}; this module does not add, remove or replace "
      "bricks: give its bricks as they are (or leave bricks out), or delete the volume first"]),
    ("volume_info_distributed_created.xml", params(replica=3),
     ["volume gv-exp1 has replica 1, not 3; a volume's layout cannot be changed here"]),
    ("volume_info_distributed_created.xml", params(transport="rdma"),
     ["volume gv-exp1 uses transport tcp, not rdma"]),
    ("volume_info_distributed_created.xml", params(bricks=BRICKS, state="started"), []),
    ("volume_info_distributed_created.xml", params(state="absent", bricks=["nonsense"]), []),
    (None, params(bricks=BRICKS, disperse=3, redundancy=1, options={"performance.iot-pass-through": "yes"}),
     ["option performance.iot-pass-through yes: dispersed volumes drop their clients under writes with it "
      "(GlusterFS 10.3); leave it off"]),
    (None, params(bricks=BRICKS, disperse=3, redundancy=1, options={"performance.iot-pass-through": "off"}), []),
    (None, params(bricks=BRICKS, options={"performance.iot-pass-through": "on"}), []),  # distribute: measured fine
])
def test_request_problems(seen, asked, problems):
    assert gv.request_problems(asked, volume(seen) if seen else None) == problems


def test_bricks_of_another_volume_are_refused_before_gluster_is_asked():
    seen = dict(observed("volume_info_distributed_created.xml"), volume=None)
    asked = params(name="gv-new", bricks=[BRICKS[0]])
    assert gv.local_problems(asked, seen, is_local=lambda _host: False) == [
        f"brick {BRICKS[0]} is already part of volume gv-exp1"]


def test_only_bricks_on_this_host_are_checked_on_disk(tmp_path):
    asked = params(name="gv-new", bricks=[f"remote:{tmp_path}/nope/gv-new",
                                          f"here:{tmp_path}/nope/gv-new"], force=True)
    problems = gv.local_problems(asked, observed(), is_local=lambda host: host == "here")
    assert problems == [f"brick here:{tmp_path}/nope/gv-new: its parent directory "
                        f"{tmp_path}/nope does not exist on here; gluster creates only the last "
                        "directory of a brick path (mount the brick root first)"]


def test_an_existing_volume_is_not_checked_against_itself():
    seen = observed("volume_info_distributed_created.xml")
    assert gv.local_problems(params(bricks=BRICKS), seen, is_local=lambda _host: True) == []


def test_new_brick_dirs_are_the_local_ones_that_do_not_exist_yet(tmp_path):
    (tmp_path / "old").mkdir()
    asked = params(bricks=[f"here:{tmp_path}/old", f"here:{tmp_path}/new", f"far:{tmp_path}/x"])
    assert gv.new_local_brick_dirs(asked, is_local=lambda host: host == "here") == [
        f"{tmp_path}/new"]


# --- diff ------------------------------------------------------------------------------------

def test_summary_of_a_started_volume():
    vol = volume("volume_info_started_options_quota.xml")
    assert gv.summary(vol, {"performance.readdir-ahead": "on"}, ENABLED_8G) == {
        "state": "started", "bricks": BRICKS, "options": {"performance.readdir-ahead": "on"},
        "quota": "8GiB"}
    assert gv.summary(None) == {"state": "absent"}


def test_check_mode_predicts_the_state_after_creating():
    asked = params(state="started", bricks=BRICKS, quota="1GiB",
                   options={"readdir-ahead": True})
    seen = observed()
    before = gv.summary(None)
    assert gv.predicted_summary(before, seen, asked) == {
        "state": "started", "bricks": BRICKS, "options": {"readdir-ahead": "on"},
        "quota": "1GiB"}


def test_check_mode_predicts_stopping_and_deleting():
    seen = observed("volume_info_started_options_quota.xml", ENABLED_8G)
    before = gv.summary(seen["volume"], {}, ENABLED_8G)
    assert gv.predicted_summary(before, seen, params(state="stopped"))["state"] == "stopped"
    assert gv.predicted_summary(before, seen, params(state="absent")) == {"state": "absent"}


# --- running the module with recorded answers --------------------------------------------------

class Failed(Exception):
    pass


@pytest.fixture(autouse=True)
def aux_dir(tmp_path, monkeypatch):
    """glusterd's aux mount directory, here a temporary one: never this machine's /run/gluster."""
    directory = tmp_path / "run-gluster"
    directory.mkdir()
    monkeypatch.setattr(gv, "release_aux_mounts", lambda runner, name: mounts.release_aux_mounts(
        runner, name, directory=str(directory), mountinfo=[]))
    monkeypatch.setattr(gv, "release_dead_aux_mounts", lambda runner: mounts.release_dead_aux_mounts(
        runner, directory=str(directory), mountinfo=[]))
    return directory


@pytest.fixture
def gluster_module(fake_module):
    class GlusterFakeModule(fake_module):
        _diff = True

        def __init__(self, answers=(), check_mode=False):
            super().__init__(answers, check_mode)
            self.failure = None

        def get_bin_path(self, name, required=False):
            return "gluster"

        def fail_json(self, **result):
            self.failure = result
            raise Failed(result["msg"])

    return GlusterFakeModule


def answer(name):
    return (0, fixture(name), "")


def apply(module, cli, asked, seen, commands):
    """gv.apply, its failure reported as main() reports it (fail_json happens only there)."""
    try:
        gv.apply(module, cli, asked, seen, commands)
    except g.GlusterError as error:
        module.fail_json(**gv.failure(cli, error, asked))


def test_check_mode_reads_and_runs_nothing(gluster_module, tmp_path):
    # Loopback bricks count as local, so their parent directories must exist: use tmp_path,
    # never the test bed's paths (the unit stage runs without a test bed); tmp_path is on the
    # root filesystem, hence force.
    bricks = [f"127.1.1.{n}:{tmp_path}/node{n}/gv-exp1" for n in (1, 2, 3)]
    for n in (1, 2, 3):
        (tmp_path / f"node{n}").mkdir()
    module = gluster_module([answer("volume_info_missing.xml")], check_mode=True)
    asked = params(state="started", bricks=bricks, force=True)
    result = gv.run(module, g.GlusterCli(module, SOCK), asked)
    create = cmd("volume", "create", "gv-exp1", "transport", "tcp", *bricks, "force")
    assert result["commands"] == [create, START]
    assert result["changed"] is True
    assert result["volume"] is None
    assert result["diff"]["before"] == {"state": "absent"}
    assert [argv[3:5] for argv, _env in module.calls] == [["volume", "info"]]


def test_a_failed_start_deletes_the_volume_this_task_created(gluster_module, tmp_path):
    bricks = [f"127.1.1.9:{tmp_path}/gv-exp1"]  # local (loopback), but gluster never made it
    module = gluster_module([
        answer("volume_create_ok.xml"),
        answer("error_delete_started.xml"),  # "volume start" fails (any failure will do)
        answer("volume_stop_already.xml"),   # roll back: stop is refused, never started
        answer("volume_delete_ok.xml"),      # roll back: delete
        answer("volume_info_missing.xml"),   # which volume ids still exist
    ])
    cli = g.GlusterCli(module, SOCK)
    with pytest.raises(Failed):
        apply(module, cli, params(state="started", bricks=bricks), observed(),
              [cmd("volume", "create", "gv-exp1", "transport", "tcp", *bricks), START])
    assert module.failure["msg"] == (
        "gluster volume start gv-exp1: Volume gv-rec has been started.Volume needs to be "
        "stopped before deletion. (volume gv-exp1 was created by this task and has been "
        "deleted again)")
    assert module.failure["rolled_back"] == [DELETE]
    assert module.failure["commands"] == [
        cmd("volume", "create", "gv-exp1", "transport", "tcp", *bricks)]


def test_a_failed_create_removes_the_brick_dirs_gluster_made_here(gluster_module, tmp_path):
    brick_dir = tmp_path / "gv-exp1"
    bricks = [f"127.0.0.1:{brick_dir}"]

    class MakesTheBrickDir(gluster_module):
        def run_command(self, argv, environ_update=None, **kwargs):
            if "create" in argv:
                brick_dir.mkdir()  # as glusterd's staging does before another node refuses
            return super().run_command(argv, environ_update, **kwargs)

    module = MakesTheBrickDir([answer("error_create_remote_parent_missing.xml"),
                               answer("volume_info_missing.xml")])
    with pytest.raises(Failed):
        apply(module, g.GlusterCli(module, SOCK), params(state="started", bricks=bricks),
              observed(), [cmd("volume", "create", "gv-exp1", "transport", "tcp", *bricks)])
    assert "Staging failed on 127.1.1.2" in module.failure["msg"]
    assert "created by this task" not in module.failure["msg"]
    assert module.failure["rolled_back"] == []
    assert not brick_dir.exists()


def leftover_brick_dir(tmp_path, name="gv-exp1"):
    path = tmp_path / name
    (path / ".glusterfs").mkdir(parents=True)
    (path / "results.dat").write_text("job output")
    return str(path)


def test_absent_deletes_then_removes_the_brick_dirs_here_in_one_task(gluster_module, tmp_path):
    brick_dir = leftover_brick_dir(tmp_path)
    module = gluster_module([answer("volume_info_started_options_quota.xml"),
                             answer("volume_stop_ok.xml"), answer("volume_delete_ok.xml")])
    asked = params(state="absent", remove_brick_dirs=[brick_dir])
    result = gv.run(module, g.GlusterCli(module, SOCK), asked)
    assert result["commands"] == [STOP, DELETE]
    assert result["changed"] is True
    assert result["brick_dirs_removed"] == [{"path": brick_dir, "volume_id": None}]
    assert not Path(brick_dir).exists()
    assert result["volume"] is None  # deleted: not read again
    assert [argv[3:5] for argv, _env in module.calls] == [
        ["volume", "info"], ["volume", "stop"], ["volume", "delete"]]
    assert result["diff"]["before"]["brick_dirs_here"] == [brick_dir]
    assert result["diff"]["after"] == {"state": "absent", "brick_dirs_here": []}


def test_absent_in_check_mode_removes_nothing_and_says_what_would_go(gluster_module, tmp_path):
    brick_dir = leftover_brick_dir(tmp_path)
    module = gluster_module([answer("volume_info_distributed_created.xml")], check_mode=True)
    result = gv.run(module, g.GlusterCli(module, SOCK),
                    params(state="absent", remove_brick_dirs=[brick_dir]))
    assert result["commands"] == [DELETE]
    assert result["brick_dirs_removed"] == [{"path": brick_dir, "volume_id": None}]
    assert Path(brick_dir, "results.dat").read_text() == "job output"
    assert len(module.calls) == 1


def test_a_volume_already_gone_still_has_its_leftover_dirs_removed(gluster_module, tmp_path):
    brick_dir, missing = leftover_brick_dir(tmp_path), str(tmp_path / "never-made")
    module = gluster_module([answer("volume_info_missing.xml")])
    result = gv.run(module, g.GlusterCli(module, SOCK),
                    params(state="absent", remove_brick_dirs=[brick_dir, missing]))
    assert (result["commands"], result["changed"]) == ([], True)
    assert [d["path"] for d in result["brick_dirs_removed"]] == [brick_dir]
    second = gluster_module([answer("volume_info_missing.xml")])
    again = gv.run(second, g.GlusterCli(second, SOCK),
                   params(state="absent", remove_brick_dirs=[brick_dir, missing]))
    assert (again["changed"], again["brick_dirs_removed"]) == (False, [])


def test_a_dir_of_another_volume_stops_the_task_before_anything_is_deleted(
        gluster_module, monkeypatch):
    # gv-exp1's own brick (by path on this host) asked for while deleting "gv-other"; the
    # path is the test bed's, so the on-disk check is replaced by what it would find there
    brick = "/var/lib/bbctl-testbed/node1/bricks/nvme1/gv-exp1"
    monkeypatch.setattr(gv, "existing_dirs", lambda paths: [{"path": paths[0], "volume_id": None}])
    module = gluster_module([answer("volume_info_distributed_created.xml")])
    asked = params(name="gv-other", state="absent", remove_brick_dirs=[brick])
    with pytest.raises(gv.VolumeError, match=f"remove_brick_dirs: {brick} belongs to volume "
                                             "gv-exp1 \\(created\\)"):
        gv.run(module, g.GlusterCli(module, SOCK), asked)
    assert len(module.calls) == 1  # read only: nothing stopped or deleted


def test_a_non_brick_dir_stops_the_task_before_anything_is_deleted(gluster_module, tmp_path):
    (tmp_path / "home").mkdir()
    module = gluster_module([answer("volume_info_started_options_quota.xml")])
    with pytest.raises(gv.VolumeError, match=r"home carries no trusted\.glusterfs\.volume-id"):
        gv.run(module, g.GlusterCli(module, SOCK),
               params(state="absent", remove_brick_dirs=[str(tmp_path / "home")]))
    assert len(module.calls) == 1
    assert (tmp_path / "home").is_dir()


def test_remove_brick_dirs_is_refused_for_other_states():
    assert gv.request_problems(params(state="started", bricks=BRICKS,
                                      remove_brick_dirs=["/srv/b/x"]), None) == [
        "remove_brick_dirs is for state: absent only"]


# --- server.allow-insecure off and quota -----------------------------------

def allow_insecure_off(info="volume_info_started_options_quota.xml", quota=None):
    seen = observed(info, quota or DISABLED)
    seen["volume"]["options"]["server.allow-insecure"] = "off"
    seen["options"]["server.allow-insecure"] = "off"
    return seen


def test_quota_is_not_enabled_while_allow_insecure_is_off():
    assert gv.allow_insecure_problems(params(quota="1GiB"), allow_insecure_off()) == [
        "volume gv-exp1 has server.allow-insecure off, so quota cannot be enabled on it: "
        "GlusterFS's quota crawler connects from an unprivileged port, and refused it leaves the "
        "bricks' usage unaccounted (quota unenforced). Enable quota in the task that creates the "
        "volume (this module turns it off after quota), or set server.allow-insecure: on in "
        "this task"]


@pytest.mark.parametrize(("why", "seen", "asked"), [
    ("the task turns server.allow-insecure on first", allow_insecure_off(),
     params(quota="1GiB", options={"allow-insecure": True})),
    ("quota already enabled: only the limit changes", allow_insecure_off(quota=ENABLED_8G),
     params(quota="1GiB")),
    ("no quota asked", allow_insecure_off(), params()),
    ("server.allow-insecure on", observed("volume_info_started_options_quota.xml", DISABLED),
     params(quota="1GiB")),
    ("volume to be created", observed(), params(bricks=BRICKS, quota="1GiB")),
], ids=lambda case: case if isinstance(case, str) else "")
def test_quota_with_allow_insecure_off_is_fine_when(why, seen, asked):
    assert gv.allow_insecure_problems(asked, seen) == []


def test_turning_allow_insecure_on_comes_before_enabling_quota():
    asked = params(quota="1GiB", options={"server.allow-insecure": "on"})
    assert gv.plan(allow_insecure_off(), asked)[0] == [set_option("server.allow-insecure", "on"), QUOTA_ON, limit(GIB)]


@pytest.mark.parametrize(("key", "value", "closes"), [
    ("server.allow-insecure", "off", True), ("allow-insecure", False, True),
    ("server.allow-insecure", "disable", True), ("server.allow-insecure", "on", False),
    ("client.bind-insecure", "off", False), ("rpc-auth-allow-insecure", "off", False),
])
def test_what_turns_allow_insecure_off(key, value, closes):
    assert rules.turns_allow_insecure_off(key, value) is closes


def test_a_quota_that_reads_na_once_allow_insecure_is_off_fails_and_deletes_the_volume(
        gluster_module, tmp_path):
    bricks = [f"127.1.1.9:{tmp_path}/gv-exp1"]
    asked = params(state="started", bricks=bricks, quota="1GiB",
                   options={"server.allow-insecure": "off"})
    create = cmd("volume", "create", "gv-exp1", "transport", "tcp", *bricks)
    commands = [create, START, QUOTA_ON, limit(GIB), set_option("server.allow-insecure", "off")]
    module = gluster_module([
        answer("volume_create_ok.xml"), answer("volume_start_ok.xml"),
        answer("quota_enable_ok.xml"), answer("quota_limit_ok.xml"), answer("volume_set_ok.xml"),
        answer("quota_list_root_nolimit.xml"),  # N/A: the crawler was shut out
        answer("volume_stop_ok.xml"), answer("volume_delete_ok.xml"),
        answer("volume_info_missing.xml"),
    ])
    with pytest.raises(Failed):
        apply(module, g.GlusterCli(module, SOCK), asked, observed(), commands)
    assert module.failure["msg"] == (
        "quota of volume gv-exp1 reads N/A after server.allow-insecure was closed: its bricks' "
        "usage is not accounted, so the quota would not be enforced (volume gv-exp1 was created "
        "by this task and has been deleted again)")
    assert module.failure["rolled_back"] == [STOP, DELETE]


def test_no_quota_read_back_unless_allow_insecure_turns_off(gluster_module):
    module = gluster_module([answer("quota_enable_ok.xml"), answer("quota_limit_ok.xml")])
    seen = observed("volume_info_started_options_quota.xml", DISABLED)
    gv.apply(module, g.GlusterCli(module, SOCK), params(quota="1GiB"), seen,
             [QUOTA_ON, limit(GIB)])
    assert len(module.calls) == 2


def test_absent_removes_what_quota_commands_left_of_the_volume(gluster_module, aux_dir):
    """A `quota list` that timed out leaves its aux directory (and mount); every one leaves a pid file."""
    (aux_dir / "gv-exp1_quota_list").mkdir()
    (aux_dir / "gv-exp1_quota_list.pid").write_text("10637\n")
    (aux_dir / "gv-exp10_quota_list.pid").write_text("10638\n")  # another volume's: kept
    module = gluster_module([answer("volume_info_missing.xml"), (0, "", "")])
    result = gv.run(module, g.GlusterCli(module, SOCK), params(state="absent"))
    listed = str(aux_dir / "gv-exp1_quota_list")
    assert result["commands"] == [["rmdir", listed]] and result["changed"] is True
    assert result["aux_mounts_removed"] == [listed, listed + ".pid"]
    (aux_dir / "gv-exp1_quota_list").rmdir()  # what the rmdir above did (the fake runs nothing)
    assert sorted(p.name for p in aux_dir.iterdir()) == ["gv-exp10_quota_list.pid"]
    assert result["diff"]["after"] == {"state": "absent", "aux_mounts_here": []}
    second = gluster_module([answer("volume_info_missing.xml")])
    again = gv.run(second, g.GlusterCli(second, SOCK), params(state="absent"))
    assert (again["changed"], again["aux_mounts_removed"]) == (False, [])
