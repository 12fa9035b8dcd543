"""benchmarks/run_all.py: the history line's shape, the table made from a history, and the runner with real
(tiny) benchmark commands: one that fails, one that writes figures, one that hangs."""

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import results_doc  # benchmarks/, on the path by this directory's conftest
import run_all

FAILS = run_all.Benchmark("fails", (sys.executable, "-c", "import sys; print('broken'); sys.exit(3)"))
# writes the figures it is given as its first argument to the path after --json, as results_doc.write_figures does
WRITES = (sys.executable, "-c", "import json, sys; json.dump(json.loads(sys.argv[1]), "
          "open(sys.argv[sys.argv.index('--json') + 1], 'w'))")


def writes(name: str, figures: dict) -> run_all.Benchmark:
    return run_all.Benchmark(name, WRITES, quick=(json.dumps(figures),), full=(json.dumps(figures),))


def record(status="ok", exit_code=0, **figures) -> dict:
    return {"status": status, "exit_code": exit_code, "seconds": 12.5, "figures": figures}


def run(date: str, **benchmarks: dict) -> dict:
    """A history line as history_line makes it, with the given benchmarks' records."""
    return {"date": date, "commit": "abc1234", "dirty": False, "load": [1.0, 2.0], "mode": "quick",
            "seconds": 300.0, "machine": {"hostname": "vm", "cpu": "AMD EPYC", "cores": 2, "memory_gib": 23.4,
                                          "kernel": "6.18"},
            "benchmarks": benchmarks}


@pytest.fixture
def doc(tmp_path):
    """A BENCHMARKS.md with the history markers between two other sections."""
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\n## {run_all.HEADING}\n\n{run_all.BEGIN}\nold table\n{run_all.END}\n\n"
                    "## Allocation\n\nkept\n")
    return path


def table_rows(lines: list[str]) -> list[list[str]]:
    """The cells of each row of the (one) table in lines, header and separator left out."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    return rows[2:]


def test_history_line_has_date_commit_machine_mode_and_each_benchmark():
    results = {"allocation": record(sqlite_p99_ms=7.88), "fails": record("failed", 3)}
    line = run_all.history_line(results, True, datetime(2026, 12, 6, 5, 20, 7, tzinfo=UTC), 61.04, (1.234, 2.0))
    assert line["date"] == "2026-12-06T05:20:07Z"
    assert re.fullmatch(r"[0-9a-f]{7,}", line["commit"])
    assert isinstance(line["dirty"], bool)
    assert line["mode"] == "quick"
    assert line["seconds"] == 61.0
    assert line["load"] == [1.23, 2.0]
    assert set(line["machine"]) == {"hostname", "cpu", "cores", "memory_gib", "kernel"}
    assert line["machine"]["cores"] >= 1 and line["machine"]["memory_gib"] > 0
    assert line["benchmarks"] == results
    assert run_all.history_line({}, False, datetime.now(UTC), 1.0, (0.0, 0.0))["mode"] == "full"


def test_history_lines_append_as_one_json_object_per_line(tmp_path):
    history = tmp_path / "history.jsonl"
    first, second = run("2026-12-06T05:20:00Z"), run("2026-12-07T05:20:00Z", cache=record(cache_total_ratio=1.2))
    run_all.append_history(history, first)
    run_all.append_history(history, second)
    assert len(history.read_text().splitlines()) == 2
    assert run_all.read_history(history) == [first, second]


def test_a_broken_history_line_is_named(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps(run("2026-12-06T05:20:00Z")) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"history.jsonl:2"):
        run_all.read_history(history)


def test_the_table_shows_figures_failures_and_missing_figures():
    runs = [
        run("2026-12-01T01:00:00Z", allocation=record(sqlite_p99_ms=7.884, etcd3m_new_p99_ms=26.1),
            startup=record(paths_cpu_ms=167.4)),
        # allocation failed (and wrote no figures); startup gave no paths figure this time
        run("2026-12-02T01:00:00Z", allocation=record("failed", 1), startup=record(status_cpu_ms=150.0)),
        run("2026-12-03T01:00:00Z", lua_inslurmctld=record("timeout", None, load_job_process_p99_us=1045.0)),
    ]
    lines = run_all.history_section(runs)
    rows = table_rows(lines)
    header = [c.strip() for c in next(line for line in lines if line.startswith("| ")).strip("|").split("|")]
    assert [r[0] for r in rows] == ["2026-12-01 01:00", "2026-12-02 01:00", "2026-12-03 01:00"]
    by_header = [dict(zip(header, r, strict=True)) for r in rows]
    assert by_header[0]["SQLite p99 ms"] == "7.88" and by_header[0]["etcd 3m p99 ms"] == "26.1"
    assert by_header[0]["paths CPU ms"] == "167"
    assert by_header[0]["failed (exit)"] == "-" and by_header[0]["ok"] == "2/2" and by_header[0]["load"] == "1.0-2.0"
    assert by_header[1]["failed (exit)"] == "allocation (1)" and by_header[1]["ok"] == "1/2"
    assert by_header[1]["SQLite p99 ms"] == "-" and by_header[1]["paths CPU ms"] == "-"
    assert by_header[2]["failed (exit)"] == "lua_inslurmctld (timeout)"
    assert by_header[2]["Lua p99 us"] == "1045"  # a benchmark that missed its target still shows its figure
    assert all(len(r) == len(header) for r in rows)
    assert any("run_all.py" in line for line in lines)


def test_the_table_keeps_the_last_ten_runs_newest_last():
    runs = [run(f"2026-12-{day:02d}T01:00:00Z", startup=record(paths_cpu_ms=100.0 + day)) for day in range(1, 13)]
    rows = table_rows(run_all.history_section(runs))
    assert [r[0][:10] for r in rows] == [f"2026-12-{day:02d}" for day in range(3, 13)]


def test_table_only_rewrites_the_section_from_the_history_and_runs_nothing(tmp_path, doc):
    history = tmp_path / "history.jsonl"
    run_all.append_history(history, run("2026-12-06T05:20:00Z", startup=record(paths_cpu_ms=167.0)))
    marker = tmp_path / "ran"
    would_run = run_all.Benchmark("touch", (sys.executable, "-c", f"open({str(marker)!r}, 'w')"))
    assert run_all.main(["--table-only"], (would_run,), history, doc) == 0
    text = doc.read_text()
    assert not marker.exists()
    assert "old table" not in text and "| 2026-12-06 05:20 |" in text
    assert text.endswith("## Allocation\n\nkept\n") and text.startswith("# Benchmarks\n")


def test_a_failing_benchmark_is_recorded_and_the_run_goes_on(tmp_path):
    benches = [FAILS, writes("after", {"x_s": 1.5})]
    results = run_all.run_benchmarks(benches, True, tmp_path, timeout=60, say=lambda _: None)
    assert results["fails"]["status"] == "failed" and results["fails"]["exit_code"] == 3
    assert results["fails"]["figures"] == {}
    assert "broken" in (tmp_path / "fails.log").read_text()
    assert results["after"] == {"status": "ok", "exit_code": 0, "seconds": results["after"]["seconds"],
                                "figures": {"x_s": 1.5}}


def test_a_benchmark_past_its_timeout_is_killed_and_recorded(tmp_path):
    hangs = run_all.Benchmark("hangs", (sys.executable, "-c", "import time; time.sleep(60)"))
    record = run_all.run_one(hangs, True, tmp_path / "hangs.log", timeout=0.5)
    assert record["status"] == "timeout" and record["exit_code"] is None
    assert record["seconds"] < 30


def test_the_command_exits_1_appends_the_run_and_rewrites_the_table(tmp_path, doc, capsys):
    history = tmp_path / "history.jsonl"
    benches = (FAILS, writes("startup", {"paths_cpu_ms": 170.2}))
    code = run_all.main(["--quick", "--log-dir", str(tmp_path / "logs")], benches, history, doc)
    assert code == 1
    [line] = run_all.read_history(history)
    assert line["mode"] == "quick"
    assert line["benchmarks"]["fails"]["exit_code"] == 3
    assert line["benchmarks"]["startup"]["figures"] == {"paths_cpu_ms": 170.2}
    [table_row] = table_rows(doc.read_text().splitlines())
    assert "fails (3)" in table_row and "170" in table_row
    assert "1 of 2 benchmarks ok" in capsys.readouterr().out


def test_no_history_leaves_history_and_doc_alone(tmp_path, doc):
    history, before = tmp_path / "history.jsonl", doc.read_text()
    assert run_all.main(["--no-history", "--log-dir", str(tmp_path)], (writes("a", {"x_s": 1.0}),), history,
                        doc) == 0
    assert not history.exists() and doc.read_text() == before


def test_only_and_skip_testbed_choose_the_benchmarks(tmp_path, doc):
    history = tmp_path / "history.jsonl"
    gluster = run_all.Benchmark("gluster", (sys.executable, "-c", "raise SystemExit(9)"), group=run_all.GLUSTER)
    benches = (writes("a", {"x_s": 1.0}), writes("b", {"y_s": 2.0}), gluster)
    assert run_all.main(["--only", "b", "gluster", "--skip-testbed", "--log-dir", str(tmp_path)], benches,
                        history, doc) == 0
    assert list(run_all.read_history(history)[0]["benchmarks"]) == ["b"]


def test_figures_are_written_rounded_and_only_when_asked(tmp_path):
    path = tmp_path / "figures.json"
    results_doc.write_figures(path, {"p99_ms": 7.883912, "runs": 3, "missing": None})
    assert json.loads(path.read_text()) == {"p99_ms": 7.884, "runs": 3, "missing": None}
    results_doc.write_figures(None, {"p99_ms": 1.0})  # no --json: nothing written, no error
    assert run_all.read_figures(tmp_path / "absent.json") == {}


def test_publish_prints_writes_the_figures_and_the_section_only_when_asked(tmp_path, capsys, monkeypatch):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n<!-- b -->\nold\n<!-- e -->\ntail\n")
    monkeypatch.setattr(results_doc, "BENCHMARKS_MD", doc)
    monkeypatch.setattr(results_doc.write_section, "__defaults__", (doc,))
    figures = tmp_path / "figures.json"
    results_doc.publish(["| a |", "| 1 |"], {"x_s": 1.23456}, figures, None)
    assert capsys.readouterr().out == "| a |\n| 1 |\n"
    assert json.loads(figures.read_text()) == {"x_s": 1.235} and "old" in doc.read_text()
    results_doc.publish(["new"], {}, None, ("<!-- b -->", "<!-- e -->", "Heading"))
    assert doc.read_text() == "# Benchmarks\n\n<!-- b -->\nnew\n<!-- e -->\ntail\n"


def test_every_registered_benchmark_exists_and_writes_figures():
    names = {bench.name for bench in run_all.REGISTRY}
    for bench in run_all.REGISTRY:
        source = Path(bench.command[-1])
        assert source.name == f"{bench.name}.py" and source.exists()
        text = source.read_text()
        assert "add_json_option(parser)" in text
        assert "write_figures(" in text or "results_doc.publish(" in text
    assert {column.benchmark for column in run_all.COLUMNS} <= names


@pytest.fixture
def calls(tmp_path, monkeypatch):
    """A fake bbctl (exit 5 for ``testbed up`` with FAIL_UP set) and no bed left over; both it and the
    benchmarks of ``logged`` append what ran to the file this returns."""
    log = tmp_path / "calls"
    fake = tmp_path / "bbctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n[ "$2" = up ] && [ -n "$FAIL_UP" ] && exit 5\nexit 0\n')
    fake.chmod(0o755)
    monkeypatch.setattr(run_all, "BBCTL", fake)
    monkeypatch.setattr(run_all, "BEDS", (tmp_path / "no-bed",))
    return log


def logged(name: str, log: Path, group: str, testbed: tuple[str, ...] = (), code: int = 0) -> run_all.Benchmark:
    program = f"open({str(log)!r}, 'a').write({name!r} + '\\n'); raise SystemExit({code})"
    return run_all.Benchmark(name, (sys.executable, "-c", program), group=group, testbed=testbed)


def test_groups_run_in_order_and_each_test_bed_shape_comes_up_and_down(tmp_path, calls):
    benches = [logged("bed1", calls, run_all.TESTBED, code=2), logged("big", calls, run_all.TESTBED, ("--bricks", "8")),
               logged("own", calls, run_all.GLUSTER), logged("bed2", calls, run_all.TESTBED),
               logged("here", calls, run_all.LOCAL)]
    results = run_all.run_benchmarks(benches, True, tmp_path, 60, say=lambda _: None)
    assert calls.read_text().splitlines() == ["here", "own", "testbed up", "bed1", "bed2", "testbed down",
                                              "testbed up --bricks 8", "big", "testbed down"]
    assert results["bed1"]["exit_code"] == 2 and results["bed2"]["status"] == "ok"


def test_a_test_bed_that_does_not_come_up_is_still_taken_down(tmp_path, calls, monkeypatch):
    monkeypatch.setenv("FAIL_UP", "1")
    results = run_all.run_benchmarks([logged("bed1", calls, run_all.TESTBED)], True, tmp_path, 60,
                                     say=lambda _: None)
    assert calls.read_text().splitlines() == ["testbed up", "testbed down"]
    assert results["bed1"]["status"] == "failed" and "bbctl testbed up failed (exit 5" in results["bed1"]["reason"]


def test_a_bed_already_there_is_left_alone(tmp_path, calls, monkeypatch):
    (tmp_path / "someone-elses").mkdir()
    monkeypatch.setattr(run_all, "BEDS", (tmp_path / "someone-elses",))
    benches = [logged("here", calls, run_all.LOCAL), logged("own", calls, run_all.GLUSTER),
               logged("bed1", calls, run_all.TESTBED)]
    results = run_all.run_benchmarks(benches, True, tmp_path, 60, say=lambda _: None)
    assert calls.read_text().splitlines() == ["here"]
    assert results["own"]["status"] == results["bed1"]["status"] == "failed"
    assert "someone-elses exists" in results["bed1"]["reason"]
