# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The crew of threads the copy engine's planner and copier share: the standard library's
``concurrent.futures.ThreadPoolExecutor``, with the two habits the copy engine needs on top.

Why it is shaped this way:

- The threads, their queue and the futures are concurrent.futures' (issue 12), not a
  home-made crew of threads, queue and conditions doing the same with more code of ours.
  A crew (never "pool": in this project a pool is a storage pool) is made per stage and
  closed when it ends; ``close`` lets every call already submitted finish, as before.
  Threads are named ``bb-stage_N``.
- ``map_unordered``: a stage of 200,000 small files is 200,000 calls whose results nobody
  reads. A Future for each costs memory (about 1 KiB each, all alive until the last call
  has run if submitted at once) and, worse, time with the GIL held: about 14 us a call
  against 4-8 us for the crew this replaced (32 threads, calls that do nothing), while a
  small file through FUSE takes a thread about 13 ms (10,000 in 4.2 s on 32 threads). So
  map_unordered submits one runner per thread, and the runners take the items from one
  deque, first in first out, until none is left: no Future per item, the threads stay busy
  to the end, and nothing of a finished call is kept. An exception that escapes one call
  does not stop the others (the callee records its own failures; an escape is a bug): the
  first is raised once all the calls have finished.
- ``wait_any``: the planner scans directories in parallel and takes up whichever finishes
  first (``concurrent.futures.wait``, FIRST_COMPLETED). That call locks and visits every
  future it is given, so callers give it a bounded set (the planner keeps a few scans per
  thread running, not a whole level of a wide tree).
- concurrent.futures is imported with this module, never later: a crew is made in the copy
  worker after it has become the job's user, who may not be able to read the interpreter's
  library (the test bed's Python lives under /root: a late import failed there). bbctl,
  which imports DEFAULT_WORKERS from here, loads logging anyway.
- Whether concurrent.futures does as well as the crew it replaced is for the staging
  benchmark (docs/BENCHMARKS.md) to say.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
from collections import deque
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor  # concurrent.futures loads it lazily: load it now

# Copy threads per stage unless told otherwise. Measured on a 3-brick volume
# (docs/BENCHMARKS.md, "Staging"): small files 4.02 s with 32, the same with 64, 7% slower
# with 16, 16% with 8; large files 1.3-1.6 s from 8 to 32, within the spread of runs.
# bb_stage's default and bbctl's stage_workers both come from here (this module is cheap
# to import; bbctl loads it on every call).
DEFAULT_WORKERS = 32


class Crew:
    """``workers`` threads running submitted calls, first in first out; a context manager."""

    def __init__(self, workers):
        self.futures = futures
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bb-stage")

    def __enter__(self):
        return self

    def __exit__(self, *_exc_info):
        self.close()

    def submit(self, function, *args):
        """Run ``function(*args)`` in a thread; returns its concurrent.futures.Future."""
        return self.executor.submit(function, *args)

    def wait_any(self, futures):
        """Wait until at least one of ``futures`` is done; returns those done, in the order given."""
        done = self.futures.wait(futures, return_when=self.futures.FIRST_COMPLETED).done
        return [future for future in futures if future in done]

    def map_unordered(self, function, items):
        """Run ``function(item)`` for all items and wait for them all (errors are the callee's job;
        an exception that escapes one is raised here once all are done).

        Items are taken first in first out by one runner per thread, not submitted one by one:
        see the module's docstring.
        """
        queue = deque(items)
        errors = []
        lock = threading.Lock()

        def runner():
            while True:
                try:
                    item = queue.popleft()
                except IndexError:
                    return
                try:
                    function(item)
                except BaseException as exc:  # pylint: disable=broad-exception-caught
                    with lock:
                        if not errors:
                            errors.append(exc)

        runners = [self.executor.submit(runner) for thread in range(min(self.workers, len(queue)))]
        for finished in runners:
            finished.result()
        if errors:
            raise errors[0]

    def close(self):
        """Let every submitted call finish, then end the threads."""
        self.executor.shutdown(wait=True)
