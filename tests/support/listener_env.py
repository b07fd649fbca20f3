"""Helpers for listener tests: a private anvil with the devnet, a migrated SQLite file, a running listener,
and queries of what was queued."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from eth_account import Account
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from web3 import Web3
from web3.types import TxReceipt

from core.settings import DEFAULT_NODE_NAMES, DEFAULT_NODE_STRATEGIES, NodeSettings, PrivateKey, Settings
from core.signals import WorkSignal
from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo, asset_dao, create_proposals
from listener import Listener
from storage.engine import SessionFactory, create_engine, session_factory
from storage.migrations import upgrade
from storage.models import ChainLog, Proposal, Vote
from storage.proposals import NodeRecord, sync_nodes


@dataclass
class Chain:
    anvil: AnvilProcess
    info: DevnetInfo
    w3: Web3

    def create(self, count: int, *, first_index: int = 0) -> list[int]:
        """Create proposals (blocking: call through `anyio.to_thread`)."""
        return create_proposals(
            self.w3,
            self.info.contract_address,
            self.info.proposer_key,
            self.info.token_addresses,
            count,
            first_index=first_index,
        )

    async def create_async(self, count: int, *, first_index: int = 0) -> list[int]:
        return await anyio.to_thread.run_sync(functools.partial(self.create, count, first_index=first_index))

    def transact(self, private_key: str, function_name: str, *args: Any) -> TxReceipt:
        dao = asset_dao(self.w3, self.info.contract_address)
        account = Account.from_key(private_key)
        tx = getattr(dao.functions, function_name)(*args).build_transaction(
            {"from": account.address, "nonce": self.w3.eth.get_transaction_count(account.address)}
        )
        tx_hash = self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)
        assert receipt["status"] == 1
        return receipt

    async def transact_async(self, private_key: str, function_name: str, *args: Any) -> TxReceipt:
        return await anyio.to_thread.run_sync(
            functools.partial(self.transact, private_key, function_name, *args)
        )

    async def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        return await anyio.to_thread.run_sync(self.anvil.rpc, method, params)


@dataclass
class Database:
    url: str
    engine: AsyncEngine
    sessions: SessionFactory
    nodes: list[NodeRecord]


async def open_database(path: Path, info: DevnetInfo) -> Database:
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    nodes = await sync_nodes(
        sessions,
        [
            (name, address, strategy)
            for name, address, strategy in zip(
                DEFAULT_NODE_NAMES, info.node_addresses, DEFAULT_NODE_STRATEGIES, strict=True
            )
        ],
    )
    return Database(url, engine, sessions, nodes)


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


async def wait_until(condition: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.02) -> None:
    """Poll a cheap in-memory condition (the listener's status)."""
    with anyio.fail_after(timeout):
        while True:
            if condition():
                return
            await anyio.sleep(interval)


async def wait_until_async(
    condition: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.02
) -> None:
    """Poll an async condition (a database query)."""
    with anyio.fail_after(timeout):
        while True:
            if await condition():
                return
            await anyio.sleep(interval)
