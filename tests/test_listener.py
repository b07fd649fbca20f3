"""The listener against a real anvil, a real SQLite file, and faults injected through a TCP proxy."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from web3 import Web3

from dloop.anvil import AnvilProcess
from dloop.devnet import deploy_devnet
from dloop.wakeup import WorkSignal
from tests.support.listener_env import (
    Chain,
    Database,
    chain_logs,
    make_settings,
    open_database,
    proposal_row_count,
    running_listener,
    vote_states,
    wait_for_queue,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def chain() -> Iterator[Chain]:
    """A private automining anvil with the devnet (no proposals): tests here rewrite the chain."""
    with AnvilProcess() as node:
        info = deploy_devnet(node.http_url, proposals=0)
        yield Chain(node, info, Web3(Web3.HTTPProvider(node.http_url)))


@pytest.fixture
async def db(tmp_path: Path, chain: Chain) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "dloop.db", chain.info)
    yield database
    await database.engine.dispose()


async def test_new_proposal_is_queued_with_five_votes_well_under_a_second(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url)
    async with running_listener(settings, db, signal) as listener:
        started = time.monotonic()
        ids = await chain.create_async(1)
        mined = time.monotonic()
        states = await wait_for_queue(db, signal, set(ids), timeout=5)
        queued = time.monotonic()
        assert states == {ids[0]: ["queued"] * 5}
        assert listener.status.connected
    print(f"mined after {mined - started:.3f} s, queued {queued - mined:.3f} s after the receipt")
    assert queued - mined < 0.5
    assert await proposal_row_count(db) == 1
    logs = await chain_logs(db)
    assert [(log.event, log.proposal_id, log.removed) for log in logs] == [("ProposalCreated", ids[0], False)]
