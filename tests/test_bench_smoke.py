"""Each benchmark runs once at its tiny size, so the scripts cannot rot; plus the pure report helpers.

The figures of a tiny run mean nothing; only the shape of the JSON and the sanity of the counts are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report import Aim, fmt, format_table, percentile, summary_line
from bench.stages import ObservedProposal, service_moments, stage_breakdown

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMON_KEYS = {"benchmark", "size", "params", "machine", "started_at", "duration_s", "summary", "details"}
SUMMARY_KEYS = {"benchmark", "metric", "unit", "service", "baseline", "figure", "figure_name", "aim", "met"}


def run_benchmark(script: str, results_dir: Path, *extra: str) -> dict[str, Any]:
    command = [sys.executable, str(REPO_ROOT / "bench" / script), "--size", "tiny"]
    done = subprocess.run(
        [*command, "--results-dir", str(results_dir), *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    files = list(results_dir.glob("*.json"))
    assert len(files) == 1, files
    document: dict[str, Any] = json.loads(files[0].read_text())
    assert document.keys() >= COMMON_KEYS
    assert document["size"] == "tiny"
    assert document["summary"], "a benchmark without summary lines"
    for line in document["summary"]:
        assert line.keys() >= SUMMARY_KEYS
    assert "->" in done.stdout  # the table was printed, then where the JSON went
    return document


@pytest.mark.slow  # runs the benchmark script (anvil and the service)
def test_latency(tmp_path: Path) -> None:
    document = run_benchmark("latency.py", tmp_path, "--samples", "1", "--block-time", "0.25")
    runs = document["details"]["runs"]
    assert {(r["mining"], r["voter"]) for r in runs} == {
        ("automine", "baseline"),
        ("automine", "service"),
        ("block-time 0.25s", "baseline"),
        ("block-time 0.25s", "service"),
    }
    for run in runs:
        assert run["missed"] == 0, run
        assert run["per_vote_ms"]["n"] == 5
        assert run["per_vote_ms"]["p50"] > 0
        # The loop the service ran on is in the results (DLOOP_EVENT_LOOP's default); None for the script.
        assert run["event_loop"] == ("uvloop" if run["voter"] == "service" else None), run
    assert {line["metric"] for line in document["summary"]} >= {"automine vote p50", "automine vote p99"}


@pytest.mark.slow  # runs the benchmark script (anvil and the service)
def test_burst(tmp_path: Path) -> None:
    document = run_benchmark("burst.py", tmp_path)
    runs = document["details"]["runs"]
    assert [(r["pair"], r["voter"]) for r in runs] == [(1, "baseline (pre-signed)"), (1, "service")]
    for run in runs:
        assert run["complete"] and run["votes_mined"] == run["votes_expected"] == 50, run
        assert run["duplicate_votes"] == 0
        assert run["votes_per_s"] > 0
    assert runs[1]["memory"]["peak_rss_mb"] > 0 and runs[1]["event_loop"] == "uvloop"


def test_burst_summary_takes_the_pair_with_the_median_ratio() -> None:
    from bench.burst import median_pair, summarise

    def run(
        pair: int, voter: str, votes_per_s: float, cpu_s: float = 10.0, complete: bool = True
    ) -> dict[str, Any]:
        return {
            "pair": pair,
            "voter": voter,
            "proposals": 1000,
            "votes_mined": 5000,
            "votes_per_s": votes_per_s,
            "complete": complete,
            "cpu_s": {"service": cpu_s},
        }

    runs = [
        run(1, "baseline (pre-signed)", 300.0),
        run(1, "service", 120.0, cpu_s=15.0),  # 0.4
        run(2, "baseline (pre-signed)", 200.0),
        run(2, "service", 160.0, cpu_s=10.0),  # 0.8
        run(3, "baseline (pre-signed)", 400.0),
        run(3, "service", 240.0, cpu_s=12.5),  # 0.6: the median
        run(4, "baseline (pre-signed)", 100.0, complete=False),  # timed out: the pair does not count
        run(4, "service", 100.0, cpu_s=5.0),
    ]
    service, baseline = median_pair(runs)
    assert (service or {})["pair"] == (baseline or {})["pair"] == 3
    ratio, cpu = summarise(runs)
    assert ratio.figure == pytest.approx(0.6) and ratio.met and "median of 3 complete pairs" in ratio.metric
    assert cpu.figure == pytest.approx(2.5)  # 3.0, 2.0 and 2.5 ms in the complete pairs; not pair 4's 1.0

    # Two complete pairs: the lower ratio and the higher CPU, the less flattering middles.
    ratio, cpu = summarise(runs[:4])
    assert ratio.figure == pytest.approx(0.4) and cpu.figure == pytest.approx(3.0)

    # The service alone (`--voters service`): no ratio, the median of its finished runs' CPU.
    alone = [r for r in runs if r["voter"] == "service"]
    ratio, cpu = summarise(alone)
    assert ratio.figure is None and "median" not in ratio.metric
    assert cpu.figure == pytest.approx(2.5)  # 1.0, 2.0, 2.5 and 3.0 ms: the upper middle


def test_latency_summary_takes_each_quantile_from_the_pair_with_the_median_ratio() -> None:
    from bench.latency import summarise

    def run(pair: int, voter: str, p50: float | None, p99: float | None) -> dict[str, Any]:
        return {"pair": pair, "voter": voter, "mining": "automine", "per_vote_ms": {"p50": p50, "p99": p99}}

    runs = [
        run(1, "baseline", 40.0, 100.0),
        run(1, "service", 60.0, 120.0),  # 1.5, 1.2
        run(2, "baseline", 40.0, 100.0),
        run(2, "service", 48.0, 200.0),  # 1.2, 2.0
        run(3, "baseline", 50.0, 100.0),
        run(3, "service", 70.0, 150.0),  # 1.4, 1.5
        run(4, "baseline", None, None),  # nothing measured: the pair does not count
        run(4, "service", 10.0, 10.0),
    ]
    p50, p99 = summarise(runs)
    assert (p50.service, p50.baseline) == (70.0, 50.0) and p50.met  # 1.4 of 1.2, 1.4 and 1.5
    assert (p99.service, p99.baseline) == (150.0, 100.0) and p99.met
    assert "median of 3 pairs" in p50.metric

    # Two pairs: the upper middle ratio, the less flattering against an "at most" aim.
    p50, p99 = summarise(runs[:4])
    assert p50.figure == pytest.approx(1.5) and p99.figure == pytest.approx(2.0)

    # One pair (the block-time mode, --size tiny): that pair, no median named.
    p50, _ = summarise(runs[:2])
    assert p50.figure == pytest.approx(1.5) and "median" not in p50.metric

    # The service alone (`--voters service`): its median run by each quantile (the slower middle), no ratio.
    p50, p99 = summarise([r for r in runs if r["voter"] == "service"])
    assert (p50.service, p99.service, p50.figure) == (60.0, 150.0, None)

    # A baseline at 0 ms, or a run that missed proposals, makes no pair (and no division by zero): the
    # figures are shown, without a verdict, and the metric says so.
    zero = [run(1, "baseline", 0.0, 0.0), run(1, "service", 5.0, 5.0)]
    missed = [run(1, "baseline", 40.0, 100.0), {**run(1, "service", 60.0, 120.0), "missed": 2}]
    for bad in (zero, missed):
        p50, _ = summarise(bad)
        assert p50.service == bad[1]["per_vote_ms"]["p50"] and p50.met is None
        assert "no complete pair" in p50.metric and "median" not in p50.metric


@pytest.mark.slow  # runs the benchmark script (anvil and the service)
def test_reconcile_scan(tmp_path: Path) -> None:
    document = run_benchmark("reconcile_scan.py", tmp_path)
    runs = document["details"]["runs"]
    assert [r["rpc_batch_size"] for r in runs] == [50, 1]
    for run in runs:
        assert run["proposals_scanned"] == run["new_proposals"] == 20, run
        assert run["read_errors"] == 0
        assert run["requests"] >= 20 * 6  # getProposal and five hasVoted per proposal
    assert runs[0]["batches_sent"] > 0 and runs[1]["batches_sent"] == 0


@pytest.mark.slow  # runs the benchmark script (anvil and the service)
def test_http(tmp_path: Path) -> None:
    document = run_benchmark("http_load.py", tmp_path)
    loads = document["details"]["loads"]
    conditions = [(s, c) for s in ("service", "bare app") for c in ("during burst", "idle")]
    expected = {(s, c, e) for s, c in conditions for e in ("/active-proposals", "/health")}
    expected |= {(s, "idle, 1 connection", "/health") for s in ("service", "bare app")}
    assert {(x["server"], x["condition"], x["endpoint"]) for x in loads} == expected
    for load in loads:
        assert load["ok"] > 0 and load["ok"] == load["requests"] and not load["errors"], load
        assert load["pair"] == 1 and load["cpu_share"]["server"] > 0 and load["cpu_share"]["loadgen"] > 0, (
            load
        )
        assert ("anvil" in load["cpu_share"]) == (
            load["condition"] == "during burst" or load["server"] == "service"
        )
    assert [b["event_loop"] for b in document["details"]["bursts"]] == ["uvloop"]


def test_http_summary_takes_the_pair_with_the_median_ratio() -> None:
    from bench.http_load import summarise

    def load(pair: int, server: str, condition: str, endpoint: str, req_per_s: float) -> dict[str, Any]:
        return {
            "pair": pair,
            "server": server,
            "condition": condition,
            "endpoint": endpoint,
            "ok": 100 if req_per_s else 0,
            "req_per_s": req_per_s,
            "latency_ms": {"p99": 1000.0 / req_per_s if req_per_s else None},
        }

    loads = []
    for pair, service, bare in [(1, 600.0, 1000.0), (2, 900.0, 1000.0), (3, 1600.0, 2000.0), (4, 0.0, 900.0)]:
        for endpoint in ("/health", "/active-proposals"):
            loads += [
                load(pair, "service", "during burst", endpoint, service),
                load(pair, "bare app", "during burst", endpoint, bare),
                load(pair, "bare app", "idle", endpoint, 2 * bare),
            ]
    *_, health, health_idle, health_p99 = summarise(loads)  # /active-proposals' lines first
    # Ratios 0.6, 0.9 and 0.8; pair 4's service answered nothing: it makes no pair.
    assert health.figure == pytest.approx(0.8) and health.met
    assert "median of 3 pairs (0.60, 0.90, 0.80)" in health.metric
    assert health_idle.baseline == 4000.0 and health_p99.service == pytest.approx(1000.0 / 1600.0)
    # Two pairs: the lower middle, the one that misses an "at least" aim first.
    *_, health, _, _ = summarise([x for x in loads if x["pair"] in (1, 3)])
    assert health.figure == pytest.approx(0.6) and not health.met
    # One pair: its ratio, without "median".
    *_, health, _, _ = summarise([x for x in loads if x["pair"] == 2])
    assert health.figure == pytest.approx(0.9) and "median" not in health.metric


@pytest.mark.slow  # runs the benchmark script (anvil and the service)
def test_memory(tmp_path: Path) -> None:
    document = run_benchmark("memory.py", tmp_path)
    points = document["details"]["points"]
    assert [p["proposals"] for p in points] == [0, 5, 10]
    assert all(p["rss_mb"] > 10 and p["peak_rss_mb"] >= p["rss_mb"] for p in points)
    assert document["details"]["event_loop"] == "uvloop"


@pytest.mark.slow  # runs the benchmark script
def test_run_all_rejects_an_unknown_benchmark() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "run_all.py"), "--only", "nonsense"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "unknown benchmark" in done.stderr


# -- pure helpers --------------------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_summary_line_ratio_and_aim() -> None:
    line = summary_line("x", "m", "ms", 30.0, 20.0, aim=Aim("<=", 1.5))
    assert line.figure == pytest.approx(1.5) and line.met is True
    missed = summary_line("x", "m", "votes/s", 50.0, 100.0, aim=Aim(">=", 0.6))
    assert missed.figure == pytest.approx(0.5) and missed.met is False
    absolute = summary_line("x", "rss", "MB", 250.0, None, figure=250.0, figure_name="MB", aim=Aim("<=", 200))
    assert absolute.met is False
    assert summary_line("x", "m", "ms", None, 1.0).figure is None


def test_table_formatting() -> None:
    assert fmt(None) == "-" and fmt(1234567) == "1,234,567" and fmt(0.012345) == "0.0123"
    assert fmt(12.345) == "12.3" and fmt(2500.4) == "2,500"
    text = format_table(["name", "value"], [["a", 1.5], ["bb", 22.25]])
    lines = text.splitlines()
    assert lines[0].startswith("name") and lines[2].endswith("1.50") and lines[3].endswith("22.2")


def test_stage_breakdown_from_the_service_log() -> None:
    log = [
        "not json",
        '{"ts": "2026-01-01T00:00:00.030+00:00", "event": "proposal_recorded", "proposal": 7}',
        '{"ts": "2026-01-01T00:00:00.080+00:00", "event": "vote_sent", "proposal": 7, "node": "a"}',
        '{"ts": "2026-01-01T00:00:00.100+00:00", "event": "vote_sent", "proposal": 7, "node": "b"}',
        '{"ts": "2026-01-01T00:00:00.100+00:00", "event": "vote_sent", "proposal": "oops"}',
    ]
    moments = service_moments(log)
    assert list(moments) == [7] and len(moments[7].sent) == 2
    created = moments[7].recorded - 0.030  # type: ignore[operator]
    stages = stage_breakdown({7: ObservedProposal(created, [created + 0.105, created + 0.110])}, moments)
    assert stages["created_to_recorded_ms"]["p50"] == pytest.approx(30, abs=0.01)
    assert stages["recorded_to_first_send_ms"]["p50"] == pytest.approx(50, abs=0.01)
    assert stages["first_to_last_send_ms"]["p50"] == pytest.approx(20, abs=0.01)
    assert stages["last_send_to_last_vote_mined_ms"]["p50"] == pytest.approx(10, abs=0.01)
