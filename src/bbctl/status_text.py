"""bbctl's views for people at a terminal: `bbctl status`, `bbctl show --text`, `scontrol show bbstat`, dwstat.

Each function renders what bbctl.operator_views returns (the same data ``--json``
prints), so the terminal and the JSON never disagree. Plain text only: Slurm
shows bbstat's output verbatim, and slurmctld's logs keep it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bbctl.collection import sizes

BAR_WIDTH = 20


def render_status(report: Mapping[str, Any]) -> str:
    """Pools with a used/free bar, then one line per buffer with its current stage and progress."""
    lines = []
    if report["pools"]:
        lines.append(columns(("POOL", "IN USE", "", "SIZE", "USED", "FREE", "FREE BRICKS"), (
            (p["id"], bar(p["used_bytes"], p["capacity_bytes"]), percent(p["used_bytes"], p["capacity_bytes"]),
             size(p["capacity_bytes"]), size(p["used_bytes"]), size(p["free_bytes"]),
             f"{p['free']}/{p['quantity']} of {size(p['granularity'])}")
            for p in report["pools"])))
    else:
        lines.append("no pools")
    buffers = report["buffers"]
    lines.append("")
    if not buffers:
        lines.append("no buffers")
        return "\n".join(lines)
    rows, notes = [], {}
    for b in buffers:
        rows.append((b["key"], b["state"], b["owner"], size(b["capacity"]), b["brick_count"], age(b["age_seconds"]),
                     describe_running(b["stage_now"])))
        notes[len(rows) - 1] = ([f"    one file at most {size(b['max_file'])}"] if b.get("max_file") else []) \
            + ([f"    error: {b['last_error']}"] if b.get("last_error") else [])
    table = columns(("BUFFER", "STATE", "OWNER", "SIZE", "BRICKS", "AGE", "STAGE NOW"), rows).splitlines()
    lines.append(table[0])
    for n, line in enumerate(table[1:]):
        lines.append(line)
        lines.extend(notes[n])
    return "\n".join(lines)


def render_servers(report: Mapping[str, Any]) -> str:
    """`bbctl servers`: one line per storage server, then why each unusable one is so."""
    rows = [(s["name"], s["state"].upper() if s["state"] != "usable" else s["state"], s["failures"],
             f"{s['bricks_in_use']}/{s['bricks']}", len(s["buffers"]),
             when(s["last_error_at"]) if s["last_error_at"] else "-") for s in report["servers"]]
    if not rows:
        return "no storage servers"
    lines = [columns(("SERVER", "STATE", "FAILURES", "BRICKS IN USE", "BUFFERS", "LAST ERROR AT"), rows)]
    for s in report["servers"]:
        if s["state"] != "usable":
            lines.append(f"{s['name']}: {s['state']} since {when(s['since'])}: {s['reason']}")
        elif s["failures"]:
            lines.append(f"{s['name']}: last error: {s['last_error']}")
    limit = report["server_fail_limit"]
    lines.append(f"server_fail_limit: {limit}" + (" (never marked unusable)" if not limit else
                                                  " consecutive failed runs mark a server unusable"))
    return "\n".join(lines)


def render_buffer(view: Mapping[str, Any]) -> str:
    """One buffer (or what the history kept of one): a summary line, the stage now, its stage timings."""
    if view.get("torn_down"):
        head = (f"buffer {view['key']} ({view['volume']}): torn down {when(view['finished_at'])}, "
                f"owner {view['owner']}, {size(view['capacity'])}, {view['brick_count']} brick(s)")
    else:
        head = (f"buffer {view['key']} ({view['volume']}): {view['state']}, owner {view['owner']}, "
                f"{size(view['capacity'])}, {view['brick_count']} brick(s), {view['layout']}, "
                f"age {age(view['age_seconds'])}")
    lines = [head]
    if view.get("last_error"):
        lines.append(f"  last error: {view['last_error']}")
    if view.get("stage_now"):
        lines.append(f"  now: {describe_running(view['stage_now'])}")
    lines.append(render_timings(view["timings"]) if view["timings"] else "  no stage timings recorded")
    return "\n".join(lines)


def render_timings(timings: Iterable[Mapping[str, Any]]) -> str:
    rows = [(t["stage"], t.get("job", ""), when(t["start"]), f"{t['seconds']:.1f}",
             t["outcome"] if t["outcome"] == "ok" else f"failed ({t.get('kind', 'error')}): {t.get('reason', '')}",
             "" if t.get("files") is None else t["files"], "" if t.get("bytes") is None else size(t["bytes"]))
            for t in timings]
    table = columns(("STAGE", "JOB", "STARTED", "SECONDS", "OUTCOME", "FILES", "BYTES"), rows)
    return "\n".join("  " + line for line in table.splitlines())


def describe_running(running: Mapping[str, Any] | None) -> str:
    """``stage-in for 12s: 150/200 files, 40.0 MiB/50.0 MiB (80%)``, or ``-``."""
    if not running:
        return "-"
    text = f"{running['stage']}" + (f" (job {running['job']})" if running.get("job") else "")
    text += f" for {age(running['seconds'])}"
    progress = running.get("progress")
    if progress:
        done, total = progress.get("bytes_done", 0), progress.get("bytes_total", 0)
        text += (f": {progress.get('files_done', 0)}/{progress.get('files_total', 0)} files, "
                 f"{size(done)}/{size(total)} ({percent(done, total)})")
    return text


def columns(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, trailing blanks trimmed."""
    cells = [list(header), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def bar(used: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#####...............]``: the used share of width, rounded up so any use shows."""
    filled = 0 if total <= 0 else min(width, -(-used * width // total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def size(nbytes: int) -> str:
    return sizes.describe_size(int(nbytes))


def age(seconds: float) -> str:
    """``45s``, ``2m05s``, ``3h04m``, ``2d03h``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))
