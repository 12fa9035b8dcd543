#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bb_stage
short_description: Stage a job's data into or out of its burst buffer, as the job's user
version_added: "0.1.0"
description:
  - Copies a file, a directory tree or a DataWarp-style list of files from the parallel
    filesystem into a mounted burst buffer (O(direction=in)), or from the buffer back out
    (O(direction=out)). Runs on the stage host, where the buffer is mounted at O(buffer_root).
  - Every file is read and written by a worker process that has become O(uid)/O(gid) (with the
    user's supplementary groups) before it opens anything, so the copy can do exactly what the
    job's user could do, never more. The module itself (root) only collects results. Nothing
    from a path is ever passed to a shell.
  - Parallel over files (round-robin across directories, which matters on FUSE mounts) and over
    chunks of large files. Mode, mtime and atime are preserved; symlinks are copied as
    symlinks and never followed.
  - Hard links stay hard links - the names of one source file that the request stages (one
    tree, or all pairs of a list) become names of one file at the destination - the first name
    (by destination path) copied, the others linked to it once it is complete, each link checked
    (and made under the temporary name on stage-out). Names of that file outside the request are
    neither copied nor linked to; a name whose other names are all outside is copied as a file.
  - Resumable and idempotent - a destination file with the source's size and mtime is
    complete and skipped, so running the stage again copies only what is missing.
  - Stage-out writes each file under a temporary name (C(.NAME.bb-stage.tmp)) in its
    destination directory and renames it into place only when it is complete (and verified
    with O(verify=true)). A file that fails is removed and named in RV(failed_files); it is
    never left, partial, under its final name.
author:
  - hpc.burstbuffer developers (@hpc-burstbuffer)
options:
  direction:
    description:
      - V(in) copies from the parallel filesystem into the buffer; every destination must be
        inside O(buffer_root) and resolve there (a symlink in the buffer is not followed out).
      - V(out) copies from the buffer to the parallel filesystem; every source must be inside
        O(buffer_root), and a source whose resolution leaves the buffer is refused. The
        destination must be somewhere the user may write.
    type: str
    required: true
    choices: [in, out]
  type:
    description:
      - V(file) copies one file to O(destination) (into it, with the source's name, when
        O(destination) is a directory or ends with C(/)).
      - V(directory) copies the contents of the directory O(source) into the directory
        O(destination), which is created if missing.
      - V(list) reads O(source) as a list of C(source destination) pairs, one pair a line, as
        in Cray DataWarp. Blank lines and C(#) comments are ignored; quote a path that holds
        spaces. Each pair is staged like V(file) (or V(directory) when its source is one).
        The list is read as the job's user. The buffer's side of a line (the destination of a
        stage-in, the source of a stage-out) may name the buffer by a variable of
        O(buffer_variables) (C($DW_JOB_STRIPED/a)); a relative destination is read under
        O(destination), a relative stage-out source under O(buffer_root).
    type: str
    required: true
    choices: [file, directory, list]
  source:
    description:
      - The absolute path of the file, directory or list to stage. Relative paths and C(..)
        are refused; C(~) and C($VAR) are not expanded.
    type: str
    required: true
  destination:
    description:
      - The absolute destination path; required with O(type=file) and O(type=directory).
      - With O(type=list), optional - the directory under which the list's relative
        destinations are read (inside O(buffer_root) for a stage-in).
    type: str
  buffer_variables:
    description:
      - With O(type=list), the variables a list line may use for the buffer's root on this host,
        as job scripts name it - for example C(DW_JOB_STRIPED) mapped to
        C(/var/lib/bbctl/stage/bbjob-42).
        A line naming any other variable is refused. bbctl passes the names of the directive's
        buffer.
    type: dict
    default: {}
  buffer_root:
    description:
      - The buffer's root directory as mounted on this host (for example the job's
        C($DW_JOB_STRIPED)).
    type: str
    required: true
  uid:
    description:
      - The job owner's numeric user id; every copy runs as this user. V(0) (root) is refused.
    type: int
    required: true
  gid:
    description:
      - The job owner's numeric primary group id. V(0) is refused. The user's supplementary
        groups come from the group database when the uid has a name there.
    type: int
    required: true
  workers:
    description:
      - Threads copying at the same time. Small files over a GlusterFS FUSE mount need many
        (each file costs several round trips to the bricks); the default was measured best on
        a 3-brick volume (the staging benchmark in the project's source repository).
    type: int
    default: 32
  chunk_size:
    description:
      - Files larger than this are split into pieces of this size, copied in parallel at their
        offsets. A size with an optional unit, V(64MiB), V(1G); at least 1MiB.
    type: str
    default: 64MiB
  verify:
    description:
      - After copying each piece, read it back from the destination (past the page cache where
        the kernel allows) and compare checksums with the source. On stage-out a file is
        renamed into place only when all its pieces match.
    type: bool
    default: false
  gfapi:
    description:
      - With a GlusterFS buffer (O(buffer_root) on a C(fuse.glusterfs) mount), copy files of up to
        1 MiB straight to (stage-in) or from (stage-out) the volume with libgfapi instead of through
        the mount, as the same user (faster for many small files).
        Directories, larger files and replacements of partial copies of a stage-in still go through
        the mount; a stage-out writes its destination through the file system there, as always.
      - The worker then keeps one capability, C(CAP_NET_BIND_SERVICE), so that bricks that accept
        only privileged source ports (C(server.allow-insecure off)) accept it too.
      - When libgfapi is missing or the volume cannot be reached, the mount is used and
        RV(gfapi_unused) says why. Not used with O(verify) (read back through the mount).
    type: bool
    default: true
  gfapi_reads_from:
    description:
      - A stage-out reads its files of up to 1 MiB through libgfapi (see O(gfapi)) only when it has
        at least this many of them; fewer are read through the mount, which is faster for them.
      - On the project's test bed the mount read 50,000 small files in two thirds of libgfapi's
        time, 100,000 in about the same, and 200,000 in 1.45 times it (the project's tree
        benchmark). C(0) reads every stage-out's small files through libgfapi.
    type: int
    default: 100000
  discard:
    description:
      - Copy nothing. Remove, as the job's user, the temporary files (C(.NAME.bb-stage.tmp))
        an interrupted stage-out of the same request left in its destinations, and return how
        many in RV(discarded). For a stage-out that will not be run again (its job torn down
        with hurry). Only the names the stage itself would write through are removed.
      - Requires O(direction=out). In check mode, counts them without removing any.
    type: bool
    default: false
  progress_file:
    description:
      - A file to which the module appends progress as JSON lines (C(files_done),
        C(files_total), C(bytes_done), C(bytes_total), C(rate) in bytes per second,
        C(elapsed) in seconds), at most about two a second and a final line, so the caller can
        show progress while the stage runs. Written by the module (root), not by the user.
    type: path
extends_documentation_fragment:
  - hpc.burstbuffer.attributes
attributes:
  check_mode:
    support: full
    details: Walks sources and destinations as the job's user and reports what would be copied.
  diff_mode:
    support: none
    details: Returns no C(diff); RV(planned) and RV(files) say what was (or would be) copied.
notes:
  - Check mode walks the sources and destinations as the job's user and reports what would be
    copied (RV(files), RV(bytes), RV(complete), RV(planned)) without writing anything.
  - Where the destination file system cannot make a link (another file system, or the file has
    all the names it allows) the name is copied as a separate file and counted in
    RV(hardlinks_copied). Sockets, FIFOs and device files are not copied and are listed in
    RV(not_copied). Holes in sparse files are written as zeros. Files get the job's uid and
    primary gid (or the directory's group where it is set-group-id); source ownership, extended attributes and
    ACLs are not copied.
  - In stage-out destinations, names ending in C(.bb-stage.tmp) belong to the stage - a file
    of that name left by an interrupted stage-out is replaced by the next run.
  - The destination directory of O(type=directory) keeps its own mode and times when it
    already exists (the buffer's root keeps its C(0700)); directories created by the stage get
    those of their source.
requirements:
  - Linux (the worker uses O_NOFOLLOW, pread/pwrite at offsets and setresuid)
seealso:
  - module: hpc.burstbuffer.buffer_mount
"""

EXAMPLES = r"""
- name: Stage a job's input directory into its buffer
  hpc.burstbuffer.bb_stage:
    direction: in
    type: directory
    source: /lustre/home/alice/run42/input
    destination: /var/spool/bb/job42/input
    buffer_root: /var/spool/bb/job42
    uid: 1001
    gid: 1001
    progress_file: /var/spool/bbctl/job42/stage_in.progress

- name: Stage the results out, each file checked before it is renamed into place
  hpc.burstbuffer.bb_stage:
    direction: out
    type: directory
    source: /var/spool/bb/job42/output
    destination: /lustre/home/alice/run42/output
    buffer_root: /var/spool/bb/job42
    uid: 1001
    gid: 1001
    verify: true

- name: Stage in the files a DataWarp list names (lines like "/lustre/a $DW_JOB_STRIPED/in/a")
  hpc.burstbuffer.bb_stage:
    direction: in
    type: list
    source: /lustre/home/alice/run42/stage_in.list
    destination: /var/spool/bb/job42/in
    buffer_root: /var/spool/bb/job42
    buffer_variables:
      DW_JOB_STRIPED: /var/spool/bb/job42
      BB_JOB_STRIPED: /var/spool/bb/job42
    uid: 1001
    gid: 1001
"""

RETURN = r"""
discarded:
  description: With O(discard), the temporary files removed (in check mode, found).
  returned: when O(discard) is true
  type: int
  sample: 12
files:
  description: Regular files copied (in check mode, that would be copied).
  returned: always
  type: int
  sample: 10000
complete:
  description:
    - Files (and symlinks, and hard links already linked) complete at the destination (same size and
      mtime), not copied again.
    - Not called C(skipped) - Ansible reads a true C(skipped) in a result as a skipped task.
  returned: always
  type: int
  sample: 0
bytes:
  description: Bytes copied (in check mode, that would be copied).
  returned: always
  type: int
  sample: 40960000
seconds:
  description: Wall-clock seconds the stage took, planning included.
  returned: always
  type: float
  sample: 4.8
plan_seconds:
  description: Of RV(seconds), those spent planning (walking source and destination).
  returned: when the stage ran
  type: float
  sample: 0.6
peak_rss_kib:
  description: Peak resident memory of the copy worker in KiB (VmHWM; includes the about 30 MiB
    it shares with the module's Python). The plan holds every entry to copy, so it grows with them.
  returned: when the stage ran
  type: int
  sample: 65536
directories:
  description: Directories created (in check mode, that would be created).
  returned: always
  type: int
  sample: 41
links:
  description: Symlinks created (copied as symlinks, never followed).
  returned: always
  type: int
  sample: 0
hardlinks:
  description: Hard links made (names linked to a copied file of the same stage, see the description).
  returned: always
  type: int
  sample: 0
hardlinks_copied:
  description: Names of a hard-linked file copied as separate files because the destination could
    not link them (another file system, or too many links); included in RV(files).
  returned: always
  type: int
  sample: 0
gfapi_files:
  description: Files of RV(files) written (stage-in) or read (stage-out) through libgfapi rather than
    the mount (see O(gfapi)).
  returned: when something was copied
  type: int
  sample: 10000
gfapi_unused:
  description: Why libgfapi was not used for this stage; null when it was. When the worker using
    libgfapi died of a signal (a crash in the C library), the stage ran again through the mount and
    this names the signal and the Python frames the worker was in.
  returned: when something was copied
  type: str
  sample: the buffer is not a GlusterFS mount, or gfapi is off
failed_files:
  description: The entries that could not be staged, each with its path and the reason (at most
    1000; the message gives the count and names the first ten). Empty on success.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/lustre/home/alice/run42/input/secret", "reason": "cannot read: Permission
    denied (as uid 1001, the job's user)"}]
not_copied:
  description: Sockets, FIFOs and device files found in the source tree, which are not copied
    (at most 1000).
  returned: always
  type: list
  elements: dict
  sample: []
planned:
  description: In check mode, the first 100 copies the stage would make.
  returned: when check mode is on
  type: list
  elements: dict
  sample: [{"source": "/lustre/home/alice/run42/input/a.dat",
            "destination": "/var/spool/bb/job42/input/a.dat", "size": 4096}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from ansible_collections.hpc.burstbuffer.plugins.module_utils.copy_engine import (
    DEFAULT_WORKERS,
    GFAPI_READS_FROM,
    stage_as_user,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_errors import (
    StageError,
    copy_preflight,
    failure_message,
)
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_progress import ProgressFile
from ansible_collections.hpc.burstbuffer.plugins.module_utils.stage_rules import StageRequest

ARGUMENT_SPEC = dict(
    direction=dict(type="str", required=True, choices=["in", "out"]),
    type=dict(type="str", required=True, choices=["file", "directory", "list"]),
    source=dict(type="str", required=True),
    destination=dict(type="str"),
    buffer_root=dict(type="str", required=True),
    buffer_variables=dict(type="dict", default={}),
    uid=dict(type="int", required=True),
    gid=dict(type="int", required=True),
    workers=dict(type="int", default=DEFAULT_WORKERS),
    chunk_size=dict(type="str", default="64MiB"),
    verify=dict(type="bool", default=False),
    gfapi=dict(type="bool", default=True),
    gfapi_reads_from=dict(type="int", default=GFAPI_READS_FROM),
    discard=dict(type="bool", default=False),
    progress_file=dict(type="path"),
)

LISTED = 1000  # at most this many entries of failed_files and not_copied are returned
EMPTY_RESULT = dict(files=0, complete=0, bytes=0, seconds=0.0, directories=0, links=0, hardlinks=0, hardlinks_copied=0,
                    failed_files=[], not_copied=[])


def request_from(params):
    """The StageRequest of the module's parameters (paths are checked by the engine)."""
    variables = params["buffer_variables"] if params["type"] == "list" else None
    return StageRequest(params["direction"], params["type"], params["source"], params["destination"],
                        params["buffer_root"], variables or None)


def run_stage(module, params):
    """Stage as the job's user; returns (result, error message or None)."""
    chunk_size, refused = copy_preflight(params, "stage")
    if refused:
        return dict(EMPTY_RESULT), refused
    progress = ProgressFile(params["progress_file"])
    last = {}

    def report(snapshot):
        last.update(snapshot)
        progress(snapshot)

    try:
        result = stage_as_user(request_from(params), params["uid"], params["gid"],
                               workers=params["workers"], chunk_size=chunk_size,
                               verify=params["verify"], dry_run=module.check_mode, report=report,
                               use_gfapi=params["gfapi"], discard=params["discard"],
                               gfapi_reads_from=params["gfapi_reads_from"])
    except (StageError, OSError) as exc:
        return dict(EMPTY_RESULT), to_native(exc)
    if last and params["progress_file"]:
        progress.final(last)
    error = None
    if result["failed_files"]:
        total = result["files"] + result["links"] + result["hardlinks"] + len(result["failed_files"])
        error = failure_message(params["direction"], result["failed_files"], total)
    for name in ("failed_files", "not_copied"):  # the counts are in msg; keep the result small
        result[name] = result[name][:LISTED]
    return result, error


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("type", "file", ["destination"]),
                                        ("type", "directory", ["destination"])])
    params = module.params
    result, error = run_stage(module, params)
    changed = bool(result["files"] or result["directories"] or result["links"] or result["hardlinks"]
                   or result.get("discarded"))
    if error is not None:
        module.fail_json(msg=error, changed=changed, **result)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
