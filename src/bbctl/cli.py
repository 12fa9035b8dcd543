"""The bbctl command line: one subcommand per burst buffer stage, operator views, the test bed.

Slurm's burst_buffer.lua and dw_wlm_cli call the stage commands; operators use
status, show, pools, servers and gc; `config reference` prints the settings' reference.
Progress goes to stderr and to <work_dir>/bbctl.log; on failure the last line of
stderr is the reason, fit to show to the job's owner.

Exit codes: 0 success; 1 the operation failed; 2 bad input (command line,
directives, configuration); 3 nothing to show (test bed not up, no such buffer);
4 refused for now (buffer busy or in use, stage-out not yet verified); 5 drift
left (reconcile and gc: drift found and not repaired, or a repair failed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bbctl import commands, site
from bbctl.collection import linux_process, sizes
from bbctl.errors import BBError
from bbctl.testbed.config import DEFAULT_ROOT, SLURM_FLAVOURS, TestbedConfig


def _size(text: str) -> int:
    try:
        return sizes.parse_size(text)
    except sizes.SizeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_testbed(subparsers: argparse._SubParsersAction) -> None:
    testbed = subparsers.add_parser(
        "testbed", help="a loopback GlusterFS cluster and a one-node Slurm on this machine",
        description="Build, inspect or remove the loopback test bed (run as root).")
    actions = testbed.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="build the test bed, or repair a partial one")
    up.add_argument("--servers", type=int, default=3, help="glusterd servers (default 3)")
    up.add_argument("--bricks", type=int, default=3, dest="bricks_per_server",
                    help="NVMe bricks per server (default 3)")
    up.add_argument("--brick-size", type=_size, default=4 * 1024**3,
                    help="size of each sparse brick image (default 4GiB)")
    up.add_argument("--address-prefix", default="127.1.1",
                    help="servers listen on PREFIX.1 .. PREFIX.N (default 127.1.1)")
    up.add_argument("--slurm", choices=SLURM_FLAVOURS, default="lua",
                    help="burst buffer plugin of the test Slurm, or none (default lua)")
    up.add_argument("--slurm-cpus", type=int, default=0,
                    help="CPUs of the test Slurm's node (default: this machine's; more lets a load test "
                         "run many small jobs at once)")
    up.add_argument("--user", default="bbuser", help="unprivileged job owner (default bbuser)")
    switch = actions.add_parser("slurm", help="restart the test bed's Slurm with another burst buffer plugin")
    switch.add_argument("flavour", choices=SLURM_FLAVOURS)
    for name in ("up", "down", "status", "slurm"):
        parser = {"up": up, "slurm": switch}.get(name) or actions.add_parser(
            name, help={"down": "remove everything the test bed made",
                        "status": "show what runs"}[name])
        parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                            help=f"where the test bed keeps its files (default {DEFAULT_ROOT})")
        parser.add_argument("--json", action="store_true", help="print JSON")


def _add_config(subparsers: argparse._SubParsersAction) -> None:
    config = subparsers.add_parser("config", help="about bbctl.yml itself (needs no configuration)")
    actions = config.add_subparsers(dest="action", required=True)
    actions.add_parser("reference", help="print docs/CONFIGURATION.md, the settings' reference (Markdown)",
                       description="Render the reference of every setting from its one definition "
                                   "(bbctl.site.SETTINGS, bbctl.pools.POOL_SETTINGS): "
                                   "bbctl config reference > docs/CONFIGURATION.md")


def _add_warm_runner(subparsers: argparse._SubParsersAction) -> None:
    warm = subparsers.add_parser(
        "warm-runner", help="run stages with ansible-core kept warm, until SIGTERM (a root service)",
        description="Listen on the site's warm_runner_socket and run each stage bbctl sends there in a fork "
                    "of this process, ansible-core already imported (docs/OPERATOR_GUIDE.md, \"The warm "
                    "runner\"). Stages run through ansible-runner whenever it is not running.")
    warm.add_argument("--socket", type=Path, help="the socket (default: the site's warm_runner_socket)")
    warm.add_argument("--playbooks", type=Path, action="append", default=[], metavar="DIR",
                      help="another directory whose playbooks it may run, besides the collection's "
                           "(benchmarks, tests); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bbctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help=f"site configuration (default ${site.CONFIG_ENV} "
                        f"or {site.DEFAULT_CONFIG})")
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands.add_stage_commands(subparsers, _size)
    commands.add_operator_commands(subparsers)
    _add_testbed(subparsers)
    _add_config(subparsers)
    _add_warm_runner(subparsers)
    return parser


def _run_testbed(args: argparse.Namespace) -> int:
    from bbctl.testbed import manager  # only here: Slurm's stages need not load the test bed

    say = (lambda _: None) if args.json else print
    if args.action == "down":
        manager.down(args.root, progress=say)
        report: dict = {"root": str(args.root), "up": False}
    elif args.action == "slurm":
        report = manager.switch_slurm(args.root, args.flavour, progress=say)
    elif args.action == "up":
        config = TestbedConfig(
            root=args.root, servers=args.servers, bricks_per_server=args.bricks_per_server,
            brick_size=args.brick_size, address_prefix=args.address_prefix, slurm=args.slurm,
            user=args.user, slurm_cpus=args.slurm_cpus)
        report = manager.up(config, progress=say)
    else:
        report = manager.status(TestbedConfig.load(args.root))
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.action == "status":
        _print_status(report)
    return 0 if args.action != "status" or report["up"] else 3


def _print_status(report: dict) -> None:
    print(f"test bed under {report['root']}: {'up' if report['up'] else 'NOT up'}")
    for node in report["nodes"]:
        bricks = ", ".join(f"{b['path']}{'' if b['mounted'] else ' (unmounted)'}"
                           for b in node["bricks"])
        print(f"  {node['name']} {node['address']} glusterd "
              f"{'running' if node['glusterd'] else 'stopped'}; bricks {bricks}")
    if "slurm" in report:
        s = report["slurm"]
        print(f"  slurm ({s['burst_buffer']}): slurmctld {s['slurmctld']}, slurmd {s['slurmd']}, "
              f"munged {s['munged']}, node {s['node_state'] or '?'}; SLURM_CONF={s['slurm_conf']}")
    print(f"  inventory {report['inventory']}")


def main(argv: list[str] | None = None) -> int:
    linux_process.unblock_signals()  # Slurm's blocked mask would hide its SIGTERM from us and our children
    args = build_parser().parse_args(argv)
    if args.command in commands.DETACHED:
        from bbctl import detach

        return detach.run_detached(lambda: _main(args))
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "testbed":
            return _run_testbed(args)
        if args.command == "config":
            from bbctl import config_reference  # only here: no stage needs it

            sys.stdout.write(config_reference.render())
            return 0
        if args.command == "warm-runner":
            from bbctl.warm import server  # only here: it imports ansible-core, which no stage call should

            return server.serve(site.load(args.config), socket_path=args.socket, playbook_dirs=args.playbooks)
        return commands.run(args)
    except BBError as exc:
        print(f"bbctl {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
