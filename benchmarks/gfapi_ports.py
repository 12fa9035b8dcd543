"""Ports below 1024 that libgfapi stage-ins leave taken: closed as before, and reset as the copy worker now does.

Run (as root): ``.venv/bin/python benchmarks/gfapi_ports.py [--writers 100] [--rounds 2] [--write-doc]``

Why (docs/RELIABILITY.md, "Load"): a gated buffer's clients bind ports below 1024, one towards
glusterd and one per brick, and a host has 1023 of them. The side that closes a TCP connection
first keeps its port in TIME-WAIT for 60 s, and GlusterFS binds without SO_REUSEADDR, so such a
port cannot be bound again meanwhile. Every stage-in's copy worker is such a client, and it exits
(closes first) as soon as its files are written. The worker now sets SO_LINGER 0 on its TCP
connections before it exits (linux_process.reset_tcp_on_exit), so they end with a reset.

On the layouts benchmark's private bed (127.1.2.x, never the main test bed), a ``disperse 3
redundancy 1`` volume with the gate closed (server.allow-insecure off, client.bind-insecure off)
gets ``--writers`` writer processes one after another, each a libgfapi client that creates one
64 KiB file (gfapi.Volume.create_file, as a stage-in does) and exits, either as before (FIN) or
after reset_tcp_on_exit (reset); the two arms alternate, ``--rounds`` times each, with a pause
for TIME-WAIT to drain between them. Reported per arm: the writers' sockets towards the bed in
TIME-WAIT with a local port below 1024 right after the last writer, writers that failed, files
that a fresh mount then reads back wrong, and the median seconds per writer.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time

import brick_fill  # benchmarks/, beside this script
import layouts
import results_doc

# ansible_collections is found once layouts has imported bbctl.collection
from ansible_collections.hpc.burstbuffer.plugins.module_utils import gfapi
from layouts import Bed, Layout, sh

from bbctl.collection import linux_process

BEGIN, END = "<!-- gfapi-ports:begin -->", "<!-- gfapi-ports:end -->"
HEADING = "Ports a stage-in through libgfapi leaves taken"
LAYOUT = Layout("disperse 2+1", 3, 2, ("disperse", "3", "redundancy", "1"))
GATE = {"server.allow-insecure": "off", "client.bind-insecure": "off"}
DATA = hashlib.sha256(b"gfapi-ports").digest() * 2048  # 64 KiB
TIME_WAIT_S = 62  # TCP's 60 s, and a little


def writer(bed: Bed, volume: str, name: str, reset: bool) -> bool:
    """One libgfapi client in a child process: create ``name`` holding DATA, exit (resetting first if asked)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            client = gfapi.Volume(bed.bricks[0][0], volume)
            client.create_file(client.directory("/"), name, DATA, 0o644, time.time_ns(), time.time_ns())
            code = 0
        except BaseException:  # counted as a failed writer
            pass
        if reset:
            linux_process.reset_tcp_on_exit()
        os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def privileged_time_wait(prefix: str) -> dict[str, int]:
    """Sockets in TIME-WAIT from a local port below 1024 to a peer on ``prefix``.*, by peer:
    glusterd (its port: the volfile, and the brick port asked before each brick) or a brick."""
    lines = sh("ss", "-Htan", "state", "time-wait").stdout.splitlines()
    count = {"glusterd": 0, "brick": 0}
    for line in lines:
        local, peer = line.split()[-2:]
        if int(local.rsplit(":", 1)[1]) < 1024 and peer.startswith(prefix + "."):
            count["glusterd" if peer.endswith(f":{gfapi.VOLFILE_PORT}") else "brick"] += 1
    return count


def read_back_wrong(bed: Bed, volume: str, names: list[str]) -> int:
    """Files a fresh FUSE mount does not read as DATA."""
    mount = layouts.WORK / "mnt-ports"
    layouts.mount_volume(bed, volume, mount)
    try:
        return sum(1 for name in names if not (mount / name).exists() or (mount / name).read_bytes() != DATA)
    finally:
        sh("umount", mount)


def one_arm(bed: Bed, index: int, reset: bool, writers: int) -> dict:
    volume = f"ports{index}"
    layouts.create(bed, LAYOUT, volume, None)
    for key, value in GATE.items():
        bed.gluster("volume", "set", volume, key, value)
    try:
        names, failed, seconds = [f"f{i}" for i in range(writers)], 0, []
        for name in names:
            began = time.perf_counter()
            failed += not writer(bed, volume, name, reset)
            seconds.append(time.perf_counter() - began)
        waiting = privileged_time_wait(layouts.PREFIX)
        wrong = read_back_wrong(bed, volume, names)
    finally:
        layouts.destroy(bed, volume, layouts.WORK / "mnt-ports")
    return {"arm": "reset" if reset else "FIN", "time_wait": sum(waiting.values()), "to_glusterd": waiting["glusterd"],
            "failed": failed, "wrong": wrong,
            "median_s": statistics.median(seconds)}


def render(rows: list[dict], writers: int, started: str) -> list[str]:
    lines = [f"{started}, {layouts.machine()}; {writers} writers one after another per arm, "
             f"{LAYOUT.name} with the gate closed, private bed (127.1.2.x).", "",
             "| arm | ports < 1024 in TIME-WAIT after the last writer (towards glusterd) | writers failed "
             "| files read back wrong | median s per writer |", "|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['time_wait']} ({r['to_glusterd']}) | {r['failed']} | {r['wrong']} "
              f"| {r['median_s']:.3f} |" for r in rows]
    return lines


def figures(rows: list[dict]) -> dict[str, float]:
    """Medians per arm: ports in TIME-WAIT, and seconds per writer."""
    found: dict[str, float] = {}
    for arm in ("FIN", "reset"):
        mine = [r for r in rows if r["arm"] == arm]
        found[f"time_wait_{arm.lower()}_median"] = statistics.median(r["time_wait"] for r in mine)
        found[f"writer_s_{arm.lower()}_median"] = statistics.median(r["median_s"] for r in mine)
        found[f"wrong_{arm.lower()}"] = sum(r["wrong"] + r["failed"] for r in mine)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write-doc", action="store_true", help="replace the results in docs/BENCHMARKS.md")
    results_doc.add_json_option(parser)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows: list[dict] = []
    with brick_fill.private_bed() as bed:
        for index in range(2 * args.rounds):
            if index:
                time.sleep(TIME_WAIT_S)  # the previous arm's ports drain first
            rows.append(one_arm(bed, index, reset=bool(index % 2), writers=args.writers))
            print(rows[-1], flush=True)
    results_doc.publish(render(rows, args.writers, started), figures(rows), args.json,
                        (BEGIN, END, HEADING) if args.write_doc else None)


if __name__ == "__main__":
    main()
