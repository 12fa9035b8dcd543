#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cache_writeback
short_description: Write a cache buffer back to the directory it cached, as the job's user
version_added: "0.1.0"
description:
  - At the end of a job with a cache buffer (C(jobdw type=cache pfs=DIR)), makes O(lower) (DIR)
    what the job left in its cache - the upper directory of the job's fuse-overlayfs mount
    (hpc.burstbuffer.cache_overlay), O(buffer_dir)C(/upper), read on the stage host where the
    buffer is mounted.
  - Files and symlinks the job created or changed are copied with the stage-out engine's rules
    (hpc.burstbuffer.bb_stage) - a worker that has become O(uid)/O(gid) writes each file under
    a temporary name, verifies it and renames it into place, with its mode and times. Whiteouts
    (C(.wh.NAME) files, character devices 0/0) delete NAME on DIR, opaque directories delete
    what DIR had there, and a directory the job did not change keeps its mtime.
  - Nothing on DIR is deleted unless the job deleted it, and nothing is deleted unless every
    copy before it succeeded (what the job deleted goes last). An entry of DIR that was made or
    changed after the cache was mounted (the time kept in O(buffer_dir)C(/since)) is not deleted;
    it is listed in RV(kept).
  - Idempotent - a rerun after a success copies and deletes nothing; after a failure it carries on.
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  lower:
    description: The cached directory (the job's C(pfs=)).
    type: path
    required: true
  buffer_dir:
    description: The directory of the mounted buffer that holds C(upper) and C(since).
    type: path
    required: true
  uid:
    description: The job's user; never 0.
    type: int
    required: true
  gid:
    description: The job's group; never 0.
    type: int
    required: true
  workers:
    description: Copy threads.
    type: int
    default: 32
  chunk_size:
    description: Large files are copied in pieces of this size, a size such as V(64MiB).
    type: str
    default: 64MiB
  progress_file:
    description: Where to append progress snapshots (JSON lines), as hpc.burstbuffer.bb_stage does.
    type: path
  discard:
    description:
      - Write nothing back; instead remove the temporary files (C(.NAME.bb-stage.tmp)) that an
        interrupted write-back left on O(lower), as the job's user, and say how many in
        RV(discarded). For a write-back that will not be run again (the job torn down with hurry).
      - Only the temporary names this write-back would write through are removed; a user's own
        file named like one is never touched.
    type: bool
    default: false
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Hard links are written back as separate files; a file replaced on DIR is a new inode.
requirements:
  - root on the target (to become the job's user)
seealso:
  - module: hpc.burstbuffer.cache_overlay
  - module: hpc.burstbuffer.bb_stage
"""

EXAMPLES = r"""
- name: Write the job's cache back to /lus/alice/run42
  hpc.burstbuffer.cache_writeback:
    lower: /lus/alice/run42
    buffer_dir: /var/lib/bbctl/stage/bbjob-42
    uid: 1001
    gid: 1001
"""

RETURN = r"""
files:
  description: Regular files written back (in check mode, that would be).
  returned: always
  type: int
  sample: 12
bytes:
  description: Bytes written back (in check mode, that would be).
  returned: always
  type: int
  sample: 40960
links:
  description: Symlinks written back.
  returned: success
  type: int
  sample: 1
deleted:
  description: Entries deleted on the cached directory because the job deleted them.
  returned: success
  type: int
  sample: 3
discarded:
  description: With O(discard), the temporary files removed (in check mode, found).
  returned: when O(discard) is true
  type: int
  sample: 3
deletions:
  description: In check mode, the number of deletions planned.
  returned: when check mode is on
  type: int
  sample: 3
kept:
  description: Entries the job deleted but someone else made or changed on the cached directory
    during the job; they are kept.
  returned: success
  type: list
  elements: dict
  sample: [{"path": "/lus/alice/run42/log", "reason": "changed on the cached directory during the job"}]
failed_files:
  description: What could not be written back or deleted, each with its path and reason. Empty on success.
  returned: always
  type: list
  elements: dict
  sample: []
not_copied:
  description: Sockets, FIFOs and device files the job made, which are not written back.
  returned: always
  type: list
  elements: dict
  sample: []
planned:
  description: In check mode, the first 100 copies, links and deletions.
  returned: when check mode is on
  type: dict
  sample: {"copies": [], "links": [], "deletions": [{"path": "/lus/alice/run42/old", "why": "whiteout"}]}
seconds:
  description: Wall-clock seconds it took.
  returned: always
  type: float
  sample: 1.2
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from ansible_collections.hpc.burstbuffer.plugins.module_utils.cache_overlay import SINCE, UPPER
from ansible_collections.hpc.burstbuffer.plugins.module_utils.cache_writeback import writeback_as_user
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import (
    StageError,
    copy_preflight,
    failure_message,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_progress import ProgressFile

ARGUMENT_SPEC = dict(
    lower=dict(type="path", required=True),
    buffer_dir=dict(type="path", required=True),
    uid=dict(type="int", required=True),
    gid=dict(type="int", required=True),
    workers=dict(type="int", default=32),
    chunk_size=dict(type="str", default="64MiB"),
    progress_file=dict(type="path"),
    discard=dict(type="bool", default=False),
)
LISTED = 1000
EMPTY_RESULT = dict(files=0, bytes=0, seconds=0.0, failed_files=[], not_copied=[])


def run(module, params):
    """Write back as the job's user; returns (result, error message or None)."""
    chunk_size, refused = copy_preflight(params, "write back")
    if refused:
        return dict(EMPTY_RESULT), refused
    progress = ProgressFile(params["progress_file"])
    try:
        result = writeback_as_user(os.path.join(params["buffer_dir"], UPPER), params["lower"], params["uid"],
                                   params["gid"], workers=params["workers"], chunk_size=chunk_size,
                                   dry_run=module.check_mode, report=progress,
                                   since_file=os.path.join(params["buffer_dir"], SINCE),
                                   discard=params["discard"])
    except (StageError, OSError) as exc:
        return dict(EMPTY_RESULT), "write-back to %s: %s" % (params["lower"], to_native(exc))
    error = None
    if result["failed_files"]:
        total = result["files"] + len(result["failed_files"])
        error = "write-back to %s: %s" % (params["lower"], failure_message("out", result["failed_files"], total))
    for name in ("failed_files", "not_copied", "kept"):
        if name in result:
            result[name] = result[name][:LISTED]
    return result, error


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    result, error = run(module, module.params)
    for item in result.get("kept", [])[:10]:
        module.warn("kept %s: the job deleted it, but it was %s" % (item["path"], item["reason"]))
    changed = bool(result["files"] or result.get("deleted") or result.get("links") or result.get("discarded"))
    if error is not None:
        module.fail_json(msg=error, changed=changed, **result)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
