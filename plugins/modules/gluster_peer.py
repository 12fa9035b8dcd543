#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: gluster_peer
short_description: Probe GlusterFS storage servers into a trusted pool, or detach them
version_added: "0.1.0"
description:
  - Makes the given nodes peers of the glusterd the task talks to (C(gluster peer probe)),
    and waits until they are connected members of the pool; or detaches them
    (C(gluster peer detach)).
  - "The pool is read from C(gluster pool list --xml). A node is recognised by any of the names
    the pool knows it by. A node the pool does not list by name is asked for its glusterd UUID
    (read-only, the gluster C(system) C(uuid get) command with C(--remote-host)); if that is the
    UUID of this glusterd (the pool lists itself as C(localhost)) or of a known peer, the node
    is already in the pool under another name and nothing is done for it."
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  nodes:
    description:
      - Host names or addresses of the storage servers, as their glusterd should know each
        other. The node the task runs against may be in the list; it is skipped.
    type: list
    elements: str
    required: true
  state:
    description:
      - V(present) probes the nodes that are not peers yet, then waits until every node is
        connected and C(Peer in Cluster).
      - V(absent) detaches the nodes that are peers. Gluster refuses to detach a node that
        still hosts bricks of a volume; its message is passed on. The node the task runs
        against cannot be detached from its own pool.
    type: str
    choices: [present, absent]
    default: present
  timeout:
    description:
      - Seconds to wait, with O(state=present), until all nodes are connected members of the
        pool.
    type: int
    default: 60
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
  - hpc.burstbuffer.glusterd
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Check mode reads everything and runs nothing; RV(commands) lists the commands a real run
    would run. With C(--diff), C(before) and C(after) list the peers (host names).
seealso:
  - module: hpc.burstbuffer.gluster_volume
"""

EXAMPLES = r"""
- name: Form the pool from the first storage server
  hpc.burstbuffer.gluster_peer:
    nodes: "{{ groups['bb_storage'] | map('extract', hostvars, 'bb_gluster_host') | list }}"
  run_once: true

- name: Take a drained server out of the pool
  hpc.burstbuffer.gluster_peer:
    nodes: [stor7]
    state: absent
  run_once: true
"""

RETURN = r"""
commands:
  description:
    - The gluster commands run, or in check mode those that would run, as argv lists.
    - After a failure, those that succeeded before it.
  returned: always
  type: list
  elements: list
  sample:
    - [gluster, --mode=script, peer, probe, stor2, --xml]
peers:
  description: The pool afterwards as C(gluster pool list) shows it, without this node.
  returned: always
  type: list
  elements: dict
  sample:
    - uuid: 42bc47ad-6c3b-41d0-bdbf-b821a42b4388
      hostname: stor2
      hostnames: [stor2]
      connected: true
      state: 3
      state_str: Peer in Cluster
      local: false
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.gluster import (
    GlusterCli,
    GlusterError,
    cli_message,
    peer_detach_argv,
    peer_probe_argv,
)

PEER_IN_CLUSTER = 3
# What "peer probe" answers (successfully) for a name of this very glusterd.
LOCALHOST_ANSWER = "probe on localhost not needed"
POLL_INTERVAL = 0.5

ARGUMENT_SPEC = dict(
    nodes=dict(type="list", elements="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    timeout=dict(type="int", default=60),
    glusterd_socket=dict(type="path"),
)

SELF = "self"


class PeerError(Exception):
    """The pool cannot be brought to the wanted state; the message says what to do."""


# --- pure ----------------------------------------------------------------------------------

def peer_named(pool, node):
    """The pool entry that knows node by one of its names (not the local one); or None."""
    wanted = node.lower()
    for peer in pool:
        if not peer["local"] and wanted in (name.lower() for name in peer["hostnames"]):
            return peer
    return None


def identify(pool, node, uuid):
    """SELF, the peer dict node is, or None: by name first, then by the UUID node answered."""
    peer = peer_named(pool, node)
    if peer or not uuid:
        return peer
    for entry in pool:
        if entry["uuid"] == uuid:
            return SELF if entry["local"] else entry
    return None


def plan_peers(identities, state, glusterd_socket):
    """Probe the nodes that are not in the pool, or detach those that are."""
    if state == "present":
        return [peer_probe_argv(glusterd_socket, node)
                for node, found in identities.items() if found is None]
    selves = [node for node, found in identities.items() if found == SELF]
    if selves:
        raise PeerError(f"{', '.join(selves)} is the node this task talks to; a glusterd cannot "
                        "detach itself (run the task against another node of the pool)")
    return [peer_detach_argv(glusterd_socket, found["hostname"])
            for found in identities.values() if found is not None]


def not_ready(pool, nodes):
    """Nodes that are not (yet) connected members of the pool."""
    waiting = []
    for node in nodes:
        peer = peer_named(pool, node)
        if peer is not None and not (peer["connected"] and peer["state"] == PEER_IN_CLUSTER):
            waiting.append(f"{node} ({peer['state_str'] or 'unknown state'}, "
                           f"{'connected' if peer['connected'] else 'disconnected'})")
        elif peer is None:
            waiting.append(f"{node} (not in the pool)")
    return waiting


def remote_peers(pool):
    return [peer for peer in pool if not peer["local"]]


def peer_names(pool):
    return sorted(peer["hostname"] for peer in remote_peers(pool))


# --- running ---------------------------------------------------------------------------------

def identities_of(cli, pool, nodes):
    """node -> SELF / peer / None; asks a node its UUID only when the pool lacks its name."""
    found = {}
    for node in nodes:
        uuid = None if peer_named(pool, node) else cli.node_uuid(node)
        found[node] = identify(pool, node, uuid)
    return found


def wait_until_ready(cli, nodes, timeout, clock=time.monotonic, sleep=None):
    sleep = sleep or cli.sleep
    deadline = clock() + timeout
    while True:
        pool = cli.pool()
        waiting = not_ready(pool, nodes)
        if not waiting:
            return pool
        if clock() >= deadline:
            raise PeerError(f"after {timeout} s these peers are not connected members of the "
                            f"pool: {', '.join(waiting)}; check that glusterd runs on them and "
                            "that they reach each other on port 24007")
        sleep(POLL_INTERVAL)


def probe_or_detach(cli, commands):
    """Run the commands (in check mode: record them); the nodes that turned out to be this
    glusterd (nothing done for them)."""
    selves = []
    for argv in commands:
        try:
            answer = cli.execute(argv)
        except GlusterError as error:
            raise PeerError(f"gluster peer {argv[-3]} {argv[-2]}: {error}") from None
        if answer is not None and LOCALHOST_ANSWER in cli_message(answer).lower():
            selves.append(argv[-2])
    return selves


def run(module, cli, params):
    pool = cli.pool()
    nodes = list(dict.fromkeys(params["nodes"]))
    identities = identities_of(cli, pool, nodes)
    selves = probe_or_detach(cli, plan_peers(identities, params["state"], params["glusterd_socket"]))
    identities.update((node, SELF) for node in selves)
    commands = [argv for argv in cli.runner.commands if argv[-2] not in selves]
    after = pool
    if cli.runner.check_mode:
        names = predicted_names(pool, identities, params)
    else:
        after = cli.pool() if commands or selves else pool
        if params["state"] == "present":
            others = [node for node, found in identities.items() if found != SELF]
            after = wait_until_ready(cli, others, params["timeout"])
        names = peer_names(after)
    result = cli.runner.result({"peers": peer_names(pool)}, {"peers": names},
                               changed=bool(commands), peers=remote_peers(after))
    result["commands"] = commands  # a probe of this very glusterd changed nothing
    return result


def predicted_names(pool, identities, params):
    names = set(peer_names(pool))
    for node, found in identities.items():
        if params["state"] == "present" and found is None:
            names.add(node)
        elif params["state"] == "absent" and found not in (None, SELF):
            names.discard(found["hostname"])
    return sorted(names)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    cli = GlusterCli(module, module.params["glusterd_socket"])
    try:
        result = run(module, cli, module.params)
    except (GlusterError, PeerError) as error:
        module.fail_json(**cli.runner.failure(error))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
