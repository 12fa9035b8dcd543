#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: gluster_volume
short_description: Create, start, stop, tune and delete a GlusterFS volume
version_added: "0.1.0"
description:
  - Brings one GlusterFS volume to the wanted state in one task, from any state it is in -
    from absent straight to started (create, set options, start, quota), from started
    straight to absent (stop, delete), and everything between.
  - Reads first (C(gluster ... --xml)), computes the list of gluster commands that would bring
    the volume to the wanted state, then runs them. Check mode computes the same list and runs
    nothing.
  - Options and the quota are compared with their current values, so a second run changes
    nothing.
  - Before creating, every brick is checked against the bricks of all volumes of the pool
    (works for any host), and bricks on this host are checked on disk (see O(bricks)). If
    C(volume create) or a later step of the same task fails, the half-made volume is deleted
    again and the brick directories this task made on this host are removed, so nothing blocks
    a corrected retry.
  - Does not add, remove or replace bricks of an existing volume; it fails and says so when
    O(bricks) differ from the volume's.
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  name:
    description:
      - The volume name. GlusterFS 10.3 accepts letters, digits, C(-) and C(_), not starting
        with C(-) (a leading digit or C(_) is fine).
      - Reserved words are refused in any letter case (C(all), C(volume), C(type), C(force),
        C(help), ...), because glusterd accepts C(ALL) but can then never stop or delete it.
      - There is no fixed maximum length; glusterd names a file after name, brick host and
        brick path, so for each brick the three together may have at most 239 characters.
    type: str
    required: true
  state:
    description:
      - V(present) the volume exists (created if missing, left started or stopped as it is).
      - V(started) the volume exists and is started.
      - V(stopped) the volume exists and is not started.
      - V(absent) the volume does not exist (stopped first if started). Its brick directories
        stay on the bricks, but for those listed in O(remove_brick_dirs); remove the others with
        M(hpc.burstbuffer.gluster_brick_dir) on each brick host. What gluster's quota commands
        left of the volume on this host goes too (RV(aux_mounts_removed)).
    type: str
    choices: [present, started, stopped, absent]
    default: present
  bricks:
    description:
      - The bricks, each C(host:/path), in the order gluster groups them into replica or
        disperse sets. Required to create the volume; when the volume exists they must equal
        its bricks.
      - Each path is the brick directory to create inside a brick root (a mounted brick
        filesystem); gluster creates that last directory itself, so its parent must exist.
      - Paths must be absolute and normalised (no C(..), C(.), C(//) or trailing C(/)); a brick
        may be given only once.
      - Bricks whose host is this host (a name that resolves to an address of this machine)
        are also checked on disk before creating; bricks on other hosts only by gluster itself,
        whose messages are passed on. A brick on this host is refused when its parent directory
        is missing, when it already carries a volume (C(trusted.glusterfs.volume-id)), and
        unless O(force=true), when it is on the root filesystem or is itself a mount point.
    type: list
    elements: str
  replica:
    description:
      - Replica count (at least 2; the number of bricks must be a multiple of it).
      - Only used to create; when the volume exists it must match.
    type: int
  arbiter:
    description:
      - Arbiter count; gluster supports V(1) with O(replica=3).
    type: int
  disperse:
    description:
      - Disperse (erasure-coded) set size, at least 3.
    type: int
  redundancy:
    description:
      - Redundancy of each disperse set; at least 1 and less than half of O(disperse).
    type: int
  transport:
    description:
      - Transport of the volume.
    type: str
    choices: [tcp, rdma, "tcp,rdma"]
    default: tcp
  options:
    description:
      - Volume options to set (C(gluster volume set)), as a mapping of option name to value.
      - Compared with the current values (C(gluster volume get NAME all) plus what was set on
        the volume); only those that differ are set. Short names such as C(readdir-ahead) are
        matched to the full name gluster stores (C(performance.readdir-ahead)).
      - Values compare case-insensitively, and V(on), V(true), V(yes), V(enable) (and YAML
        booleans) all mean on, V(off), V(false), V(no), V(disable) all mean off.
      - Options not listed are left as they are. Quota options are refused here; use O(quota).
      - C(server.allow-insecure=off) (bricks accept only clients on privileged ports) is set
        after O(quota) has been enabled, and quota is not enabled on a volume that already has
        it off (the task fails and says so) - GlusterFS's quota crawler connects from an
        unprivileged port, and shut out it leaves the quota unaccounted and unenforced.
    type: dict
    default: {}
  quota:
    description:
      - Capacity limit of the whole volume (C(gluster volume quota NAME limit-usage /)), a size
        such as V(8GiB), V(500G) (powers of 1024) or V(100GB) (powers of 1000); quota is
        enabled first if needed. Handed to gluster as a byte count.
      - Gluster reads and sets quota only on a started volume. With O(state=started) it is
        always applied; with V(present) or V(stopped) it is applied while the volume is started
        (before stopping it), and a warning says when it could not be checked.
      - Leaving it out leaves any quota as it is.
    type: str
  force:
    description:
      - Passes C(force) to C(gluster volume create). Needed only for bricks on the root
        filesystem or bricks that are mount points themselves; the checks of O(bricks) on
        this host then allow those too.
    type: bool
    default: false
  remove_brick_dirs:
    description:
      - With O(state=absent), brick directories on this host to remove once the volume is
        deleted (or now, if it is already gone), with the checks of
        M(hpc.burstbuffer.gluster_brick_dir) - each must look like a brick directory and belong
        to no other volume; one refusal removes nothing and deletes nothing.
      - Saves a teardown a second task on the server that deletes the volume.
    type: list
    elements: path
    default: []
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
  - hpc.burstbuffer.glusterd
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Check mode reads everything and runs nothing; RV(commands) lists the exact gluster
    commands a real run would run. With C(--diff), C(before) and C(after) describe the volume
    (state, bricks, the options asked for, quota).
  - In check mode, a stopped volume with quota enabled is predicted to need C(limit-usage)
    when it is to be started, because gluster cannot read the limit of a stopped volume.
  - C(gluster volume stop) asks for confirmation; C(--mode=script) answers it.
  - Commands that meet another transaction's cluster lock are tried again for up to 30 s.
seealso:
  - module: hpc.burstbuffer.gluster_peer
  - module: hpc.burstbuffer.gluster_brick_dir
"""

EXAMPLES = r"""
- name: A distributed buffer over three servers, started, with a quota, in one task
  hpc.burstbuffer.gluster_volume:
    name: job-4711
    state: started
    bricks:
      - stor1:/srv/bricks/nvme0/job-4711
      - stor2:/srv/bricks/nvme0/job-4711
      - stor3:/srv/bricks/nvme0/job-4711
    options:
      performance.readdir-ahead: "on"
      cluster.min-free-disk: 5%
    quota: 1TiB

- name: A replicated volume on the loopback test bed (glusterd of node 1)
  hpc.burstbuffer.gluster_volume:
    name: gv-replica
    state: started
    replica: 3
    bricks: "{{ groups['bb_storage'] | map('extract', hostvars, 'bb_gluster_host')
                | map('regex_replace', '$', ':/srv/bricks/nvme0/gv-replica') | list }}"
    glusterd_socket: "{{ bb_glusterd_socket }}"

- name: Tear a buffer down (stops it first if it is started), and clear its bricks on this server
  hpc.burstbuffer.gluster_volume:
    name: job-4711
    state: absent
    remove_brick_dirs:
      - /srv/bricks/nvme0/job-4711
"""

RETURN = r"""
volume:
  description:
    - The volume as gluster describes it after the task (in check mode, as it is now); null
      when it does not exist.
    - C(options) are those set on the volume (C(Options Reconfigured)), not the defaults.
    - For a started volume each brick also has C(online) (from C(gluster volume status)).
  returned: always
  type: dict
  sample:
    name: job-4711
    id: a16102d7-05e9-4f25-8be5-bd6825bd3d20
    status: started
    started: true
    type: Distribute
    brick_count: 3
    dist_count: 3
    replica: 1
    arbiter: 0
    disperse: 0
    redundancy: 0
    transport: tcp
    bricks:
      - name: stor1:/srv/bricks/nvme0/job-4711
        host: stor1
        path: /srv/bricks/nvme0/job-4711
        host_uuid: 497d64f7-ec53-4ed3-8e70-5fbf686acaa9
        arbiter: false
        online: true
    options:
      nfs.disable: "on"
      performance.readdir-ahead: "on"
commands:
  description:
    - The gluster commands run, or in check mode those that would run, as argv lists.
    - After a failure, those that succeeded before it; the failed one is C(cmd), with what
      gluster answered in C(stdout).
  returned: always
  type: list
  elements: list
  sample:
    - [gluster, --mode=script, volume, create, job-4711, transport, tcp,
       "stor1:/srv/bricks/nvme0/job-4711", --xml]
    - [gluster, --mode=script, volume, start, job-4711, --xml]
brick_dirs_removed:
  description:
    - The directories of O(remove_brick_dirs) removed (in check mode, that would be removed),
      each with the C(trusted.glusterfs.volume-id) it carried; those already gone are not listed.
  returned: always
  type: list
  elements: dict
  sample:
    - path: /srv/bricks/nvme0/job-4711
      volume_id: a16102d7-05e9-4f25-8be5-bd6825bd3d20
aux_mounts_aborted:
  description:
    - Aux mounts under C(/var/run/gluster) on this host (of any volume), a minute old or more,
      that did not answer a statfs within 5 s, whose FUSE connection the module aborted before
      anything else. glusterd unmounts its aux mount at the end of a quota command while
      holding the trusted pool's lock, and that unmount blocks for good on a mount whose client
      never reached a brick; every gluster transaction then waits. Empty in check mode.
  returned: always
  type: list
  elements: str
  sample: []
aux_mounts_removed:
  description:
    - With O(state=absent), what gluster's quota commands had left of the volume on this host
      (in check mode, would leave) and was removed - an aux mount under C(/var/run/gluster)
      (C(NAME_quota_list), C(NAME_quota_limit); left by a command that timed out), unmounted
      lazily and its directory removed, and their C(.pid) files.
  returned: with O(state=absent)
  type: list
  elements: str
  sample:
    - /run/gluster/job-4711_quota_list
    - /run/gluster/job-4711_quota_list.pid
rolled_back:
  description:
    - Commands run to undo a volume this task created after a later step failed. Only in the
      result of a failed task.
  returned: on failure after creating
  type: list
  elements: list
  sample:
    - [gluster, --mode=script, volume, delete, job-4711, --xml]
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.brick_dirs import (
    BrickDirError,
    existing_dirs,
    owned_message,
    owners,
    remove,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import CommandError
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster import (
    GlusterCli,
    GlusterError,
    quota_enable_argv,
    volume_delete_argv,
    volume_set_argv,
    volume_stop_argv,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster_rules import (
    ALLOW_INSECURE_OPTION,
    bricks_in_use,
    is_local_host,
    local_brick_problem,
    normalise_option_value,
    split_brick,
    turns_allow_insecure_off,
    volume_id_of,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster_volume_plan import (
    QUOTA_PATH,
    allow_insecure_problems,
    asked_options,
    plan,
    plan_absent,
    predicted_summary,
    request_problems,
    summary,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.mounts import release_aux_mounts, release_dead_aux_mounts

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "started", "stopped", "absent"]),
    bricks=dict(type="list", elements="str"),
    replica=dict(type="int"),
    arbiter=dict(type="int"),
    disperse=dict(type="int"),
    redundancy=dict(type="int"),
    transport=dict(type="str", default="tcp", choices=["tcp", "rdma", "tcp,rdma"]),
    options=dict(type="dict", default={}),
    quota=dict(type="str"),
    force=dict(type="bool", default=False),
    remove_brick_dirs=dict(type="list", elements="path", default=[]),
    glusterd_socket=dict(type="path"),
)


class VolumeError(Exception):
    """The request cannot be met as asked; the message says what to change."""


# --- reading ----------------------------------------------------------------------------

def observe(cli, params):
    """What the plan depends on: all volumes, ours, its effective options and quota."""
    volumes = cli.volumes()
    volume = next((v for v in volumes if v["name"] == params["name"]), None)
    observed = {"volumes": volumes, "volume": volume, "options": {}, "quota": None}
    if volume is None or params["state"] == "absent":
        return observed
    if params["options"]:
        observed["options"] = cli.effective_options(volume)
    observed["quota"] = observe_quota(cli, volume)
    return observed


def observe_quota(cli, volume):
    """{enabled, readable, limit}: gluster answers about limits only for a started volume."""
    enabled = normalise_option_value(volume["options"].get("features.quota")) == "on"
    readable = volume["started"]
    limit = cli.quota_limit(volume["name"], QUOTA_PATH) if enabled and readable else None
    return {"enabled": enabled, "readable": readable, "limit": limit}


def local_problems(params, observed, is_local=is_local_host):
    """Bricks that the pool or this host's disks already rule out (only before creating)."""
    if observed["volume"] is not None or params["state"] == "absent":
        return []
    bricks = params["bricks"] or []
    problems = bricks_in_use(bricks, observed["volumes"])
    if problems:
        return problems
    by_id = {volume["id"]: volume["name"] for volume in observed["volumes"]}
    for brick in bricks:
        if is_local(split_brick(brick)[0]):
            problem = local_brick_problem(brick, params["force"], by_id)
            problems += [problem] if problem else []
    return problems


# --- running ----------------------------------------------------------------------------------

def new_local_brick_dirs(params, is_local=is_local_host):
    """Brick directories on this host that do not exist yet: this task's to remove on failure."""
    dirs = []
    for brick in params["bricks"] or []:
        host, path = split_brick(brick)
        if host and is_local(host) and not os.path.lexists(path):
            dirs.append(path)
    return dirs


def turns_allow_insecure_off_after_quota(params, commands):
    socket, name = params["glusterd_socket"], params["name"]
    return quota_enable_argv(socket, name) in commands and any(
        volume_set_argv(socket, name, key, value) in commands
        for key, value in params["options"].items() if turns_allow_insecure_off(key, value))


def check_quota_accounted(cli, params):
    """Gluster reads the new quota back once server.allow-insecure is off; N/A would mean the quota
    crawler was shut out and the quota is not enforced (module_utils.gluster_rules.ALLOW_INSECURE_OPTION)."""
    if cli.quota_limit(params["name"], QUOTA_PATH) is None:
        raise GlusterError(f"quota of volume {params['name']} reads N/A after {ALLOW_INSECURE_OPTION} "
                           "was closed: its bricks' usage is not accounted, so the quota would "
                           "not be enforced")


def roll_back(cli, params, created, new_dirs):
    """Undo a volume this task created; remove the brick directories it made on this host.

    Runs on a CommandRunner of its own: what it undoes is returned as rolled_back, apart from
    the commands of the task."""
    undo = GlusterCli(cli.module, cli.socket, sleep=cli.sleep)
    if created:
        socket, name = params["glusterd_socket"], params["name"]
        for argv in (volume_stop_argv(socket, name), volume_delete_argv(socket, name)):
            try:
                undo.execute(argv)
            except GlusterError:
                continue  # a never-started volume refuses "stop": expected, go on
    try:
        ids = {volume["id"] for volume in undo.volumes()}
    except GlusterError:
        return undo.runner.commands  # without glusterd no directory can be shown to be free
    for path in new_dirs:
        if os.path.isdir(path) and volume_id_of(path) not in ids:
            shutil.rmtree(path)
    return undo.runner.commands


def describe_error(error):
    """"gluster volume create NAME ...: <what gluster said>"."""
    if not getattr(error, "argv", None):
        return str(error)
    words = [word for word in error.argv if not word.startswith("--")]
    return f"{' '.join(words)}: {error}"


def failure_message(error, params):
    message = describe_error(error)
    if getattr(error, "created", False):
        message += (f" (volume {params['name']} was created by this task and has been deleted "
                    "again)")
    return message


def with_brick_status(cli, volume):
    """The volume with each brick's online flag, for a started volume."""
    if volume and volume["started"]:
        status = cli.volume_status(volume["name"])
        online = {(b["host"], b["path"]): b["online"] for b in status["bricks"]}
        for brick in volume["bricks"]:
            brick["online"] = online.get((brick["host"], brick["path"]), False)
    return volume


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("replica", "disperse")],
        required_by={"arbiter": "replica", "redundancy": "disperse"},
        supports_check_mode=True,
    )
    params = module.params
    cli = GlusterCli(module, params["glusterd_socket"], reask_timed_out=True)
    try:
        # First, so that a glusterd stuck on one (and with it the pool's lock) can go on.
        unjammed = release_dead_aux_mounts(cli.runner)
        for path in unjammed:
            module.warn(f"aborted the FUSE connection of {path}, an aux mount of glusterd's that no longer "
                        "answered (its client never reached the bricks: no privileged port free?)")
        result = run(module, cli, params)
    except (CommandError, VolumeError) as error:  # GlusterError is a CommandError
        module.fail_json(**failure(cli, error, params))
    module.exit_json(**result, aux_mounts_aborted=unjammed)


def failure(cli, error, params):
    """fail_json's arguments: what failed, the commands that succeeded, what was rolled back."""
    rolled_back = getattr(error, "rolled_back", None)
    return cli.runner.failure(error, msg=failure_message(error, params),
                              **({} if rolled_back is None else {"rolled_back": rolled_back}))


def run(module, cli, params):
    observed = observe(cli, params)
    problems = (request_problems(params, observed["volume"]) or local_problems(params, observed)
                or allow_insecure_problems(params, observed))
    if problems:
        raise VolumeError("; ".join(problems))
    if params["state"] == "absent":
        return run_absent(module, cli, params, observed)
    commands, warnings = plan(observed, params)
    for warning in warnings:
        module.warn(warning)
    before = summary(observed["volume"], asked_options(observed["options"], params),
                     observed["quota"])
    apply(module, cli, params, observed, commands)
    volume = observed["volume"]
    if commands and not cli.runner.check_mode:
        # Every command above was checked (gluster's --xml answer), so the options and quota
        # are what the plan set; re-read only the volume itself and its bricks. Two gluster
        # calls fewer per change is a tenth of a buffer's setup here (benchmarks/lifecycle.py).
        volume = next((v for v in cli.volumes() if v["name"] == params["name"]), None)
    return cli.runner.result(before, predicted_summary(before, observed, params),
                             volume=with_brick_status(cli, volume))


def run_absent(module, cli, params, observed):
    """Stop and delete the volume, then remove the brick directories asked for on this host."""
    volume = observed["volume"]
    dirs = removable_brick_dirs(params, observed)
    commands = plan_absent(volume, params)
    apply(module, cli, params, observed, commands)
    cli.runner.act(remove, dirs)
    aux = release_aux_mounts(cli.runner, params["name"])
    before, after = summary(volume), {"state": "absent"}
    if dirs:
        before["brick_dirs_here"], after["brick_dirs_here"] = [entry["path"] for entry in dirs], []
    if aux:
        before["aux_mounts_here"], after["aux_mounts_here"] = aux, []
    return cli.runner.result(
        before, after, changed=bool(commands or dirs or aux), brick_dirs_removed=dirs,
        aux_mounts_removed=aux,
        volume=with_brick_status(cli, volume) if cli.runner.check_mode else None)


def removable_brick_dirs(params, observed):
    """remove_brick_dirs that exist, each a brick directory of no volume but the one deleted."""
    paths = [os.path.abspath(path) for path in params["remove_brick_dirs"]]
    others = [v for v in observed["volumes"] if v["name"] != params["name"]]
    try:
        dirs = existing_dirs(paths)
        owned = owners(others, dirs)
        if owned:
            raise BrickDirError(owned_message(owned, 0))
    except BrickDirError as error:
        raise VolumeError(f"remove_brick_dirs: {error}") from None
    return dirs


def apply(module, cli, params, observed, commands):
    """Run the commands (in check mode: record them). If one fails after this task created the
    volume, the volume is deleted again; the GlusterError says so (created, rolled_back)."""
    creating = observed["volume"] is None and params["state"] != "absent"
    new_dirs = new_local_brick_dirs(params) if creating else []
    try:
        for argv in commands:
            cli.execute(argv)
        if not cli.runner.check_mode and turns_allow_insecure_off_after_quota(params, commands):
            check_quota_accounted(cli, params)
    except GlusterError as error:
        error.created = creating and bool(cli.runner.commands)  # "volume create" is the first
        error.rolled_back = roll_back(cli, params, error.created, new_dirs) if creating else []
        raise


if __name__ == "__main__":
    main()
