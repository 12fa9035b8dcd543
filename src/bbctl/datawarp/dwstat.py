"""``dwstat``: burst buffer pools, sessions, instances and configurations as tables, for `scontrol show dwstat`.

Slurm runs ``GetSysStatus`` (dwstat) for ``scontrol show dwstat ...`` with a 2 s
limit and shows its output verbatim; the tables come from the state store alone:
no Ansible, no Slurm.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bbctl import operator_views, site, status_text
from bbctl.collection import sizes
from bbctl.datawarp.program import LifecycleFactory, Parser, fail, leading_config
from bbctl.datawarp.sessions import configurations_document, instances_document, sessions_document
from bbctl.errors import BBError
from bbctl.lifecycle import USER_META, Lifecycle
from bbctl.operator_views import BBSTAT_KEYS
from bbctl.state import Buffer, BufferState

DWSTAT_VIEWS = ("pools", "sessions", "instances", "configurations")
DWSTAT_DEFAULT = ("pools", "sessions", "instances")
STATUS_VIEW = "status"
BUFFER_VIEW = "buffer="  # one buffer's view: buffer=<key>


def _read_only_lifecycle(config: Path | None) -> Lifecycle:
    return Lifecycle(site.load(config))


def main(argv: Sequence[str] | None = None, *, lifecycle: LifecycleFactory = _read_only_lifecycle) -> int:
    """``dwstat [--config PATH] [pools|sessions|instances|configurations|all ...]``."""
    try:
        config, views = parse_dwstat(sys.argv[1:] if argv is None else argv)
    except BBError as exc:
        return fail(str(exc), exc.exit_code)
    try:
        life = lifecycle(config)
        print("\n\n".join(_view(life, view) for view in views), flush=True)
        return 0
    except BBError as exc:
        return fail(f"dwstat: {exc}", exc.exit_code)


def parse_dwstat(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    """(config, views to print in order); no view: DWSTAT_DEFAULT."""
    config, rest = leading_config(argv, "dwstat")
    parser = Parser(prog="dwstat", allow_abbrev=False,
                     description="Burst buffer pools, sessions, instances and configurations, from bbctl's "
                                 f"state store. Without VIEW: {', '.join(DWSTAT_DEFAULT)}.")
    parser.add_argument("views", nargs="*", metavar="VIEW",
                        help=f"{', '.join(DWSTAT_VIEWS)}, all, {STATUS_VIEW} (bbctl status), or job=JOBID / "
                             "name=NAME (one buffer's stage timings, as bbctl show --text)")
    views = parser.parse_args(rest).views or list(DWSTAT_DEFAULT)
    views = [_buffer_view(view) or view for view in views]
    unknown = [view for view in views if view not in (*DWSTAT_VIEWS, STATUS_VIEW, "all")
               and not view.startswith(BUFFER_VIEW)]
    if unknown:
        parser.error(f"unknown view {unknown[0]!r}: use {', '.join(DWSTAT_VIEWS)}, all, {STATUS_VIEW}, "
                     "job=JOBID or name=NAME")
    if "all" in views:
        views = [view if view != "all" else table for view in views for table in
                 (DWSTAT_VIEWS if view == "all" else (view,))]
    return config, list(dict.fromkeys(views))


def _buffer_view(word: str) -> str | None:
    """``buffer=<key>`` for job=N, jobid=N, name=X (what `scontrol show bbstat job=N` passes), else None."""
    name, equals, value = word.partition("=")
    if equals and value and name.lower() in BBSTAT_KEYS:
        return BUFFER_VIEW + value
    return None


def _view(life: Lifecycle, view: str) -> str:
    if view == STATUS_VIEW:
        return status_text.render_status(operator_views.status(life))
    if view.startswith(BUFFER_VIEW):
        key = view.removeprefix(BUFFER_VIEW)
        shown = operator_views.show(life, key)
        return status_text.render_buffer(shown) if shown else f"no buffer {key}: none was set up, or it was " \
            "torn down longer ago than bbctl keeps records"
    return _DWSTAT_TABLES[view](life)


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
