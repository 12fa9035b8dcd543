# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A recording fake of the Lustre server tools, for machines without Lustre.

The shell wrappers next to this file (``mkfs.lustre``, ``tunefs.lustre``,
``mount``, ``umount``, ``blkid``, ``findmnt``, ``wipefs``) call it as
``python3 lustre_fake.py "$0" ARGS...``. Put this directory first in PATH.

* ``LUSTRE_FAKE_STATE``: a JSON file holding, per device (real path) or ZFS
  dataset, the Lustre data mkfs.lustre "wrote" (label, roles, index, fsname,
  MGS NIDs) and where the target is "mounted"; client mounts by mount point.
  Without it every tool behaves as the real one (Lustre tools fail).
* ``LUSTRE_FAKE_LOG``: each command that changes something (mkfs.lustre,
  tunefs.lustre without --dryrun, mount -t lustre, umount and wipefs of a
  fake target) appends its argv, exactly as run, as one JSON line.
* ``LUSTRE_FAKE_PROBE_LOG`` (optional): the same for read-only calls
  (blkid, findmnt, tunefs.lustre --dryrun) that the fake answered.

What the fake checks, as the real tools do (lustre/utils/mkfs_lustre.c and
mount.lustre): the fsname rule, --index refused for a standalone MGS (and,
like the real tool, exit 0 without writing), --mgsnode required for MDT/OST,
NIDs that resolve to 127.0.0.1 refused, "previously formatted for lustre"
without --reformat, a mounted device refused. Labels are written the way
Lustre writes them: ``fs:OST0003`` until the first mount registers the target
with the MGS, then ``fs-OST0003``. MDT/OST mounts fail unless an MGS is
mounted (in this state file), as a real target fails to register without one.
Anything else (other filesystem types, unknown devices) goes to the real
tool further down PATH. The fake never mounts anything for real.
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid

EINVAL, ENODEV, EEXIST, EIO, EBUSY, EOPNOTSUPP = 22, 19, 17, 5, 16, 95
INDEX_UNASSIGNED = 0xFFFF
FLAG_BITS = {"MDT": 0x1, "OST": 0x2, "MGS": 0x4, "needs_index": 0x10, "first_time": 0x20,
             "update": 0x40}
FAKE_DIR = os.path.dirname(os.path.abspath(__file__))
MKFS_VALUE_OPTIONS = {"fsname", "index", "mgsnode", "mgsnid", "backfstype", "mkfsoptions",
                      "param", "servicenode", "failnode", "failover", "mountfsoptions",
                      "backfs-mount-opts", "network", "comment", "device-size",
                      "stripe-count-hint"}
MKFS_FLAGS = {"mgs", "mdt", "ost", "reformat", "dryrun", "quiet", "verbose", "replace",
              "nomgs", "force-nohostid"}


class Failure(Exception):
    def __init__(self, rc, message):
        super().__init__(message)
        self.rc = rc


# ---------------------------------------------------------------- plumbing

def real_tool(name):
    """The real ``name`` further down PATH (or in the sbin/bin directories)."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and os.path.realpath(d) != FAKE_DIR]
    dirs += ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    found = shutil.which(name, path=os.pathsep.join(dirs))
    if not found:
        raise Failure(127, f"{name}: not found outside the fake directory")
    return found


def delegate(name, args):
    """Replace this process with the real tool."""
    tool = real_tool(name)
    os.execv(tool, [tool, *args])


def record(variable, argv):
    path = os.environ.get(variable)
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(argv) + "\n")


@contextlib.contextmanager
def locked_state():
    """The state file, read and written back under an exclusive lock."""
    path = os.environ["LUSTRE_FAKE_STATE"]
    with open(path + ".lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        state.setdefault("targets", {})
        state.setdefault("clients", {})
        yield state
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)


def key_of(source):
    """Devices by real path (a symlink and its device are one); datasets by name."""
    return os.path.realpath(source) if source.startswith("/") else source


def is_block_device(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------- labels

def service_name(target):
    """Lustre's server_make_name(): ``fs:OST0003`` while virgin, ``fs-OST0003`` after."""
    roles = target["roles"]
    if "MDT" not in roles and "OST" not in roles:
        return "MGS"
    separator = ":" if target["virgin"] else "-"
    role = "MDT" if "MDT" in roles else "OST"
    return f"{target['fsname'][:8]}{separator}{role}{target['index']:04x}"


def flags_of(target):
    words = [role for role in ("MDT", "OST", "MGS") if role in target["roles"]]
    if target["index"] == INDEX_UNASSIGNED and "MGS" not in words:
        words.append("needs_index")
    if target["virgin"]:
        words += ["first_time", "update"]
    return words, sum(FLAG_BITS[word] for word in words)


def describe(target, heading, name=None):
    """print_ldd() of mkfs_lustre.c."""
    words, bits = flags_of(target)
    index = "unassigned" if target["index"] == INDEX_UNASSIGNED else str(target["index"])
    params = " ".join(f"mgsnode={node}" for node in target["mgsnodes"])
    return (f"\n   {heading}:\n"
            f"Target:     {name or service_name(target)}\n"
            f"Index:      {index}\n"
            f"Lustre FS:  {target['fsname']}\n"
            f"Mount type: {target['backfstype']}\n"
            f"Flags:      {bits:#x}\n"
            f"              ({' '.join(words)} )\n"
            f"Persistent mount opts: {target['mount_opts']}\n"
            f"Parameters: {params}\n\n")


# ---------------------------------------------------------------- mkfs.lustre

def parse_mkfs(args):
    options, flags, positional = {"mgsnode": []}, set(), []
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        name, has_value, value = arg[2:].partition("=")
        if name in MKFS_FLAGS and not has_value:
            flags.add(name)
        elif name in MKFS_VALUE_OPTIONS:
            if not has_value:
                if not pending:
                    raise Failure(EINVAL, f"mkfs.lustre: option '--{name}' requires an argument")
                value = pending.pop(0)
            name = "mgsnode" if name == "mgsnid" else name
            if name == "mgsnode":
                options["mgsnode"].append(value)
            else:
                options[name] = value
        else:
            raise Failure(EINVAL, f"mkfs.lustre: unrecognized option '{arg}'")
    return options, flags, positional


def check_fsname(fsname):
    if not 1 <= len(fsname) <= 8:
        raise Failure(1, "mkfs.lustre: filesystem name must be 1-8 chars")
    for char in fsname:
        if not (char.isascii() and (char.isalnum() or char in "_-")):
            raise Failure(1, f"mkfs.lustre: char '{char}' not allowed in filesystem name")


def parse_index(text):
    try:
        index = int(text, 16) if text.startswith("0x") else int(text, 10)
    except ValueError:
        raise Failure(1, f"mkfs.lustre: wrong index {text}. Target index must be decimal or "
                         "hexadecimal.") from None
    if not 0 <= index < INDEX_UNASSIGNED:
        raise Failure(1, f"mkfs.lustre: wrong index {index}. Target index must be less than "
                         f"{INDEX_UNASSIGNED}.")
    return index


def check_nids(mgsnodes):
    for node in mgsnodes:
        for nid in re.split(r"[,:]", node):
            if nid.startswith("127.0.0.1"):
                raise Failure(1, f"mkfs.lustre: The NID '{nid}' resolves to the loopback address "
                                 f"'{nid}'.  Lustre requires a non-loopback address.")


def new_target(options, flags, positional):
    roles = {role for role, flag in (("MGS", "mgs"), ("MDT", "mdt"), ("OST", "ost"))
             if flag in flags}
    if not roles:
        raise Failure(EINVAL, "mkfs.lustre FATAL: must set target type: MDT,OST,MGS")
    if "OST" in roles and roles & {"MDT", "MGS"}:
        raise Failure(EINVAL, "mkfs.lustre FATAL: OST type is exclusive with MDT,MGS")
    fsname = options.get("fsname", "")
    if "fsname" in options:
        check_fsname(fsname)
    check_nids(options["mgsnode"])
    index = parse_index(options["index"]) if "index" in options else INDEX_UNASSIGNED
    if "MGS" not in roles and not options["mgsnode"]:
        need = "--mgs or --mgsnode" if "MDT" in roles else "--mgsnode"
        raise Failure(EINVAL, f"mkfs.lustre FATAL: Must specify {need}")
    if roles & {"MDT", "OST"} and not fsname:
        raise Failure(EINVAL, "mkfs.lustre FATAL: Must specify --fsname for MDT/OST device")
    if "MDT" in roles and index == INDEX_UNASSIGNED:
        index = 0  # mkfs.lustre: an MDT without --index is MDT0000
    backfstype = options.get("backfstype", "ldiskfs")
    if backfstype not in ("ldiskfs", "zfs"):
        raise Failure(1, f"mkfs.lustre: invalid backend filesystem type {backfstype}")
    if not positional:
        raise Failure(EINVAL, "mkfs.lustre FATAL: Not enough arguments - device name or "
                              "pool/dataset name not specified.")
    return {"roles": sorted(roles), "fsname": fsname, "index": index, "virgin": True,
            "mgsnodes": options["mgsnode"], "backfstype": backfstype,
            "mkfsoptions": options.get("mkfsoptions", ""),
            "mount_opts": "errors=remount-ro" if backfstype == "ldiskfs" else "",
            "mounted": None, "uuid": str(uuid.uuid4())}


def mkfs_lustre(argv):
    options, flags, positional = parse_mkfs(argv[1:])
    if "dryrun" not in flags:
        record("LUSTRE_FAKE_LOG", argv)
    if "mgs" in flags and "mdt" not in flags and "index" in options:
        # The real tool prints this and exits 0 without writing anything (mkfs_lustre.c).
        print("mkfs.lustre: '--index' only valid for MDT,OST", file=sys.stderr)
        return 0
    target = new_target(options, flags, positional)
    print(describe(target, "Permanent disk data"), end="")
    if "dryrun" in flags:
        print("exiting before disk write.")
        return 0
    with locked_state() as state:
        write_target(state, target, positional, "reformat" in flags)
    return 0


def write_target(state, target, positional, reformat):
    targets = state["targets"]
    if target["backfstype"] == "zfs":
        dataset, vdevs = positional[0], [key_of(vdev) for vdev in positional[1:]]
        where, devices = dataset, vdevs
    else:
        where, devices = key_of(positional[0]), [key_of(positional[0])]
    for device in devices:
        check_device(targets, device)
    if not reformat and where in targets and "roles" in targets[where]:
        raise Failure(1, f"mkfs.lustre FATAL: Device {positional[0]} was previously formatted "
                         "for lustre. Use --reformat to reformat it, or tunefs.lustre to modify.")
    for device in devices:
        erase_real_signatures(device)
    if target["backfstype"] == "zfs":
        pool = where.split("/")[0]
        for device in devices:
            targets[device] = {"type": "zfs_member", "label": pool, "uuid": str(uuid.uuid4())}
    target["type"] = "ext4" if target["backfstype"] == "ldiskfs" else "zfs"
    targets[where] = target


def check_device(targets, device):
    if not is_block_device(device):
        raise Failure(ENODEV, f"mkfs.lustre (fake): {device} is not a block device; the fake "
                              "formats block devices only (use a loop device)")
    mounted = targets.get(device, {}).get("mounted")
    if mounted:
        raise Failure(EEXIST, f"{device}: is currently mounted, exiting without any change")


def erase_real_signatures(device):
    """mkfs overwrites the device: old signatures (ext4, xfs ...) are gone afterwards."""
    subprocess.run([real_tool("wipefs"), "-a", "-q", device], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- tunefs.lustre

def tunefs_lustre(argv):
    args = argv[1:]
    if "--dryrun" not in args and "-n" not in args:
        record("LUSTRE_FAKE_LOG", argv)
        raise Failure(EOPNOTSUPP, "tunefs.lustre (fake): only --dryrun is supported")
    record("LUSTRE_FAKE_PROBE_LOG", argv)
    source = next((arg for arg in reversed(args) if not arg.startswith("-")), None)
    with locked_state() as state:
        target = state["targets"].get(key_of(source or ""), {})
    if "roles" not in target:
        print("checking for existing Lustre data: not found")
        raise Failure(ENODEV, f"\ntunefs.lustre FATAL: Device {source} has not been formatted "
                              "with mkfs.lustre\ntunefs.lustre: exiting with 19 (No such device)")
    # tunefs.lustre shows the name with '-' and the virgin state in the flags only.
    name = service_name(dict(target, virgin=False))
    print("checking for existing Lustre data: found\nReading CONFIGS/mountdata")
    print(describe(target, "Read previous values", name)
          + describe(target, "Permanent disk data", name) + "exiting before disk write.")
    return 0


# ---------------------------------------------------------------- mount / umount

def parse_mount(args):
    fstype, options, positional = None, "", []
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        if arg in ("-t", "--types") and pending:
            fstype = pending.pop(0)
        elif arg in ("-o", "--options") and pending:
            options = pending.pop(0)
        elif arg.startswith("-t") and len(arg) > 2:
            fstype = arg[2:]
        elif not arg.startswith("-"):
            positional.append(arg)
    return fstype, options, positional


def mount(argv):
    fstype, options, positional = parse_mount(argv[1:])
    if fstype != "lustre" or "LUSTRE_FAKE_STATE" not in os.environ or len(positional) != 2:
        delegate("mount", argv[1:])
    record("LUSTRE_FAKE_LOG", argv)
    source, mountpoint = positional
    if not os.path.isdir(mountpoint):
        raise Failure(32, f"mount.lustre: mount point {mountpoint} does not exist")
    with locked_state() as state:
        if ":/" in source:
            mount_client(state, source, mountpoint, options)
        else:
            mount_target(state, source, mountpoint, options)
    return 0


def mgs_running(state):
    return any("MGS" in target.get("roles", []) and target.get("mounted")
               for target in state["targets"].values())


def mount_target(state, source, mountpoint, options):
    target = state["targets"].get(key_of(source), {})
    if "roles" not in target:
        raise Failure(ENODEV, f"mount.lustre: {source} has not been formatted with mkfs.lustre "
                              "or the backend filesystem type is not supported by this tool")
    if target["mounted"]:
        raise Failure(EBUSY, f"mount.lustre: according to /etc/mtab {source} is already "
                             f"mounted on {target['mounted']}")
    if "MGS" not in target["roles"] and not mgs_running(state):
        raise Failure(EIO, f"mount.lustre: mount {source} at {mountpoint} failed: "
                           "Input/output error\nIs the MGS running?")
    target.update(mounted=os.path.realpath(mountpoint), mount_options=options, virgin=False)


def mount_client(state, source, mountpoint, options):
    fsname = source.rsplit(":/", 1)[1]
    mdt0 = [target for target in state["targets"].values()
            if target.get("fsname") == fsname and "MDT" in target.get("roles", [])
            and target.get("index") == 0 and target.get("mounted")]
    if not mgs_running(state) or not mdt0:
        raise Failure(EIO, f"mount.lustre: mount {source} at {mountpoint} failed: "
                           "Input/output error\nIs the MGS running?")
    state["clients"][os.path.realpath(mountpoint)] = {"source": source, "options": options}


def umount(argv):
    names = [arg for arg in argv[1:] if not arg.startswith("-")]
    if "LUSTRE_FAKE_STATE" not in os.environ or len(names) != 1:
        delegate("umount", argv[1:])
    with locked_state() as state:
        found = unmount_fake(state, names[0])
    if not found:
        delegate("umount", argv[1:])
    record("LUSTRE_FAKE_LOG", argv)
    return 0


def unmount_fake(state, name):
    """Forget a fake mount named by mount point or device; False if there is none."""
    wanted = key_of(name)
    if wanted in state["clients"]:
        del state["clients"][wanted]
        return True
    for key, target in state["targets"].items():
        if target.get("mounted") and wanted in (key, target["mounted"]):
            target["mounted"] = None
            return True
    return False


# ---------------------------------------------------------------- blkid / findmnt / wipefs

def parse_blkid(args):
    fmt, tags, devices, probe = "full", [], [], False
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        if arg == "-o" and pending:
            fmt = pending.pop(0)
        elif arg == "-s" and pending:
            tags.append(pending.pop(0))
        elif arg == "-p":
            probe = True
        elif arg in ("-c", "-w") and pending:
            pending.pop(0)
        elif not arg.startswith("-"):
            devices.append(arg)
    return fmt, tags, devices, probe


def blkid(argv):
    fmt, tags, devices, _probe = parse_blkid(argv[1:])
    if "LUSTRE_FAKE_STATE" not in os.environ or len(devices) != 1:
        delegate("blkid", argv[1:])
    with locked_state() as state:
        entry = state["targets"].get(key_of(devices[0]))
    if not entry:
        delegate("blkid", argv[1:])
    record("LUSTRE_FAKE_PROBE_LOG", argv)
    values = {"LABEL": entry.get("label") or service_name(entry), "UUID": entry["uuid"],
              "TYPE": entry["type"]}
    chosen = [(tag, values[tag]) for tag in (tags or list(values)) if tag in values]
    if not chosen:
        return 2
    print_blkid(fmt, devices[0], chosen)
    return 0


def print_blkid(fmt, device, chosen):
    if fmt == "value":
        print("\n".join(value for _tag, value in chosen))
    elif fmt == "export":
        print(f"DEVNAME={device}")
        print("\n".join(f"{tag}={escape_export(value)}" for tag, value in chosen))
    else:
        print(f"{device}: " + " ".join(f'{tag}="{value}"' for tag, value in chosen))


def escape_export(value):
    """blkid -o export puts a backslash before characters a shell would interpret."""
    return re.sub(r"([ \\\"'$`<>])", r"\\\1", value)


def findmnt(argv):
    args = argv[1:]
    columns = output_columns(args)
    if "LUSTRE_FAKE_STATE" not in os.environ or columns is None:
        delegate("findmnt", args)
    real = subprocess.run([real_tool("findmnt"), *args], capture_output=True, text=True,
                          check=False)
    with locked_state() as state:
        rows = fake_mounts(state)
    record("LUSTRE_FAKE_PROBE_LOG", argv)
    lines = [line for line in real.stdout.splitlines() if line]
    lines += [" ".join(escape_raw(row.get(column, "")) for column in columns) for row in rows]
    if lines:
        print("\n".join(lines))
    return 0 if lines else 1


def output_columns(args):
    """Columns of a ``findmnt --raw --noheadings --output ...`` call the fake can extend."""
    allowed = {"--raw", "-r", "--noheadings", "-n"}
    if "--output" not in args and "-o" not in args:
        return None
    pending, columns = list(args), None
    while pending:
        arg = pending.pop(0)
        if arg in ("--output", "-o") and pending:
            columns = pending.pop(0).split(",")
        elif arg not in allowed:
            return None
    return columns if {"--raw", "-r"} & set(args) else None


def fake_mounts(state):
    rows = [{"SOURCE": key, "TARGET": target["mounted"], "FSTYPE": "lustre",
             "OPTIONS": target.get("mount_options") or "rw"}
            for key, target in state["targets"].items() if target.get("mounted")]
    rows += [{"SOURCE": client["source"], "TARGET": mountpoint, "FSTYPE": "lustre",
              "OPTIONS": client.get("options") or "rw"}
             for mountpoint, client in state["clients"].items()]
    return rows


def escape_raw(text):
    return re.sub(r"[\s\\]", lambda match: f"\\x{ord(match.group(0)):02x}", text)


def wipefs(argv):
    devices = [arg for arg in argv[1:] if not arg.startswith("-")]
    if "LUSTRE_FAKE_STATE" not in os.environ or len(devices) != 1:
        delegate("wipefs", argv[1:])
    device = key_of(devices[0])
    with locked_state() as state:
        entry = state["targets"].get(device)
    if entry is None:
        delegate("wipefs", argv[1:])
    record("LUSTRE_FAKE_LOG", argv)
    if entry.get("mounted"):
        raise Failure(1, f"wipefs: error: {devices[0]}: probing initialization failed: "
                         "Device or resource busy")
    with locked_state() as state:
        del state["targets"][device]
    erase_real_signatures(device)
    print(f"{devices[0]}: 4 bytes were erased at offset 0x00000438 ({entry['type']}): 53 ef")
    return 0


# ---------------------------------------------------------------- entry point

TOOLS = {"mkfs.lustre": mkfs_lustre, "tunefs.lustre": tunefs_lustre, "mount": mount,
         "umount": umount, "blkid": blkid, "findmnt": findmnt, "wipefs": wipefs}
LUSTRE_TOOLS = ("mkfs.lustre", "tunefs.lustre")


def main(argv):
    name = os.path.basename(argv[0])
    try:
        if name in LUSTRE_TOOLS and "LUSTRE_FAKE_STATE" not in os.environ:
            raise Failure(1, f"{name} (fake): LUSTRE_FAKE_STATE is not set")
        return TOOLS[name](argv)
    except Failure as failure:
        print(str(failure), file=sys.stderr)
        return failure.rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
