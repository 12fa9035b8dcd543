# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Progress of a stage: counters the copy threads update, and the file bbctl reads while it runs.

Reports are rate-limited (at most one every PROGRESS_INTERVAL seconds): a stage of many small
files would otherwise send a line for each through the worker's pipe.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import threading
import time

PROGRESS_INTERVAL = 0.5  # seconds between progress reports: at most two a second


class Progress:
    """Counters the threads update; a report at most every PROGRESS_INTERVAL seconds."""

    def __init__(self, files_total, bytes_total, report=None, clock=time.monotonic):
        self.files_total = files_total
        self.bytes_total = bytes_total
        self.files_done = 0
        self.bytes_done = 0
        self.report = report
        self.clock = clock
        self.start = clock()
        self.last = self.start
        self.lock = threading.Lock()

    def add(self, files=0, nbytes=0):
        with self.lock:
            self.files_done += files
            self.bytes_done += nbytes
            now = self.clock()
            due = self.report is not None and now - self.last >= PROGRESS_INTERVAL
            if due:
                self.last = now
                snapshot = self.snapshot(now)
        if due:
            self.report(snapshot)

    def snapshot(self, now=None):
        elapsed = (self.clock() if now is None else now) - self.start
        return {"files_done": self.files_done, "files_total": self.files_total,
                "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                "rate": round(self.bytes_done / elapsed) if elapsed > 0 else 0,
                "elapsed": round(elapsed, 3)}


class ProgressFile:
    """Appends progress snapshots to ``path`` as JSON lines: at most one every
    PROGRESS_INTERVAL seconds, then a final one; the caller (bbctl) reads it while the stage runs."""

    def __init__(self, path, clock=time.monotonic):
        self.path = path
        self.clock = clock
        self.last_time = None
        self.written = None

    def __call__(self, snapshot):
        now = self.clock()
        if self.last_time is not None and now - self.last_time < PROGRESS_INTERVAL:
            return
        self.last_time = now
        self.write(snapshot)

    def final(self, snapshot):
        if snapshot != self.written:
            self.write(snapshot)

    def write(self, snapshot):
        self.written = dict(snapshot)
        if self.path is None:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(snapshot, sort_keys=True) + "\n")
