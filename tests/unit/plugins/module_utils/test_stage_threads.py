"""The copy engine's crew (module_utils/stage_threads.py): concurrent.futures' threads with
map_unordered (every call runs, the first escaped exception is raised once all are done, no
Future per call), wait_any (whichever finishes first) and close (submitted calls finish)."""

import os
import subprocess
import sys
import threading
import time

import pytest
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_plan as sp
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_rules as sr
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_threads as st


class Recorder:
    """Calls it ran, and the threads that ran them."""

    def __init__(self, delay=0.0, fail=()):
        self.delay = delay
        self.fail = fail
        self.done = []
        self.threads = set()
        self.lock = threading.Lock()

    def __call__(self, item):
        time.sleep(self.delay)
        with self.lock:
            self.done.append(item)
            self.threads.add(threading.current_thread())
        if item in self.fail:
            raise self.fail[item]
        return item * 2


# --- submit and close --------------------------------------------------------------------------

def test_submit_returns_a_future_with_the_value_or_the_error():
    with st.Crew(2) as crew:
        good = crew.submit(pow, 2, 10)
        bad = crew.submit(int, "not a number")
        assert good.result() == 1024
        with pytest.raises(ValueError, match="not a number"):
            bad.result()


def test_threads_are_named_bb_stage():
    with st.Crew(2) as crew:
        names = {crew.submit(lambda: threading.current_thread().name).result() for _ in range(4)}
    assert names and all(name.startswith("bb-stage") for name in names)


def test_close_lets_every_submitted_call_finish_then_ends_the_threads():
    record = Recorder(delay=0.01)
    crew = st.Crew(2)
    for item in range(10):
        crew.submit(record, item)
    crew.close()
    assert sorted(record.done) == list(range(10))
    assert record.threads and not any(thread.is_alive() for thread in record.threads)
    with pytest.raises(RuntimeError):
        crew.submit(record, 11)


def test_the_crew_is_closed_when_its_block_ends_with_an_error():
    record = Recorder(delay=0.01)
    with pytest.raises(KeyError), st.Crew(2) as crew:
        for item in range(4):
            crew.submit(record, item)
        raise KeyError("planner failed")
    assert sorted(record.done) == [0, 1, 2, 3]
    assert not any(thread.is_alive() for thread in record.threads)


# --- wait_any ----------------------------------------------------------------------------------

def test_wait_any_returns_what_finished_first():
    release = threading.Event()
    with st.Crew(2) as crew:
        slow = crew.submit(release.wait, 10)
        quick = crew.submit(sum, [1, 2])
        assert crew.wait_any([slow, quick]) == [quick]
        assert not slow.done()
        release.set()
        assert crew.wait_any([slow]) == [slow]
        assert slow.result() is True


def test_wait_any_returns_all_that_are_done_in_the_order_given():
    with st.Crew(2) as crew:
        first, second = crew.submit(abs, -1), crew.submit(abs, -2)
        first.result()
        second.result()
        assert crew.wait_any([second, first]) == [second, first]


def test_wait_any_returns_a_failed_call_too():
    with st.Crew(1) as crew:
        failed = crew.submit(int, "x")
        assert crew.wait_any([failed]) == [failed]
        with pytest.raises(ValueError):
            failed.result()


# --- map_unordered -----------------------------------------------------------------------------

def test_map_unordered_runs_every_item_once():
    record = Recorder()
    with st.Crew(4) as crew:
        crew.map_unordered(record, range(1000))
    assert sorted(record.done) == list(range(1000))


def test_map_unordered_of_nothing_returns():
    with st.Crew(2) as crew:
        crew.map_unordered(Recorder(), [])


def test_map_unordered_is_first_in_first_out():
    record = Recorder()
    with st.Crew(1) as crew:
        crew.map_unordered(record, iter(range(50)))
    assert record.done == list(range(50))


def test_map_unordered_raises_an_escaped_exception_once_all_calls_are_done():
    record = Recorder(delay=0.005, fail={3: ValueError("three")})
    with st.Crew(4) as crew:
        with pytest.raises(ValueError, match="three"):
            crew.map_unordered(record, range(40))
        assert sorted(record.done) == list(range(40))  # the others ran, and had finished


def test_map_unordered_raises_the_first_of_several_escapes():
    record = Recorder(fail={3: ValueError("three"), 7: KeyError("seven")})
    with st.Crew(1) as crew, pytest.raises(ValueError, match="three"):
        crew.map_unordered(record, range(10))
    assert record.done == list(range(10))


def test_map_unordered_passes_on_a_base_exception_too():
    class Stop(BaseException):
        pass

    record = Recorder(fail={0: Stop()})
    with st.Crew(2) as crew, pytest.raises(Stop):
        crew.map_unordered(record, range(5))
    assert sorted(record.done) == list(range(5))


def test_map_unordered_submits_one_runner_per_thread_not_a_future_per_call(monkeypatch):
    record = Recorder()
    with st.Crew(4) as crew:
        submitted = []
        real = crew.executor.submit

        def submit(function, *args):
            submitted.append(function)
            return real(function, *args)

        monkeypatch.setattr(crew.executor, "submit", submit)
        crew.map_unordered(record, range(1000))
        assert len(submitted) == 4
        submitted.clear()
        crew.map_unordered(record, range(2))
        assert len(submitted) == 2
    assert len(record.done) == 1002


def test_map_unordered_uses_the_crew_s_threads():
    record = Recorder(delay=0.01)
    with st.Crew(3) as crew:
        crew.map_unordered(record, range(30))
    assert 1 < len(record.threads) <= 3
    assert all(thread.name.startswith("bb-stage") for thread in record.threads)


# --- what uses it ------------------------------------------------------------------------------

def test_the_planner_hands_the_crew_a_bounded_number_of_scans(tmp_path, monkeypatch):
    source = tmp_path / "wide"
    for index in range(40):
        (source / f"d{index:02d}").mkdir(parents=True)
        (source / f"d{index:02d}" / "f").write_bytes(b"x")
    buffer = tmp_path / "buffer"
    buffer.mkdir()
    req = sr.check_request(sr.StageRequest("in", "directory", str(source), str(buffer / "wide"), str(buffer)))
    seen = []
    with st.Crew(2) as crew:
        real = crew.wait_any

        def wait_any(futures):
            seen.append(len(futures))
            return real(futures)

        monkeypatch.setattr(crew, "wait_any", wait_any)
        plan = sp.Planner(req, crew).run()
    assert len(plan.files) == 40 and len(plan.dirs) == 41 and plan.failed == []
    assert max(seen) == sp.SCANS_PER_WORKER * 2


def test_a_crew_needs_no_import_once_its_module_is_loaded():
    """The copy worker makes its crew after becoming the job's user, who may not be able to read the
    interpreter's library (on the test bed it lives under /root): no import may happen then."""
    code = """
import sys
from ansible_collections.hpc.burstbuffer.plugins.module_utils import stage_threads

class NoMoreImports:
    def find_spec(self, name, path=None, target=None):
        raise ImportError("imported after privileges were dropped: " + name)

sys.meta_path.insert(0, NoMoreImports())
seen = []
crew = stage_threads.Crew(2)
crew.map_unordered(seen.append, range(5))
crew.wait_any([crew.submit(len, "abc")])
crew.close()
print(sorted(seen))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1, 2, 3, 4]"
