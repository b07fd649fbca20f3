"""Pure helpers of the benchmarks: percentiles, ratios, aims, tables and the JSON result document."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPO_ROOT / "bench" / "results"
SIZES = ("tiny", "medium", "default")  # presets of every benchmark


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p95, p99, max and mean of `values`."""
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Aim:
    """A target for a figure: `value <op> limit`, e.g. Aim("<=", 1.5)."""

    op: str
    limit: float

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value <= self.limit if self.op == "<=" else value >= self.limit

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}"


@dataclass(frozen=True)
class SummaryLine:
    """One line of a benchmark's summary: the service's figure, the baseline's, and how they compare.

    `figure` is what the aim is checked on: usually the ratio, for memory an absolute value.
    """

    benchmark: str
    metric: str
    unit: str
    service: float | None
    baseline: float | None
    figure: float | None
    figure_name: str
    aim: str | None
    met: bool | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summary_line(
    benchmark: str,
    metric: str,
    unit: str,
    service: float | None,
    baseline: float | None,
    *,
    figure: float | None = None,
    figure_name: str = "ratio",
    aim: Aim | None = None,
) -> SummaryLine:
    value = figure if figure is not None or figure_name != "ratio" else ratio(service, baseline)
    return SummaryLine(
        benchmark=benchmark,
        metric=metric,
        unit=unit,
        service=service,
        baseline=baseline,
        figure=value,
        figure_name=figure_name,
        aim=str(aim) if aim is not None else None,
        met=aim.met(value) if aim is not None else None,
    )


def absolute_line(benchmark: str, metric: str, unit: str, value: float | None, aim: Aim) -> SummaryLine:
    """A summary line of the service alone, its aim on the value itself (MB, ms, s), not on a ratio."""
    return summary_line(benchmark, metric, unit, value, None, figure=value, figure_name=unit, aim=aim)


Run = dict[str, Any]


def complete_pairs(runs: Sequence[Run], finished: Callable[[Run], bool]) -> list[tuple[Run, Run]]:
    """(service, baseline) of every pair (runs numbered by "pair", 1 without) in which both runs finished."""
    pairs: dict[int, dict[str, Run]] = {}
    for run in runs:
        pairs.setdefault(run.get("pair", 1), {})["service" if run["voter"] == "service" else "baseline"] = run
    both = [(p.get("service"), p.get("baseline")) for p in pairs.values()]
    return [(s, b) for s, b in both if s is not None and b is not None and finished(s) and finished(b)]


def median_pair(
    pairs: Sequence[tuple[Run, Run]], ratio_of: Callable[[Run, Run], float], aim: Aim
) -> tuple[Run, Run] | None:
    """The pair whose service/baseline ratio is the median; of an even count, the less flattering middle
    one (the lower for an "at least" aim, the higher for an "at most" one). None without pairs."""
    ranked = sorted(pairs, key=lambda p: ratio_of(*p))
    if not ranked:
        return None
    middle = len(ranked) // 2
    if len(ranked) % 2 == 0:  # the lower middle misses an "at least" aim first, the upper an "at most" one
        middle -= 1 if aim.op == ">=" else 0
    return ranked[middle]


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: significant digits, thousands separators; '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 999.5:  # what would round to 1000 gets its separator too
            return f"{value:,.0f}"
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
        return f"{value:.{decimals}f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[fmt(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def summary_table(lines: Sequence[SummaryLine | Mapping[str, Any]]) -> str:
    rows = []
    for item in lines:
        data = item.to_json() if isinstance(item, SummaryLine) else dict(item)
        rows.append(
            [
                data["benchmark"],
                data["metric"],
                data["unit"],
                data["service"],
                data["baseline"],
                f"{data['figure_name']} {fmt(data['figure'])}",
                data["aim"] or "",
                "" if data["met"] is None else ("met" if data["met"] else "MISSED"),
            ]
        )
    return format_table(["benchmark", "metric", "unit", "service", "baseline", "figure", "aim", ""], rows)


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the work tree had uncommitted changes (the service runs from it)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        # rstrip, not strip: a porcelain line starts with a status column that may be blank
        return done.stdout.rstrip("\n")

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "uncommitted_changes": changed}


def summary_markdown(lines: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a Markdown table (for the README's Performance section)."""
    out = [
        "| benchmark | metric | service | baseline | figure | aim | |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for data in lines:
        unit = f" {data['unit']}"
        service = "-" if data["service"] is None else fmt(data["service"]) + unit
        baseline = "-" if data["baseline"] is None else fmt(data["baseline"]) + unit
        verdict = "" if data["met"] is None else ("met" if data["met"] else "missed")
        out.append(
            f"| {data['benchmark']} | {data['metric']} | {service} | {baseline} | "
            f"{data['figure_name']} {fmt(data['figure'])} | {data['aim'] or ''} | {verdict} |"
        )
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(load) if load else None,
        "git": git_state(),
    }


def result_document(
    benchmark: str,
    size: str,
    params: Mapping[str, Any],
    summary: Sequence[SummaryLine],
    details: Mapping[str, Any],
    *,
    started_at: dt.datetime,
    duration_s: float,
) -> dict[str, Any]:
    """The JSON written to bench/results/<benchmark>.json: the keys every benchmark shares, then details."""
    return {
        "benchmark": benchmark,
        "size": size,
        "params": dict(params),
        "machine": machine_info(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 3),
        "summary": [line.to_json() for line in summary],
        "details": dict(details),
    }


def write_result(results_dir: Path, document: Mapping[str, Any]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{document['benchmark']}.json"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(partial, path)
    return path
