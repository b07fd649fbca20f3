"""The reconcile pass against a real anvil and a real SQLite file (its pure plan: test_reconcile_plan.py)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sqlalchemy import select
from web3 import Web3

from core.settings import Settings
from core.signals import WorkSignal
from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo
from dloop.rounds import Rounds
from listener.reconcile import Reconciler
from storage.models import Proposal, Round, Vote, VoteState, VoteTransaction, utcnow
from storage.rounds import RoundKind, get_round
from tests.support.database import Database, NodeSpec, settings_nodes
from tests.support.rpc_proxy import rpc_proxy
from tests.support.service import cast_vote, create_proposals, devnet_settings

pytestmark = pytest.mark.anyio


# -- against anvil ------------------------------------------------------------------------------------------


@pytest.fixture
def node(anvil: AnvilProcess, chain_snapshot: None) -> AnvilProcess:
    """The session anvil (with the session `devnet`), every change of the test reverted after it."""
    return anvil


@pytest.fixture
def settings(node: AnvilProcess, devnet: DevnetInfo, tmp_path: Path) -> Settings:
    return devnet_settings(node.ws_url, devnet, tmp_path / "dloop.db", rpc_batch_size=10)


@pytest.fixture
def db_nodes(settings: Settings) -> list[NodeSpec]:
    """`db` (tests/conftest.py) is the settings' database file, with the settings' nodes."""
    return settings_nodes(settings)


def reconciler(settings: Settings, db: Database, **options: float) -> Reconciler:
    return Reconciler(settings, db.sessions, db.nodes, 31337, **options)  # type: ignore[arg-type]


async def vote_states(db: Database) -> dict[tuple[int, int], str]:
    async with db.sessions() as session:
        rows = await session.execute(
            select(Proposal.proposal_id, Vote.node_id, Vote.state).join(
                Proposal, Vote.proposal_ref == Proposal.id
            )
        )
        return {(pid, node_id): state for pid, node_id, state in rows}


@pytest.mark.both_databases  # the windowed read of stored proposals is one SQL statement
async def test_a_pass_finds_every_proposal_and_a_second_pass_changes_nothing(
    node: AnvilProcess, devnet: DevnetInfo, settings: Settings, db: Database
) -> None:
    created = create_proposals(node, devnet, 23)
    assert created == list(range(1, 24))
    # 5 chunks, the last short; the stored state read in 4 windows of ids, the last short too
    rec = Reconciler(settings, db.sessions, db.nodes, 31337, pass_chunk=5, known_window=7)
    first = await rec.reconcile()
    assert (first.proposal_count, first.proposals_scanned, first.new_proposals) == (23, 23, 23)
    assert first.missing_votes == 23 * 5 and first.read_errors == ()
    states = await vote_states(db)
    assert len(states) == 23 * 5 and set(states.values()) == {VoteState.QUEUED}
    second = await rec.reconcile()
    assert (second.new_proposals, second.missing_votes, second.proposals_scanned) == (0, 0, 23)
    assert await vote_states(db) == states


@pytest.mark.both_databases  # the windowed read of stored proposals is one SQL statement
async def test_votes_cast_elsewhere_are_marked_and_ended_proposals_closed(
    node: AnvilProcess, devnet: DevnetInfo, settings: Settings, db: Database
) -> None:
    create_proposals(node, devnet, 3)
    cast_vote(node, devnet, node_index=0, proposal_id=2, support=True)
    rec = reconciler(settings, db, pass_chunk=2, known_window=2)
    result = await rec.reconcile()
    assert result.already_voted == 1
    states = await vote_states(db)
    first_node = db.nodes[0].id
    assert states[(2, first_node)] == VoteState.ALREADY_VOTED
    assert sum(1 for s in states.values() if s == VoteState.QUEUED) == 14

    node.rpc("evm_increaseTime", [devnet.voting_period + 60])
    node.rpc("evm_mine")
    closed = await rec.reconcile()
    assert closed.closed_votes == 14 and closed.proposals_scanned == 3
    assert set((await vote_states(db)).values()) == {VoteState.CLOSED, VoteState.ALREADY_VOTED}
    # Nothing open any more: a third pass has nothing to read.
    assert (await rec.reconcile()).proposals_scanned == 0


async def test_a_confirmed_vote_that_silently_left_the_chain_is_queued_again(
    node: AnvilProcess, devnet: DevnetInfo, settings: Settings, db: Database
) -> None:
    create_proposals(node, devnet, 1)
    rec = reconciler(settings, db)
    await rec.reconcile()
    before_vote = node.rpc("evm_snapshot")
    cast_vote(node, devnet, node_index=2, proposal_id=1, support=True)
    w3 = Web3(Web3.HTTPProvider(node.http_url))
    async with db.sessions.begin() as session:  # what the listener recorded from the VoteCast log
        vote = (await session.execute(select(Vote).where(Vote.node_id == db.nodes[2].id))).scalar_one()
        vote.state, vote.confirmed_block = VoteState.CONFIRMED, w3.eth.block_number
    # The block goes away without a word (anvil sends no removed logs for evm_revert), and the chain moves on.
    assert node.rpc("evm_revert", [before_vote]) is True
    node.rpc("evm_mine")
    node.rpc("evm_mine")
    await rec.reconcile()
    states = await vote_states(db)
    assert states[(1, db.nodes[2].id)] == VoteState.QUEUED
    assert list(states.values()).count(VoteState.QUEUED) == 5


async def test_a_sent_vote_whose_transaction_was_mined_is_confirmed(
    node: AnvilProcess, devnet: DevnetInfo, settings: Settings, db: Database
) -> None:
    create_proposals(node, devnet, 1)
    rec = reconciler(settings, db)
    await rec.reconcile()
    # The voter signed, recorded and broadcast a vote, then stopped before seeing it mined.
    w3 = Web3(Web3.HTTPProvider(node.http_url))
    before = w3.eth.block_number
    cast_vote(node, devnet, node_index=1, proposal_id=1, support=False)
    tx_hash = "0x" + bytes(w3.eth.get_block(before + 1)["transactions"][0]).hex()
    async with db.sessions.begin() as session:
        vote = (await session.execute(select(Vote).where(Vote.node_id == db.nodes[1].id))).scalar_one()
        vote.state, vote.tx_hash, vote.nonce, vote.sent_at = VoteState.SENT, tx_hash, 0, utcnow()
        session.add(
            VoteTransaction(
                vote_id=vote.id,
                tx_hash=tx_hash,
                nonce=0,
                max_fee_per_gas="1",
                max_priority_fee_per_gas="1",
                gas_limit=100_000,
                raw_transaction="0x",
            )
        )
    result = await rec.reconcile()
    assert result.resolved_transactions == 1
    async with db.sessions() as session:
        vote = (await session.execute(select(Vote).where(Vote.node_id == db.nodes[1].id))).scalar_one()
        assert vote.state == VoteState.CONFIRMED and vote.confirmed_block == before + 1
        tx = (await session.execute(select(VoteTransaction))).scalar_one()
        assert tx.outcome == "mined"


async def test_reconcile_completes_through_a_provider_that_caps_batches(
    node: AnvilProcess, devnet: DevnetInfo, settings: Settings, db: Database
) -> None:
    import dataclasses

    create_proposals(node, devnet, 12)
    async with rpc_proxy(node.ws_url, max_batch=3) as proxy:
        capped = dataclasses.replace(settings, rpc_ws_url=proxy.url)
        result = await reconciler(capped, db).reconcile()
    assert (result.proposals_scanned, result.new_proposals, result.read_errors) == (12, 12, ())
    assert proxy.stats.batches_refused >= 1 and proxy.stats.batches_forwarded == 0


async def test_rate_limited_reads_back_off_and_complete(
    node: AnvilProcess, devnet: DevnetInfo, settings: Settings, db: Database
) -> None:
    import dataclasses

    create_proposals(node, devnet, 6)
    async with rpc_proxy(node.ws_url, max_batch=0, rate_limit_first=8) as proxy:
        limited = dataclasses.replace(settings, rpc_ws_url=proxy.url)
        rec = reconciler(limited, db)
        result = await rec.reconcile()
    assert (result.proposals_scanned, result.new_proposals, result.read_errors) == (6, 6, ())
    assert proxy.stats.rate_limited == 8 and rec.status.rpc_errors["RateLimited"] >= 1


async def test_twenty_concurrent_triggers_start_one_round(
    node: AnvilProcess, devnet: DevnetInfo, settings: Settings, db: Database
) -> None:
    create_proposals(node, devnet, 2)
    rec = Rounds(settings, db.sessions, WorkSignal(), reconciler(settings, db))
    tickets = []
    async with anyio.create_task_group() as tg:
        await tg.start(rec.run)  # the start-up round begins at once

        async def trigger() -> None:
            tickets.append(await rec.trigger(RoundKind.MANUAL))

        async with anyio.create_task_group() as triggers:
            for _ in range(20):
                triggers.start_soon(trigger)
        await rec.wait_for_round(tickets[0].round_id)
        tg.cancel_scope.cancel()
    assert len({t.round_id for t in tickets}) == 1 and all(t.joined for t in tickets)
    async with db.sessions() as session:
        rounds = (await session.execute(select(Round))).scalars().all()
    assert len(rounds) == 1 and rounds[0].kind == "startup"
    record = await get_round(db.sessions, rounds[0].id)
    assert record is not None and record.state == "done" and record.new_proposals == 2
    assert record.missing_votes == 10 and record.proposals_scanned == 2


async def test_a_failed_round_is_recorded_and_the_next_one_still_runs(
    node: AnvilProcess, devnet: DevnetInfo, settings: Settings, db: Database
) -> None:
    import dataclasses

    from devtools.anvil import free_port

    dead = dataclasses.replace(settings, rpc_ws_url=f"ws://127.0.0.1:{free_port()}")
    scan = Reconciler(dead, db.sessions, db.nodes, 31337, attempts=1)
    rec = Rounds(dead, db.sessions, WorkSignal(), scan)
    async with anyio.create_task_group() as tg:
        await tg.start(rec.run)
        await rec.wait_for_round(1)
        failed = await get_round(db.sessions, 1)
        assert failed is not None and failed.state == "failed" and failed.error
        assert "cannot connect" in failed.error and rec.status.last_error
        scan.settings = settings  # the node is back
        ticket = await rec.trigger(RoundKind.MANUAL)
        assert (ticket.round_id, ticket.joined) == (2, False)
        await rec.wait_for_round(2)
        tg.cancel_scope.cancel()
    done = await get_round(db.sessions, 2)
    assert done is not None and done.state == "done" and done.error is None
