"""Memory: the RSS of `dloop run` while it votes on many proposals; peak and growth.

A fresh devnet and the service, warmed up on one proposal; then `chunks` bursts of `chunk` proposals each,
each burst sent at once and voted completely before the next. After each burst VmRSS and VmHWM are read from
/proc/<pid>/status. Reported: peak RSS (VmHWM over the whole run), RSS after each burst, and the growth from
the end of the second burst (caches and pools warm) to the end of the last, per 1,000 proposals.
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

from bench.burst import warm_up
from bench.harness import (
    NODE_COUNT,
    AnvilWatchdog,
    ChainObserver,
    base_parser,
    devnet,
    memory_mb,
    service,
    sign_proposals,
    stop_on_sigterm,
    workdir,
)
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

NAME = "memory"
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"chunks": 2, "chunk": 5},
    "medium": {"chunks": 5, "chunk": 200},
    "default": {"chunks": 10, "chunk": 1000},
}
AIM_MB = Aim("<=", 150)  # peak RSS over 10,000 proposals (#18)


async def measure(chunks: int, chunk: int, directory: Path, timeout: float) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    with devnet() as chain, service(chain, directory / "service") as (process, startup):
        observer = ChainObserver()
        async with WsRpc(chain.ws_url) as rpc:
            await observer.attach(rpc, chain.info.contract_address)
            await warm_up(chain, rpc, observer, timeout)
            points.append({"proposals": 0, "seconds": 0.0, **memory_mb(process.pid)})
            started = time.perf_counter()
            kicks = 0
            for index in range(1, chunks + 1):
                creates = sign_proposals(chain, chunk)  # signing is outside the service: not its memory
                expected = observer.vote_count + chunk * NODE_COUNT
                async with AnvilWatchdog(chain, observer, creates.raw) as watchdog:
                    await rpc.send_raw_many(creates.raw)
                    voted = await observer.wait_until(lambda e=expected: observer.vote_count >= e, timeout)  # type: ignore[misc]
                kicks += watchdog.kicks
                if not voted:
                    raise RuntimeError(f"burst {index}: votes incomplete after {timeout:g} s")
                points.append(
                    {
                        "proposals": index * chunk,
                        "seconds": time.perf_counter() - started,
                        **memory_mb(process.pid),
                    }
                )
        duplicates = observer.duplicate_votes
        event_loop = process.event_loop()
    return {
        "startup_s": startup,
        "event_loop": event_loop,
        "points": points,
        "duplicate_votes": duplicates,
        "anvil_kicks": kicks,
    }


def growth(points: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """RSS growth from the end of the second burst to the end of the last (MB, and MB per 1,000 proposals)."""
    if len(points) < 4:  # the warm-up point and at least three bursts
        return {"from_proposals": None, "mb": None, "mb_per_1000_proposals": None}
    first, last = points[2], points[-1]
    mb = last["rss_mb"] - first["rss_mb"]
    return {
        "from_proposals": first["proposals"],
        "mb": mb,
        "mb_per_1000_proposals": mb / (last["proposals"] - first["proposals"]) * 1000,
    }


def summarise(details: dict[str, Any]) -> list[SummaryLine]:
    points = details["points"]
    last = points[-1]
    return [
        absolute_line(
            NAME, f"peak RSS over {last['proposals']:,} proposals", "MB", last["peak_rss_mb"], AIM_MB
        ),
        summary_line(
            NAME,
            f"RSS growth after burst 2 -> {last['proposals']:,} proposals",
            "MB",
            details["growth"]["mb"],
            None,
            figure=details["growth"]["mb_per_1000_proposals"],
            figure_name="MB/1k",
        ),
    ]


def table(points: Sequence[dict[str, Any]]) -> str:
    rows = [[p["proposals"], p["seconds"], p["rss_mb"], p["peak_rss_mb"]] for p in points]
    return format_table(["proposals voted", "seconds", "RSS MB", "peak MB"], rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__ or NAME)
    parser.add_argument("--chunks", type=int, help="bursts (default by --size)")
    parser.add_argument("--chunk", type=int, help="proposals per burst (default by --size)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one burst")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    chunks = args.chunks or SIZES[args.size]["chunks"]
    chunk = args.chunk or SIZES[args.size]["chunk"]
    started_at, started = dt.datetime.now(dt.UTC), time.perf_counter()
    print(f"{NAME}: {chunks} bursts of {chunk} proposals ...", file=sys.stderr, flush=True)
    with workdir(NAME, args.keep_workdir) as directory:
        details = asyncio.run(measure(chunks, chunk, directory, args.timeout))
    details["growth"] = growth(details["points"])
    document = result_document(
        NAME,
        args.size,
        {"chunks": chunks, "chunk": chunk, "proposals": chunks * chunk},
        summarise(details),
        details,
        started_at=started_at,
        duration_s=time.perf_counter() - started,
    )
    path = write_result(args.results_dir, document)
    print(table(details["points"]))
    print(f"-> {path}")
    return document


if __name__ == "__main__":
    main()
