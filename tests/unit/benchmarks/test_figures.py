"""Each benchmark's headline figures (its ``figures()``, written by ``--json``) from results shaped as the
benchmark makes them: the test-bed benchmarks cannot run in the unit tests, their arithmetic can."""

from pathlib import Path

import allocation  # benchmarks/, on the path by this directory's conftest
import brick_fill
import cache
import layouts
import lifecycle
import load
import pytest
import stage_floor
import staging
import startup
import tree_scale


def test_staging_ratios_are_the_tools_seconds_over_bb_stages():
    timing = staging.Timing
    results = {"(a) 4 x 256 MiB": {"bb_stage": timing([1.0, 2.0, 1.5]), "cp -r": timing([3.0])},
               "(b) 10,000 x 4 KiB in 40 dirs": {"bb_stage": timing([4.0]), "cp -r": timing([8.0]),
                                                 "rsync -a": timing([30.0])},
               staging.LARGE_OUT: {"bb_stage": timing([2.0]), "cp -r": timing([2.5])}}
    sizes = {"(a) 4 x 256 MiB": 1024 * 2**20, staging.LARGE_OUT: 1024 * 2**20}
    found = staging.figures(results, sizes, {"(a) 4 x 256 MiB": 700.0, staging.LARGE_OUT: 600.0})
    assert found["a_bb_stage_s"] == 1.5 and found["a_cp_ratio"] == 2.0 and "a_rsync_ratio" not in found
    assert found["b_cp_ratio"] == 2.0 and found["b_rsync_ratio"] == 7.5
    assert found["a_dd_pct"] == pytest.approx(1024 * 2**20 / 1.5 / 1e6 / 700 * 100)
    assert found["f_dd_pct"] == pytest.approx(1024 * 2**20 / 2.0 / 1e6 / 600 * 100)
    assert (found["dd_mb_s"], found["dd_out_mb_s"], found["f_cp_ratio"]) == (700.0, 600.0, 1.25)


def test_each_tool_is_set_beside_the_physical_limit():
    timing = staging.Timing
    case = staging.SMALL_IN
    results = {case: {"bb_stage": timing([4.0]), "cp -r": timing([8.0])}}
    lines = staging.main_table(results, {case: 40_000_000}, {}, {case: 1.0})
    assert any(line.startswith(f"| {case} | bb_stage |") and line.endswith("| 25% |") for line in lines)
    assert any(line.startswith(f"| {case} | cp -r |") and line.endswith("| 12% |") for line in lines)
    assert f"| {case} | the limit: `cp -r` straight onto XFS | | 1.00 | 40 | | 100% |" in lines
    assert staging.figures(results, {case: 1}, {}, {case: 1.0})["b_limit_pct"] == 25.0
    assert "b_limit_pct" not in staging.figures(results, {case: 1}, {})


def lifecycle_series(**values: list[float]) -> dict[str, list[float]]:
    rounds = len(values["raw"])
    return {"raw mount": [0.2] * rounds, "raw unmount": [0.1] * rounds, "pre-run": [1.0] * rounds,
            "post-run": [0.9] * rounds} | {name.replace("_", " "): series for name, series in values.items()}


def test_lifecycle_ratio_is_the_stacks_median_over_raws():
    series = lifecycle_series(raw=[8.0, 9.0, 10.0], setup=[7.0, 7.0, 8.0], teardown=[5.0, 5.0, 5.0],
                              floor=[2.0, 2.0, 2.0])
    found = lifecycle.figures(series)
    assert found["stack_s"] == 12.0 and found["stack_raw_ratio"] == 12.0 / 9.0
    assert found["above_floor_s"] == 1.0 and "warm_stack_s" not in found
    assert (found["prerun_s"], found["postrun_s"], found["raw_mount_s"]) == (1.0, 0.9, 0.2)
    warm = lifecycle.figures(lifecycle_series(raw=[9.0], setup=[7.0], teardown=[5.0], floor=[2.0], warm_setup=[4.0],
                                              warm_teardown=[3.0], warm_floor=[1.0], **{"warm_pre-run": [0.6],
                                                                                       "warm_post-run": [0.5]}))
    assert warm["warm_stack_raw_ratio"] == 7.0 / 9.0 and warm["warm_postrun_s"] == 0.5


def test_lifecycle_report_rows_follow_the_series():
    series = lifecycle_series(raw=[9.0], setup=[7.0], teardown=[5.0], floor=[2.0])
    report = lifecycle.render(series, 1)
    assert "| bbctl setup + teardown | 12.00 s |" in report and "warm runner" not in report
    assert "Pre-run 1.00 s, post-run 0.90 s" in report and "the raw mount 0.20 s" in report


def test_load_figures_with_and_without_the_queue_phase():
    result = {"jobs": 10, "seconds": 300.0, "per_minute": 2.0, "submit_to_running": {"median": 40.0, "p95": 90.0},
              "completed": 10, "checked_ok": 9, "overlaps": [], "strange": ["job 3 held"], "most_ports": (856, 430)}
    assert load.figures(result, None)["held_or_failed"] == 1
    assert load.figures(result, None)["most_ports_below_1024"] == 856
    queued = {"with_buffer": {"median": 1206, "p99": 1414}, "plain": {}}
    found = load.figures(result, queued)
    assert found["submit_buffer_p99_us"] == 1414 and found["submit_plain_median_us"] is None


def test_layouts_and_brick_fill_figures():
    row = {"layout": "disperse 3+1 (shipped)", "capacity": 5 * 2**30, "write1": 66.0, "read1": 201.0,
           "small_s": 28.5, "many files": layouts.Fill(4 * 2**30, "Input/output error", 0.0, False)}
    assert layouts.figures([row]) == {"disperse_3_1_write1_mb_s": 66.0, "disperse_3_1_read1_mb_s": 201.0,
                                      "disperse_3_1_small_s": 28.5, "disperse_3_1_fill_many_pct": 80.0}
    new = brick_fill.block_devices.BRICK_MOUNT_OPTIONS
    rows = [(brick_fill.OLD_OPTIONS, {"share": 0.995, "error": "Input/output error"}),
            (new, {"share": 1.0, "error": "Disk quota exceeded"})]
    assert brick_fill.figures(rows) == {"old_fills": 1, "old_edquot_fills": 0, "old_min_fill_pct": 99.5,
                                        "new_fills": 1, "new_edquot_fills": 1, "new_min_fill_pct": 100.0}
    without = [{"share": 0.99, "error": "No space left on device", "unreadable": []},
               {"share": 0.97, "error": "No space left on device", "unreadable": ["f12: Input/output error"]},
               {"share": 0.5, "error": "Input/output error", "unreadable": []}]
    assert brick_fill.figures_without_quota(without) == {"noquota_fills": 3, "noquota_clean_fills": 1,
                                                         "noquota_min_fill_pct": 50.0, "noquota_unreadable_files": 1}


def test_local_benchmarks_figures():
    contender = allocation.Contender("etcd 3m, index per pool (new)", store=None)
    contender.times["allocate + release"] = [0.010, 0.012, 0.030]
    assert allocation.figures([contender]) == {"etcd3m_new_p50_ms": 12.0, "etcd3m_new_p99_ms": 30.0}
    here, other = Path("/a"), Path("/b")
    samples = {("bbctl paths", here): [(0.2, 0.15)], ("bbctl paths", other): [(9.0, 9.0)],
               ("bbctl paths, settings cache removed first", here): [(0.3, 0.2)]}
    assert startup.figures(here, samples) == pytest.approx(
        {"paths_wall_ms": 200.0, "paths_cpu_ms": 150.0, "paths_uncached_wall_ms": 300.0,
         "paths_uncached_cpu_ms": 200.0})
    times = {("noop", False): [1.5], ("noop", True): [0.5], ("post-run", False): [2.0], ("post-run", True): [1.0]}
    assert stage_floor.figures(times)["post_run_warm_ratio"] == 0.5
    runs = {"plain": [{"stage-in": 3.0, "job": 4.0, "stage-out": 1.0}], "cache": [{"mount": 1.0, "job": 5.0}]}
    assert cache.figures(runs)["cache_total_ratio"] == 6.0 / 8.0
    case = {"files": 10000, "per_dir": 100, "runs": {"bb_stage": [{"seconds": 2.0, "peak_rss_kib": 2048}],
                                                     "cp -a": [{"seconds": 1.0}], "rsync -aH": [{"seconds": 4.0}]}}
    assert tree_scale.figures([case]) == {"f10000_bb_stage_s": 2.0, "f10000_cp_a_ratio": 0.5,
                                          "f10000_rsync_ratio": 2.0, "f10000_peak_rss_mib": 2.0}


def test_privileged_ports_counts_connections_from_ports_below_1024_but_no_listener(tmp_path):
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    rows = ["0: 0100007F:5DC7 00000000:0000 0A 0 0 0 0 0 0",   # glusterd listening on 24007
            "1: 0100007F:03FF 0100007F:5DC7 06 0 0 0 0 0 0",   # 1023 -> 24007, TIME-WAIT
            "2: 0100007F:03FE 0201007F:C001 01 0 0 0 0 0 0",   # 1022 -> a brick's 49153, established
            "3: 0100007F:0016 00000000:0000 0A 0 0 0 0 0 0",   # a listener below 1024 (sshd)
            "4: 0100007F:C350 0100007F:5DC7 01 0 0 0 0 0 0"]   # 50000 -> 24007: not privileged
    tcp = tmp_path / "tcp"
    tcp.write_text(header + "\n".join(rows) + "\n")
    assert load.load.privileged_ports([str(tcp), str(tmp_path / "absent")]) == (2, 1)
