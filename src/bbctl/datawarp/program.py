"""What dw_wlm_cli and dwstat share: an optional leading --config, a parser that raises, a one-line reply."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from bbctl.errors import BBError
from bbctl.lifecycle import Lifecycle

LifecycleFactory = Callable[[Path | None], Lifecycle]


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing its usage and exiting: Slurm shows one line."""

    def error(self, message: str) -> NoReturn:
        raise BBError(f"{self.prog}: {message}", exit_code=2)


def leading_config(argv: Sequence[str], prog: str) -> tuple[Path | None, list[str]]:
    args = list(argv)
    if args and args[0].startswith("--config="):
        return Path(args[0].split("=", 1)[1]), args[1:]
    if args and args[0] == "--config":
        if len(args) < 2:
            raise BBError(f"{prog}: --config needs the path of bbctl's site configuration", exit_code=2)
        return Path(args[1]), args[2:]
    return None, args


def fail(reason: str, code: int) -> int:
    """The reason as the reply's last line, on one line: Slurm shows the merged output to the user."""
    sys.stderr.flush()
    print(" ".join(reason.split()), flush=True)
    return code
