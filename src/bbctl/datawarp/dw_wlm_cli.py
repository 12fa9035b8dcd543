"""``dw_wlm_cli``: Slurm's burst_buffer/datawarp plugin driving bbctl.lifecycle.

slurmctld fork+execs ``GetSysState`` (dw_wlm_cli) with ``--function NAME`` and
the function's options, stdout and stderr merged into its reply, success =
exit 0 (docs/SLURM.md section 3 lists every form). Each function maps onto one
Lifecycle call; the only logic here is that mapping and the JSON Slurm reads
(bbctl.datawarp.sessions).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import pwd
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bbctl import detach, host, runner, site
from bbctl.collection import linux_process, sizes
from bbctl.commands import DETACHED, log_to_file, on_sigterm, slurm_env, slurm_node_count, slurm_nodes
from bbctl.datawarp.program import LifecycleFactory, Parser, fail, leading_config
from bbctl.datawarp.sessions import configurations_document, instances_document, sessions_document
from bbctl.errors import BBError
from bbctl.job_request import nodes_from_file, read_request
from bbctl.lifecycle import Lifecycle

NO_SESSION = "No matching session"  # data_in/data_out: Slurm takes this reply as success
TOKEN_NOT_FOUND = "token not found"  # teardown: likewise


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
    config, argv = leading_config(argv, "dw_wlm_cli")
    argv = _join_values(argv)
    top = Parser(prog="dw_wlm_cli", allow_abbrev=False, add_help=False)
    top.add_argument("--function", required=True)
    known, rest = top.parse_known_args(argv)
    if known.function not in OPTIONS:
        raise InvalidFunction(f"invalid function {known.function!r}: dw_wlm_cli knows {', '.join(OPTIONS)}")
    parser = Parser(prog=f"dw_wlm_cli --function {known.function}", allow_abbrev=False)
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


# --- the functions: (life, args) -> exit code ---------------------------------------------------

def _print_json(document: Any) -> int:
    print(json.dumps(document), flush=True)
    return 0


def _job_process(life: Lifecycle, args: argparse.Namespace) -> int:
    """Slurm gives job_process no uid: the policy's user checks wait for setup (Lifecycle.admit)."""
    try:
        life.check_fits(life.admit(read_request(args.job)))
    except BBError as exc:
        print(exc, flush=True)  # the user sees it at submit: "burst_buffer/datawarp: <this line>"
        return 1
    return 0


def _setup(life: Lifecycle, args: argparse.Namespace) -> int:
    pool, size = args.capacity
    def swap_nodes() -> int:
        return len(_read_nodes(args.node_file)) if args.node_file else slurm_node_count(life.site, args.token)

    life.setup(args.token, args.user, args.groupid, args.job, pool=pool, size=size or None, swap_nodes=swap_nodes,
               slurm_books_swap=True)
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
    return life.has_buffer(args.token) or bool(read_request(args.job).persistent)


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
    nodes = slurm_nodes(life.site, args.token) if args.node_file is None else _read_nodes(args.node_file)
    life.pre_run(args.token, args.job, nodes)
    return 0


def _read_nodes(node_file: Path) -> list[str]:
    try:
        return nodes_from_file(node_file)
    except OSError as exc:
        raise BBError(f"cannot read the node file {node_file}: {exc.strerror}") from exc


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


def main(argv: Sequence[str] | None = None, *, lifecycle: LifecycleFactory = open_lifecycle) -> int:
    linux_process.unblock_signals()  # slurmctld forks us with SIGTERM and SIGHUP blocked
    try:
        config, args = parse_dw_wlm_cli(sys.argv[1:] if argv is None else argv)
    except BBError as exc:  # already names the function (or is Slurm's "invalid function")
        return fail(str(exc), exc.exit_code)
    if args.function in DETACHED and lifecycle is open_lifecycle:  # unit tests' recording Lifecycle runs here
        return detach.run_detached(lambda: _run(lifecycle, config, args))
    return _run(lifecycle, config, args)


def _run(lifecycle: LifecycleFactory, config: Path | None, args: argparse.Namespace) -> int:
    try:
        life = lifecycle(config)
        code = FUNCTIONS[args.function](life, args)
        if life.cancel is not None and life.cancel():
            raise BBError("cancelled (SIGTERM)")
        return code
    except BBError as exc:
        return fail(f"dw_wlm_cli {args.function}: {exc}", exc.exit_code)
    except KeyboardInterrupt:
        return 130


