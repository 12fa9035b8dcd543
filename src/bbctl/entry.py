"""The console scripts' first code: a stage process lowers its CPU priority before it imports bbctl.

slurmctld starts the setups of a dozen jobs at once, and each one's imports and state-store work
take a few tenths of a second of CPU before its playbook does. At full priority they crowd out
slurmctld's quick calls: burst_buffer/datawarp runs ``dw_wlm_cli --function job_process`` inside
``sbatch`` and kills it after ValidateTimeout (5 s), refusing the job (docs/RELIABILITY.md, "Load").
So the stages that run playbooks start at niceness DEFAULT_STAGE_NICE, before anything else is
imported, and take the site's ``stage_nice`` once bbctl.yml is read (bbctl.runner.run_stage). Quick
calls (job_process, paths, pools, status) keep the caller's priority.

Only the standard library here: this module is imported before everything else.
"""

from __future__ import annotations

import os
import sys

DEFAULT_STAGE_NICE = 10  # bbctl.site's default of stage_nice
BBCTL_STAGES = frozenset({"setup", "stage-in", "pre-run", "post-run", "stage-out", "teardown",
                          "create-persistent", "destroy-persistent", "sweep", "gc", "reconcile"})
DW_WLM_CLI_STAGES = frozenset({"setup", "data_in", "pre_run", "post_run", "data_out", "teardown",
                               "create_persistent"})


def bbctl() -> int:
    """``bbctl [--config PATH] COMMAND ...``."""
    _start_nicer(_command(sys.argv[1:]) in BBCTL_STAGES)
    from bbctl.cli import main

    return main()


def dw_wlm_cli() -> int:
    """``dw_wlm_cli --function NAME ...`` (also ``--function=NAME``)."""
    _start_nicer(_function(sys.argv[1:]) in DW_WLM_CLI_STAGES)
    from bbctl.datawarp.dw_wlm_cli import main

    return main()


def _command(argv: list[str]) -> str | None:
    """bbctl's command: the first argument that is neither an option nor --config's value."""
    skip = False
    for arg in argv:
        if skip or arg.startswith("--config="):
            skip = False
            continue
        if arg == "--config":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _function(argv: list[str]) -> str | None:
    for index, arg in enumerate(argv):
        if arg == "--function" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--function="):
            return arg.split("=", 1)[1]
    return None


def _start_nicer(stage: bool) -> None:
    if stage and os.getpriority(os.PRIO_PROCESS, 0) < DEFAULT_STAGE_NICE:
        os.setpriority(os.PRIO_PROCESS, 0, DEFAULT_STAGE_NICE)
