"""``dw_wlm_cli`` and ``dwstat``: Slurm's burst_buffer/datawarp plugin driving bbctl.lifecycle.

slurmctld fork+execs ``GetSysState`` (dw_wlm_cli) with ``--function NAME`` and
the function's options, stdout and stderr merged into its reply, success =
exit 0 (docs/SLURM.md section 3 lists every form). Each function maps onto one
Lifecycle call; the only logic here is that mapping and the JSON Slurm reads.

Ids: Slurm reads session, instance and configuration ids as JSON integers
(json-c; a string silently reads as 0). A job's buffer has the job id as its
id; a persistent buffer a stable number derived from its name, at
PERSISTENT_ID_BASE or above, where no Slurm job id reaches. One buffer is one
session, one instance and one configuration, all with the same id.

``dwstat`` (``GetSysStatus``, run for ``scontrol show dwstat ...`` with a 2 s
limit) prints tables from the state store alone: no Ansible, no Slurm.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import pwd
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from bbctl import host, runner, site
from bbctl.collection import sizes
from bbctl.commands import log_to_file, on_sigterm, slurm_env, slurm_nodes
from bbctl.errors import BBError
from bbctl.lifecycle import USER_META, Lifecycle, nodes_from_file, read_request
from bbctl.state import Buffer, BufferState

# Slurm job ids stay below 0x04000000 (MAX_JOB_ID); persistent ids start far above and fit an int32.
MAX_SLURM_JOB_ID = 0x03FFFFFF
PERSISTENT_ID_BASE = 0x40000000
NO_SESSION = "No matching session"  # data_in/data_out: Slurm takes this reply as success
TOKEN_NOT_FOUND = "token not found"  # teardown: likewise

LifecycleFactory = Callable[[Path | None], Lifecycle]

_ACTUALIZED = frozenset({BufferState.CREATED, BufferState.STAGED_IN, BufferState.MOUNTED, BufferState.STAGING_OUT,
                         BufferState.STAGED_OUT, BufferState.DESTROYED})
_TRANSITIONING = frozenset({BufferState.ALLOCATING, BufferState.CREATING, BufferState.STAGING_OUT,
                            BufferState.DESTROYING})


# --- ids and the JSON Slurm parses ---------------------------------------------------------

def session_id(key: str) -> int:
    """The integer id of a buffer's session (and of its instance and configuration)."""
    if site.is_job_key(key):
        return int(key)
    return PERSISTENT_ID_BASE + (zlib.crc32(key.encode("utf-8", "surrogateescape")) & 0x3FFFFFFF)


def buffer_bytes(life: Lifecycle, buffer: Buffer) -> int:
    """What the buffer's bricks give (whole granules); its asked capacity if its pool is no longer configured."""
    pool = life.pools.get(buffer.pool)
    return len(buffer.bricks) * pool.granularity if pool else buffer.capacity


def client_nodes(buffer: Buffer) -> list[str]:
    """Compute nodes the buffer is mounted on: its job's, or those of every job using a persistent one."""
    return sorted({node for key, nodes in buffer.meta.items() if key == "nodes" or key.startswith(USER_META)
                   for node in nodes})


def state_document(buffer: Buffer) -> dict[str, Any]:
    """DataWarp's state object: where the buffer is heading and whether it is there yet."""
    return {"goal": "destroy" if buffer.state in (BufferState.DESTROYING, BufferState.DESTROYED) else "create",
            "actualized": buffer.state in _ACTUALIZED, "transitioning": buffer.state in _TRANSITIONING,
            "fuse_blown": buffer.state is BufferState.FAILED, "mixed": False}


def sessions_document(buffers: Iterable[Buffer]) -> dict[str, list[dict[str, Any]]]:
    return {"sessions": [
        {"id": session_id(b.key), "created": int(b.created_at), "owner": b.owner_uid, "token": b.key,
         "creator": "SLURM" if site.is_job_key(b.key) else "CLI", "expiration": 0,
         "links": {"client_nodes": client_nodes(b)}, "state": state_document(b)}
        for b in buffers]}


def instances_document(life: Lifecycle, buffers: Iterable[Buffer]) -> dict[str, list[dict[str, Any]]]:
    return {"instances": [
        {"id": session_id(b.key), "created": int(b.created_at),
         "capacity": {"bytes": buffer_bytes(life, b), "nodes": 0},
         "links": {"session": session_id(b.key), "configurations": [session_id(b.key)]},
         "label": site.volume_name(b.key), "state": state_document(b)}
        for b in buffers]}


def configurations_document(buffers: Iterable[Buffer]) -> dict[str, list[dict[str, Any]]]:
    return {"configurations": [
        {"id": session_id(b.key), "type": "scratch", "links": {"instance": session_id(b.key)},
         "state": state_document(b)}
        for b in buffers]}


# --- dw_wlm_cli's command line -----------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing its usage and exiting: Slurm shows one line."""

    def error(self, message: str) -> NoReturn:
        raise BBError(f"{self.prog}: {message}", exit_code=2)


class InvalidFunction(BBError):
    """Slurm recognises an older dw_wlm_cli by a reply starting with "invalid function"."""

    exit_code = 2


def pool_size(text: str) -> tuple[str, int]:
    """``POOL:SIZE`` as Slurm passes --capacity and -C (``nvme:200GiB``, ``nvme:4294967296``)."""
    pool, colon, size = text.rpartition(":")
    if not colon or not pool:
        raise argparse.ArgumentTypeError(f"{text!r}: expected POOL:SIZE, e.g. nvme:200GiB")
    try:
        return pool, sizes.parse_size(size)
    except sizes.SizeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


_Option = tuple[tuple[str, ...], dict[str, Any]]
_TOKEN: _Option = (("--token",), {"required": True, "help": "Slurm job id"})
_JOB: _Option = (("--job",), {"type": Path, "required": True, "help": "the job script"})
_NODE_FILE: _Option = (("--nodehostnamefile", "--nidlistfile"),
                       {"dest": "node_file", "type": Path, "help": "the job's compute nodes, one per line"})
OPTIONS: dict[str, tuple[_Option, ...]] = {
    "pools": (),
    "show_instances": (),
    "show_sessions": (),
    "show_configurations": (),
    "job_process": (_JOB,),
    "setup": (_TOKEN, (("--caller",), {"default": "SLURM"}), (("--user",), {"type": int, "required": True}),
              (("--groupid",), {"type": int, "required": True}),
              (("--capacity",), {"type": pool_size, "required": True, "help": "POOL:SIZE"}), _JOB, _NODE_FILE),
    "data_in": (_TOKEN, _JOB),
    "real_size": (_TOKEN,),
    "paths": (_JOB, _TOKEN, (("--pathfile",), {"type": Path, "required": True})),
    "pre_run": (_TOKEN, _JOB, _NODE_FILE),
    "post_run": (_TOKEN, _JOB),
    "data_out": (_TOKEN, _JOB),
    "teardown": ((("--token",), {"required": True, "help": "job id or persistent buffer name"}),
                 (("--job",), {"type": Path, "help": "the job script"}), (("--hurry",), {"action": "store_true"})),
    "create_persistent": ((("-c", "--caller"), {"default": "CLI"}),
                          (("-t", "--token"), {"dest": "name", "required": True}),
                          (("-u", "--user"), {"type": int, "required": True}),
                          (("-C", "--capacity"), {"type": pool_size, "required": True, "help": "POOL:BYTES"}),
                          (("-a", "--access"), {}), (("-T", "--type"), {})),
}
# Slurm versions differ in what they pass; a teardown must never fail on an option it does not know.
TOLERANT = frozenset({"teardown"})


def parse_dw_wlm_cli(argv: Sequence[str]) -> tuple[Path | None, argparse.Namespace]:
    """(config, arguments) from dw_wlm_cli's argv; ``arguments.function`` names the function."""
    config, argv = _leading_config(argv, "dw_wlm_cli")
    argv = _join_values(argv)
    top = _Parser(prog="dw_wlm_cli", allow_abbrev=False, add_help=False)
    top.add_argument("--function", required=True)
    known, rest = top.parse_known_args(argv)
    if known.function not in OPTIONS:
        raise InvalidFunction(f"invalid function {known.function!r}: dw_wlm_cli knows {', '.join(OPTIONS)}")
    parser = _Parser(prog=f"dw_wlm_cli --function {known.function}", allow_abbrev=False)
    for flags, options in OPTIONS[known.function]:
        parser.add_argument(*flags, **options)
    if known.function in TOLERANT:
        args, _ignored = parser.parse_known_args(rest)
    else:
        args = parser.parse_args(rest)
    args.function = known.function
    return config, args


# Options whose value Slurm passes as the next word, whatever it looks like (-t is --token's short form).
_VALUE_OPTIONS = {"--token": "--token", "-t": "--token"}


def _join_values(argv: list[str]) -> list[str]:
    """``--token VALUE`` as ``--token=VALUE``, so that argparse never reads a VALUE like ``-x`` as an option."""
    joined, words = [], iter(argv)
    for word in words:
        value = next(words, None) if word in _VALUE_OPTIONS else None
        joined.append(word if value is None else f"{_VALUE_OPTIONS[word]}={value}")
    return joined


def _leading_config(argv: Sequence[str], prog: str) -> tuple[Path | None, list[str]]:
    args = list(argv)
    if args and args[0].startswith("--config="):
        return Path(args[0].split("=", 1)[1]), args[1:]
    if args and args[0] == "--config":
        if len(args) < 2:
            raise BBError(f"{prog}: --config needs the path of bbctl's site configuration", exit_code=2)
        return Path(args[1]), args[2:]
    return None, args


# --- the functions: (life, args) -> exit code ---------------------------------------------------

def _print_json(document: Any) -> int:
    print(json.dumps(document), flush=True)
    return 0


def _job_process(_life: Lifecycle, args: argparse.Namespace) -> int:
    try:
        read_request(args.job)
    except BBError as exc:
        print(exc, flush=True)  # the user sees it at submit: "burst_buffer/datawarp: <this line>"
        return 1
    return 0


def _setup(life: Lifecycle, args: argparse.Namespace) -> int:
    pool, size = args.capacity
    life.setup(args.token, args.user, args.groupid, args.job, pool=pool, size=size or None)
    return 0


def _data_in(life: Lifecycle, args: argparse.Namespace) -> int:
    if _has_session(life, args):
        life.stage_in(args.token, args.job)
    else:
        print(NO_SESSION, flush=True)
    return 0


def _data_out(life: Lifecycle, args: argparse.Namespace) -> int:
    if _has_session(life, args):
        life.stage_out(args.token, args.job)
    else:
        print(NO_SESSION, flush=True)
    return 0


def _has_session(life: Lifecycle, args: argparse.Namespace) -> bool:
    """Whether the job has a buffer to stage with: its own, or a persistent one it names.

    "No matching session" is success to Slurm: it must never stand for staging skipped.
    """
    return life.store.get(site.job_key(args.token)) is not None or bool(read_request(args.job).persistent)


def _real_size(life: Lifecycle, args: argparse.Namespace) -> int:
    return _print_json({"token": args.token, "capacity": life.real_size(args.token), "units": "bytes"})


def _paths(life: Lifecycle, args: argparse.Namespace) -> int:
    env = life.paths(args.token, args.job)
    try:
        args.pathfile.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    except OSError as exc:
        raise BBError(f"cannot write the path file {args.pathfile}: {exc.strerror}") from exc
    return 0


def _pre_run(life: Lifecycle, args: argparse.Namespace) -> int:
    if args.node_file is None:
        nodes = slurm_nodes(life.site, args.token)
    else:
        try:
            nodes = nodes_from_file(args.node_file)
        except OSError as exc:
            raise BBError(f"cannot read the node file {args.node_file}: {exc.strerror}") from exc
    life.pre_run(args.token, args.job, nodes)
    return 0


def _post_run(life: Lifecycle, args: argparse.Namespace) -> int:
    life.post_run(args.token, args.job)
    return 0


def _teardown(life: Lifecycle, args: argparse.Namespace) -> int:
    if site.is_job_key(args.token):
        found = life.teardown(args.token, args.job, hurry=args.hurry)
    else:
        found = _destroy_persistent(life, args)
    if not found:
        print(TOKEN_NOT_FOUND, flush=True)
    return 0


def _destroy_persistent(life: Lifecycle, args: argparse.Namespace) -> bool:
    """``#BB destroy_persistent``: Slurm retries a failed one forever, the job pending with our reason.

    That suits a buffer still in use (the job waits for it); a request that can never succeed
    (bad input, exit 2) holds the job instead, so its owner sees the reason and can cancel.
    """
    try:
        return life.destroy_persistent(args.token, hurry=args.hurry)
    except BBError as exc:
        job_id = job_id_of_script(args.job)
        if exc.exit_code == 2 and job_id is not None:
            hold_job(life.site, job_id)
        raise


def job_id_of_script(script: Path | None) -> str | None:
    """The job id in Slurm's script path ``.../hash.N/job.<id>/script``; None for another path."""
    match = re.search(r"/job\.([0-9]+)/script$", str(script or ""))
    return match.group(1) if match else None


def hold_job(settings: site.Site, job_id: str) -> None:
    """``scontrol hold``: Slurm then shows our reply as the held job's reason."""
    proc = host.run(["scontrol", "hold", job_id], check=False, env=slurm_env(settings))
    if proc.returncode != 0:
        print(f"could not hold job {job_id}: {(proc.stderr or proc.stdout).strip()}", file=sys.stderr, flush=True)


def _create_persistent(life: Lifecycle, args: argparse.Namespace) -> int:
    pool, capacity = args.capacity
    try:
        gid = pwd.getpwuid(args.user).pw_gid
    except KeyError:
        raise BBError(f"no user with uid {args.user} on this host: the buffer belongs to the user and "
                      "their primary group", exit_code=2) from None
    if args.access not in (None, "striped"):
        raise BBError(f"access {args.access!r}: persistent buffers are striped", exit_code=2)
    life.create_persistent(args.name, args.user, gid, capacity, pool, buffer_type=args.type or "scratch")
    print(f"created persistent buffer {args.name}", flush=True)
    return 0


FUNCTIONS: dict[str, Callable[[Lifecycle, argparse.Namespace], int]] = {
    "pools": lambda life, _args: _print_json(life.pools_document(datawarp=True)),
    "show_instances": lambda life, _args: _print_json(instances_document(life, life.store.buffers())),
    "show_sessions": lambda life, _args: _print_json(sessions_document(life.store.buffers())),
    "show_configurations": lambda life, _args: _print_json(configurations_document(life.store.buffers())),
    "job_process": _job_process,
    "setup": _setup,
    "data_in": _data_in,
    "real_size": _real_size,
    "paths": _paths,
    "pre_run": _pre_run,
    "post_run": _post_run,
    "data_out": _data_out,
    "teardown": _teardown,
    "create_persistent": _create_persistent,
}


def open_lifecycle(config: Path | None) -> Lifecycle:
    """The Lifecycle bbctl's stage commands use, for the rest of this short process.

    Progress goes to bbctl.log only: Slurm turns dw_wlm_cli's whole output into
    the job's reason, which must stay the one line that says what failed.
    """
    settings = site.load(config)
    cancel = runner.Cancel()
    _PROCESS_SCOPE.enter_context(log_to_file(settings))
    _PROCESS_SCOPE.enter_context(on_sigterm(cancel.set))
    return Lifecycle(settings, cancel=cancel)


_PROCESS_SCOPE = contextlib.ExitStack()  # closed at exit (atexit below)
atexit.register(_PROCESS_SCOPE.close)


def dw_wlm_cli_main(argv: Sequence[str] | None = None, *, lifecycle: LifecycleFactory = open_lifecycle) -> int:
    try:
        config, args = parse_dw_wlm_cli(sys.argv[1:] if argv is None else argv)
    except BBError as exc:  # already names the function (or is Slurm's "invalid function")
        return _fail(str(exc), exc.exit_code)
    try:
        life = lifecycle(config)
        code = FUNCTIONS[args.function](life, args)
        if life.cancel is not None and life.cancel():
            raise BBError("cancelled (SIGTERM)")
        return code
    except BBError as exc:
        return _fail(f"dw_wlm_cli {args.function}: {exc}", exc.exit_code)
    except KeyboardInterrupt:
        return 130


def _fail(reason: str, code: int) -> int:
    """The reason as the reply's last line, on one line: Slurm shows the merged output to the user."""
    sys.stderr.flush()
    print(" ".join(reason.split()), flush=True)
    return code


# --- dwstat ---------------------------------------------------------------------------------------

DWSTAT_VIEWS = ("pools", "sessions", "instances", "configurations")
DWSTAT_DEFAULT = ("pools", "sessions", "instances")


def _read_only_lifecycle(config: Path | None) -> Lifecycle:
    return Lifecycle(site.load(config))


def dwstat_main(argv: Sequence[str] | None = None, *, lifecycle: LifecycleFactory = _read_only_lifecycle) -> int:
    """``dwstat [--config PATH] [pools|sessions|instances|configurations|all ...]``."""
    try:
        config, views = parse_dwstat(sys.argv[1:] if argv is None else argv)
    except BBError as exc:
        return _fail(str(exc), exc.exit_code)
    try:
        life = lifecycle(config)
        print("\n\n".join(_DWSTAT_TABLES[view](life) for view in views), flush=True)
        return 0
    except BBError as exc:
        return _fail(f"dwstat: {exc}", exc.exit_code)


def parse_dwstat(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    """(config, views to print in order); no view: DWSTAT_DEFAULT."""
    config, rest = _leading_config(argv, "dwstat")
    parser = _Parser(prog="dwstat", allow_abbrev=False,
                     description="Burst buffer pools, sessions, instances and configurations, from bbctl's "
                                 f"state store. Without VIEW: {', '.join(DWSTAT_DEFAULT)}.")
    parser.add_argument("views", nargs="*", metavar="VIEW", help=f"{', '.join(DWSTAT_VIEWS)} or all")
    views = parser.parse_args(rest).views or list(DWSTAT_DEFAULT)
    unknown = [view for view in views if view not in (*DWSTAT_VIEWS, "all")]
    if unknown:
        parser.error(f"unknown view {unknown[0]!r}: use {', '.join(DWSTAT_VIEWS)} or all")
    return config, list(DWSTAT_VIEWS) if "all" in views else list(dict.fromkeys(views))


def state_flags(state: dict[str, Any]) -> str:
    """Five columns: goal (C create, D destroy), A actualized, F failed, T transitioning, M mixed."""
    return "".join((state["goal"][0].upper(), "A" if state["actualized"] else "-",
                    "F" if state["fuse_blown"] else "-", "T" if state["transitioning"] else "-",
                    "M" if state["mixed"] else "-"))


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Right-aligned columns, one space apart."""
    cells = [list(header), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(" ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
                     for row in cells)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def _pools_table(life: Lifecycle) -> str:
    return table(("pool", "units", "quantity", "free", "gran"), (
        (p["id"], p["units"], sizes.format_size(p["quantity"] * p["granularity"]),
         sizes.format_size(p["free"] * p["granularity"]), sizes.format_size(p["granularity"]))
        for p in life.pools_document(datawarp=True)["pools"]))


def _sessions_table(life: Lifecycle) -> str:
    return table(("sess", "state", "token", "creator", "owner", "created", "expiration", "nodes"), (
        (s["id"], state_flags(s["state"]), s["token"], s["creator"], s["owner"], _when(s["created"]),
         "never", len(s["links"]["client_nodes"]))
        for s in sessions_document(life.store.buffers())["sessions"]))


def _instances_table(life: Lifecycle) -> str:
    buffers = life.store.buffers()
    return table(("inst", "state", "sess", "bytes", "bricks", "created", "label"), (
        (i["id"], state_flags(i["state"]), i["links"]["session"], sizes.format_size(i["capacity"]["bytes"]),
         len(b.bricks), _when(i["created"]), i["label"])
        for i, b in zip(instances_document(life, buffers)["instances"], buffers, strict=True)))


def _configurations_table(life: Lifecycle) -> str:
    buffers = life.store.buffers()
    return table(("conf", "state", "inst", "type", "activs"), (
        (c["id"], state_flags(c["state"]), c["links"]["instance"], c["type"], _activations(b))
        for c, b in zip(configurations_document(buffers)["configurations"], buffers, strict=True)))


def _activations(buffer: Buffer) -> int:
    """Jobs that have the buffer mounted: those using a persistent one, or its own job while that runs."""
    return sum(1 for key in buffer.meta if key.startswith(USER_META)) + (buffer.state is BufferState.MOUNTED)


_DWSTAT_TABLES: dict[str, Callable[[Lifecycle], str]] = {
    "pools": _pools_table,
    "sessions": _sessions_table,
    "instances": _instances_table,
    "configurations": _configurations_table,
}
