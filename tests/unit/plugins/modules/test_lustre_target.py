"""lustre_target: planner tables, then whole module runs against a scripted system.

``FakeSystem`` answers the module's run_command calls (blkid, findmnt, tunefs.lustre,
mkfs.lustre, mount, umount, wipefs) from a little device model, and records them, so a
test sees both the result and exactly which commands ran.
"""

import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.hpc.burstbuffer.plugins.modules import lustre_target as lt

DEV = "/dev/loop9"
NID = "10.0.0.1@tcp"
C_LOCALE = {"LANG": "C", "LC_ALL": "C"}


def sbin(tool):
    return f"/usr/sbin/{tool}"


# ------------------------------------------------------------------ plan_actions table

def params(**overrides):
    base = {"fsname": "fs", "kind": "ost", "index": 3, "device": DEV, "mgsnode": [NID],
            "mountpoint": "/mnt/ost3", "state": "present", "force": False,
            "backfstype": "ldiskfs", "zfs_dataset": None, "mkfsoptions": None,
            "mount_options": None}
    return dict(base, **overrides)


def device(label=None, fstype=None, ours=False, mounted_at=None, busy=()):
    signature = {key: value for key, value in (("LABEL", label), ("TYPE", fstype)) if value}
    mounts = [{"source": DEV, "target": mounted_at, "fstype": "lustre"}] if mounted_at else []
    return {"signature": signature, "label": label, "ours": ours, "blank": not signature,
            "mounts": mounts, "busy": list(busy)}


REQUEST = {"label": "fs-OST0003", "index": 3, "mgsnodes": [NID], "source": DEV}
OURS = {"label": "fs:OST0003", "fstype": "ext4", "ours": True}
OURS_MOUNTED = dict(OURS, mounted_at="/mnt/ost3")
FOREIGN = {"label": "scratch", "fstype": "ext4"}

# (state, force, device) -> actions
PLANS = [
    ("present", False, {}, ["mkfs"]),
    ("present", False, OURS, []),
    ("present", False, OURS_MOUNTED, []),
    ("present", True, FOREIGN, ["mkfs"]),
    ("mounted", False, {}, ["mkfs", "mount"]),
    ("mounted", False, OURS, ["mount"]),
    ("mounted", False, OURS_MOUNTED, []),
    ("mounted", True, FOREIGN, ["mkfs", "mount"]),
    ("unmounted", False, {}, ["mkfs"]),
    ("unmounted", False, OURS, []),
    ("unmounted", False, OURS_MOUNTED, ["umount"]),
    ("absent", False, {}, []),
    ("absent", False, OURS, []),
    ("absent", False, OURS_MOUNTED, ["umount"]),
    ("absent", True, OURS, ["wipe"]),
    ("absent", True, OURS_MOUNTED, ["umount", "wipe"]),
    ("absent", True, FOREIGN, []),
]


@pytest.mark.parametrize(("state", "force", "found", "actions"), PLANS)
def test_plan_actions(state, force, found, actions):
    assert lt.plan_actions(params(state=state, force=force), REQUEST, device(**found)) == actions


# (state, force, device) -> words of the refusal
REFUSALS = [
    ("present", False, FOREIGN, "carries ext4 filesystem with label 'scratch', not 'fs-OST0003'"),
    ("mounted", False, {"fstype": "xfs"}, "carries xfs filesystem with no label"),
    ("present", False, {"label": "fs:OST0004", "fstype": "ext4"}, "force: true"),
    ("present", True, dict(FOREIGN, busy=["/dev/loop9 is active swap"]), "is in use"),
    ("mounted", False, dict(OURS, mounted_at="/mnt/elsewhere"), "is mounted at /mnt/elsewhere"),
]


@pytest.mark.parametrize(("state", "force", "found", "words"), REFUSALS)
def test_plan_actions_refusals(state, force, found, words):
    with pytest.raises(lt.Refusal, match=words):
        lt.plan_actions(params(state=state, force=force), REQUEST, device(**found))


def test_wiping_a_zfs_target_is_refused_with_what_to_do():
    zfs = params(state="absent", force=True, backfstype="zfs", zfs_dataset="fs-ost3/ost3")
    with pytest.raises(lt.Refusal, match="zpool destroy"):
        lt.plan_actions(zfs, REQUEST, device(**OURS))


# ------------------------------------------------------------------ whole module runs

class FakeSystem:
    """A device model answering run_command; records (argv, environ_update)."""

    def __init__(self, label=None, fstype=None, roles=(), mounts=(), dataset=None):
        self.signature = {key: value for key, value in (("LABEL", label), ("TYPE", fstype))
                          if value}
        self.roles = set(roles)
        self.mounts = list(mounts)  # (source, target, fstype)
        self.dataset = dataset  # zfs: (pool/dataset, target label)
        self.calls = []
        self.fail = {}  # tool -> (rc, out, err)
        self.mkfs_writes = True

    def run_command(self, argv, environ_update=None, **_kwargs):
        self.calls.append((list(argv), dict(environ_update or {})))
        tool = os.path.basename(argv[0])
        if tool in self.fail:
            return self.fail[tool]
        return getattr(self, tool.replace(".", "_"))(argv[1:])

    def commands(self, *tools):
        return [argv for argv, _env in self.calls if os.path.basename(argv[0]) in tools]

    def blkid(self, _args):
        if not self.signature:
            return 2, "", ""
        lines = [f"DEVNAME={DEV}"] + [f"{key}={value}" for key, value in self.signature.items()]
        return 0, "\n".join(lines) + "\n", ""

    def findmnt(self, _args):
        lines = [" ".join(mount) for mount in self.mounts]
        return (0 if lines else 1), "\n".join(lines), ""

    def tunefs_lustre(self, args):
        if self.dataset and args[-1] == self.dataset[0]:
            return 0, tunefs_output(self.dataset[1], {"OST"}), ""
        if not self.roles:
            return 19, "checking for existing Lustre data: not found\n", ""
        return 0, tunefs_output(self.signature["LABEL"].replace(":", "-"), self.roles), ""

    def mkfs_lustre(self, args):
        if self.mkfs_writes:
            roles = {flag[2:].upper() for flag in args if flag in ("--mgs", "--mdt", "--ost")}
            fsname = next(arg.split("=", 1)[1] for arg in args if arg.startswith("--fsname="))
            index = next(int(arg.split("=", 1)[1]) for arg in args if arg.startswith("--index="))
            role = "OST" if "OST" in roles else "MDT"
            self.signature = {"LABEL": f"{fsname}:{role}{index:04x}", "TYPE": "ext4"}
            self.roles = roles
        return 0, "", ""

    def mount(self, args):
        self.mounts.append((args[-2], args[-1], "lustre"))
        self.signature["LABEL"] = self.signature["LABEL"].replace(":", "-")
        return 0, "", ""

    def umount(self, args):
        self.mounts = [mount for mount in self.mounts if mount[1] != args[-1]]
        return 0, "", ""

    def wipefs(self, _args):
        self.signature, self.roles = {}, set()
        return 0, "", ""


def tunefs_output(target, roles):
    return (f"checking for existing Lustre data: found\n\n   Read previous values:\n"
            f"Target:     {target}\nIndex:      0\nLustre FS:  fs\nMount type: ldiskfs\n"
            f"Flags:      0x1\n              ({' '.join(sorted(roles))} )\n"
            "Persistent mount opts: errors=remount-ro\nParameters:\n\n"
            "exiting before disk write.\n")


@pytest.fixture
def system(monkeypatch):
    """Install a FakeSystem; tests set its starting state through attributes."""
    fake = FakeSystem()
    monkeypatch.setattr(lt.AnsibleModule, "run_command",
                        lambda _module, argv, **kwargs: fake.run_command(argv, **kwargs))
    monkeypatch.setattr(lt.AnsibleModule, "get_bin_path", lambda _self, name, **_kw: sbin(name))
    monkeypatch.setattr(lt, "is_block_device", lambda _path: True)
    monkeypatch.setattr(lt, "device_usage", lambda _path: {"reasons": []})
    return fake


@pytest.fixture
def result_of(capsys):
    """Run the module with these args; its JSON result (exit_json and fail_json both exit)."""
    def call(args, check_mode=False):
        args = dict(args, _ansible_check_mode=check_mode)
        with patch_module_args(args), pytest.raises(SystemExit):
            lt.main()
        return json.loads(capsys.readouterr().out)
    return call


def ost(**overrides):
    return dict({"fsname": "fs", "kind": "ost", "index": 3, "device": DEV, "mgsnode": [NID]},
                **overrides)


def test_check_mode_plans_on_a_blank_device_and_changes_nothing(system, result_of):
    result = result_of(ost(state="mounted", mountpoint="/mnt/ost3"), check_mode=True)
    assert result["changed"] is True
    assert result["commands"] == [
        [sbin("mkfs.lustre"), "--ost", "--fsname=fs", "--index=3", f"--mgsnode={NID}",
         "--backfstype=ldiskfs", DEV],
        [sbin("mount"), "-t", "lustre", DEV, "/mnt/ost3"],
    ]
    assert result["label"] == "fs-OST0003"
    assert result["mounted"] is True
    assert result["diff"] == {
        "before": {"label": None, "mounted": False, "mountpoint": None},
        "after": {"label": "fs-OST0003", "mounted": True, "mountpoint": "/mnt/ost3"},
    }
    assert system.commands("mkfs.lustre", "mount", "umount", "wipefs") == []
    assert all(C_LOCALE.items() <= env.items() for _argv, env in system.calls)


# (kind, fsname, index, mgsnode, force) -> mkfs argv the module plans for a device
# that carries an ext4 filesystem labelled "old" (refused unless force).
MODULE_MKFS = [
    (("mgs", "fs", None, None, True),
     [sbin("mkfs.lustre"), "--mgs", "--backfstype=ldiskfs", "--reformat", DEV]),
    (("mgs_mdt", "fs", None, None, True),
     [sbin("mkfs.lustre"), "--mgs", "--mdt", "--fsname=fs", "--index=0", "--backfstype=ldiskfs",
      "--reformat", DEV]),
    (("mdt", "fs", 1, [NID, "10.0.0.2@tcp"], True),
     [sbin("mkfs.lustre"), "--mdt", "--fsname=fs", "--index=1", f"--mgsnode={NID}",
      "--mgsnode=10.0.0.2@tcp", "--backfstype=ldiskfs", "--reformat", DEV]),
    (("ost", "scratch1", 17, [NID], True),
     [sbin("mkfs.lustre"), "--ost", "--fsname=scratch1", "--index=17", f"--mgsnode={NID}",
      "--backfstype=ldiskfs", "--reformat", DEV]),
]


@pytest.mark.parametrize(("request_", "argv"), MODULE_MKFS)
def test_module_plans_the_exact_mkfs_argv(system, result_of, request_, argv):
    kind, fsname, index, mgsnode, force = request_
    system.signature = {"LABEL": "old", "TYPE": "ext4"}
    args = {"fsname": fsname, "kind": kind, "device": DEV, "force": force}
    args.update({key: value for key, value in (("index", index), ("mgsnode", mgsnode)) if value})
    result = result_of(args, check_mode=True)
    assert result["commands"] == [argv]


def test_check_mode_plans_even_where_lustre_is_not_installed(system, result_of, monkeypatch):
    known = {"blkid", "findmnt"}
    monkeypatch.setattr(lt.AnsibleModule, "get_bin_path",
                        lambda _self, name, **_kw: sbin(name) if name in known else None)
    result = result_of(ost(), check_mode=True)
    assert result["commands"][0][0] == "mkfs.lustre"


def test_without_lustre_tools_a_real_run_says_what_to_install(system, result_of, monkeypatch):
    monkeypatch.setattr(lt.AnsibleModule, "get_bin_path",
                        lambda _self, name, **_kw: None if name == "mkfs.lustre" else sbin(name))
    result = result_of(ost())
    assert result["failed"] and "mkfs.lustre not found" in result["msg"]


def test_a_run_formats_verifies_the_label_then_mounts(system, result_of, tmp_path):
    mountpoint = str(tmp_path / "ost3")
    result = result_of(ost(state="mounted", mountpoint=mountpoint))
    assert result["changed"] and result["mounted"]
    ran = [os.path.basename(argv[0]) for argv, _env in system.calls]
    # probes, mkfs, the label read back, then the mount
    assert ran[ran.index("mkfs.lustre"):] == ["mkfs.lustre", "blkid", "findmnt", "mount"]
    assert os.path.isdir(mountpoint)


def test_a_formatted_target_is_not_formatted_again(system, result_of):
    system.signature = {"LABEL": "fs:OST0003", "TYPE": "ext4"}  # formatted, never mounted
    result = result_of(ost())
    assert result == dict(result, changed=False, commands=[], label="fs-OST0003")
    assert system.commands("mkfs.lustre") == []


def test_a_mounted_target_is_left_alone(system, result_of):
    system.signature = {"LABEL": "fs-OST0003", "TYPE": "ext4"}
    system.mounts = [(DEV, "/mnt/ost3", "lustre")]
    result = result_of(ost(state="mounted", mountpoint="/mnt/ost3"))
    assert (result["changed"], result["mounted"]) == (False, True)
    assert result["mountpoint"] == "/mnt/ost3"


def test_an_mdt_is_not_taken_for_a_combined_mgs_mdt(system, result_of):
    system.signature = {"LABEL": "fs-MDT0000", "TYPE": "ext4"}
    system.roles = {"MDT"}
    result = result_of({"fsname": "fs", "kind": "mgs_mdt", "device": DEV})
    assert result["failed"]
    assert "not 'fs-MDT0000'" in result["msg"]
    assert system.commands("tunefs.lustre") == [[sbin("tunefs.lustre"), "--dryrun", DEV]]


def test_an_mdt_whose_roles_cannot_be_read_is_an_error_not_a_foreign_device(system, result_of):
    system.signature = {"LABEL": "fs-MDT0000", "TYPE": "ext4"}
    system.fail["tunefs.lustre"] = (1, "", "tunefs.lustre: cannot read CONFIGS/mountdata")
    result = result_of({"fsname": "fs", "kind": "mgs_mdt", "device": DEV, "force": True})
    assert result["failed"] and "cannot read CONFIGS/mountdata" in result["msg"]
    assert system.commands("mkfs.lustre") == []


def test_a_mount_point_that_cannot_be_made_fails_cleanly(system, result_of, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = result_of(ost(state="mounted", mountpoint=str(blocker / "mnt")))
    assert result["failed"] and "cannot create mount point" in result["msg"]
    assert system.commands("mount") == []


def test_a_combined_mgs_mdt_is_recognised(system, result_of):
    system.signature = {"LABEL": "fs-MDT0000", "TYPE": "ext4"}
    system.roles = {"MDT", "MGS"}
    result = result_of({"fsname": "fs", "kind": "mgs_mdt", "device": DEV})
    assert result["changed"] is False


def test_a_zfs_target_is_read_through_its_dataset(system, result_of):
    system.signature = {"LABEL": "fs-ost3", "TYPE": "zfs_member"}
    system.dataset = ("fs-ost3/ost3", "fs-OST0003")
    result = result_of(ost(backfstype="zfs", zfs_dataset="fs-ost3/ost3"))
    assert result["changed"] is False
    assert system.commands("tunefs.lustre") == [
        [sbin("tunefs.lustre"), "--dryrun", "fs-ost3/ost3"]]


def test_another_pool_on_the_vdev_is_refused(system, result_of):
    system.signature = {"LABEL": "tank", "TYPE": "zfs_member"}
    result = result_of(ost(backfstype="zfs", zfs_dataset="fs-ost3/ost3"))
    assert result["failed"] and "label 'tank'" in result["msg"]


def test_a_failed_mount_reports_what_already_ran(system, result_of, tmp_path):
    system.fail["mount"] = (5, "", "mount.lustre: mount failed: Input/output error\n")
    result = result_of(ost(state="mounted", mountpoint=str(tmp_path / "m")))
    assert result["failed"] and result["rc"] == 5
    assert "Input/output error" in result["msg"]
    assert [argv[0] for argv in result["commands"]] == [sbin("mkfs.lustre")]


def test_a_mkfs_that_wrote_nothing_is_caught(system, result_of):
    # mkfs.lustre --mgs --index=N prints an error and exits 0 without writing (mkfs_lustre.c).
    system.mkfs_writes = False
    result = result_of(ost())
    assert result["failed"] and "mkfs.lustre succeeded but" in result["msg"]


def test_absent_with_force_unmounts_then_wipes(system, result_of):
    system.signature = {"LABEL": "fs-OST0003", "TYPE": "ext4"}
    system.mounts = [(DEV, "/mnt/ost3", "lustre")]
    result = result_of(ost(state="absent", force=True))
    assert result["commands"] == [[sbin("umount"), "/mnt/ost3"], [sbin("wipefs"), "-a", DEV]]
    assert result["diff"]["after"] == {"label": None, "mounted": False, "mountpoint": None}
    assert system.signature == {}


def test_a_path_that_is_not_a_block_device_is_refused(system, result_of, monkeypatch, tmp_path):
    monkeypatch.setattr(lt, "is_block_device", lambda _path: False)
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    result = result_of(ost(device=str(image), force=True))
    assert result["failed"] and "is a regular file" in result["msg"]
    assert system.calls == []


@pytest.mark.parametrize(("args", "words"), [
    (ost(fsname="toolongname"), "has 11 characters"),
    (ost(fsname="my.fs"), "character '.' is not allowed"),
    ({"fsname": "fs", "kind": "ost", "device": DEV}, "index, mgsnode"),
    ({"fsname": "fs", "kind": "mgs", "index": 0, "device": DEV}, "standalone MGS has no index"),
    (ost(state="mounted"), "mountpoint"),
    (ost(backfstype="zfs"), "zfs_dataset"),
    (ost(mgsnode=["10.0.0.1@tcp:10.0.0.2@tcp"]), "one entry per MGS node"),
])
def test_bad_requests_fail_with_a_clear_message(system, result_of, args, words):
    result = result_of(args)
    assert result["failed"]
    assert words in result["msg"]
    assert system.calls == []
