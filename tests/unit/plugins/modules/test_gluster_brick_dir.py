"""gluster_brick_dir: what may be removed, and which volume still owns a brick directory."""

import os
from pathlib import Path

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gluster as g
from ansible_collections.hpc.burstbuffer.plugins.modules import gluster_brick_dir as gbd

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
