"""`dloop demo` / `make demo`: a local chain with 49 proposals and the whole service, in one process tree.

The 49 proposals are voted within seconds; then a proposer creates a new proposal every few seconds so the
votes can be watched arriving in real time. Ctrl-C stops the service and the chain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from sqlalchemy import select
from web3 import Web3

from core.errors import ConfigError
from core.logs import configure_logging
from core.settings import Settings, load_settings
from devtools.anvil import ANVIL_BIN_SETTING, AnvilProcess
from devtools.devnet import DEFAULT_PROPOSALS, DevnetInfo, create_proposals, deploy_devnet, env_file_values
from dloop.commands import run_async, serve, stop_on_signals
from storage.engine import create_engine, session_factory
from storage.migrations import upgrade
from storage.models import OPEN_VOTE_STATES, Node, Proposal, Vote

DONE_STATES = frozenset({"confirmed", "already_voted", "no_vote", "closed", "failed"})


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=5001, help="HTTP API port (default 5001)")
    parser.add_argument("--proposals", type=int, default=DEFAULT_PROPOSALS, help="proposals created at start")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between new proposals afterwards (0: none)"
    )
    parser.add_argument("--block-time", type=float, default=1.0, help="seconds per block of the local chain")
    parser.add_argument(
        "--database", type=Path, default=Path("dloop-demo.db"), help="demo database (recreated)"
    )
    parser.add_argument("--verbose", action="store_true", help="also print the service's JSON log lines")
    parser.add_argument("--anvil-bin", default=None, help=f"anvil executable (default: ${ANVIL_BIN_SETTING})")


def demo_settings(info: DevnetInfo, ws_url: str, database: Path, port: int) -> Settings:
    """The settings a user would get from `dloop devnet`'s env file, plus the demo database and port."""
    env = env_file_values(info, ws_url)
    env.update(
        {
            "DLOOP_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "DLOOP_HTTP_HOST": "127.0.0.1",
            "DLOOP_HTTP_PORT": str(port),
            "DLOOP_RECONCILE_INTERVAL": "60",
        }
    )
    return load_settings(env)


def curl_commands(base: str) -> list[str]:
    return [
        f"curl -X POST {base}/trigger-voting",
        f"curl -s {base}/active-proposals | grep votesFor",
        f"curl -s {base}/active-proposals | grep -c '\"state\":1'",
        f"curl -s {base}/health",
        f"curl -s {base}/nodes",
        f"curl -s {base}/",
        f"curl -s '{base}/votes?node=ai-gov-01&limit=5'",
        f"curl -s {base}/proposals/1",
        f"curl -s {base}/metrics",
        f"curl -sN {base}/events",
    ]


def demo_command(args: argparse.Namespace) -> int:
    configure_logging("INFO" if args.verbose else "WARNING")
    database: Path = args.database.resolve()
    for suffix in ("", "-wal", "-shm"):  # a fresh chain: the old demo database means nothing
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    anvil_bin = args.anvil_bin or os.environ.get(ANVIL_BIN_SETTING)
    # First of all, the page to open: it answers as soon as the service is up (a few seconds).
    print(f"dashboard: http://localhost:{args.port}/dashboard", flush=True)
    print("starting a local chain and deploying the AssetDAO ...", flush=True)
    with AnvilProcess(binary=anvil_bin, port=0, block_time=args.block_time or None) as anvil:
        started = time.monotonic()
        info = deploy_devnet(anvil.http_url, args.proposals)
        print(f"{info.proposals_created} proposals created in {time.monotonic() - started:.1f} s", flush=True)
        settings = demo_settings(info, anvil.ws_url, database, args.port)
        anyio.run(upgrade, settings.database_url)
        try:
            run_async(_demo, settings, info, anvil, args, event_loop=settings.event_loop)
        except ConfigError as exc:
            if exc.setting == "DLOOP_HTTP_PORT":
                raise ConfigError("--port", f"{exc.problem} (choose another with --port)") from None
            raise
    print("demo stopped", flush=True)
    return 0


async def _serve_started(settings: Settings, *, task_status: anyio.abc.TaskStatus[Any]) -> None:
    await serve(settings, handle_signals=False, on_ready=task_status.started)


async def _demo(settings: Settings, info: DevnetInfo, anvil: AnvilProcess, args: argparse.Namespace) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, tg.cancel_scope.cancel)
        started = time.monotonic()
        await tg.start(_serve_started, settings)
        base = f"http://localhost:{settings.http_port}"
        print(_banner(settings, info, anvil, args, base), flush=True)
        tg.start_soon(_progress, settings, args.proposals, started)
        if args.interval > 0:
            tg.start_soon(_proposer, info, anvil.http_url, args.interval, args.proposals)


def _banner(
    settings: Settings, info: DevnetInfo, anvil: AnvilProcess, args: argparse.Namespace, base: str
) -> str:
    mining = f"a block every {args.block_time:g} s" if args.block_time else "automine"
    lines = [
        "",
        f"dashboard: {base}/dashboard   (open it in a browser: live, no internet needed)",
        "",
        "dloop demo is running",
        f"  chain     {anvil.ws_url} (chain id {info.chain_id}, {mining})",
        f"  AssetDAO  {info.contract_address}",
        f"  database  {args.database}  (try: sqlite3 {args.database} 'select * from vote_history limit 5')",
        f"  API       {base}   (OpenAPI: {base}/schema)",
        "",
        "try:",
        *(f"  {command}" for command in curl_commands(base)),
        "",
        (f"a new proposal every {args.interval:g} s; " if args.interval > 0 else "")
        + "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def _proposer(info: DevnetInfo, http_url: str, interval: float, first_index: int) -> None:
    w3 = Web3(Web3.HTTPProvider(http_url))
    index = first_index
    while True:
        await anyio.sleep(interval)
        create = functools.partial(
            create_proposals, w3, info.contract_address, info.proposer_key, info.token_addresses, 1
        )
        ids = await anyio.to_thread.run_sync(
            functools.partial(create, first_index=index), abandon_on_cancel=True
        )
        index += 1
        for proposal_id in ids:
            print(f"proposal #{proposal_id} created on chain", flush=True)


@dataclass(frozen=True)
class _Outcome:
    proposal_id: int
    description: str
    decisions: tuple[tuple[str, str, str | None], ...]  # node, state, decision
    seen_at: dt.datetime
    finished_at: dt.datetime | None


async def _progress(settings: Settings, initial: int, started: float) -> None:
    """Print the initial round's result, then one line per proposal as soon as all nodes are done with it."""
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    reported: set[int] = set()
    initial_done = initial == 0
    try:
        while True:
            outcomes = await _outcomes(sessions)
            if not initial_done:
                first = [o for o in outcomes if o.proposal_id <= initial]
                if len(first) == initial and all(_finished(o) for o in first):
                    initial_done = True
                    reported.update(o.proposal_id for o in first)
                    votes = [d for o in first for d in o.decisions]
                    summary = ", ".join(
                        f"{sum(1 for _n, s, _d in votes if s == state)} {state}"
                        for state in sorted({s for _n, s, _d in votes})
                    )
                    took = time.monotonic() - started
                    print(
                        f"all {initial} proposals handled by every node in {took:.1f} s ({summary})",
                        flush=True,
                    )
            for outcome in outcomes:
                if (
                    outcome.proposal_id in reported
                    or outcome.proposal_id <= initial
                    or not _finished(outcome)
                ):
                    continue
                reported.add(outcome.proposal_id)
                print(_outcome_line(outcome), flush=True)
            await anyio.sleep(0.5)
    finally:
        with anyio.CancelScope(shield=True):
            await engine.dispose()


def _finished(outcome: _Outcome) -> bool:
    return bool(outcome.decisions) and all(state in DONE_STATES for _n, state, _d in outcome.decisions)


def _outcome_line(outcome: _Outcome) -> str:
    took = ""
    if outcome.finished_at is not None:
        took = f" ({(outcome.finished_at - outcome.seen_at).total_seconds():.1f} s after it was seen)"
    votes = ", ".join(
        f"{node} {decision if state == 'confirmed' else state.replace('_', ' ')}"
        for node, state, decision in outcome.decisions
    )
    return f"proposal #{outcome.proposal_id} {outcome.description[:60]!r}: {votes}{took}"


async def _outcomes(sessions: Any) -> Sequence[_Outcome]:
    async with sessions() as session:
        rows = await session.execute(
            select(
                Proposal.proposal_id,
                Proposal.description,
                Proposal.first_seen_at,
                Node.name,
                Vote.state,
                Vote.decision,
                Vote.confirmed_at,
                Vote.updated_at,
            )
            .join(Vote, Vote.proposal_ref == Proposal.id)
            .join(Node, Vote.node_id == Node.id)
            .order_by(Proposal.proposal_id, Node.name)
        )
        grouped: dict[int, list[Any]] = {}
        for row in rows:
            grouped.setdefault(row[0], []).append(row)
    outcomes = []
    for proposal_id, items in grouped.items():
        open_rows = [r for r in items if r[4] in {str(s) for s in OPEN_VOTE_STATES}]
        finished = None if open_rows else max((r[6] or r[7]) for r in items)
        outcomes.append(
            _Outcome(
                proposal_id=proposal_id,
                description=items[0][1],
                decisions=tuple((r[3], r[4], r[5]) for r in items),
                seen_at=items[0][2],
                finished_at=finished,
            )
        )
    return outcomes
