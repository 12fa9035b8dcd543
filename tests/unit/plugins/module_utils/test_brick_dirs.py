"""Brick directories: what may be removed, which volume still owns one, waiting for it to go."""

import os
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import brick_dirs as gbd
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gluster as g

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "gluster"
GV_EXP1 = "a16102d7-05e9-4f25-8be5-bd6825bd3d20"
BRICK1 = "/var/lib/bbctl-testbed/node1/bricks/nvme1/gv-exp1"


def volumes():
    return g.parse_volume_info((FIXTURES / "volume_info_distributed_created.xml").read_text())


def test_a_brick_directory_with_a_glusterfs_dir_may_go(tmp_path):
    (tmp_path / "gv" / ".glusterfs").mkdir(parents=True)
    gbd.refuse_non_brick_dir(str(tmp_path / "gv"))


def test_a_directory_with_only_the_volume_id_may_go(tmp_path):
    brick = tmp_path / "gv"
    brick.mkdir()
    try:
        os.setxattr(brick, "trusted.glusterfs.volume-id", bytes.fromhex(GV_EXP1.replace("-", "")))
    except OSError as error:
        pytest.skip(f"cannot set trusted.* xattrs here: {error}")
    gbd.refuse_non_brick_dir(str(brick))


@pytest.mark.parametrize(("make", "why"), [
    (lambda p: p.mkdir(), "is not a gluster brick directory"),
    (lambda p: p.write_text("data"), "is not a directory"),
    (lambda p: p.symlink_to("/"), "is not a directory (or is a symbolic link or /)"),
])
def test_anything_else_is_left_alone(tmp_path, make, why):
    path = tmp_path / "gv"
    make(path)
    with pytest.raises(gbd.BrickDirError, match=why.replace("(", r"\(").replace(")", r"\)")):
        gbd.refuse_non_brick_dir(str(path))
    assert os.path.lexists(path)


def test_a_mount_point_or_root_is_refused():
    with pytest.raises(gbd.BrickDirError, match="is a mount point"):
        gbd.refuse_non_brick_dir("/proc")
    with pytest.raises(gbd.BrickDirError, match="is not a directory"):
        gbd.refuse_non_brick_dir("/")


def test_owner_by_volume_id_wherever_the_brick_is():
    owner = gbd.owning_volume(volumes(), "/elsewhere/gv", GV_EXP1, is_local=lambda _h: False)
    assert owner["name"] == "gv-exp1"


def test_owner_by_brick_path_on_this_host():
    assert gbd.owning_volume(volumes(), BRICK1, None, is_local=lambda h: h == "127.1.1.1")[
        "name"] == "gv-exp1"
    assert gbd.owning_volume(volumes(), BRICK1, None, is_local=lambda _h: False) is None


def test_a_deleted_volumes_directory_has_no_owner():
    assert gbd.owning_volume(volumes(), "/srv/b/gv-old", "0b8d6c53-8f43-4e4f-9d55-4b0d3c1c1c1c",
                             is_local=lambda _h: True) is None


def brick_dir(tmp_path, name="gv"):
    path = tmp_path / name
    (path / ".glusterfs").mkdir(parents=True)
    return str(path)


def test_existing_dirs_checks_every_path_before_anything_is_removed(tmp_path):
    good = brick_dir(tmp_path, "gv")
    (tmp_path / "plain").mkdir()
    assert gbd.existing_dirs([good, str(tmp_path / "gone")]) == [{"path": good, "volume_id": None}]
    with pytest.raises(gbd.BrickDirError, match=r"plain carries no trusted\.glusterfs\.volume-id"):
        gbd.existing_dirs([good, str(tmp_path / "plain")])
    assert os.path.isdir(good)


class Glusterd:
    """volumes() answers from a script: one list of volumes per question; the last repeats."""

    def __init__(self, *answers):
        self.answers, self.asked = list(answers), 0

    def volumes(self):
        self.asked += 1
        answer = self.answers[min(self.asked, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_returns_as_soon_as_the_volume_is_gone(tmp_path):
    dirs = [{"path": "/srv/b/gv-exp1", "volume_id": GV_EXP1}]
    glusterd, clock = Glusterd(volumes(), volumes(), []), Clock()
    assert gbd.wait_until_unowned(glusterd.volumes, dirs, 60, clock.sleep, clock) == {}
    assert glusterd.asked == 3
    assert clock.now == pytest.approx(2 * gbd.POLL_INTERVAL)


def test_wait_gives_up_at_the_timeout_and_names_the_owner():
    dirs = [{"path": "/srv/b/gv-exp1", "volume_id": GV_EXP1}]
    glusterd, clock = Glusterd(volumes()), Clock()
    owned = gbd.wait_until_unowned(glusterd.volumes, dirs, 1, clock.sleep, clock)
    assert owned["/srv/b/gv-exp1"]["name"] == "gv-exp1"
    assert 1 <= clock.now < 1 + 2 * gbd.POLL_INTERVAL
    message = gbd.owned_message(owned, 1)
    assert message.startswith("/srv/b/gv-exp1 belongs to volume gv-exp1 (created) after waiting 1 s")
    assert "delete the volume first" in message


def peers(*connected):
    return [{"hostname": "localhost", "local": True, "connected": True}] + [
        {"hostname": f"10.0.0.{n}", "local": False, "connected": up} for n, up in enumerate(connected, 2)]


def test_a_disconnected_peer_ends_the_wait_at_once_naming_it():
    """glusterd deletes no volume while a peer is down: waiting would only meet the teardown's timeout."""
    dirs = [{"path": "/srv/b/gv-exp1", "volume_id": GV_EXP1}]
    glusterd, clock = Glusterd(volumes()), Clock()
    with pytest.raises(gbd.BrickDirError, match=r"/srv/b/gv-exp1 belongs to volume gv-exp1, which glusterd will "
                                                r"not delete while peer\(s\) 10\.0\.0\.3 are disconnected"):
        gbd.wait_until_unowned(glusterd.volumes, dirs, 300, clock.sleep, clock, read_peers=lambda: peers(True, False))
    assert clock.now == 0


def test_connected_peers_do_not_end_the_wait():
    dirs = [{"path": "/srv/b/gv-exp1", "volume_id": GV_EXP1}]
    glusterd, clock = Glusterd(volumes(), volumes(), []), Clock()
    assert gbd.wait_until_unowned(glusterd.volumes, dirs, 60, clock.sleep, clock,
                                  read_peers=lambda: peers(True, True)) == {}
    assert gbd.disconnected(peers(True, False, False)) == ["10.0.0.3", "10.0.0.4"]


def test_no_wait_asks_once():
    dirs = [{"path": "/srv/b/gv-exp1", "volume_id": GV_EXP1}]
    glusterd, clock = Glusterd(volumes(), []), Clock()
    assert gbd.wait_until_unowned(glusterd.volumes, dirs, 0, clock.sleep, clock)
    assert (glusterd.asked, clock.now) == (1, 0)
    assert "after waiting" not in gbd.owned_message(
        gbd.wait_until_unowned(Glusterd(volumes()).volumes, dirs, 0, clock.sleep, clock), 0)


def test_glusterd_that_cannot_be_asked_is_a_refusal_naming_the_way_out():
    dirs = [{"path": "/srv/b/gv", "volume_id": None}]
    glusterd, clock = Glusterd(g.GlusterError("Connection failed")), Clock()
    with pytest.raises(gbd.BrickDirError, match=r"cannot ask glusterd whether /srv/b/gv .*"
                                                r"Connection failed.*check_volumes: false"):
        gbd.wait_until_unowned(glusterd.volumes, dirs, 5, clock.sleep, clock)


def test_remove_takes_the_whole_tree(tmp_path):
    path = brick_dir(tmp_path)
    (Path(path) / "data").write_text("x")
    gbd.remove([{"path": path, "volume_id": None}])
    assert not os.path.lexists(path)
    assert tmp_path.is_dir()
