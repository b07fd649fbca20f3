"""Run every benchmark (each in its own process, one after another) and print one summary table.

`python bench/run_all.py [--size tiny|medium|default] [--only latency,burst] [--results-dir DIR]`;
`make bench` runs the default sizes. Each benchmark writes bench/results/<name>.json; the summary goes to
bench/results/summary.json and, as a Markdown table for the README, summary.md. Aims are reported, not
asserted: the exit code is non-zero only when a benchmark failed to run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.report import DEFAULT_RESULTS_DIR, REPO_ROOT, SIZES, machine_info, summary_markdown, summary_table

# name -> script; cheapest first, so a broken set-up shows early.
BENCHMARKS: dict[str, str] = {
    "reconcile_scan": "reconcile_scan.py",
    "latency": "latency.py",
    "burst": "burst.py",
    "http": "http_load.py",
    "memory": "memory.py",
}


def run_one(name: str, size: str, results_dir: Path) -> tuple[bool, float]:
    started = time.perf_counter()
    command = [
        sys.executable,
        str(REPO_ROOT / "bench" / BENCHMARKS[name]),
        "--size",
        size,
        "--results-dir",
        str(results_dir),
    ]
    print(f"== {name} ({size})", flush=True)
    done = subprocess.run(command, cwd=REPO_ROOT, check=False)
    return done.returncode == 0, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=SIZES, default="default", help="tiny, medium or default")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    timings: dict[str, float] = {}
    lines: list[dict[str, Any]] = []
    for name in names:
        result_file = args.results_dir / f"{name}.json"
        result_file.unlink(missing_ok=True)  # a stale result must not pass for this run's
        ok, seconds = run_one(name, args.size, args.results_dir)
        timings[name] = round(seconds, 1)
        if not ok or not result_file.is_file():
            failed.append(name)
            continue
        lines += json.loads(result_file.read_text())["summary"]
    print()
    print(f"Summary ({args.size} sizes; service vs baseline measured in the same run)")
    print(summary_table(lines))
    if failed:
        print(f"FAILED to run: {', '.join(failed)}")
    summary = {
        "size": args.size,
        "benchmarks": names,
        "failed": failed,
        "seconds": timings,
        "machine": machine_info(),
        "summary": lines,
    }
    (args.results_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.results_dir / "summary.md").write_text(summary_markdown(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
