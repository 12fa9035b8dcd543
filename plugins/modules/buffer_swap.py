#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: buffer_swap
short_description: Give a compute node swap space on a burst buffer, or take it away
version_added: "0.1.0"
description:
  - Sets up a swap area backed by a burst buffer - a file on the buffer's mount, attached to a loop
    device (C(losetup --find), with direct I/O where the file allows it, so swapped-out pages are not
    cached a second time), given a swap signature (C(mkswap)) and turned on (C(swapon)) - or
    removes it (C(swapoff), C(losetup --detach), the file removed).
  - The kernel cannot swap to a file on a FUSE filesystem such as GlusterFS; a loop device over
    that file it can.
  - The file is allocated in full (C(fallocate), or zeros written where the filesystem does not
    support it), so swapping never needs space the job's data has taken.
  - The file holds memory of any process on the node, so it and its directory are root's alone
    (C(0600) and C(0700)). A path through a symbolic link, or a file or directory there that is not
    root's, is refused - the buffer's root belongs to the job's user.
  - A setup that fails undoes what it did (swap turned off, loop device detached, file and
    directory removed if it made them) before failing.
  - Idempotent; the truth is C(losetup --list) (loop devices found by the file's inode and
    device, not its name), C(/proc/swaps) and C(blkid -p).
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  path:
    description:
      - The swap file, on the buffer's mount, for example C(/mnt/bb/bb-job42/.swap/node1).
      - Its directory is created (mode C(0700)) when missing; the directory above it must exist
        (the buffer must be mounted).
    type: path
    required: true
  size:
    description:
      - The size of the swap area, with a unit (C(4GiB)) or in bytes; a whole number of MiB.
      - Required with O(state=present). A file of another size that is not in use is replaced; one in
        use is refused (remove it first).
    type: str
  priority:
    description:
      - Swap priority (C(swapon --priority)); unset, the kernel gives it one below every other area,
        so the node's local swap, if any, is used first.
    type: int
  state:
    description:
      - V(present) allocates the file, attaches a loop device, writes the swap signature and turns
        the area on, each only if not done yet.
      - V(absent) turns off swap on every loop device backed by the file, detaches them and removes
        the file.
    type: str
    choices: [present, absent]
    default: present
  remove_dir:
    description:
      - With O(state=absent), remove the file's directory too when nothing else is in it (several
        nodes' swap files share one directory of a buffer).
    type: bool
    default: true
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Check mode reads everything and runs nothing; RV(commands) lists the commands a real run would
    run, with C(<new loop device>) for the device C(losetup --find) would choose.
  - C(swapoff) needs the free memory to take back what was paged out; if the node has not got it,
    O(state=absent) fails and says so, and leaves the area on.
requirements:
  - util-linux (losetup, fallocate, mkswap, swapon, swapoff, blkid)
  - root on the target (loop devices and swap)
seealso:
  - module: hpc.burstbuffer.buffer_mount
"""

EXAMPLES = r"""
- name: Give this compute node 4 GiB of swap on the job's buffer
  hpc.burstbuffer.buffer_swap:
    path: /mnt/bb/bb-job42/.swap/{{ inventory_hostname }}
    size: 4GiB

- name: Take it away again before the buffer is unmounted
  hpc.burstbuffer.buffer_swap:
    path: /mnt/bb/bb-job42/.swap/{{ inventory_hostname }}
    state: absent
"""

RETURN = r"""
path:
  description: The swap file, as given.
  returned: always
  type: str
  sample: /mnt/bb/bb-job42/.swap/node1
size:
  description: The size of the swap area in bytes (with O(state=present)).
  returned: success
  type: int
  sample: 4294967296
device:
  description:
    - The loop device serving the swap area; null with O(state=absent), and in check mode when
      it would be a new one.
  returned: success
  type: str
  sample: /dev/loop9
active:
  description: Whether the swap area is on afterwards (in check mode, would be).
  returned: success
  type: bool
  sample: true
commands:
  description:
    - The commands run, or in check mode the commands that would run, as argv lists.
    - After a failure, those that succeeded before it; the failed one is C(cmd), with C(rc),
      C(stdout) and C(stderr), and what undid the steps before it is RV(undone).
  returned: always
  type: list
  elements: list
  sample:
    - ["mkdir", "--mode", "0700", "/mnt/bb/bb-job42/.swap"]
    - ["fallocate", "--length", "4294967296", "/mnt/bb/bb-job42/.swap/node1"]
    - ["chmod", "0600", "/mnt/bb/bb-job42/.swap/node1"]
    - ["losetup", "--find", "--show", "--direct-io=on", "/mnt/bb/bb-job42/.swap/node1"]
    - ["mkswap", "/dev/loop9"]
    - ["swapon", "/dev/loop9"]
undone:
  description:
    - After a failed setup, the commands that removed what it had made (swap off, loop device
      detached, file and directory removed), as argv lists.
  returned: failure
  type: list
  elements: list
  sample:
    - ["losetup", "--detach", "/dev/loop9"]
    - ["rm", "--force", "/mnt/bb/bb-job42/.swap/node1"]
    - ["rmdir", "--ignore-fail-on-non-empty", "/mnt/bb/bb-job42/.swap"]
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpc.burstbuffer.plugins.module_utils.command_runner import (
    CommandError,
    CommandRunner,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.sizes import SizeError, parse_size
from ansible_collections.hpc.burstbuffer.plugins.module_utils.swap_areas import (
    NEW_LOOP,
    SwapError,
    apply,
    check_path,
    check_size,
    describe,
    others_in,
    plan_absent,
    plan_present,
    read_swap_state,
    undo_commands,
)

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    size=dict(type="str"),
    priority=dict(type="int"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    remove_dir=dict(type="bool", default=True),
)


def wanted_size(params):
    """The size in bytes from the size option; SwapError naming the bad text."""
    try:
        return check_size(parse_size(params["size"]))
    except SizeError as error:
        raise SwapError(f"size: {error}") from None


def ensure_present(runner, params, state):
    size = wanted_size(params)
    commands = plan_present(state, size, owner=os.geteuid(), priority=params["priority"])
    try:
        device = apply(runner, commands, size)
    except (CommandError, OSError) as error:
        raise SwapSetupFailed(error, undo(runner, state)) from None
    device = device or describe(state)["loop_device"]
    after = {"path": state.path, "size": size, "loop_device": None if device == NEW_LOOP else device,
             "active": True}
    return after, {"size": size, "device": after["loop_device"], "active": True}


class SwapSetupFailed(Exception):
    """A setup step failed; what it made was undone (``undone``: the argv lists that did it)."""

    def __init__(self, error, undone):
        super().__init__(str(error))
        self.error = error
        self.undone = undone


def undo(runner, before):
    """Remove what this run made, best effort: every step is tried; returns the argv lists run."""
    after = read_swap_state(runner, before.path)
    done = []
    for argv in undo_commands(before, after):
        try:
            runner.read(argv, ok=(0, 1) if argv[0] == "rmdir" else (0,))
            done.append(argv)
        except (CommandError, OSError):
            continue
    return done


def ensure_absent(runner, params, state):
    name = os.path.basename(state.path)
    commands = plan_absent(state, owner=os.geteuid(), remove_dir=params["remove_dir"],
                           others_in_dir=others_in(os.path.dirname(state.path), name))
    apply(runner, commands)
    after = {"path": state.path, "size": None, "loop_device": None, "active": False}
    return after, {"device": None, "active": False}


def run(runner, params):
    path = params["path"]
    check_path(path, os.path.realpath(path))
    state = read_swap_state(runner, path)
    ensure = ensure_present if params["state"] == "present" else ensure_absent
    after, fields = ensure(runner, params, state)
    return runner.result(describe(state), after, **fields)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "present", ["size"])])
    params = dict(module.params, path=os.path.abspath(module.params["path"]))
    runner = CommandRunner(module)
    try:
        result = run(runner, params)
    except SwapSetupFailed as failed:
        message = (f"swap area on the buffer at {params['path']} not set up: {failed.error}; "
                   + ("undone: " + "; ".join(" ".join(argv) for argv in failed.undone) if failed.undone
                      else "nothing to undo"))
        module.fail_json(**runner.failure(failed.error, msg=message, path=params["path"],
                                          undone=failed.undone))
    except (SwapError, CommandError, OSError) as error:
        module.fail_json(**runner.failure(error, msg=f"swap area on the buffer at {params['path']}: {error}",
                                          path=params["path"]))
    module.exit_json(**result, path=params["path"])


if __name__ == "__main__":
    main()
