"""Many burst-buffer jobs through the test bed's Slurm at once, watched from outside.

The one load harness of the reliability test (tests/integration/bbctl/test_load.py, issue 11's 50 jobs)
and the load benchmark (benchmarks/load.py: 130 jobs with stage-in, submit RPC times under a queue of 750).

``LoadRun`` submits jobs as the unprivileged user and, while they run, a ``Watcher`` thread samples
once a second:
- every job's state and reason (``scontrol -o show job``, one call for all), so a test can say which
  states and reasons each job went through (pending for space is ``BurstBufferResources``; held or
  failed is a defect);
- the state store's records, checking that no brick is in two buffers at once (``overlaps``);
- ``scontrol ping``'s answer and its time (slurmctld must stay responsive under the load).
Submit-to-running comes from Slurm's own SubmitTime and StartTime (1 s resolution).

Each job checks its staged-in file against the checksum written beside the source and writes
``ok`` into its output: a job that ran but read wrong data does not count as completed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bbctl import site
from bbctl.state import open_store
from tests.integration.bbctl.slurmjobs import BBCTL_CONFIG, ENV, FINISHED, USER, bbctl, submit, volumes, write_job

SLURMCTLD_LOG = BBCTL_CONFIG.parent / "slurm" / "log" / "slurmctld.log"
# Reasons a job may show while it waits its turn; anything else (held, failed stage) is a finding.
WAITING_REASONS = {"None", "Priority", "Resources", "BurstBufferResources", "BurstBufferStageIn",
                   "BeginTime", "Dependency"}
STUCK = 60.0  # s a job may show a reason outside WAITING_REASONS before the run counts as failed
JOB_LINE = re.compile(r"(\w+)=(.*?)(?= \w+=|$)")


@dataclass
class JobSeen:
    """What the watcher saw of one job: (state, reason) pairs in order, and Slurm's own times."""

    job: int
    seen: list[tuple[str, str]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def note(self, fields: dict[str, str]) -> None:
        pair = (fields.get("JobState", ""), fields.get("Reason", ""))
        if not self.seen or self.seen[-1] != pair:
            self.seen.append(pair)
        self.fields = fields

    @property
    def state(self) -> str:
        return self.fields.get("JobState", "")

    def submit_to_start(self) -> float | None:
        """Seconds from Slurm's SubmitTime to its StartTime, or None before the job started."""
        start, submitted = self.fields.get("StartTime", ""), self.fields.get("SubmitTime", "")
        if self.state in ("PENDING", "") or not start[:1].isdigit():
            return None
        return (_slurm_time(start) - _slurm_time(submitted)).total_seconds()


def _slurm_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")


def all_jobs() -> dict[int, dict[str, str]]:
    """Every job slurmctld still knows: {job id: scontrol's fields}; {} when it does not answer."""
    done = subprocess.run(["scontrol", "-o", "show", "job"], env=ENV, capture_output=True, text=True, check=False)
    jobs = {}
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        fields = dict(JOB_LINE.findall(line.strip()))
        if fields.get("JobId", "").isdigit():
            jobs[int(fields["JobId"])] = fields
    return jobs


def _log_of(job: int, lines: int = 20) -> list[str]:
    """The last ``lines`` lines bbctl.log holds about ``job`` (which stage ran how, and through what):
    a wrong read is explained from them, as the test bed's own logs go with its ``down``."""
    return [line for line in bbctl_log().splitlines() if f" {job} " in line][-lines:]


def bbctl_log() -> str:
    """The test bed's bbctl.log ('' before bbctl wrote one)."""
    log = site.load(BBCTL_CONFIG).work_dir / "bbctl.log"
    return log.read_text(errors="replace") if log.exists() else ""


def overlaps(buffers: Iterable) -> list[str]:
    """Brick ids held by more than one buffer record (empty when the allocator kept them apart)."""
    held = Counter(brick.id for buffer in buffers for brick in buffer.bricks)
    return sorted(brick for brick, count in held.items() if count > 1)


GLUSTERD_PORT = 24007
LISTEN = "0A"  # the st column of /proc/net/tcp (include/net/tcp_states.h)


def privileged_ports(tables: Iterable[str] = ("/proc/net/tcp", "/proc/net/tcp6")) -> tuple[int, int]:
    """(TCP connections on this host whose local port is below 1024, of them towards glusterd's port),
    TIME-WAIT included, listeners not. Every client of a buffer behind the privileged-port gate binds one
    (docs/RELIABILITY.md, "The privileged-port budget"); the host has 1,023."""
    taken = to_glusterd = 0
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            _slot, local, remote, state, *_ = line.split()
            if state != LISTEN and int(local.rsplit(":", 1)[1], 16) < 1024:
                taken += 1
                to_glusterd += int(remote.rsplit(":", 1)[1], 16) == GLUSTERD_PORT
    return taken, to_glusterd


class Watcher(threading.Thread):
    """Samples jobs, the state store, ``scontrol ping`` and the host's ports below 1024 every ``interval``
    seconds until ``stop()``."""

    def __init__(self, jobs: dict[int, JobSeen], interval: float = 1.0) -> None:
        super().__init__(daemon=True, name="load-watcher")
        self.jobs = jobs
        self.interval = interval
        self.overlaps: list[tuple[float, list[str]]] = []
        self.most_buffers = 0
        self.pings: list[tuple[float, bool]] = []  # (seconds the ping took, whether slurmctld answered UP)
        self.most_ports = (0, 0)  # privileged_ports() at its highest sample
        self._halt = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        # The store is opened in this thread: an SQLite connection serves only the thread that made it.
        store = open_store(site.load(BBCTL_CONFIG).state)
        try:
            while not self._halt.is_set():
                self.sample(store)
                self._halt.wait(self.interval)
        except BaseException as failure:  # reported by stop(): a dead watcher must not pass for a quiet run
            self.failure = failure
        finally:
            store.close()

    def sample(self, store) -> None:
        self._ping()
        for job, fields in all_jobs().items():
            if job in self.jobs:
                self.jobs[job].note(fields)
        buffers = store.buffers()
        self.most_buffers = max(self.most_buffers, len(buffers))
        if clash := overlaps(buffers):
            self.overlaps.append((time.time(), clash))
        self.most_ports = max(self.most_ports, privileged_ports())

    def _ping(self) -> None:
        began = time.monotonic()
        done = subprocess.run(["scontrol", "ping"], env=ENV, capture_output=True, text=True, check=False)
        self.pings.append((time.monotonic() - began, done.returncode == 0 and "is UP" in done.stdout))

    def stop(self) -> None:
        self._halt.set()
        if self.ident is not None:  # started: a submission refused before it is not its failure
            self.join()
        if self.failure is not None:
            raise AssertionError(f"the load watcher failed: {self.failure!r}") from self.failure


# The directives' prefix is the plugin's: #BB_LUA for burst_buffer/lua, #DW for burst_buffer/datawarp.
JOB_SCRIPT = """\
{prefix} jobdw capacity={capacity}GiB pool={pool} access_mode=striped type=scratch
{prefix} stage_in type=file source={source} destination=$DW_JOB_STRIPED/input
sum=$(sha256sum < "$DW_JOB_STRIPED/input" | cut -d' ' -f1)
if [ "$sum" = "{digest}" ]; then echo ok > {marker}; else
  {{ echo "wrong data: $sum"; stat -c 'size %s, mtime %Y, inode %i' "$DW_JOB_STRIPED/input"
     findmnt -no SOURCE,FSTYPE -T "$DW_JOB_STRIPED"; sleep 3
     echo "read again 3 s later: $(sha256sum < "$DW_JOB_STRIPED/input" | cut -d' ' -f1)"; }} > {marker} 2>&1
fi
sleep {runtime}
"""


@dataclass
class LoadRun:
    """``count`` jobs of 1 to ``max_granules`` granules (``granule_gib`` GiB each) of buffer, each staging
    in its own file of ``file_kib`` KiB. A striped buffer of two granules or more is a dispersed volume
    with one more brick (bbctl.layouts)."""

    count: int
    max_granules: int = 1
    granule_gib: int = 1
    file_kib: int = 64
    runtime: int = 1
    pool: str = "nvme"
    prefix: str = "#BB_LUA"
    jobs: dict[int, JobSeen] = field(default_factory=dict)
    markers: dict[int, Path] = field(default_factory=dict)
    began: float = 0.0
    ended: float = 0.0

    def __post_init__(self) -> None:
        owner = pwd.getpwnam(USER)
        self.directory = Path(tempfile.mkdtemp(prefix="bbload-", dir="/var/tmp"))
        os.chown(self.directory, owner.pw_uid, owner.pw_gid)

    def _write(self, index: int) -> Path:
        data = hashlib.sha256(str(index).encode()).digest() * (self.file_kib * 32)
        source = self.directory / f"in-{index}"
        source.write_bytes(data)
        owner = pwd.getpwnam(USER)
        os.chown(source, owner.pw_uid, owner.pw_gid)
        marker = self.directory / f"ok-{index}"
        script = write_job(self.directory, f"job-{index}.sh", JOB_SCRIPT.format(
            prefix=self.prefix, capacity=(1 + index % self.max_granules) * self.granule_gib, pool=self.pool,
            source=source,
            digest=hashlib.sha256(data).hexdigest(),
            marker=marker, runtime=self.runtime))
        return script

    def submit_all(self, *options: str) -> None:
        """Write every job first, then submit them back to back (the burst Slurm sees)."""
        scripts = [self._write(i) for i in range(self.count)]
        self.began = time.time()
        for i, script in enumerate(scripts):
            job = submit(script, *options)
            self.jobs[job] = JobSeen(job)
            self.markers[job] = self.directory / f"ok-{i}"

    def wait(self, watcher: Watcher, timeout: float, stuck: float = STUCK) -> None:
        """Until every job has finished and bbctl holds no record of any of them. AssertionError after
        timeout s, or as soon as a job has shown a reason no waiting job shows (a held job, a failed
        stage) for ``stuck`` s: such a job never runs by itself, so waiting on is time lost."""
        deadline = time.monotonic() + timeout
        strange_since: dict[int, float] = {}
        while time.monotonic() < deadline and watcher.is_alive():
            if all(seen.state in FINISHED for seen in self.jobs.values()) and not _records_of(self.jobs):
                self.ended = time.time()
                return
            now = time.monotonic()
            for job, seen in self.jobs.items():
                if seen.state == "PENDING" and seen.seen and seen.seen[-1][1] not in WAITING_REASONS:
                    strange_since.setdefault(job, now)
                else:
                    strange_since.pop(job, None)
            held = {job: self.jobs[job].seen[-1] for job, since in strange_since.items() if now - since >= stuck}
            if held:
                raise AssertionError(f"jobs stuck for {stuck:.0f} s with a reason no waiting job shows: {held}")
            time.sleep(2)
        late = {job: seen.seen[-1:] for job, seen in self.jobs.items() if seen.state not in FINISHED}
        raise AssertionError(f"not finished within {timeout:.0f} s: {late}")

    def ok(self) -> dict[int, bool]:
        """Per job: whether it wrote ``ok`` (its staged file had the right checksum)."""
        return {job: marker.exists() and marker.read_text().strip() == "ok" for job, marker in self.markers.items()}

    def failed_checks(self) -> dict[int, str]:
        """Per job that did not write ``ok``: what its marker says (or that it wrote none) and the end of
        its output, read before cleanup() removes them."""
        failed = {}
        for job, marker in self.markers.items():
            said = marker.read_text().strip() if marker.exists() else "no marker"
            if said != "ok":
                output = self.directory / f"slurm-{job}.out"
                tail = output.read_text(errors="replace")[-500:] if output.exists() else "no output"
                failed[job] = f"{said}; output: {tail}; bbctl.log: {_log_of(job)}"
        return failed

    def strange_reasons(self) -> dict[int, list[tuple[str, str]]]:
        """Jobs that went through a state or reason a job waiting its turn never shows."""
        return {job: [(s, r) for s, r in seen.seen if s == "PENDING" and r not in WAITING_REASONS]
                for job, seen in self.jobs.items()
                if any(s == "PENDING" and r not in WAITING_REASONS for s, r in seen.seen)}

    def short_at_setup(self) -> list[int]:
        """Jobs whose setup found too few free bricks although Slurm had admitted them (bbctl.allocation):
        setup waited and, if still short, left the build to stage-in."""
        text = bbctl_log()
        return sorted({int(m[1]) for m in re.finditer(r" (\d+) setup: waiting up to", text)} & set(self.jobs))

    def cleanup(self) -> None:
        """Cancel the jobs still in the queue (a failed run must not hold bricks for the next test)
        and remove the run's files."""
        unfinished = [str(job) for job, seen in self.jobs.items() if seen.state not in FINISHED]
        if unfinished:
            subprocess.run(["scancel", "--hurry", *unfinished], env=ENV, check=False, capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def pool_shape(pool: str = "nvme") -> tuple[int, int]:
    """(bricks, granularity in GiB) of the test bed's pool, as bbctl reports it to Slurm."""
    done = bbctl("status", "--json")
    [entry] = [p for p in json.loads(done.stdout)["pools"] if p["id"] == pool]
    return entry["quantity"], entry["granularity"] // 1024**3


def _records_of(jobs: Iterable[int]) -> list[str]:
    store = open_store(site.load(BBCTL_CONFIG).state)
    try:
        keys = {str(job) for job in jobs}
        return [buffer.key for buffer in store.buffers() if buffer.key in keys]
    finally:
        store.close()


def percentiles(values: list[float], tail: int = 95) -> dict[str, float]:
    """median, p<tail> (nearest rank) and max of values; empty dict for no values."""
    if not values:
        return {}
    ordered = sorted(values)
    high = ordered[min(len(ordered) - 1, round(tail / 100 * (len(ordered) - 1)))]
    return {"median": statistics.median(ordered), f"p{tail}": high, "max": ordered[-1]}


def gluster_matches_store() -> list[str]:
    """Volumes of the test bed's cluster that no record explains (after a run: should be none)."""
    store = open_store(site.load(BBCTL_CONFIG).state)
    try:
        keys = {buffer.key for buffer in store.buffers()}
    finally:
        store.close()
    return [volume for volume in volumes() if not any(volume.endswith(key) for key in keys)]
