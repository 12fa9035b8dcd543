"""bbctl.reconcile's comparison of state records with a survey (the survey itself: tests/integration)."""

from __future__ import annotations

import types

import pytest

from bbctl import reconcile
from bbctl.pools import Brick
from bbctl.reconcile import ORPHAN_VOLUME, STRAY_AUX_MOUNT, STRAY_BRICK_DIR, STRAY_MOUNT, VOLUME_MISSING, Reality
from bbctl.state import Buffer, BufferState

NOW = 1_000_000.0
ROOT = "/srv/bb/nvme0"


def brick(server: str, root: str = ROOT) -> Brick:
    return Brick(pool="nvme", server=server, address=f"{server}-ib", path=root, device="/dev/nvme0n1")


def record(key: str, state: BufferState = BufferState.CREATED, *, servers=("s1", "s2"), fs="gluster",
           age: float = 3600) -> Buffer:
    return Buffer(key=key, owner_uid=1001, owner_gid=1001, pool="nvme", capacity=8 << 30, fs=fs, state=state,
                  bricks=tuple(brick(s) for s in servers), created_at=NOW - age, updated_at=NOW - age)


def reality(volumes=None, brick_dirs=(), mounts=(), answered=("s1", "s2", "s3"), aux_mounts=(),
            lustre_targets=(), unanswered=None) -> Reality:
    return Reality(volumes=volumes or {}, brick_dirs=list(brick_dirs), mounts=list(mounts),
                   answered=frozenset(answered), aux_mounts=list(aux_mounts), lustre_targets=list(lustre_targets),
                   unanswered=unanswered or {})


def kinds(drifts) -> list[tuple[str, str]]:
    return [(d.kind, d.volume) for d in drifts]


def compare(buffers, found, older_than=600):
    return reconcile.compare(buffers, found, now=NOW, older_than=older_than)


def test_a_buffer_whose_volume_and_brick_dirs_exist_is_no_drift():
    found = reality({"bbjob-7": [("s1", ROOT), ("s2", ROOT)]},
                    brick_dirs=[("s1", ROOT, "bbjob-7"), ("s2", ROOT, "bbjob-7")],
                    mounts=[("localhost", "/var/lib/bb/stage/bbjob-7"), ("node1", "/mnt/bb/bbjob-7-private")])
    assert compare([record("7")], found) == []


def test_a_volume_deleted_behind_bbctl_is_missing():
    drifts = compare([record("7", BufferState.MOUNTED)], reality())
    assert kinds(drifts) == [(VOLUME_MISSING, "bbjob-7")]
    assert drifts[0].key == "7" and "deleted outside bbctl" in drifts[0].detail
    assert drifts[0].where == (f"s1:{ROOT}/bbjob-7", f"s2:{ROOT}/bbjob-7")


def test_nobody_answering_for_the_buffers_servers_is_no_evidence():
    assert compare([record("7")], reality(answered=("s3",))) == []
    assert kinds(compare([record("7")], reality(answered=("s2",)))) == [(VOLUME_MISSING, "bbjob-7")]


@pytest.mark.parametrize("state", [BufferState.ALLOCATING, BufferState.CREATING, BufferState.DESTROYING])
def test_a_stage_in_flight_may_still_be_making_its_volume(state):
    assert compare([record("7", state, age=10)], reality()) == []
    drifts = compare([record("7", state, age=700)], reality())
    assert kinds(drifts) == [(VOLUME_MISSING, "bbjob-7")]


def test_a_failed_setup_is_a_volume_that_never_came_up():
    drifts = compare([record("7", BufferState.FAILED, age=1)], reality())
    assert kinds(drifts) == [(VOLUME_MISSING, "bbjob-7")] and "never came up" in drifts[0].detail


def test_destroyed_records_are_not_compared():
    assert compare([record("7", BufferState.DESTROYED)], reality()) == []


def lustre_target(fsname: str, kind: str, index: int, server: str = "s1") -> reconcile.LustreTarget:
    return reconcile.LustreTarget(server, f"/var/lib/bb-lustre/{fsname}-{kind.upper()}{index:04x}",
                                  f"/dev/nvme{index}n1", fsname, kind, index)


def test_a_lustre_buffer_is_there_while_its_mdt_is_mounted_on_its_first_server():
    lustre = record("8", fs="lustre")  # fsname j8, MDT on s1
    mdt = lustre_target("j8", "mdt", 0)
    assert compare([lustre], reality(lustre_targets=[mdt])) == []
    drifts = compare([lustre], reality())
    assert kinds(drifts) == [(VOLUME_MISSING, "bbjob-8")] and "j8-MDT0000) is not mounted on s1" in drifts[0].detail
    assert compare([lustre], reality(answered=("s2", "s3"))) == []  # s1, which would know, did not answer


def test_lustre_targets_of_no_record_are_one_orphan_per_fsname_mdt_first():
    found = reality(lustre_targets=[
        lustre_target("j9", "ost", 1, "s2"), lustre_target("j9", "mdt", 0), lustre_target("j9", "ost", 0, "s3"),
        lustre_target("j8", "mdt", 0)])
    drifts = compare([record("8", fs="lustre")], found)
    assert kinds(drifts) == [(reconcile.ORPHAN_LUSTRE, "j9")]
    assert drifts[0].where == ("s1:/var/lib/bb-lustre/j9-MDT0000", "s3:/var/lib/bb-lustre/j9-OST0000",
                               "s2:/var/lib/bb-lustre/j9-OST0001")


def test_orphan_lustre_targets_are_destroyed_as_a_buffer_only_when_the_set_is_whole(monkeypatch, tmp_path):
    runs = []

    class Run:
        def raise_for_failure(self):
            pass

    def run_stage(site, key, stage, playbook, extravars, hosts, timeout, cancel):
        runs.append((playbook, extravars, hosts))
        return Run()

    class Life:
        site = type("Site", (), {"stage_root": tmp_path})()
        _bb_settings = types.MappingProxyType({})
        cancel = None

    monkeypatch.setattr(reconcile.runner, "run_stage", run_stage)
    whole = [lustre_target("j9", "ost", 1, "s2"), lustre_target("j9", "mdt", 0), lustre_target("j9", "ost", 0, "s3")]
    found = reality(lustre_targets=[*whole, lustre_target("ja", "ost", 1, "s2")])
    outcomes = reconcile.repair(Life(), compare([], found), found)
    assert [(o["volume"], o["repaired"]) for o in outcomes] == [("j9", True), ("ja", False)]
    assert "not tried: ja's targets are not one MDT and OSTs 0 to N-1" in outcomes[1]["error"]
    [(playbook, extravars, hosts)] = runs  # ja was not given to the role
    assert playbook == "buffer_destroy.yml" and hosts == ["s1", "s2", "s3"] and not extravars["bb_stage_mounted"]
    buffer = extravars["bb_buffer"]
    assert (buffer["fs"], buffer["fsname"]) == ("lustre", "j9")
    assert [(b["host"], b["device"]) for b in buffer["bricks"]] == [
        ("s1", "/dev/nvme0n1"), ("s3", "/dev/nvme0n1"), ("s2", "/dev/nvme1n1")]


def test_reality_of_keeps_the_lustre_targets_of_servers_that_answered():
    target = {"target": "/var/lib/bb-lustre/j8-MDT0000", "source": "/dev/nvme0n1", "fsname": "j8", "kind": "mdt",
              "index": 0}
    results = [(s, {"brick_dirs": [], "mounts": [], "lustre_targets": [target]}) for s in ("s1", "s2")]
    found = reconcile.reality_of(results, {}, storage=frozenset({"s1", "s2"}), failures=["s2: timed out"])
    assert found.lustre_targets == [reconcile.LustreTarget("s1", target["target"], "/dev/nvme0n1", "j8", "mdt", 0)]


def test_a_volume_no_record_holds_is_an_orphan_and_its_brick_dirs_go_with_it():
    found = reality({"bbp-old": [("s1", ROOT), ("s3", ROOT)]},
                    brick_dirs=[("s1", ROOT, "bbp-old"), ("s3", ROOT, "bbp-old")])
    drifts = compare([], found)
    assert kinds(drifts) == [(ORPHAN_VOLUME, "bbp-old")]
    assert drifts[0].where == (f"s1:{ROOT}/bbp-old", f"s3:{ROOT}/bbp-old")


def test_brick_dirs_of_no_volume_and_no_record_are_stray_one_drift_per_volume():
    found = reality(brick_dirs=[("s2", ROOT, "bbjob-9"), ("s1", ROOT, "bbjob-9"), ("s1", "/srv/bb/nvme1", "bbp-x")])
    drifts = compare([], found)
    assert kinds(drifts) == [(STRAY_BRICK_DIR, "bbjob-9"), (STRAY_BRICK_DIR, "bbp-x")]
    assert drifts[0].where == (f"s1:{ROOT}/bbjob-9", f"s2:{ROOT}/bbjob-9")


def test_a_brick_dir_on_a_brick_the_record_does_not_hold_is_stray():
    """Same name, other brick root: a leftover of an earlier buffer of the same key."""
    found = reality({"bbjob-7": [("s1", ROOT), ("s2", ROOT)]},
                    brick_dirs=[("s1", ROOT, "bbjob-7"), ("s1", "/srv/bb/nvme1", "bbjob-7")])
    assert kinds(compare([record("7")], found)) == [(STRAY_BRICK_DIR, "bbjob-7")]


def test_an_allocating_records_brick_dirs_are_its_own():
    found = reality(brick_dirs=[("s1", ROOT, "bbjob-7")])
    assert compare([record("7", BufferState.ALLOCATING, age=1)], found) == []


def test_mounts_of_no_record_are_stray_private_ones_by_their_volume():
    found = reality(mounts=[("node1", "/mnt/bb/bbjob-5"), ("node1", "/mnt/bb/bbjob-5-private"),
                            ("node2", "/mnt/bb/bbjob-7")], volumes={"bbjob-7": [("s1", ROOT), ("s2", ROOT)]})
    drifts = compare([record("7")], found)
    assert kinds(drifts) == [(STRAY_MOUNT, "bbjob-5"), (STRAY_MOUNT, "bbjob-5")]
    assert [d.where for d in drifts] == [("node1:/mnt/bb/bbjob-5",), ("node1:/mnt/bb/bbjob-5-private",)]


def test_an_aux_mount_is_drift_once_its_volume_is_gone_and_its_server_answered():
    """Found after 50 jobs at once (2026-12-07): `quota list` timed out and its mount stayed."""
    listed = "/run/gluster/bbjob-61_quota_list"
    found = reality({"bbjob-7": [("s1", ROOT), ("s2", ROOT)]},
                    aux_mounts=[("s1", listed, "bbjob-61"), ("s1", "/run/gluster/bbjob-7_quota_list", "bbjob-7"),
                                ("s9", "/run/gluster/bbjob-62_quota_limit", "bbjob-62")])
    drifts = compare([record("7")], found)
    assert kinds(drifts) == [(STRAY_AUX_MOUNT, "bbjob-61")]  # bbjob-7 lives; s9 did not answer
    assert drifts[0].where == (f"s1:{listed}",) and "timed out" in drifts[0].detail


def test_repair_unmounts_aux_mounts_in_one_run_over_their_servers(monkeypatch):
    runs = []
    monkeypatch.setattr(reconcile, "unmount_aux", lambda life, drifts: runs.append([d.where for d in drifts]))
    monkeypatch.setattr(reconcile, "destroy_pieces", lambda life, name, drifts: runs.append(name))
    aux = [reconcile.Drift(STRAY_AUX_MOUNT, f"bbjob-{n}", None, (f"s1:/run/gluster/bbjob-{n}_quota_list",), "x")
           for n in (61, 69)]
    stray = reconcile.Drift(STRAY_MOUNT, "bbjob-5", None, ("node1:/mnt/bb/bbjob-5",), "x")
    outcomes = reconcile.repair(object(), [*aux, stray])
    assert runs == [[d.where for d in aux], "bbjob-5"]
    assert [(o["kind"], o["volume"], o["repaired"]) for o in outcomes] == [
        (STRAY_AUX_MOUNT, "bbjob-61", True), (STRAY_AUX_MOUNT, "bbjob-69", True), (STRAY_MOUNT, "bbjob-5", True)]


def test_repair_leaves_what_lies_on_a_server_that_did_not_answer_and_says_so(monkeypatch):
    destroyed, pieces = [], []

    class Life:
        def destroy(self, key, stage):
            destroyed.append(key)

    monkeypatch.setattr(reconcile, "destroy_pieces", lambda life, name, drifts: pieces.append(name))
    down = reality(answered=("s1", "s2"), unanswered={"s3": "s3: glusterd is not running"})
    drifts = compare([record("7", servers=("s1", "s3")), record("8", servers=("s1", "s2"))], reality(answered=("s1",)))
    drifts += compare([], reality({"bbp-old": [("s2", ROOT), ("s3", ROOT)]}, answered=("s1", "s2")))
    drifts += compare([], reality(brick_dirs=[("s1", ROOT, "bbp-gone")], answered=("s1",)))
    assert kinds(drifts) == [(VOLUME_MISSING, "bbjob-7"), (VOLUME_MISSING, "bbjob-8"), (ORPHAN_VOLUME, "bbp-old"),
                             (STRAY_BRICK_DIR, "bbp-gone")]
    outcomes = reconcile.repair(Life(), drifts, down)
    assert destroyed == ["8"] and pieces == ["bbp-gone"]  # nothing that touches s3 was tried
    assert [(o["volume"], o["repaired"]) for o in outcomes] == [
        ("bbjob-7", False), ("bbjob-8", True), ("bbp-old", False), ("bbp-gone", True)]
    for left in (outcomes[0], outcomes[2]):
        assert left["error"].startswith("not tried: s3 did not answer the survey (s3: glusterd is not running)")
        assert "bbctl reconcile --repair" in left["error"]
    assert reconcile.exit_code({"drift": drifts, "repaired": outcomes}) == reconcile.EXIT_DRIFT


def test_reality_of_maps_addresses_to_servers_and_drops_hosts_that_failed():
    results = [
        ("s1", {"volumes": [{"name": "bbjob-7", "bricks": [{"host": "s1-ib", "path": f"{ROOT}/bbjob-7"},
                                                         {"host": "s2-ib", "path": f"{ROOT}/bbjob-7"}]}],
                "brick_dirs": [{"root": ROOT, "name": "bbjob-7"}], "mounts": [],
                "aux_mounts": [{"target": "/run/gluster/bbjob-6_quota_list", "volume": "bbjob-6"}]}),
        ("s2", {"volumes": [], "brick_dirs": [], "mounts": []}),
        ("node1", {"volumes": [], "brick_dirs": [], "mounts": [{"target": "/mnt/bb/bbjob-7"}]}),
        ("s1", {"changed": False}),  # another task's result
    ]
    found = reconcile.reality_of(results, {"s1-ib": "s1", "s2-ib": "s2"}, storage=frozenset({"s1", "s2", "s3"}),
                                 failures=["s2: Read the volumes: glusterd is down"])
    assert found.volumes == {"bbjob-7": [("s1", ROOT), ("s2", ROOT)]}
    assert found.brick_dirs == [("s1", ROOT, "bbjob-7")] and found.mounts == [("node1", "/mnt/bb/bbjob-7")]
    assert found.answered == frozenset({"s1"}) and "s2" in found.unanswered
    assert found.aux_mounts == [("s1", "/run/gluster/bbjob-6_quota_list", "bbjob-6")]


def test_render_names_each_drift_and_each_repair():
    drift = reconcile.Drift(VOLUME_MISSING, "bbjob-7", "7", (f"s1:{ROOT}/bbjob-7",), "its volume is gone")
    report = {"drift": [drift.to_dict()], "unanswered": {"s3": "s3: unreachable"},
              "repaired": [{"volume": "bbjob-7", "kind": VOLUME_MISSING, "repaired": False, "error": "boom"}]}
    text = reconcile.render(report)
    assert "unanswered: s3" in text and "volume_missing bbjob-7 (buffer 7): its volume is gone" in text
    assert "NOT repaired volume_missing bbjob-7: boom" in text
    assert reconcile.render({"drift": [], "unanswered": {}, "repaired": []}).startswith("no drift")


def report_of(drifts: int, repaired: tuple[bool, ...] = ()) -> dict:
    drift = [reconcile.Drift(ORPHAN_VOLUME, f"bbp-o{n}", None, (f"s1:{ROOT}/bbp-o{n}",), "x").to_dict()
             for n in range(drifts)]
    outcomes = [{"volume": f"bbp-o{n}", "kind": ORPHAN_VOLUME, "repaired": ok, "error": None if ok else "boom"}
                for n, ok in enumerate(repaired)]
    return {"drift": drift, "unanswered": {}, "repaired": outcomes}


@pytest.mark.parametrize(("drifts", "repaired", "code"), [
    (0, (), 0),                                   # no drift
    (2, (), reconcile.EXIT_DRIFT),                # reported, not repaired (no --repair, or gc's dry run)
    (2, (True, True), 0),                         # --repair repaired every one
    (2, (True, False), reconcile.EXIT_DRIFT),     # --repair left one
    (1, (False,), reconcile.EXIT_DRIFT),
])
def test_the_exit_code_says_whether_drift_is_left(drifts, repaired, code):
    report = report_of(drifts, repaired)
    assert reconcile.exit_code(report) == code
    assert reconcile.unrepaired(report) == drifts - sum(repaired)


def test_hosts_that_did_not_answer_are_not_drift():
    report = {**report_of(0), "unanswered": {"s3": "s3: unreachable"}}
    assert reconcile.exit_code(report) == 0
    assert reconcile.EXIT_DRIFT not in (0, 1, 2, 3, 4)  # distinct from every other exit code of bbctl
