"""Helpers for listener tests: their settings, a running listener, and queries of what was queued (the chain
and the database come from the `chain` and `db` fixtures in tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from sqlalchemy import func, select

from core.settings import DEFAULT_NODE_NAMES, DEFAULT_NODE_STRATEGIES, NodeSettings, PrivateKey, Settings
from core.signals import WorkSignal
from devtools.devnet import DevnetInfo
from listener import Listener
from storage.models import ChainLog, Proposal, Vote
from tests.support.database import Database


def make_settings(ws_url: str, info: DevnetInfo, database_url: str, **overrides: Any) -> Settings:
    nodes = tuple(
        NodeSettings(name, PrivateKey(key), strategy)
        for name, key, strategy in zip(
            DEFAULT_NODE_NAMES, info.node_keys, DEFAULT_NODE_STRATEGIES, strict=True
        )
    )
    base = Settings(
        rpc_ws_url=ws_url,
        contract_address=info.contract_address,
        nodes=nodes,
        database_url=database_url,
        start_block=info.deployment_block,
        head_timeout=30.0,
        rpc_timeout=10.0,
    )
    return dataclasses.replace(base, **overrides)


@asynccontextmanager
async def running_listener(
    settings: Settings, db: Database, signal: WorkSignal | None = None, **knobs: Any
) -> AsyncIterator[Listener]:
    """A listener started with `tg.start` (so it is subscribed and caught up), cancelled at the end."""
    knobs.setdefault("reconnect_base_delay", 0.05)
    knobs.setdefault("reconnect_max_delay", 0.5)
    knobs.setdefault("progress_bar", False)
    listener = Listener(settings, db.sessions, db.nodes, signal or WorkSignal(), 31337, **knobs)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(20):
            await tg.start(listener.run)
        yield listener
        tg.cancel_scope.cancel()


# -- what the database holds -----------------------------------------------------------------------------


async def vote_states(db: Database) -> dict[int, list[str]]:
    """proposal id -> states of its vote rows (sorted)."""
    async with db.sessions() as session:
        rows = await session.execute(
            select(Proposal.proposal_id, Vote.state).join(Vote, Vote.proposal_ref == Proposal.id)
        )
        states: dict[int, list[str]] = {}
        for proposal_id, state in rows.all():
            states.setdefault(proposal_id, []).append(state)
        return {k: sorted(v) for k, v in states.items()}


async def proposal_row_count(db: Database) -> int:
    async with db.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(Proposal))).scalar_one())


async def chain_logs(db: Database) -> list[ChainLog]:
    async with db.sessions() as session:
        return list((await session.execute(select(ChainLog).order_by(ChainLog.id))).scalars().all())


async def proposal(db: Database, proposal_id: int) -> Proposal:
    async with db.sessions() as session:
        return (
            await session.execute(select(Proposal).where(Proposal.proposal_id == proposal_id))
        ).scalar_one()


async def vote_state_is(db: Database, pid: int, node_index: int, state: str) -> bool:
    """Whether the proposal has its five vote rows and the node's (by index) is in `state`."""
    votes = await votes_of(db, pid)
    return len(votes) == 5 and votes[node_index].state == state


async def votes_of(db: Database, proposal_id: int) -> list[Vote]:
    async with db.sessions() as session:
        rows = await session.execute(
            select(Vote)
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(Proposal.proposal_id == proposal_id)
            .order_by(Vote.node_id)
        )
        return list(rows.scalars().all())


def all_queued(states: dict[int, list[str]], ids: set[int], nodes: int = 5) -> bool:
    return all(states.get(pid) == ["queued"] * nodes for pid in ids)


async def wait_for_queue(
    db: Database, signal: WorkSignal, ids: set[int], *, timeout: float = 20.0
) -> dict[int, list[str]]:
    """Wait (on the listener's wake-up signal) until every proposal in `ids` has all its rows queued."""
    deadline = time.monotonic() + timeout
    while True:
        states = await vote_states(db)
        if all_queued(states, ids):
            return states
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = sorted(pid for pid in ids if states.get(pid) != ["queued"] * 5)
            raise AssertionError(f"not queued in {timeout} s: {missing[:20]} ({len(missing)} missing)")
        await signal.wait(remaining)
