"""Burst throughput: N proposals created as fast as possible; how long until all 5N votes are mined.

Service run: a fresh devnet, `dloop run` started and warmed up on one proposal, then N createProposal
transactions (signed in advance) are sent back to back over one WebSocket (pipelined, 64 in flight); the
clock runs from the first send to the last of the 5N VoteCast logs announced. Baseline run, on another
fresh devnet: the same N creates sent the same way, followed at once by the 5N vote transactions
pre-signed with the right nonces and sent straight to anvil, pipelined too; same clock.
votes/s = 5N / elapsed; ratio = service / baseline.
The service's RSS is sampled during its run (VmHWM = peak).

On a 2-core VM one burst's length moves by a third from run to run (anvil's automine stalls, the other
process's scheduling), so the default size runs three pairs, baseline then service, and the summary reports
the pair with the median ratio and the median service CPU per vote; every run is in the table and the JSON.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench import report
from bench.harness import (
    NODE_COUNT,
    AnvilWatchdog,
    ChainObserver,
    Devnet,
    ManagedProcess,
    base_parser,
    cpu_seconds,
    devnet,
    memory_mb,
    positive_int,
    sign_proposals,
    sign_votes,
    stop_on_sigterm,
    workdir,
)
from bench.harness import service as start_service
from bench.report import (
    Aim,
    SummaryLine,
    absolute_line,
    format_table,
    result_document,
    summary_line,
    write_result,
)
from bench.rpc import WsRpc

NAME = "burst"
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"proposals": 10, "pairs": 1},
    "medium": {"proposals": 200, "pairs": 1},
    "default": {"proposals": 1000, "pairs": 3},
}
AIM = Aim(">=", 0.5)  # of the pre-signed push (#18)
CPU_AIM_MS = Aim("<=", 3.0)  # service CPU per vote (#18)


class MemorySampler:
    """Samples a process's RSS every `interval` seconds while a run is going on."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, RSS MB)
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        started = time.perf_counter()
        while True:
            try:
                self.samples.append((time.perf_counter() - started, memory_mb(self.pid)["rss_mb"]))
            except OSError:
                return
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
        peak = memory_mb(self.pid)
        return {
            "rss_end_mb": peak["rss_mb"],
            "peak_rss_mb": peak["peak_rss_mb"],
            "max_sampled_rss_mb": max((rss for _t, rss in self.samples), default=None),
            "samples": len(self.samples),
        }


async def warm_up(chain: Devnet, rpc: WsRpc, observer: ChainObserver, timeout: float) -> None:
    """One proposal voted before the clock starts: the service is subscribed and has its caches warm."""
    warm = sign_proposals(chain, 1)
    await rpc.send_raw_many(warm.raw, window=1)
    async with AnvilWatchdog(chain, observer, warm.raw):
        voted = await observer.wait_until(lambda: observer.votes_on(warm.first_id) >= NODE_COUNT, timeout)
    if not voted:
        raise RuntimeError(f"warm-up proposal {warm.first_id} not voted within {timeout:g} s")


async def timed_burst(
    chain: Devnet,
    proposals: int,
    timeout: float,
    *,
    presigned_votes: bool,
    service: ManagedProcess | None = None,
) -> dict[str, Any]:
    observer = ChainObserver()
    pids = {"anvil": chain.anvil.pid or 0, "benchmark": os.getpid()}
    if service is not None:
        pids["service"] = service.pid
    async with WsRpc(chain.ws_url) as rpc:
        await observer.attach(rpc, chain.info.contract_address)
        if service is not None:
            await warm_up(chain, rpc, observer, timeout)
        creates = sign_proposals(chain, proposals)
        votes = sign_votes(chain, list(creates.ids)) if presigned_votes else []
        expected = observer.vote_count + len(creates.raw) * NODE_COUNT
        sampler = MemorySampler(service.pid) if service is not None else None
        if sampler is not None:
            sampler.start()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        async with AnvilWatchdog(chain, observer, [*creates.raw, *votes]) as watchdog:
            started = time.perf_counter()
            await rpc.send_raw_many(creates.raw)
            creates_sent = time.perf_counter()
            if votes:
                await rpc.send_raw_many(votes)
            votes_sent = time.perf_counter()
            complete = await observer.wait_until(lambda: observer.vote_count >= expected, timeout)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        memory = sampler.stop() if sampler is not None else None
    ids = list(creates.ids)
    last_vote = observer.last_vote_time(ids)
    first_votes = [min(s.arrived for s in observer.votes[i].values()) for i in ids if observer.votes.get(i)]
    created = [observer.created[i].arrived for i in ids if i in observer.created]
    elapsed = (last_vote - started) if last_vote is not None else None
    voted = sum(observer.votes_on(i) for i in ids)
    return {
        "proposals": proposals,
        "votes_expected": proposals * NODE_COUNT,
        "votes_mined": voted,
        "complete": complete,
        "duplicate_votes": observer.duplicate_votes,
        "elapsed_s": elapsed,
        "votes_per_s": voted / elapsed if elapsed else None,
        "creates_sent_s": creates_sent - started,
        "creates_mined_s": (max(created) - started) if created else None,
        "votes_sent_s": (votes_sent - started) if presigned_votes else None,
        "first_vote_s": (min(first_votes) - started) if first_votes else None,
        "memory": memory,
        # CPU seconds each process used between the first send and the last vote: with 2 cores, the
        # service's share shows whether it is CPU-bound (close to elapsed) or waiting.
        "cpu_s": cpu,
        "anvil_kicks": watchdog.kicks,
        "anvil_resends": watchdog.resends,
    }


def run_service(proposals: int, directory: Path, timeout: float) -> dict[str, Any]:
    with devnet() as chain, start_service(chain, directory) as (process, startup):
        result = asyncio.run(timed_burst(chain, proposals, timeout, presigned_votes=False, service=process))
    return {"voter": "service", "startup_s": startup, "event_loop": process.event_loop(), **result}


def run_baseline(proposals: int, timeout: float) -> dict[str, Any]:
    with devnet() as chain:
        result = asyncio.run(timed_burst(chain, proposals, timeout, presigned_votes=True))
    return {"voter": "baseline (pre-signed)", **result}


def per_vote_cpu_ms(run: dict[str, Any]) -> float | None:
    cpu = run.get("cpu_s", {}).get("service")
    return cpu / run["votes_mined"] * 1000 if cpu is not None and run.get("votes_mined") else None


def _finished(run: dict[str, Any] | None) -> bool:
    return bool(run and run.get("complete") and run.get("votes_per_s"))


def median_pair(runs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(service, baseline) of the complete pair whose votes/s ratio is the median (the lower middle one of an
    even count: the less flattering); without a complete pair, the first run of each side."""
    return _median_of(report.complete_pairs(runs, _finished), runs)


def _median_of(
    complete: Sequence[tuple[dict[str, Any], dict[str, Any]]], runs: Sequence[dict[str, Any]]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    middle = report.median_pair(complete, lambda s, b: s["votes_per_s"] / b["votes_per_s"], AIM)
    if middle is None:
        first = {r["voter"] == "service": r for r in reversed(runs)}
        return first.get(True), first.get(False)
    return middle


def summarise(runs: Sequence[dict[str, Any]]) -> list[SummaryLine]:
    complete = report.complete_pairs(runs, _finished)
    service, baseline = _median_of(complete, runs)
    of_pairs = f", median of {len(complete)} complete pairs" if len(complete) > 1 else ""
    lines = [
        summary_line(
            NAME,
            f"{(service or baseline or {}).get('proposals', 0):,} proposals, votes/s{of_pairs}",
            "votes/s",
            service["votes_per_s"] if service else None,
            baseline["votes_per_s"] if baseline else None,
            aim=AIM,
        )
    ]
    # The same service runs as the ratio's (or every finished one, with no baseline); the upper middle of an
    # even count, the less flattering.
    measured = [s for s, _b in complete] or [r for r in runs if r["voter"] == "service" and _finished(r)]
    cpu_ms = sorted(ms for r in measured if (ms := per_vote_cpu_ms(r)) is not None)
    if cpu_ms:
        median = ", median" if len(cpu_ms) > 1 else ""
        metric = f"service CPU per vote (process CPU time over the burst{median})"
        lines.append(absolute_line(NAME, metric, "ms", cpu_ms[len(cpu_ms) // 2], CPU_AIM_MS))
    peaks = [r["memory"]["peak_rss_mb"] for r in runs if r["voter"] == "service" and r.get("memory")]
    if peaks:
        lines.append(
            absolute_line(NAME, "peak RSS of dloop run during the burst", "MB", max(peaks), Aim("<=", 200))
        )
    return lines


def table(runs: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            r.get("pair", 1),
            r["voter"],
            r["proposals"],
            r["votes_mined"],
            r["elapsed_s"],
            r["votes_per_s"],
            r["creates_mined_s"],
            r["first_vote_s"],
            per_vote_cpu_ms(r),
            (r.get("cpu_s") or {}).get("anvil"),
            r.get("anvil_kicks"),
            (r.get("memory") or {}).get("peak_rss_mb"),
        ]
        for r in runs
    ]
    headers = [
        "pair",
        "voter",
        "proposals",
        "votes",
        "elapsed s",
        "votes/s",
        "creates mined s",
        "1st vote s",
        "CPU ms/vote",
        "anvil CPU s",
        "anvil kicks",
        "peak MB",
    ]
    return format_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__ or NAME)
    parser.add_argument("--proposals", type=int, help="proposals in the burst (default by --size)")
    parser.add_argument("--voters", default="baseline,service", help="baseline,service or one of them")
    parser.add_argument(
        "--pairs", type=positive_int, help="baseline-then-service pairs to run (default by --size)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all votes")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    proposals = args.proposals or SIZES[args.size]["proposals"]
    pairs = args.pairs or SIZES[args.size]["pairs"]
    started_at, started = dt.datetime.now(dt.UTC), time.perf_counter()
    runs = []
    with workdir(NAME, args.keep_workdir) as directory:
        for pair in range(1, pairs + 1):
            for kind in args.voters.split(","):
                print(
                    f"{NAME}: pair {pair}/{pairs}, {kind}, {proposals} proposals ...",
                    file=sys.stderr,
                    flush=True,
                )
                if kind == "service":
                    run = run_service(proposals, directory / f"service-{pair}", args.timeout)
                else:
                    run = run_baseline(proposals, args.timeout)
                runs.append({"pair": pair, **run})
    document = result_document(
        NAME,
        args.size,
        {"proposals": proposals, "votes": proposals * NODE_COUNT, "pairs": pairs},
        summarise(runs),
        {"runs": runs},
        started_at=started_at,
        duration_s=time.perf_counter() - started,
    )
    path = write_result(args.results_dir, document)
    print(table(runs))
    print(f"-> {path}")
    return document


if __name__ == "__main__":
    main()
