"""buffer_survey's Lustre targets: the lustre mounts directly under the target roots, by their names."""

from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import MountEntry
from ansible_collections.hpc.burstbuffer.plugins.modules import buffer_survey

ROOT = "/var/lib/bb-lustre"


def mount(target: str, fstype: str = "lustre", source: str = "/dev/nvme1n1") -> MountEntry:
    return MountEntry(mount_id=1, parent_id=0, major=259, minor=1, root="/", target=target, options="rw",
                      fstype=fstype, source=source, super_options="rw")


def test_lustre_targets_are_the_lustre_mounts_named_as_targets_directly_under_a_root():
    entries = [mount(f"{ROOT}/j3mv-MDT0000", source="/dev/nvme0n1"), mount(f"{ROOT}/j3mv-OST000a"),
               mount("/lustre/project/OST0001"),              # a site's own server: not under the root
               mount(f"{ROOT}/sub/j3mv-OST0001"),             # not directly under it
               mount(f"{ROOT}/j3mv-OST0002", fstype="xfs"),   # not lustre
               mount(f"{ROOT}/notatarget"),                   # not a target's name
               mount("/mnt/bb/bbjob-4711", fstype="fuse.glusterfs")]
    assert buffer_survey.lustre_targets([ROOT + "/"], entries) == [
        {"target": f"{ROOT}/j3mv-MDT0000", "source": "/dev/nvme0n1", "fsname": "j3mv", "kind": "mdt", "index": 0},
        {"target": f"{ROOT}/j3mv-OST000a", "source": "/dev/nvme1n1", "fsname": "j3mv", "kind": "ost", "index": 10}]
    assert buffer_survey.lustre_targets([], entries) == []
