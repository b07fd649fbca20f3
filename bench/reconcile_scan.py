"""Reconcile scan: N proposals already on chain, an empty database; one full reconcile pass, batched versus
one JSON-RPC call at a time.

One devnet with N proposals (nobody has voted, so every proposal is open and each pass reads N getProposal
and 5N hasVoted). For each mode, a freshly migrated SQLite file and the service's own `Reconciler.reconcile()`
with `rpc_batch_size` 50 (batched) or 1 (one call at a time, sequential). The chain client is the service's,
wrapped to time its reads, so the pass splits into RPC read time and the rest (decoding, database writes).
Ratio = one-at-a-time / batched, for the whole pass and for its RPC reads. Each pass starts once anvil is
idle (after creating thousands of proposals it keeps a core busy for several seconds). A local anvil answers
in ~0.1 ms; `--rtt-ms 20` puts a delaying proxy in between to see the pass as against a remote provider.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.delay_proxy import DelayProxy
from bench.harness import (
    Devnet,
    base_parser,
    create_on_chain,
    devnet,
    stop_on_sigterm,
    wait_until_idle,
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
from chain.accounts import node_accounts
from chain.client import ChainClient
from chain.connection import open_ws
from core.logs import configure_logging
from core.settings import Settings, load_settings
from devtools.devnet import env_file_values
from listener.reconcile import Reconciler
from storage.engine import create_engine, session_factory
from storage.migrations import upgrade
from storage.proposals import sync_nodes

NAME = "reconcile_scan"
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"proposals": 20},
    "medium": {"proposals": 1000},
    "default": {"proposals": 5000},
}
AIM = Aim(">=", 10)  # RPC reads batched vs one at a time (#18 asks it at a 20 ms round trip: --rtt-ms 20)
PASS_AIM_S = Aim("<=", 5.0)  # the whole first pass over 5,000 proposals, empty database (#18)
BATCHED, SINGLE = 50, 1


class TimedChainClient(ChainClient):
    """The service's ChainClient, counting and timing what the reconciler asks of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_seconds = 0.0
        self.read_calls: list[tuple[int, float]] = []  # (requests, seconds) per call_many
        self.batches = 0
        self.single_requests = 0

    async def request(self, method: str, params: Sequence[Any]) -> Any:
        self.single_requests += 1
        return await super().request(method, params)

    async def batch(self, requests: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        self.batches += 1
        return await super().batch(requests)

    async def call_many(
        self, requests: Sequence[tuple[str, Sequence[Any]]], *, batch_size: int, concurrency: int = 8
    ) -> list[Any]:
        started = time.perf_counter()
        try:
            return await super().call_many(requests, batch_size=batch_size, concurrency=concurrency)
        finally:
            elapsed = time.perf_counter() - started
            self.read_seconds += elapsed
            self.read_calls.append((len(requests), elapsed))


def settings_for(chain: Devnet, database: Path, batch_size: int, ws_url: str) -> Settings:
    environ = env_file_values(chain.info, ws_url)
    environ["DLOOP_DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"
    return dataclasses.replace(load_settings(environ), rpc_batch_size=batch_size)


async def one_pass(chain: Devnet, database: Path, batch_size: int, ws_url: str) -> dict[str, Any]:
    settings = settings_for(chain, database, batch_size, ws_url)
    await upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    clients: list[TimedChainClient] = []

    @asynccontextmanager
    async def connect() -> AsyncIterator[ChainClient]:
        async with open_ws(settings.rpc_ws_url, request_timeout=settings.rpc_timeout) as socket:
            client = TimedChainClient(socket, settings.contract_address, timeout=settings.rpc_timeout)
            clients.append(client)
            yield client

    try:
        sessions = session_factory(engine)
        accounts = node_accounts(settings.nodes)
        nodes = await sync_nodes(sessions, [(a.name, a.address, a.strategy) for a in accounts])
        reconciler = Reconciler(settings, sessions, nodes, chain.info.chain_id, connect=connect)
        started = time.perf_counter()
        result = await reconciler.reconcile()
        elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    read = sum(c.read_seconds for c in clients)
    return {
        "rpc_batch_size": batch_size,
        "pass_s": elapsed,
        "rpc_read_s": read,
        "other_s": elapsed - read,
        "attempts": len(clients),
        "requests": sum(n for c in clients for n, _s in c.read_calls),
        "batches_sent": sum(c.batches for c in clients),
        "single_requests_sent": sum(c.single_requests for c in clients),
        "proposals_scanned": result.proposals_scanned,
        "new_proposals": result.new_proposals,
        "votes_queued": result.missing_votes,
        "read_errors": len(result.read_errors),
    }


def log_to_file(path: Path) -> None:
    """Log as the service does (JSON lines, INFO), into a file instead of the terminal."""
    configure_logging("INFO")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(path.open("a"))


def count_lines(path: Path, text: str) -> int:
    with path.open(errors="replace") as lines:
        return sum(1 for line in lines if text in line)


async def measure(proposals: int, directory: Path, rtt_ms: float) -> tuple[list[dict[str, Any]], float]:
    with devnet() as chain:
        started = time.perf_counter()
        await create_on_chain(chain, proposals)
        setup = time.perf_counter() - started
        # Batched first, on the colder chain: any warm-up effect favours the one-at-a-time run.
        # With --rtt-ms the reconciler reaches anvil through a delaying proxy, like a remote provider.
        async with DelayProxy(chain.anvil.port, rtt_ms / 2000) as proxy:
            ws_url = f"ws://127.0.0.1:{proxy.port}" if rtt_ms > 0 else chain.ws_url
            runs = []
            assert chain.anvil.pid is not None, "anvil is not running"
            for size in (BATCHED, SINGLE):
                idle_wait = await wait_until_idle(chain.anvil.pid)
                runs.append(await one_pass(chain, directory / f"batch-{size}.db", size, ws_url))
                runs[-1]["anvil_idle_wait_s"] = idle_wait
    return runs, setup


def summarise(runs: Sequence[dict[str, Any]]) -> list[SummaryLine]:
    by_size = {r["rpc_batch_size"]: r for r in runs}
    batched, single = by_size.get(BATCHED), by_size.get(SINGLE)
    lines = []
    for key, metric in (("pass_s", "full pass"), ("rpc_read_s", "RPC reads of the pass")):
        b = batched[key] if batched else None
        s = single[key] if single else None
        lines.append(
            summary_line(
                NAME,
                f"{metric}, {(batched or single or {}).get('proposals_scanned', 0):,} proposals: "
                "batched (service) vs one call at a time (baseline)",
                "s",
                b,
                s,
                figure=(s / b) if s and b else None,
                figure_name="x faster",
                aim=AIM if key == "rpc_read_s" else None,
            )
        )
    if batched is not None:
        metric = f"full pass, {batched.get('proposals_scanned', 0):,} proposals, empty database (batched)"
        lines.append(absolute_line(NAME, metric, "s", batched["pass_s"], PASS_AIM_S))
    return lines


def table(runs: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            "batched" if r["rpc_batch_size"] > 1 else "one at a time",
            r["rpc_batch_size"],
            r["proposals_scanned"],
            r["requests"],
            r["pass_s"],
            r["rpc_read_s"],
            r["other_s"],
            r["read_errors"],
        ]
        for r in runs
    ]
    return format_table(
        ["mode", "batch", "proposals", "reads", "pass s", "RPC reads s", "other s", "errors"], rows
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__ or NAME)
    parser.add_argument("--proposals", type=int, help="proposals on chain (default by --size)")
    parser.add_argument(
        "--rtt-ms", type=float, default=0.0, help="add this round-trip time to every RPC (a remote provider)"
    )
    args = parser.parse_args(argv)
    stop_on_sigterm()
    proposals = args.proposals or SIZES[args.size]["proposals"]
    started_at, started = dt.datetime.now(dt.UTC), time.perf_counter()
    print(f"{NAME}: {proposals} proposals ...", file=sys.stderr, flush=True)
    with workdir(NAME, args.keep_workdir) as directory:
        log_to_file(directory / "reconcile.log")
        runs, setup = asyncio.run(measure(proposals, directory, args.rtt_ms))
        logging.getLogger().handlers[0].flush()
        log_warnings = count_lines(directory / "reconcile.log", '"level": "warning"')
    document = result_document(
        NAME,
        args.size,
        {"proposals": proposals, "batch_sizes": [BATCHED, SINGLE], "added_rtt_ms": args.rtt_ms},
        summarise(runs),
        {"runs": runs, "setup_s": setup, "log_warnings": log_warnings},
        started_at=started_at,
        duration_s=time.perf_counter() - started,
    )
    path = write_result(args.results_dir, document)
    print(table(runs))
    print(f"-> {path}")
    return document


if __name__ == "__main__":
    main()
