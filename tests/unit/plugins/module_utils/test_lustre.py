"""Tables for module_utils.lustre: names, labels, argv and parsers.

The expected values follow lustre-release's mkfs_lustre.c (fsname rule, label
format, --index refused for a standalone MGS).
"""

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils.lustre import (
    LustreError,
    canonical_label,
    expected_roles,
    labels_match,
    mkfs_argv,
    mount_argv,
    mount_source,
    parse_findmnt,
    parse_tunefs_dryrun,
    target_label,
    umount_argv,
    validate_fsname,
    wipe_argv,
    zfs_pool,
)

NID = "10.0.0.1@tcp"
NID2 = "10.0.0.2@tcp"


@pytest.mark.parametrize("fsname", ["a", "bbfs", "my_fs-1", "ABCDEFGH", "12345678", "-"])
def test_valid_fsnames(fsname):
    assert validate_fsname(fsname) == fsname


@pytest.mark.parametrize(("fsname", "message"), [
    ("", "fsname is empty"),
    (None, "fsname is empty"),
    ("toolongname", "'toolongname' has 11 characters; Lustre allows at most 8"),
    ("my.fs", "character '.' is not allowed"),
    ("fs/x", "character '/' is not allowed"),
    ("fs x", "character ' ' is not allowed"),
    ("fs:x", "character ':' is not allowed"),
    ("fsé", "character 'é' is not allowed"),
])
def test_invalid_fsnames_say_what_is_wrong(fsname, message):
    with pytest.raises(LustreError, match=message) as error:
        validate_fsname(fsname)
    if fsname:
        assert "A-Z, a-z, 0-9, '_' and '-'" in str(error.value) or "at most 8" in str(error.value)


@pytest.mark.parametrize(("kind", "fsname", "index", "label"), [
    ("mgs", "fs", None, "MGS"),
    ("mdt", "fs", 0, "fs-MDT0000"),
    ("mdt", "fs", 1, "fs-MDT0001"),
    ("ost", "fs", 3, "fs-OST0003"),
    ("ost", "fs", 10, "fs-OST000a"),
    ("ost", "fs", 0x1A19, "fs-OST1a19"),
    ("ost", "fs", 65534, "fs-OSTfffe"),
    ("mgs_mdt", "fs", None, "fs-MDT0000"),
    ("mgs_mdt", "scratch1", 1, "scratch1-MDT0001"),
    ("ost", "my-fs", 2, "my-fs-OST0002"),
])
def test_target_labels(kind, fsname, index, label):
    assert target_label(kind, fsname, index) == label


@pytest.mark.parametrize(("kind", "index", "message"), [
    ("mgs", 0, "a standalone MGS has no index"),
    ("ost", None, "kind=ost needs an index"),
    ("mdt", None, "kind=mdt needs an index"),
    ("ost", -1, "index -1 is out of range: use an integer from 0 to 65534"),
    ("ost", 65535, "index 65535 is out of range"),
    ("ost", True, "index True is out of range"),
])
def test_bad_indexes(kind, index, message):
    with pytest.raises(LustreError, match=message):
        target_label(kind, "fs", index)


def test_unknown_kind():
    with pytest.raises(LustreError, match="unknown target kind 'oss'"):
        target_label("oss", "fs", 0)


@pytest.mark.parametrize(("found", "canonical"), [
    ("fs:OST0003", "fs-OST0003"),  # formatted, never mounted
    ("fs=OST0003", "fs-OST0003"),  # after tunefs.lustre --writeconf
    ("fs+OST0003", "fs-OST0003"),  # after tunefs.lustre --nolocallogs
    ("fs-OST0003", "fs-OST0003"),
    ("my-fs:MDT0000", "my-fs-MDT0000"),
    ("MGS", "MGS"),
    ("scratch", "scratch"),
    ("", None),
    (None, None),
])
def test_canonical_labels(found, canonical):
    assert canonical_label(found) == canonical


@pytest.mark.parametrize(("found", "expected", "match"), [
    ("fs:OST0003", "fs-OST0003", True),
    ("fs-OST0003", "fs-OST0003", True),
    ("fs-OST0004", "fs-OST0003", False),
    ("fs:MDT0003", "fs-OST0003", False),
    ("other:OST0003", "fs-OST0003", False),
    ("MGS", "MGS", True),
    (None, "MGS", False),
])
def test_labels_match(found, expected, match):
    assert labels_match(found, expected) is match


# (kind, fsname, index, mgsnode, force) -> exact argv, device /dev/sdb
MKFS_CASES = [
    (("mgs", "fs", None, None, False),
     ["mkfs.lustre", "--mgs", "--backfstype=ldiskfs", "/dev/sdb"]),
    (("mgs_mdt", "fs", 0, None, False),
     ["mkfs.lustre", "--mgs", "--mdt", "--fsname=fs", "--index=0", "--backfstype=ldiskfs",
      "/dev/sdb"]),
    (("mgs_mdt", "fs", None, None, True),
     ["mkfs.lustre", "--mgs", "--mdt", "--fsname=fs", "--index=0", "--backfstype=ldiskfs",
      "--reformat", "/dev/sdb"]),
    (("mdt", "fs", 1, [NID], False),
     ["mkfs.lustre", "--mdt", "--fsname=fs", "--index=1", f"--mgsnode={NID}",
      "--backfstype=ldiskfs", "/dev/sdb"]),
    (("ost", "fs", 3, [NID, NID2], False),
     ["mkfs.lustre", "--ost", "--fsname=fs", "--index=3", f"--mgsnode={NID}",
      f"--mgsnode={NID2}", "--backfstype=ldiskfs", "/dev/sdb"]),
    (("ost", "fs", 3, [NID], True),
     ["mkfs.lustre", "--ost", "--fsname=fs", "--index=3", f"--mgsnode={NID}",
      "--backfstype=ldiskfs", "--reformat", "/dev/sdb"]),
    (("ost", "scratch1", 65534, ["10.0.0.1@tcp,10.1.0.1@o2ib"], False),
     ["mkfs.lustre", "--ost", "--fsname=scratch1", "--index=65534",
      "--mgsnode=10.0.0.1@tcp,10.1.0.1@o2ib", "--backfstype=ldiskfs", "/dev/sdb"]),
]


@pytest.mark.parametrize(("request_", "argv"), MKFS_CASES)
def test_mkfs_argv(request_, argv):
    kind, fsname, index, mgsnode, force = request_
    assert mkfs_argv(kind, fsname, index, "/dev/sdb", mgsnodes=mgsnode, reformat=force) == argv


def test_mkfs_argv_zfs_names_the_dataset_then_the_vdev():
    argv = mkfs_argv("ost", "fs", 3, "/dev/sdb", mgsnodes=[NID], backfstype="zfs",
                     zfs_dataset="fs-ost3/ost3", mkfs_bin="/usr/sbin/mkfs.lustre")
    assert argv == ["/usr/sbin/mkfs.lustre", "--ost", "--fsname=fs", "--index=3",
                    f"--mgsnode={NID}", "--backfstype=zfs", "fs-ost3/ost3", "/dev/sdb"]


def test_mkfs_argv_passes_mkfsoptions_as_one_argument():
    argv = mkfs_argv("ost", "fs", 0, "/dev/sdb", mgsnodes=[NID],
                     mkfsoptions="-E lazy_itable_init=0")
    assert "--mkfsoptions=-E lazy_itable_init=0" in argv
    assert argv[-1] == "/dev/sdb"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(kind="ost", index=0, mgsnodes=None), "kind=ost needs mgsnode"),
    (dict(kind="mdt", index=0, mgsnodes=[]), "kind=mdt needs mgsnode"),
    (dict(kind="ost", index=0, mgsnodes=["10.0.0.1@tcp:10.0.0.2@tcp"]), "one entry per MGS node"),
    (dict(kind="ost", index=0, mgsnodes=["10.0.0.1@tcp "]), "without spaces"),
    (dict(kind="ost", index=0, mgsnodes=[""]), "is not a NID list"),
    (dict(kind="mgs", index=0, mgsnodes=None), "a standalone MGS has no index"),
    (dict(kind="ost", index=0, mgsnodes=[NID], backfstype="btrfs"), "backfstype 'btrfs'"),
    (dict(kind="ost", index=0, mgsnodes=[NID], backfstype="zfs"), "must be 'pool/dataset'"),
    (dict(kind="ost", index=0, mgsnodes=[NID], backfstype="zfs", zfs_dataset="pool"),
     "must be 'pool/dataset'"),
])
def test_mkfs_argv_refuses_what_mkfs_lustre_would(kwargs, message):
    kind, index = kwargs.pop("kind"), kwargs.pop("index")
    with pytest.raises(LustreError, match=message):
        mkfs_argv(kind, "fs", index, "/dev/sdb", **kwargs)


@pytest.mark.parametrize(("options", "argv"), [
    (None, ["mount", "-t", "lustre", "/dev/sdb", "/mnt/ost3"]),
    ("", ["mount", "-t", "lustre", "/dev/sdb", "/mnt/ost3"]),
    ("noatime,abort_recov", ["mount", "-t", "lustre", "-o", "noatime,abort_recov", "/dev/sdb",
                             "/mnt/ost3"]),
])
def test_mount_argv(options, argv):
    assert mount_argv("/dev/sdb", "/mnt/ost3", options) == argv


def test_umount_and_wipe_argv():
    assert umount_argv("/mnt/ost3", umount_bin="/usr/bin/umount") == [
        "/usr/bin/umount", "/mnt/ost3"]
    assert wipe_argv("/dev/sdb") == ["wipefs", "-a", "/dev/sdb"]


def test_mount_source_is_the_device_or_the_dataset():
    assert mount_source("/dev/sdb") == "/dev/sdb"
    assert mount_source("/dev/sdb", "zfs", "fs-ost3/ost3") == "fs-ost3/ost3"
    assert zfs_pool("fs-ost3/ost3") == "fs-ost3"


# tunefs.lustre --dryrun as print_ldd() in lustre/utils/mkfs_lustre.c formats it.
TUNEFS_OST_VIRGIN = """checking for existing Lustre data: found
Reading CONFIGS/mountdata

   Read previous values:
Target:     testfs-OST0003
Index:      3
Lustre FS:  testfs
Mount type: ldiskfs
Flags:      0x62
              (OST first_time update )
Persistent mount opts: ,errors=remount-ro
Parameters: mgsnode=10.0.0.1@tcp:10.0.0.2@tcp


   Permanent disk data:
Target:     testfs=OST0003
Index:      3
Lustre FS:  testfs
Mount type: ldiskfs
Flags:      0x162
              (OST first_time update writeconf )
Persistent mount opts: ,errors=remount-ro
Parameters: mgsnode=10.0.0.1@tcp:10.0.0.2@tcp

exiting before disk write.
"""

TUNEFS_MGS_MDT = """checking for existing Lustre data: found
Reading CONFIGS/mountdata

   Read previous values:
Target:     bbfs-MDT0000
Index:      0
Lustre FS:  bbfs
Mount type: zfs
Flags:      0x5
              (MDT MGS )
Persistent mount opts:
Parameters:

exiting before disk write.
"""

TUNEFS_NOT_LUSTRE = """checking for existing Lustre data: not found

tunefs.lustre FATAL: Device /dev/sdb has not been formatted with mkfs.lustre
tunefs.lustre: exiting with 19 (No such device)
"""


def test_parse_tunefs_dryrun_reads_the_previous_values_block():
    data = parse_tunefs_dryrun(TUNEFS_OST_VIRGIN)
    assert data == {
        "target": "testfs-OST0003",
        "fsname": "testfs",
        "index": 3,
        "roles": {"OST"},
        "flags": {"first_time", "update"},
        "parameters": "mgsnode=10.0.0.1@tcp:10.0.0.2@tcp",
    }


def test_parse_tunefs_dryrun_sees_a_combined_mgs_and_mdt():
    data = parse_tunefs_dryrun(TUNEFS_MGS_MDT)
    assert data["target"] == "bbfs-MDT0000"
    assert data["roles"] == {"MDT", "MGS"} == expected_roles("mgs_mdt")
    assert data["flags"] == set()


@pytest.mark.parametrize("output", [TUNEFS_NOT_LUSTRE, "", None])
def test_parse_tunefs_dryrun_without_a_target(output):
    assert parse_tunefs_dryrun(output) == {}


def test_expected_roles():
    assert expected_roles("mgs") == {"MGS"}
    assert expected_roles("mdt") == {"MDT"}
    assert expected_roles("ost") == {"OST"}


def test_parse_findmnt_unescapes_raw_output():
    output = ("/dev/sdb /mnt/lustre/fs-OST0003 lustre\n"
              "10.0.0.1@tcp:/fs /lustre/my\\x20fs lustre\n"
              "fs-ost3/ost3 /mnt/ost3 lustre\n"
              "short line\n")
    assert parse_findmnt(output) == [
        {"source": "/dev/sdb", "target": "/mnt/lustre/fs-OST0003", "fstype": "lustre"},
        {"source": "10.0.0.1@tcp:/fs", "target": "/lustre/my fs", "fstype": "lustre"},
        {"source": "fs-ost3/ost3", "target": "/mnt/ost3", "fstype": "lustre"},
    ]
