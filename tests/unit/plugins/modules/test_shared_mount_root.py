"""The shared mount root's planner (shared_mount_root, buffer_mount's shared_root): (path, what is
there, the mount at it) -> commands."""

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import mounts as smr
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import parse_mountinfo_line

ROOT = "/mnt/bb"
BIND = ["mount", "--bind", ROOT, ROOT]
SHARE = ["mount", "--make-shared", ROOT]


def mount(optional=""):
    return parse_mountinfo_line(f"60 27 254:0 /mnt/bb {ROOT} rw,relatime {optional} - ext4 /dev/vda rw"
                                .replace("  ", " "))


CASES = {
    "missing: made, bound onto itself, shared": (
        False, False, None, [["mkdir", "-p", "--mode", "0755", ROOT], BIND, SHARE]),
    "a plain directory: bound onto itself, shared": (True, True, None, [BIND, SHARE]),
    "a private mount point: shared": (True, True, mount(), [SHARE]),
    "a slave mount point: shared too": (True, True, mount("master:1"), [SHARE]),
    "shared already: nothing": (True, True, mount("shared:7"), []),
    "shared and a slave: nothing": (True, True, mount("shared:7 master:1"), []),
}


@pytest.mark.parametrize(("exists", "is_dir", "entry", "commands"), CASES.values(), ids=CASES)
def test_plan_shared(exists, is_dir, entry, commands):
    assert smr.plan_shared(ROOT, exists, is_dir, entry, 0o755) == commands


def test_a_file_in_the_way_is_refused():
    with pytest.raises(smr.MountError, match="/mnt/bb exists and is not a directory"):
        smr.plan_shared(ROOT, True, False, None, 0o755)


def test_describe_reads_propagation():
    assert smr.describe_shared(None) == {"mount_point": False, "shared": False}
    assert smr.describe_shared(mount()) == {"mount_point": True, "shared": False}
    assert smr.describe_shared(mount("shared:3")) == {"mount_point": True, "shared": True}
