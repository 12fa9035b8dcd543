# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What gluster 10.3 accepts, decided before asking it: volume names, bricks, layouts, options.

Pure checks that return messages (None or [] when gluster would accept), the
comparison of option values as gluster stores them, and the two questions about
this host a brick needs answered (is the host this machine, which volume a
brick directory belongs to). The gluster CLI itself (argv, ``--xml`` parsing,
running) is module_utils.gluster.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re
import socket
import uuid

# Names the gluster 10.3 CLI refuses ("... cannot be the name of a volume"). glusterd
# also treats "all" in any case as "every volume": a volume named "ALL" can be
# created but never stopped or deleted, so all of these are refused in any case.
RESERVED_VOLUME_NAMES = frozenset([
    "volume", "type", "subvolumes", "option", "end-volume", "all", "volume_not_in_ring",
    "description", "force", "snap-max-hard-limit", "snap-max-soft-limit", "auto-delete",
    "activate-on-create", "help",
])
_VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
# glusterd writes "<vol>.client.<host>.<brick path with / as ->.vol" (plus a ".tmp" while
# writing) for every brick; past NAME_MAX (255) volume create fails half-way, or quota
# enable succeeds without its client volfiles. 255 - len(".client." "." ".vol" ".tmp") + 1.
VOLFILE_NAME_BUDGET = 239
_BRICK_RE = re.compile(r"^(?P<host>[^/\s]+?):(?P<path>/\S*)$")

_TRUE_WORDS = frozenset(["on", "true", "yes", "enable", "enabled"])
_FALSE_WORDS = frozenset(["off", "false", "no", "disable", "disabled"])
# Options owned by "volume quota"; "volume set" must not be used for them.
QUOTA_OPTION_KEYS = frozenset(["features.quota", "features.inode-quota", "quota", "inode-quota"])
# server.allow-insecure off: bricks refuse clients on unprivileged ports, so only root on a
# client host is believed about the uid it sends. GlusterFS 10's quota crawler (the per-brick
# mount glusterd starts on "quota enable" to account what is there) binds an unprivileged port
# whatever client.bind-insecure says; refused, it leaves the bricks unaccounted and quota
# reads N/A and is not enforced (30 MiB went into a 10 MiB quota on the test bed). So
# server.allow-insecure is turned off only after quota is enabled, and quota is never enabled
# while it is off.
ALLOW_INSECURE_OPTION = "server.allow-insecure"


# --- validation and comparison: pure -------------------------------------------------------

def split_brick(brick):
    """"host:/path" -> (host, path); (None, None) if it does not have that shape."""
    match = _BRICK_RE.match(brick or "")
    return (match.group("host"), match.group("path")) if match else (None, None)


def volume_name_problem(name):
    """Why gluster 10.3 would refuse (or mishandle) this volume name; None if it is fine."""
    if not name:
        return "the volume name is empty"
    if name.lower() in RESERVED_VOLUME_NAMES:
        return f"{name!r} is reserved by gluster and cannot name a volume"
    if not _VOLUME_NAME_RE.match(name):
        return (f"volume name {name!r}: use only letters, digits, '-' and '_', "
                "and do not start with '-'")
    return None


def brick_problems(bricks):
    """Messages for bricks that are not "host:/absolute/normal/path", or given twice."""
    problems, seen = [], set()
    for brick in bricks:
        host, path = split_brick(brick)
        if host is None:
            problems.append(f"brick {brick!r}: write it as host:/absolute/path")
        elif ".." in path.split("/"):
            problems.append(f"brick {brick}: '..' is not allowed in a brick path")
        elif os.path.normpath(path) != path or path == "/":
            problems.append(f"brick {brick}: give a normalised directory path below / (no '//', "
                            f"'.', trailing '/'), e.g. {host}:{os.path.normpath(path)}")
        elif brick in seen:
            problems.append(f"brick {brick} is given twice; "
                            "each brick must be a different directory")
        seen.add(brick)
    return problems


def volfile_name_problem(name, bricks):
    """Why the volfile names of this name and these bricks would be too long; None if fine."""
    for brick in bricks:
        host, path = split_brick(brick)
        if host is not None and len(name) + len(host) + len(path) > VOLFILE_NAME_BUDGET:
            total = len(name) + len(host) + len(path)
            return (f"volume name {name!r} with brick {brick} is too long for gluster's volume "
                    f"files: name, host and path together may have at most {VOLFILE_NAME_BUDGET} "
                    f"characters (they have {total}); use a shorter volume name")
    return None


def layout_problems(bricks, replica=None, arbiter=None, disperse=None, redundancy=None):
    """Messages for counts gluster would refuse with this many bricks."""
    count, problems = len(bricks), []
    if replica is not None:
        if replica < 2:
            problems.append("replica must be at least 2 (leave it out for a distributed volume)")
        elif count % replica:
            problems.append(f"{count} bricks cannot be grouped in replica sets of {replica}; "
                            f"give a multiple of {replica} bricks")
    if arbiter is not None and (arbiter != 1 or replica != 3):
        problems.append("arbiter: gluster supports only replica 3 with arbiter 1")
    if disperse is not None:
        if disperse < 3:
            problems.append("disperse must be at least 3")
        elif count % disperse:
            problems.append(f"{count} bricks cannot be grouped in disperse sets of {disperse}; "
                            f"give a multiple of {disperse} bricks")
    if redundancy is not None and disperse is not None and not 1 <= redundancy < disperse / 2.0:
        problems.append(f"redundancy must be at least 1 and less than half of disperse "
                        f"({disperse})")
    return problems


def option_text(value):
    """A value as gluster wants it: YAML booleans (on: true) become on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def normalise_option_value(value):
    """Comparable form: on/true/yes/enable -> "on", off/false/no/disable -> "off", else lower."""
    if value is None:
        return None
    text = option_text(value).strip().lower()
    if text in _TRUE_WORDS:
        return "on"
    if text in _FALSE_WORDS:
        return "off"
    return text


def resolve_option_key(key, known_keys):
    """The full name gluster stores for key: "readdir-ahead" -> "performance.readdir-ahead"."""
    if key in known_keys:
        return key
    matches = [known for known in known_keys if known.endswith("." + key)]
    return matches[0] if len(matches) == 1 else key


def is_allow_insecure(key):
    """True for server.allow-insecure, under its full or its short name."""
    return key == ALLOW_INSECURE_OPTION or ALLOW_INSECURE_OPTION.endswith("." + key)


def turns_allow_insecure_off(key, value):
    return is_allow_insecure(key) and normalise_option_value(value) == "off"


def option_changes(current, wanted):
    """[(key, value)] of wanted options whose current value differs, keys as gluster stores them."""
    changes = []
    for key, value in wanted.items():
        full_key = resolve_option_key(key, current)
        if normalise_option_value(current.get(full_key)) != normalise_option_value(value):
            changes.append((full_key, value))
    return changes


def bricks_in_use(bricks, volumes):
    """Messages for bricks that are, contain or lie inside a brick of an existing volume."""
    problems = []
    for brick in bricks:
        host, path = split_brick(brick)
        for volume in volumes:
            for used in volume["bricks"]:
                if used["host"] == host and _nested(path, used["path"]):
                    problems.append(_in_use_message(brick, used, volume["name"]))
    return problems


def _nested(a, b):
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _in_use_message(brick, used, volume_name):
    if brick == used["name"]:
        return f"brick {brick} is already part of volume {volume_name}"
    return (f"brick {brick} overlaps brick {used['name']} of volume {volume_name}; "
            "choose a directory outside it")


# --- this host: where a brick directory sits -------------------------------------------------

def is_local_host(host):
    """True if host resolves to an address of this machine (one we can bind to)."""
    try:
        infos = socket.getaddrinfo(host, None, 0, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        return False
    for family, kind, proto, _name, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind((address[0], 0))
            return True
        except OSError:
            continue
    return False


def volume_id_of(path):
    """The trusted.glusterfs.volume-id xattr of path as a UUID string; None if it has none.

    glusterd writes the volume's UUID as 16 raw bytes; anything else is shown as hex, so a
    damaged value still names itself in messages instead of failing the module."""
    try:
        raw = os.getxattr(path, "trusted.glusterfs.volume-id", follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOENT, errno.ENOTSUP):
            return None
        raise
    try:
        return str(uuid.UUID(bytes=raw))
    except ValueError:
        return raw.hex()


def local_brick_problem(brick, force, volumes_by_id):
    """Why this brick on this host cannot become a brick; None if gluster should accept it."""
    host, path = split_brick(brick)
    parent = os.path.dirname(path)
    if os.path.lexists(path):
        if not os.path.isdir(path) or os.path.islink(path):
            return f"brick {brick} exists and is not a directory"
        used_by = volume_id_of(path)
        if used_by:
            return _leftover_message(brick, host, used_by, volumes_by_id)
    if not os.path.isdir(parent):
        return (f"brick {brick}: its parent directory {parent} does not exist on {host}; "
                "gluster creates only the last directory of a brick path "
                "(mount the brick root first)")
    if force:
        return None
    if os.path.ismount(path):
        return (f"brick {brick} is a mount point itself; give a directory inside it "
                f"(e.g. {path}/NAME), or set force: true")
    if os.stat(parent).st_dev == os.stat("/").st_dev:
        return (f"brick {brick} is on the root filesystem of {host}; put bricks on a brick "
                "filesystem (see hpc.burstbuffer.nvme_brick), or set force: true")
    return None


def _leftover_message(brick, host, volume_id, volumes_by_id):
    if volume_id in volumes_by_id:
        return f"brick {brick} is already part of volume {volumes_by_id[volume_id]}"
    return (f"brick {brick} holds the brick directory of a deleted volume "
            f"(volume-id {volume_id}); remove it with hpc.burstbuffer.gluster_brick_dir "
            f"(state: absent) on {host}, or choose another path")
