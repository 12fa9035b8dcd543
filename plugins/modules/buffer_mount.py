#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: buffer_mount
short_description: Mount or unmount a burst buffer (GlusterFS or Lustre) for one job
version_added: "0.1.0"
description:
  - Mounts a burst buffer's filesystem at O(path) on a compute node or stage host and gives its
    root to the job's user, or unmounts it.
  - Ephemeral, like C(ansible.posix.mount) with C(state=ephemeral) - a buffer lives for one job,
    so C(/etc/fstab) is never read or written.
  - Idempotent; the truth is C(/proc/self/mountinfo). A path where another filesystem is
    mounted is refused, never stacked over or unmounted.
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  path:
    description:
      - The mount point. Created (C(mkdir -p)) when missing.
    type: path
    required: true
  src:
    description:
      - What to mount. GlusterFS C(server:/volume), for example C(127.1.1.1:/bb-job42);
        Lustre C(mgsnid[:mgsnid]:/fsname), for example C(10.0.0.1@tcp:/bb42).
      - Required with O(state=mounted). With O(state=unmounted), when given, only a mount of
        this source is unmounted.
    type: str
  fstype:
    description:
      - The buffer's filesystem. In C(/proc/self/mountinfo) GlusterFS shows as C(fuse.glusterfs).
    type: str
    choices: [glusterfs, lustre]
    default: glusterfs
  opts:
    description:
      - Mount options (comma separated), applied when mounting; a mounted buffer is not remounted.
    type: str
  backup_servers:
    description:
      - GlusterFS only. Servers to fetch the volume file from when the one in O(src) is down;
        passed as C(backup-volfile-servers=a:b).
    type: list
    elements: str
    default: []
  state:
    description:
      - V(mounted) creates O(path) if needed, mounts O(src) there unless it is already mounted,
        then sets O(owner), O(group) and O(mode) of the buffer's root.
      - V(unmounted) unmounts O(path) (retrying while it is busy) and, with O(remove_dir=true),
        removes the mount point if it is empty.
    type: str
    choices: [mounted, unmounted]
    default: mounted
  owner:
    description:
      - Owner of the buffer's root after mounting, a user name or a numeric uid (the job's uid).
    type: str
  group:
    description:
      - Group of the buffer's root after mounting, a group name or a numeric gid.
    type: str
  mode:
    description:
      - Permissions of the buffer's root after mounting, an octal string such as V('0700').
        Quote it in YAML.
    type: raw
  retries:
    description:
      - How many times to retry C(umount) (and C(mount)) while it fails with "target is busy",
        and a GlusterFS C(mount) while its client reaches no brick (C(Mount failed), glusterd or
        the bricks not answering yet, or no privileged source port free on a host with many
        clients), waiting O(delay) seconds, then twice as long each time (at most 30 s per wait).
    type: int
    default: 5
  delay:
    description:
      - Seconds before the first retry.
    type: float
    default: 1.0
  answer_timeout:
    description:
      - GlusterFS only. Seconds a C(stat) of the mounted buffer may take before its FUSE client
        counts as dead. A client that never reached a brick can leave a mount where every
        access blocks for good, C(umount) included.
      - With O(state=mounted), a new mount that does not answer is released and mounted
        again, as often as O(retries) allows; then the module fails, naming the client log.
        C(mount.glusterfs) looks at the new mount itself, and a client whose brick refused its
        handshake (no privileged source port free) never answers it, so a GlusterFS C(mount)
        that has not ended after twice O(answer_timeout) is killed and its mount released
        the same way.
      - With O(state=unmounted), a mount that does not answer has its FUSE connection aborted
        (through C(/sys/fs/fuse/connections), mounting C(fusectl) there for the purpose when
        needed) and is unmounted, lazily if a process still has its working directory there.
        A warning names the aborted connection.
    type: float
    default: 30.0
  shared_root:
    description:
      - With O(state=mounted), first make this directory (normally the parent of O(path)) a
        shared mount point, as M(hpc.burstbuffer.shared_mount_root) does (created with mode
        C(0755) when missing, bound onto itself, C(mount --make-shared)), so that a mount
        namespace made earlier with slave propagation (a container started before the job)
        sees the buffer. One module run instead of two for a job's mount.
      - Not given, propagation is left alone.
    type: path
  remove_dir:
    description:
      - With O(state=unmounted), remove O(path) after unmounting if it is an empty directory.
        A directory that is not empty is kept, with a warning.
    type: bool
    default: false
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Check mode reads everything and runs nothing; RV(commands) lists the exact commands that a
    real run would run. The owner and mode of a buffer that is not mounted yet are predicted as
    those of a new volume's root (root:root, 0755); a mounted buffer's mount point is predicted
    empty underneath.
requirements:
  - util-linux (mount, umount)
  - glusterfs-client (mount.glusterfs) for GlusterFS, the Lustre client for Lustre
seealso:
  - module: hpc.burstbuffer.nvme_brick
  - module: ansible.posix.mount
"""

EXAMPLES = r"""
- name: Mount the job's buffer on its compute nodes, private to the job's user
  hpc.burstbuffer.buffer_mount:
    path: /var/spool/bb/job42
    src: 127.1.1.1:/bb-job42
    backup_servers: [127.1.1.2, 127.1.1.3]
    shared_root: /var/spool/bb
    owner: "{{ bb_job_uid }}"
    group: "{{ bb_job_gid }}"
    mode: "0700"

- name: Mount a Lustre buffer
  hpc.burstbuffer.buffer_mount:
    path: /var/spool/bb/job43
    src: 10.0.0.1@tcp:/bb43
    fstype: lustre
    opts: flock

- name: Unmount it after the job and remove the empty mount point
  hpc.burstbuffer.buffer_mount:
    path: /var/spool/bb/job42
    state: unmounted
    remove_dir: true
"""

RETURN = r"""
path:
  description: The mount point, absolute and without symlinks.
  returned: always
  type: str
  sample: /var/spool/bb/job42
src:
  description: The source as given.
  returned: always
  type: str
  sample: 127.1.1.1:/bb-job42
fstype:
  description: The buffer's filesystem, as given.
  returned: always
  type: str
  sample: glusterfs
mounted:
  description: Whether a buffer is mounted at RV(path) afterwards (in check mode, would be).
  returned: success
  type: bool
  sample: true
commands:
  description:
    - The commands run, or in check mode the commands that would run, as argv lists.
    - After a failure, those that succeeded before it; the failed one is C(cmd), with C(rc),
      C(stdout) and C(stderr).
  returned: always
  type: list
  elements: list
  sample:
    - ["mount", "--bind", "/var/spool/bb", "/var/spool/bb"]
    - ["mount", "--make-shared", "/var/spool/bb"]
    - ["mkdir", "-p", "/var/spool/bb/job42"]
    - ["mount", "-t", "glusterfs", "127.1.1.1:/bb-job42", "/var/spool/bb/job42"]
    - ["chown", "1001:1001", "/var/spool/bb/job42"]
    - ["chmod", "0700", "/var/spool/bb/job42"]
"""

import os
import time
from collections import namedtuple

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import (
    TIMED_OUT,
    CommandError,
    CommandRunner,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import (
    MountError,
    answers,
    attribute_commands,
    backoff_delays,
    end_processes,
    ensure_shared,
    glusterfs_clients_of,
    mount_argv,
    mount_at,
    mount_retry,
    normalise_path,
    parse_mode,
    read_mountinfo,
    release_dead_fuse,
    resolve_gid,
    resolve_uid,
    root_attributes,
    umount_argv,
)

# fstype option -> how /proc/self/mountinfo names it (GlusterFS mounts through FUSE).
KERNEL_FSTYPE = {"glusterfs": "fuse.glusterfs", "lustre": "lustre"}
# A new volume's root as the servers create it: the check-mode prediction.
NEW_VOLUME_ROOT = (0, 0, 0o755)

BufferState = namedtuple("BufferState", ["path", "mount", "exists", "is_dir", "empty", "root"])


class BufferError(Exception):
    """The buffer cannot be brought to the wanted state safely; the message says what to do."""


# --- reading ---------------------------------------------------------------------

def dir_is_empty(path):
    try:
        return not os.listdir(path)
    except OSError:
        return False


def read_state(path, look_inside=True):
    """What is at path. ``look_inside`` False (unmounting): a mount point is not looked at, only
    the kernel's mount table, since a FUSE mount whose daemon hangs would hang this module
    (and every later teardown) in the kernel; its attributes are then unknown (None)."""
    mount = mount_at(read_mountinfo(), path)
    if mount is not None and not look_inside:
        return BufferState(path=path, mount=mount, exists=True, is_dir=True, empty=None, root=None)
    return BufferState(
        path=path, mount=mount, exists=os.path.lexists(path), is_dir=os.path.isdir(path),
        empty=dir_is_empty(path), root=root_attributes(path) if mount else None)


# --- planning: (state read, params) -> commands; pure ----------------------------------

def normalise_source(src):
    """'host:vol', 'host:/vol/', 'host://vol' -> 'host:/vol'; Lustre NID lists keep their colons."""
    server, _sep, volume = src.strip().rpartition(":")
    return f"{server}:/{volume.strip('/')}"


def is_wanted_mount(mount, params):
    return (mount.fstype == KERNEL_FSTYPE[params["fstype"]]
            and normalise_source(mount.source) == normalise_source(params["src"]))


def mount_options(params):
    options = [params["opts"]] if params["opts"] else []
    if params["backup_servers"]:
        if params["fstype"] != "glusterfs":
            raise BufferError("backup_servers is for GlusterFS; for Lustre list the failover "
                              "MGS NIDs in src (mgs1@tcp:mgs2@tcp:/fsname).")
        options.append("backup-volfile-servers=" + ":".join(params["backup_servers"]))
    return ",".join(options) or None


def refuse_other_mount(state, params, action):
    mount = state.mount
    wanted = params["src"] or f"a {params['fstype']} buffer"
    raise BufferError(
        f"{state.path} has {mount.source} ({mount.fstype}) mounted, not {wanted} "
        f"({KERNEL_FSTYPE[params['fstype']]}); not {action} it. Unmount it first, or choose "
        "another path.")


def plan_mounted(state, params):
    """Argv lists that mount the buffer at path (the owner/mode step comes after mounting)."""
    if state.mount is not None:
        if not is_wanted_mount(state.mount, params):
            refuse_other_mount(state, params, "mounting over")
        return []
    if state.exists and not state.is_dir:
        raise BufferError(f"{state.path} exists and is not a directory; "
                          "a mount point must be one.")
    commands = [] if state.exists else [["mkdir", "-p", state.path]]
    mount = mount_argv(params["src"], state.path, params["fstype"], mount_options(params))
    return [*commands, mount]


def is_ours(mount, params):
    """Whether this run may unmount that mount: of the wanted type, and of src when given (never
    another's mount)."""
    return (mount.fstype == KERNEL_FSTYPE[params["fstype"]]
            and (not params["src"] or is_wanted_mount(mount, params)))


def plan_unmounted(state, params):
    """Argv lists that unmount the buffer at path; [] if nothing is mounted there."""
    if state.mount is None:
        return []
    if not is_ours(state.mount, params):
        refuse_other_mount(state, params, "unmounting")
    return [umount_argv(state.path)]


def rmdir_commands(path, exists, empty, remove_dir):
    return [["rmdir", path]] if remove_dir and exists and empty else []


def root_commands(path, root, params):
    return attribute_commands(path, root, uid=resolve_uid(params["owner"]),
                              gid=resolve_gid(params["group"]), mode=parse_mode(params["mode"]))


# --- acting ----------------------------------------------------------------------------

def buffer_runner(module, retries, delay, mount_deadline=None):
    """The module's CommandRunner: mount and umount are retried while the target is busy, and a
    GlusterFS mount while its client reaches no brick (mounts.mount_retry); mount is killed
    after ``mount_deadline`` s when one is given (mount_answering then releases what it left)."""
    deadlines = {"mount": mount_deadline} if mount_deadline else None
    return CommandRunner(module, retry=mount_retry(retries, delay), deadlines=deadlines)


def mount_deadline(params):
    """Seconds a GlusterFS mount command may take (None: no limit). mount.glusterfs ends with a
    stat of the new mount, which never returns when the client's only brick refused its
    handshake ("received RPC status error"; seen on the test bed with the privileged ports
    taken, 2026-12-07, docs/RELIABILITY.md): twice the time such a stat is given."""
    return 2 * params["answer_timeout"] if params["fstype"] == "glusterfs" else None


def verify_mounted(path, params):
    """Fail unless the kernel now shows the wanted mount at path.

    mount.glusterfs has returned 0 while its client died right after; trust the kernel.
    """
    mount = mount_at(read_mountinfo(), path)
    if mount is None or not is_wanted_mount(mount, params):
        where = "the kernel log (dmesg)" if params["fstype"] == "lustre" else "the client log (/var/log/glusterfs/)"
        raise BufferError(f"mount of {params['src']} at {path} reported success but the kernel "
                          f"shows no such mount; see {where}.")


def describe(src, fstype, root):
    """The facts --diff shows: what is mounted and who owns its root."""
    facts = {"mounted": src is not None, "src": src, "fstype": fstype}
    if root is not None:
        facts.update(owner=root[0], group=root[1], mode=f"{root[2]:04o}")
    return facts


def release_if_dead(runner, params, state):
    """state, or after releasing a GlusterFS mount of ours at its path that does not answer a
    stat within answer_timeout (FUSE connection aborted, unmounted; warned), the state then.
    Looking inside such a mount, or a plain umount, would block this module for good."""
    if (state.mount is None or params["fstype"] != "glusterfs" or not is_ours(state.mount, params)
            or answers(runner, state.path, params["answer_timeout"])):
        return state
    minor = release_dead_fuse(runner, state.mount)
    runner.module.warn(f"{state.path}: its GlusterFS client did not answer a stat within "
                       f"{params['answer_timeout']:g} s; aborted FUSE connection {minor} and "
                       "unmounted it.")
    if runner.check_mode:
        return state._replace(mount=None, empty=True, root=None)
    return read_state(state.path)


def mount_answering(runner, params, state, sleep=time.sleep):
    """Mount as planned and make sure the new mount answers (GlusterFS): a dead one is released
    and mounted again after backoff_delays(retries, delay); BufferError when none answered."""
    delays = backoff_delays(params["retries"], params["delay"])
    while True:
        fresh = state.mount is None
        if not mounted_in_time(runner, state, params):
            release_dead_fuse_at(runner, state.path)
        elif runner.check_mode:
            return
        else:
            verify_mounted(state.path, params)
            if not fresh or params["fstype"] != "glusterfs" or answers(
                    runner, state.path, params["answer_timeout"]):
                return
            release_dead_fuse(runner, mount_at(read_mountinfo(), state.path))
        if not delays:
            raise BufferError(
                f"the GlusterFS client of {params['src']} at {state.path} did not answer a stat "
                f"within {params['answer_timeout']:g} s, {params['retries'] + 1} times: it "
                "reached no brick (glusterd or the bricks not answering, or no privileged port "
                "free on this host); see the client log (/var/log/glusterfs/). Each mount was "
                "released.")
        sleep(delays.pop(0))
        state = read_state(state.path)


def mounted_in_time(runner, state, params):
    """Run the planned mount commands; False when mount was killed at its deadline (a new
    GlusterFS mount only: anything else that fails raises as usual)."""
    try:
        runner.change_all(plan_mounted(state, params))
    except CommandError as error:
        if state.mount is not None or not error.argv or error.argv[0] != "mount" or error.rc not in TIMED_OUT:
            raise
        return False
    return True


def release_dead_fuse_at(runner, path):
    """Release the mount a killed mount command left at path, if the kernel shows one, and end its
    client: one that never got its bricks does not see the aborted connection and would stay
    until the volume stops."""
    entry = mount_at(read_mountinfo(), path)
    if entry is not None:
        release_dead_fuse(runner, entry)
    runner.act(end_processes, glusterfs_clients_of(path))


def ensure_mounted(runner, params, state):
    if params["shared_root"]:  # before the mount, which then propagates to namespaces made earlier
        ensure_shared(runner, normalise_path(params["shared_root"]))
    mount_answering(runner, params, state)
    root = (state.root or NEW_VOLUME_ROOT) if runner.check_mode else root_attributes(state.path)
    wanted = root_commands(state.path, root, params)
    runner.change_all(wanted)
    if not runner.check_mode:
        root = root_attributes(state.path)
    elif wanted:
        root = _predicted_root(root, params)
    return True, describe(params["src"], KERNEL_FSTYPE[params["fstype"]], root)


def _predicted_root(root, params):
    uid, gid = resolve_uid(params["owner"]), resolve_gid(params["group"])
    mode = parse_mode(params["mode"])
    return (root[0] if uid is None else uid, root[1] if gid is None else gid,
            root[2] if mode is None else mode)


def ensure_unmounted(runner, params, state):
    runner.change_all(plan_unmounted(state, params))
    if runner.check_mode:
        # Underneath a mounted buffer the mount point is normally empty: predict so.
        exists, empty = state.exists, state.empty or state.mount is not None
    else:
        exists, empty = os.path.lexists(state.path), dir_is_empty(state.path)
    if params["remove_dir"] and exists and not empty:
        runner.module.warn(f"{state.path} is not empty after unmounting; kept it (remove_dir "
                           "removes only an empty mount point).")
    runner.change_all(rmdir_commands(state.path, exists, empty, params["remove_dir"]))
    return False, describe(None, None, None)


ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    src=dict(type="str"),
    fstype=dict(type="str", choices=["glusterfs", "lustre"], default="glusterfs"),
    opts=dict(type="str"),
    backup_servers=dict(type="list", elements="str", default=[]),
    state=dict(type="str", choices=["mounted", "unmounted"], default="mounted"),
    owner=dict(type="str"),
    group=dict(type="str"),
    mode=dict(type="raw"),
    retries=dict(type="int", default=5),
    delay=dict(type="float", default=1.0),
    answer_timeout=dict(type="float", default=30.0),
    remove_dir=dict(type="bool", default=False),
    shared_root=dict(type="path"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "mounted", ["src"])])
    params = dict(module.params, path=normalise_path(module.params["path"]))
    runner = buffer_runner(module, params["retries"], params["delay"], mount_deadline(params))
    echoed = {"path": params["path"], "src": params["src"], "fstype": params["fstype"]}
    try:
        result = run(runner, params)
    except (BufferError, CommandError, MountError, OSError) as error:
        module.fail_json(**runner.failure(error, **echoed))
    module.exit_json(**result, **echoed)


def run(runner, params):
    seen = read_state(params["path"], look_inside=False)
    state = release_if_dead(runner, params, seen)
    if params["state"] == "mounted" and state.mount is not None:
        state = read_state(params["path"])  # it answers: safe to look inside
    ensure = ensure_mounted if params["state"] == "mounted" else ensure_unmounted
    mounted, after = ensure(runner, params, state)
    mount = seen.mount
    before = describe(mount.source if mount else None, mount.fstype if mount else None, state.root)
    return runner.result(before, after, mounted=mounted)


if __name__ == "__main__":
    main()
