# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A crew of threads for the copy engine: futures without the bookkeeping of concurrent.futures.

Why its own: a stage of 10,000 small files submits 10,000 calls whose results nobody reads;
``map_unordered`` counts them in one Batch instead of keeping a future for each, and the
planner's directory scan waits for whichever scan finishes first (``wait_any``). Whether
concurrent.futures can do as well is for the staging benchmark (docs/BENCHMARKS.md) to say.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
from collections import deque

# Copy threads per stage unless told otherwise. Measured on a 3-brick volume
# (docs/BENCHMARKS.md, "Staging"): small files 4.02 s with 32, the same with 64, 7% slower
# with 16, 16% with 8; large files 1.3-1.6 s from 8 to 32, within the spread of runs.
# bb_stage's default and bbctl's stage_workers both come from here (this module is cheap
# to import; bbctl loads it on every call).
DEFAULT_WORKERS = 32


class ThreadCrew:
    """``workers`` threads taking calls from one queue, first in first out."""

    def __init__(self, workers):
        self.queue = deque()
        self.cond = threading.Condition()
        self.closed = False
        self.finished = threading.Condition()
        self.threads = [threading.Thread(target=self._work, name="bb-stage-%d" % i, daemon=True)
                        for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, function, *args):
        result = Result(self)
        with self.cond:
            self.queue.append((function, args, result))
            self.cond.notify()
        return result

    def map_unordered(self, function, items):
        """Run ``function(item)`` for all items and wait for them all (errors are the callee's job;
        an exception that escapes one is raised here once all are done)."""
        items = list(items)
        batch = Batch(len(items))
        with self.cond:
            self.queue.extend((function, (item,), batch) for item in items)
            self.cond.notify_all()
        batch.wait()

    def wait_any(self, results):
        with self.finished:
            while True:
                done = [r for r in results if r.done]
                if done:
                    return done
                self.finished.wait()

    def _work(self):
        while True:
            with self.cond:
                while not self.queue and not self.closed:
                    self.cond.wait()
                if not self.queue:
                    return
                function, args, sink = self.queue.popleft()
            try:
                value, error = function(*args), None
            except BaseException as exc:  # pylint: disable=broad-exception-caught
                value, error = None, exc
            sink.finish(value, error)

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for thread in self.threads:
            thread.join()


class Result:
    """The outcome of one submitted call; ``value()`` waits for it."""

    def __init__(self, crew):
        self.crew = crew
        self.done = False
        self.result = None
        self.error = None

    def finish(self, result, error):
        with self.crew.finished:
            self.result, self.error, self.done = result, error, True
            self.crew.finished.notify_all()

    def value(self):
        with self.crew.finished:
            while not self.done:
                self.crew.finished.wait()
        if self.error is not None:
            raise self.error
        return self.result


class Batch:
    """Many calls whose results nobody reads: one counter instead of a Result each."""

    def __init__(self, count):
        self.remaining = count
        self.error = None
        self.cond = threading.Condition()

    def finish(self, _result, error):
        with self.cond:
            if error is not None and self.error is None:
                self.error = error
            self.remaining -= 1
            if self.remaining == 0:
                self.cond.notify_all()

    def wait(self):
        with self.cond:
            while self.remaining:
                self.cond.wait()
        if self.error is not None:
            raise self.error
