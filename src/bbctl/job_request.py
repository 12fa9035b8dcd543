"""A job's request as the stages read it: its directives from the script Slurm passes, what Slurm
booked for them, and what swap and cache buffers need checked before anything is allocated or mounted.

Pure functions of the directives, the buffer's record and the node counts (no store, no
playbook); bbctl.lifecycle calls them at the stages named in each docstring. Errors are
BBError with the exit code bbctl --help documents (2: bad input).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bbctl.directives import DirectiveError, JobRequest, check_buffer_name, parse_job_script
from bbctl.errors import BBError
from bbctl.playbook_vars import CACHE, SWAP, SWAP_NODES
from bbctl.pools import Pool, bricks_needed
from bbctl.state import Buffer

GIB = 1024**3  # Slurm counts swap in GiB


def read_request(script: Path | str | None) -> JobRequest:
    """The directives of a job script (a path; Slurm may pass a memfd under /proc); none without one.

    BBError (exit 1) if it cannot be read, (exit 2) if a directive is wrong."""
    if script is None:
        return JobRequest()
    try:
        text = Path(script).read_text(errors="replace")
    except OSError as exc:
        raise BBError(f"cannot read the job script {script}: {exc.strerror}") from exc
    try:
        return parse_job_script(text)
    except DirectiveError as exc:
        raise BBError(str(exc), exit_code=2) from exc


def request_or_empty(script: Path | str | None) -> JobRequest:
    """Teardown must finish even when the script is gone or its directives no longer parse."""
    try:
        return read_request(script)
    except BBError:
        return JobRequest()


def nodes_from_file(path: Path) -> list[str]:
    """The host names of a node file (Slurm's, one a line), blank lines dropped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# --- what Slurm booked --------------------------------------------------------------------------
def booked_for_swap(request: JobRequest, pool: Callable[[], Pool], nodes: Any) -> int:
    """What Slurm 22.05's datawarp plugin adds to a job's size for ``swap N``: N times the job's
    (maximum) node count, counted in bytes although N is GiB, rounded up to the pool's
    granularity; one granule for any swap that fits in one. The lua plugin books nothing.

    ``pool``: the job buffer's pool, asked for only when swap was booked."""
    if not request.swap or not isinstance(nodes, int) or nodes < 1:
        return 0
    granularity = pool().granularity
    return bricks_needed((request.swap // GIB) * nodes, granularity) * granularity


def booked_for_persistent(request: JobRequest, pool: Callable[[str | None], Pool]) -> int:
    """What Slurm's lua plugin adds to a job's size for its create_persistent lines (whole granules).

    It sums capacity= over every directive line; the rest of the size is the job buffer's.
    ``pool``: the pool of a line's pool= (None: the job's)."""
    booked = 0
    for create in request.create_persistent:
        granularity = pool(create.pool).granularity
        booked += bricks_needed(create.capacity, granularity) * granularity
    return booked


# --- swap ----------------------------------------------------------------------------------------
def swap_meta(key: str, request: JobRequest, nodes: Any) -> dict[str, int]:
    """The state meta of a job buffer that holds swap: bytes per node, and for how many nodes."""
    if not request.swap:
        return {}
    if not isinstance(nodes, int) or nodes < 1:
        raise BBError(f"job {key} asks for swap ({request.swap // GIB} GiB per node) but its node count is "
                      "unknown: give setup the number of nodes (bbctl setup --swap-nodes N)", exit_code=2)
    return {SWAP: request.swap, SWAP_NODES: nodes}


def swap_bytes(meta: dict[str, int]) -> int:
    """The space swap takes in the buffer: its size on each node times the nodes."""
    return meta.get(SWAP, 0) * meta.get(SWAP_NODES, 0)


def node_count(count: Callable[[], int], *, required: bool) -> int | None:
    """The job's (most) nodes from ``count``; None when it cannot tell and nothing requires it."""
    try:
        return count()
    except BBError:
        if required:
            raise
        return None


def check_swap_nodes(buffer: Buffer, nodes: list[str]) -> None:
    """Refuse, before mounting, a job on more nodes than setup made room for swap on."""
    sized = buffer.meta.get(SWAP_NODES)
    if buffer.meta.get(SWAP) and sized is not None and len(nodes) > sized:
        raise BBError(f"buffer {buffer.key}: swap was sized at setup for {sized} node(s), the job runs on "
                      f"{len(nodes)}: the buffer has no room for the others' swap files")


# --- cache ---------------------------------------------------------------------------------------
def is_cache(request: JobRequest) -> bool:
    """The job buffer is a write-back cache of pfs=DIR (jobdw type=cache)."""
    return request.jobdw is not None and request.jobdw.type == "cache"


def cache_meta(request: JobRequest) -> dict[str, str]:
    """The state meta of a cache buffer: the directory it caches."""
    return {CACHE: request.jobdw.pfs} if is_cache(request) and request.jobdw.pfs else {}


def refuse_cache_on_nodes(key: str, request: JobRequest, nodes: Any) -> None:
    """Refuse at setup, before anything is allocated, a cache job that asks for more than one node
    (pre-run checks the nodes it really got)."""
    if is_cache(request) and isinstance(nodes, int) and nodes > 1:
        raise BBError(f"job {key}: a cache buffer (type=cache) serves one compute node, the job asks for up to "
                      f"{nodes}: submit it with -N 1, or use type=scratch with stage_in and stage_out lines",
                      exit_code=2)


def check_cache_nodes(buffer: Buffer, nodes: list[str]) -> None:
    """Refuse, before mounting, a cache buffer for more than one node: fuse-overlayfs mounts on several
    nodes over one shared upper directory would each keep their own view and corrupt it."""
    if buffer.meta.get(CACHE) and len(nodes) > 1:
        raise BBError(f"buffer {buffer.key}: a cache buffer (type=cache) serves one compute node, the job runs on "
                      f"{len(nodes)}: run it on one node (sbatch -N 1), or use type=scratch with stage_in and "
                      "stage_out lines", exit_code=2)


# --- owners and names ------------------------------------------------------------------------------
def refuse_root(uid: int) -> None:
    if uid == 0:
        raise BBError("root cannot own a burst buffer: data is staged with the owner's identity", exit_code=2)


def persistent_key(name: str) -> str:
    """The state key of a persistent buffer, by the grammar's rule for names (a job id never passes)."""
    try:
        return check_buffer_name(name)
    except DirectiveError as exc:
        raise BBError(str(exc), exit_code=2) from None
