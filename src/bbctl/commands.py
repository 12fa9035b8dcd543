"""bbctl's stage and operator subcommands: argument parsing and output around bbctl.lifecycle."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbctl import host, operator_views, reconcile, runner, site, slurm_install, slurmconf, status_text
from bbctl.errors import BBError
from bbctl.job_request import nodes_from_file
from bbctl.lifecycle import Lifecycle
from bbctl.operator_views import describe


@dataclass(frozen=True)
class Reported:
    """A handler's result to print, with the exit code that goes with it (reconcile, gc: drift left)."""

    result: Any
    exit_code: int


# Commands that must run to their end even if Slurm kills the script that started them (bbctl.detach).
DETACHED = frozenset({"teardown"})
JOB_STAGES = ("setup", "stage-in", "real-size", "paths", "pre-run", "post-run", "stage-out", "teardown")


def add_stage_commands(subparsers: argparse._SubParsersAction, size_type: Callable[[str], int]) -> None:
    helps = {
        "setup": "allocate bricks, build the job's buffer (and persistent ones it creates), mount it for staging",
        "stage-in": "copy the job's stage_in data into the buffer, as the job's user",
        "real-size": "print the bytes the job's buffer really has",
        "paths": "write the job's environment (DW_JOB_STRIPED, ...) as KEY=VALUE lines",
        "pre-run": "mount the buffers on the job's compute nodes",
        "post-run": "unmount the buffers from the job's compute nodes",
        "stage-out": "copy the job's stage_out data out of the buffer, verified, as the job's user",
        "teardown": "destroy the job's buffer and release its bricks (unknown job: nothing to do)",
    }
    for name in JOB_STAGES:
        parser = subparsers.add_parser(name, help=helps[name], description=helps[name])
        parser.add_argument("--job-id", required=True, help="Slurm job id")
        if name != "real-size":
            parser.add_argument("--script", help="the job script (directives are read from it)")
        if name == "setup":
            parser.add_argument("--uid", type=int, required=True, help="job owner's uid")
            parser.add_argument("--gid", type=int, required=True, help="job owner's gid")
            parser.add_argument("--pool", help="pool Slurm chose (default: the directive's, else the first)")
            parser.add_argument("--size", type=size_type, help="size Slurm granted, if larger than asked")
            parser.add_argument("--swap-nodes", type=int,
                                help="nodes that get the job's swap (default: ask Slurm, only if it asks for swap)")
        if name == "paths":
            parser.add_argument("--path-file", type=Path, help="file to write (default: print)")
        if name == "pre-run":
            parser.add_argument("--nodes", help="compute nodes, comma separated (default: ask Slurm)")
            parser.add_argument("--node-file", type=Path, help="file of compute node names, one per line")
        if name == "teardown":
            parser.add_argument("--hurry", action="store_true", help="skip the stage-out check: discard data")
        parser.add_argument("--json", action="store_true", help="print JSON")
    create = subparsers.add_parser("create-persistent", help="create a named buffer that outlives jobs")
    create.add_argument("--name", required=True)
    create.add_argument("--uid", type=int, required=True)
    create.add_argument("--gid", type=int, required=True)
    create.add_argument("--capacity", type=size_type, required=True)
    create.add_argument("--pool")
    destroy = subparsers.add_parser("destroy-persistent", help="destroy a named buffer (refused while in use)")
    destroy.add_argument("--name", required=True)
    destroy.add_argument("--hurry", action="store_true", help="destroy even while jobs use it")
    for parser in (create, destroy):
        parser.add_argument("--json", action="store_true", help="print JSON")


# reconcile's and gc's exit codes in their --help: one text, so that the two cannot disagree.
DRIFT_EXIT_CODES = (f"Exit codes: 0 no drift left (none found, or --repair repaired all of it); "
                    f"{reconcile.EXIT_DRIFT} drift left (found without --repair, or a repair failed); "
                    "1 failed (the survey could not run); 2 bad input. Hosts that did not answer are listed "
                    "(unanswered) and are not drift.")
GC_DRY_RUN_EXIT = f" A dry run repairs nothing: it exits {reconcile.EXIT_DRIFT} when it finds drift."


def add_operator_commands(subparsers: argparse._SubParsersAction) -> None:
    status = subparsers.add_parser("status", help="pools with their use, buffers with the stage running now")
    show = subparsers.add_parser(
        "show", help="one buffer's record and stage timings, as JSON (exit 3 if no buffer exists: a torn-down "
                     "one's kept record is still printed)")
    show.add_argument("key", help="job id or persistent buffer name")
    show.add_argument("--text", action="store_true", help="for people: a summary and a table of stage timings")
    bbstat = subparsers.add_parser(
        "bbstat", help="what `scontrol show bbstat [job=N|name=X]` prints (burst_buffer.lua passes its words)",
        description="The status view, or one buffer's view for job=N, name=X or a bare key. Two leading "
                    "numbers (the uid and gid Slurm 23.02+ puts first) are dropped. Always exits 0: Slurm "
                    "shows nothing of a status call that fails.")
    bbstat.add_argument("words", nargs=argparse.REMAINDER, help="what followed `scontrol show bbstat`")
    pools = subparsers.add_parser("pools", help="the pools JSON Slurm reads (rewritten from the state store)")
    pools.add_argument("--datawarp", action="store_true", help="with units, as dw_wlm_cli prints it")
    gc = subparsers.add_parser(
        "gc", help="tear down buffers whose stage died mid-way",
        description="Tears down buffers whose stage died mid-way (a stage-out's are held as failed, their "
                    "data kept), then reports drift as reconcile does. " + DRIFT_EXIT_CODES
                    + GC_DRY_RUN_EXIT)
    gc.add_argument("--older-than", type=float, default=3600, help="seconds without progress (default 3600)")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be torn down")
    gc.add_argument("--repair", action="store_true", help="also repair the drift it reports (see reconcile)")
    sweep = subparsers.add_parser(
        "sweep", help="tear down the job buffers whose teardown Slurm lost (run it as a service: --every)",
        description="Tears down the job buffers whose teardown Slurm lost: Slurm 22.05 kills every script of "
                    "a job it cancels, sometimes the teardown it has just started among them, and never "
                    "starts another. A buffer is taken when slurmctld shows its job ended at least --grace "
                    "seconds ago with the buffer in teardown, no stage of bbctl's runs for it, and no "
                    "teardown has run since the job ended. With --every, runs until SIGTERM (a systemd "
                    "service: docs/OPERATOR_GUIDE.md, section 13).")
    sweep.add_argument("--every", type=float, help="sweep every SECONDS until SIGTERM (default: once)")
    sweep.add_argument("--grace", type=float, default=operator_views.SWEEP_GRACE,
                       help=f"seconds since the job ended (default {operator_views.SWEEP_GRACE:.0f})")
    reconcile = subparsers.add_parser(
        "reconcile", help="compare the state store with what the servers hold; --repair fixes the drift",
        description="Surveys every storage server (volumes, brick directories), the stage host and the "
                    "compute nodes (buffer mounts), read-only, and reports each difference from the state "
                    "store: a record whose volume is gone or never came up, a volume, brick directory or "
                    "mount no record holds. With --repair, each is torn down as a teardown would. "
                    + DRIFT_EXIT_CODES)
    reconcile.add_argument("--repair", action="store_true", help="tear down what drifted, release its bricks")
    reconcile.add_argument("--older-than", type=float, default=600,
                           help="seconds a setup or teardown may still be making or removing its volume "
                                "(default 600)")
    servers = subparsers.add_parser(
        "servers", help="storage servers: usable, failing or drained; --drain and --resume take one out and back",
        description="Lists every storage server of the pools with its consecutive failed runs, whether bbctl "
                    "offers its bricks, and the buffers on it. A server becomes unusable (failing) after "
                    "server_fail_limit consecutive failed runs, or when drained: no new buffer gets its bricks "
                    "and the pools Slurm reads leave them out; buffers already on it are untouched. "
                    "Exit codes: 0 done; 2 an unknown server (the known ones are named); 1 the state store "
                    "failed.")
    action = servers.add_mutually_exclusive_group()
    action.add_argument("--drain", metavar="NAME", help="take the server out of the pools by hand")
    action.add_argument("--resume", metavar="NAME",
                        help="give the server back to the pools (failing or drained), its failure count cleared")
    servers.add_argument("--reason", default="", metavar="TEXT",
                         help="why it is drained (with --drain), shown by bbctl servers")
    install = subparsers.add_parser("slurm-install", help="install burst_buffer.lua and its files beside slurm.conf")
    install.add_argument("--dir", type=Path, help="directory of slurm.conf (default: the config's slurm_dir)")
    for parser in (status, show, pools, gc, reconcile, install, bbstat, servers):
        parser.add_argument("--json", action="store_true", help="print JSON")
    _add_metrics(subparsers)


def _add_metrics(subparsers: argparse._SubParsersAction) -> None:
    metrics = subparsers.add_parser(
        "metrics", help="Prometheus metrics from the state store: serve them, or write a textfile",
        description="Pools, buffers by state, and every stage's runs, seconds, files, bytes, failures and "
                    "durations, as every bbctl process recorded them in the state store.")
    actions = metrics.add_subparsers(dest="action", required=True)
    serve = actions.add_parser("serve", help="answer scrapes over HTTP at /metrics until SIGTERM")
    serve.add_argument("--address", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: loopback only)")
    serve.add_argument("--port", type=int, default=9841, help="port (default 9841; 0: any free port, printed)")
    write = actions.add_parser("write", help="write node_exporter's textfile format to PATH, atomically")
    write.add_argument("path", type=Path, help="the .prom file to (re)place, e.g. in the textfile collector's "
                                               "directory")
    for parser in (serve, write):
        parser.set_defaults(json=False)


def run(args: argparse.Namespace) -> int:
    config = site.load(args.config)
    cancel = runner.Cancel()
    with log_to_file(config), on_sigterm(cancel.set):
        life = Lifecycle(config, say=to_stderr, cancel=cancel)
        result = _HANDLERS[args.command](life, args)
    if cancel() and args.command != "metrics":  # SIGTERM is how a metrics server is stopped
        raise BBError(f"{args.command}: cancelled (SIGTERM)")
    if isinstance(result, int):
        return result
    if isinstance(result, Reported):
        _print(result.result, args.json)
        return result.exit_code
    _print(result, args.json)
    return 0


@contextlib.contextmanager
def on_sigterm(action: Callable[[], None]) -> Iterator[None]:
    """Slurm ends a stage that runs out of time with SIGTERM: stop the playbook, then report.

    A teardown run by bbctl.detach ignores SIGTERM on purpose: it stays deaf.
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: action())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def log_to_file(config: site.Site) -> Iterator[None]:
    """Stage progress to <work_dir>/bbctl.log for as long as the command runs."""
    try:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(config.log_file)
    except OSError:
        handler = logging.NullHandler()  # a read-only view (status as a user) still works
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("bbctl")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def _print(result: Any, as_json: bool) -> None:
    if as_json or not isinstance(result, str):
        print(json.dumps(result, indent=2, default=str))
    else:
        print(result)


# --- handlers: (life, args) -> printable result, or an exit code -------------------------------

def _setup(life: Lifecycle, args: argparse.Namespace) -> Any:
    def swap_nodes() -> int:
        return args.swap_nodes if args.swap_nodes is not None else slurm_node_count(life.site, args.job_id)

    made = life.setup(args.job_id, args.uid, args.gid, args.script, pool=args.pool, size=args.size,
                      swap_nodes=swap_nodes)
    return {"job": args.job_id, "buffers": [describe(b, life.site) for b in made]}


def _pre_run(life: Lifecycle, args: argparse.Namespace) -> Any:
    if args.nodes:
        nodes = [n for n in args.nodes.split(",") if n]
    elif args.node_file:
        nodes = nodes_from_file(args.node_file)
    else:
        nodes = slurm_nodes(life.site, args.job_id)
    life.pre_run(args.job_id, args.script, nodes)
    return {"job": args.job_id, "nodes": nodes}


def _paths(life: Lifecycle, args: argparse.Namespace) -> Any:
    env = life.paths(args.job_id, args.script)
    lines = "".join(f"{k}={v}\n" for k, v in env.items())
    if args.path_file:
        with args.path_file.open("a") as out:
            out.write(lines)
    return env if args.json or not args.path_file else 0


def _show(life: Lifecycle, args: argparse.Namespace) -> Any:
    """Exit 3 when no buffer exists (callers wait on it for a teardown), printing what history kept."""
    view = operator_views.show(life, args.key)
    if view is None:
        print(f"bbctl show: no buffer {args.key}", file=sys.stderr)
        return 3
    _print(status_text.render_buffer(view) if args.text and not args.json else view, args.json)
    if view["torn_down"]:
        print(f"bbctl show: no buffer {args.key} now: it was torn down at "
              f"{status_text.when(view['finished_at'])}; printed is the record kept of it", file=sys.stderr)
        return 3
    return 0


def _status(life: Lifecycle, args: argparse.Namespace) -> Any:
    report = operator_views.status(life)
    return report if args.json else status_text.render_status(report)


def _metrics(life: Lifecycle, args: argparse.Namespace) -> Any:
    from bbctl import metrics  # only here: no stage imports prometheus_client

    if args.action == "write":
        metrics.write(life.site, args.path)
        return 0
    server, _thread = metrics.serve(life.site, args.address, args.port)
    host = f"[{args.address}]" if ":" in args.address else args.address
    print(f"bbctl metrics: serving http://{host}:{server.server_port}/metrics", flush=True)
    try:
        while not (life.cancel and life.cancel()):
            time.sleep(0.2)
    finally:
        server.shutdown()
        server.server_close()
    return 0


def _bbstat(life: Lifecycle, args: argparse.Namespace) -> Any:
    try:
        key = operator_views.bbstat_key(args.words)
    except BBError as exc:
        return str(exc)
    if key is None:
        return status_text.render_status(operator_views.status(life))
    view = operator_views.show(life, key)
    if view is None:
        return f"no buffer {key}: none was set up, or it was torn down longer ago than bbctl keeps records"
    return status_text.render_buffer(view)


def _reconcile(life: Lifecycle, args: argparse.Namespace) -> Reported:
    """The drift report; exit EXIT_DRIFT while some is left (reconcile.exit_code)."""
    report = reconcile.reconcile(life, repair_drift=args.repair, older_than=args.older_than)
    return Reported(report if args.json else reconcile.render(report), reconcile.exit_code(report))


def _gc(life: Lifecycle, args: argparse.Namespace) -> Reported:
    """gc's teardowns, then the drift a survey finds (repaired with --repair, never in a dry run, which
    counts no server's silence either); the exit code as reconcile's: EXIT_DRIFT while drift is left."""
    report = operator_views.gc(life, args.older_than, dry_run=args.dry_run)
    report.update(reconcile.reconcile(life, repair_drift=args.repair and not args.dry_run,
                                      older_than=args.older_than, count_silence=not args.dry_run))
    return Reported(report, reconcile.exit_code(report))


def _sweep(life: Lifecycle, args: argparse.Namespace) -> Any:
    """One sweep (the buffers torn down), or one every --every seconds until SIGTERM."""
    if args.every is None:
        return {"torn_down": operator_views.sweep(life, grace=args.grace)}
    stopped = threading.Event()
    with on_sigterm(stopped.set):
        operator_views.sweep_every(life, args.every, stop=stopped.is_set)
    return 0


def _servers(life: Lifecycle, args: argparse.Namespace) -> Any:
    """The servers' table, after a drain or a resume when one is asked."""
    report = operator_views.servers_command(life, drain=args.drain, resume=args.resume, reason=args.reason)
    return report if args.json else status_text.render_servers(report)


def _slurm_install(life: Lifecycle, args: argparse.Namespace) -> Any:
    """Install, then rewrite the pools file from the state store: job_process counts each pool's bricks there."""
    report = slurm_install.install(life.site, args.dir)
    if args.dir is None or args.dir == life.site.slurm_dir:
        life.refresh_pools()
    return report


_HANDLERS: dict[str, Callable[[Lifecycle, argparse.Namespace], Any]] = {
    "setup": _setup,
    "stage-in": lambda life, a: {"job": a.job_id, "stages": life.stage_in(a.job_id, a.script)},
    "real-size": lambda life, a: life.real_size(a.job_id) if a.json else str(life.real_size(a.job_id)),
    "paths": _paths,
    "pre-run": _pre_run,
    "post-run": lambda life, a: {"job": a.job_id, "done": life.post_run(a.job_id, a.script) is None},
    "stage-out": lambda life, a: {"job": a.job_id, "stages": life.stage_out(a.job_id, a.script)},
    "teardown": lambda life, a: {"job": a.job_id,
                                 "destroyed": life.teardown(a.job_id, a.script, hurry=a.hurry)},
    "create-persistent": lambda life, a: describe(
        life.create_persistent(a.name, a.uid, a.gid, a.capacity, a.pool), life.site),
    "destroy-persistent": lambda life, a: {"name": a.name,
                                           "destroyed": life.destroy_persistent(a.name, hurry=a.hurry)},
    "status": _status,
    "show": _show,
    "bbstat": _bbstat,
    "metrics": _metrics,
    "pools": lambda life, a: (life.refresh_pools() if not a.datawarp else life.pools_document(datawarp=True)),
    "servers": _servers,
    "gc": lambda life, a: _gc(life, a),
    "sweep": _sweep,
    "reconcile": lambda life, a: _reconcile(life, a),
    "slurm-install": lambda life, a: _slurm_install(life, a),
}


def slurm_nodes(settings: site.Site, job_id: str) -> list[str]:
    """The job's compute nodes, from slurmctld (slurmconf.job: JSON, which a job's own name or paths
    cannot forge; told the site's slurm.conf, see slurm_env)."""
    node_list = slurmconf.job(settings.slurm_dir, site.job_key(job_id)).nodes
    if node_list in ("", "(null)"):
        raise BBError(f"job {job_id} has no nodes yet (NodeList={node_list or 'empty'})")
    names = host.run(["scontrol", "show", "hostnames", node_list], env=slurm_env(settings))
    return names.stdout.split()


def slurm_node_count(settings: site.Site, job_id: str) -> int:
    """How many nodes the job may run on (the most it asked for), from slurmctld: what Slurm's
    datawarp plugin multiplies swap by."""
    count = slurmconf.job(settings.slurm_dir, site.job_key(job_id)).node_count
    if count < 1:
        raise BBError(f"slurmctld shows no node count for job {job_id}: cannot size the job's swap")
    return count


def slurm_env(settings: site.Site) -> dict[str, str]:
    """The environment for Slurm's commands with the site's slurm.conf (bbctl.slurmconf.slurm_env)."""
    return slurmconf.slurm_env(settings.slurm_dir)
