"""The voter when the chain misbehaves: unfunded node, closed proposals, votes cast by hand, a stuck or
dropped transaction, a reorg. Each test has its own anvil; the invariant (transactions == VoteCast events per
node) is checked at the end of each."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
from eth_account import Account
from sqlalchemy import select, update

from devtools.anvil import AnvilProcess
from devtools.devnet import create_proposals, deploy_devnet
from storage import chain_state, queue
from storage.models import Proposal, Vote, VoteState
from tests.support.chain import devnet_chain
from tests.support.rpc_proxy import rpc_proxy
from tests.support.voter import (
    Harness,
    cancel_proposal,
    check_exactly_once,
    make_harness,
    queue_proposals,
    vote_by_hand,
    vote_events,
    vote_rows,
    vote_transactions,
)
from tests.support.waiting import wait_until
from voter.gas import GasEstimates, GasKey
from voter.planning import NonceCounts
from voter.service import Voter

# slow: each test starts its own anvil
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def states(rows: list) -> Counter[str]:  # type: ignore[type-arg]
    return Counter(r.state for r in rows)


@pytest.mark.both_databases
async def test_unfunded_node_waits_while_the_others_vote(tmp_path: Path, database_url: str) -> None:
    fresh = Account.create()
    with devnet_chain(3) as (node, info):
        h = await make_harness(
            node, info, tmp_path, database_url=database_url, node_keys=[*info.node_keys[:4], fresh.key.hex()]
        )
        await queue_proposals(h)
        voter = h.voter()
        first = await voter.drain()
        rows = await vote_rows(h.sessions)
        assert states([r for r in rows if r.node != "ai-gov-05"]) == {VoteState.CONFIRMED: 12}
        assert states([r for r in rows if r.node == "ai-gov-05"]) == {VoteState.QUEUED: 3}
        assert all("unfunded" in (r.last_error or "") for r in rows if r.node == "ai-gov-05")
        status = voter.status.nodes[4]
        assert status.unfunded and "nsufficient funds" in (status.last_error or "")
        assert not first.left_work  # the unfunded node's rows do not make rounds spin
        check_exactly_once(node.http_url, info.contract_address, h.addresses)

        h.rpc("anvil_setBalance", [fresh.address, hex(10**18)])
        await voter.drain()
        rows = await vote_rows(h.sessions)
        assert states(rows) == {VoteState.CONFIRMED: 15}
        assert not voter.status.nodes[4].unfunded
        assert check_exactly_once(node.http_url, info.contract_address, h.addresses)[fresh.address] == 3


@pytest.mark.both_databases
async def test_canceled_while_queued_is_closed_without_a_transaction(
    tmp_path: Path, database_url: str
) -> None:
    with devnet_chain(3) as (node, info):
        h = await make_harness(node, info, tmp_path, database_url=database_url)
        await queue_proposals(h)
        cancel_proposal(node.http_url, info.contract_address, info.proposer_key, 2)
        result = await h.voter().drain()
        rows = await vote_rows(h.sessions)
        assert states([r for r in rows if r.proposal_id == 2]) == {VoteState.CLOSED: 5}
        assert all("canceled" in (r.reason or "") and r.tx_hash is None for r in rows if r.proposal_id == 2)
        assert states([r for r in rows if r.proposal_id != 2]) == {VoteState.CONFIRMED: 10}
        assert result.closed == 5
        assert list(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == [2] * 5


async def test_past_voting_period_is_closed_without_a_transaction(tmp_path: Path) -> None:
    with devnet_chain(2) as (node, info):
        h = await make_harness(node, info, tmp_path)
        await queue_proposals(h)
        h.rpc("evm_increaseTime", [info.voting_period + 60])
        h.rpc("evm_mine")
        await h.voter().drain()
        rows = await vote_rows(h.sessions)
        assert states(rows) == {VoteState.CLOSED: 10}
        assert all("voting ended" in (r.reason or "") for r in rows)
        assert sum(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == 0


async def test_node_that_voted_by_hand_is_already_voted(tmp_path: Path) -> None:
    with devnet_chain(2) as (node, info):
        h = await make_harness(node, info, tmp_path)
        await queue_proposals(h)
        vote_by_hand(node.http_url, info.contract_address, info.node_keys[0], 1, False)
        await h.voter().drain()
        rows = await vote_rows(h.sessions)
        done = {(r.proposal_id, r.node): r for r in rows}
        assert done[(1, "ai-gov-01")].state == VoteState.ALREADY_VOTED
        assert done[(1, "ai-gov-01")].tx_hash is None
        assert "hasVoted" in (done[(1, "ai-gov-01")].reason or "")
        assert states(rows) == {VoteState.CONFIRMED: 9, VoteState.ALREADY_VOTED: 1}
        per_node = check_exactly_once(node.http_url, info.contract_address, h.addresses)
        assert per_node[h.addresses[0]] == 2  # the hand vote and proposal 2


async def running_voter(h: Harness, tg: anyio.abc.TaskGroup) -> Voter:
    voter = h.voter(receipt_poll_interval=0.05, poll_interval=0.5, stall_seconds=60.0)
    await tg.start(voter.run)
    return voter


@pytest.mark.both_databases
async def test_stuck_transaction_is_replaced_and_only_one_vote_counts(
    tmp_path: Path, database_url: str
) -> None:
    with devnet_chain(1) as (node, info):
        h = await make_harness(node, info, tmp_path, database_url=database_url)
        h.rpc("evm_setAutomine", [False])  # mining paused
        await queue_proposals(h)
        async with anyio.create_task_group() as tg:
            voter = await running_voter(h, tg)
            await wait_until(lambda: _count_state(h, VoteState.SENT, 5))
            originals = {tx for _, tx, _, _ in await vote_transactions(h.sessions)}
            assert len(originals) == 5 and h.rpc("txpool_status")["pending"] == "0x5"
            # Blocks go on without our transactions: the base fee jumps above what they can pay.
            h.rpc("anvil_setNextBlockBaseFeePerGas", [hex(100 * 10**9)])
            h.rpc("anvil_mine", ["0x3"])
            await wait_until(lambda: _transactions(h, 10))
            h.rpc("evm_setAutomine", [True])  # mining resumes
            h.rpc("evm_mine")
            await wait_until(lambda: _count_state(h, VoteState.CONFIRMED, 5))
            assert voter.status.replaced == 5
            tg.cancel_scope.cancel()
        rows = await vote_rows(h.sessions)
        txs = await vote_transactions(h.sessions)
        assert {r.tx_hash for r in rows}.isdisjoint(originals)  # the replacements were mined
        assert Counter(outcome for _, _, _, outcome in txs) == {"replaced": 5, "mined": 5}
        assert all(nonce == 0 for _, _, nonce, _ in txs)  # same nonce: the replacement took its place
        assert list(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == [1] * 5


async def test_dropped_transaction_is_rebroadcast_from_its_signed_bytes(tmp_path: Path) -> None:
    with devnet_chain(1) as (node, info):
        h = await make_harness(node, info, tmp_path)
        h.rpc("evm_setAutomine", [False])
        await queue_proposals(h)
        async with anyio.create_task_group() as tg:
            voter = await running_voter(h, tg)
            await wait_until(lambda: _count_state(h, VoteState.SENT, 5))
            dropped = next(r.tx_hash for r in await vote_rows(h.sessions) if r.node == "ai-gov-01")
            h.rpc("anvil_dropTransaction", [dropped])
            h.rpc("anvil_mine", ["0x3"])  # the others are mined; the dropped one is missed for 3 blocks
            await wait_until(lambda: voter.status.rebroadcast >= 1)
            h.rpc("evm_mine")
            await wait_until(lambda: _count_state(h, VoteState.CONFIRMED, 5))
            tg.cancel_scope.cancel()
        rows = await vote_rows(h.sessions)
        assert next(r.tx_hash for r in rows if r.node == "ai-gov-01") == dropped  # same bytes, same hash
        assert len(await vote_transactions(h.sessions)) == 5  # nothing re-signed
        assert list(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == [1] * 5


async def test_nonce_counts_read_before_earlier_votes_were_mined_show_no_gap(tmp_path: Path) -> None:
    """A batch's nonce counts are read before it signs: an earlier batch's votes mined and settled in between
    are no nonce gap. Seen in the 10,000-proposal memory benchmark: lanes signed new votes with nonces their
    mined votes had used ("nonce too low"), and a refusal answered after the receipt poller had settled
    that vote stopped the voter."""
    with devnet_chain(3) as (node, info):
        h = await make_harness(node, info, tmp_path)
        h.rpc("evm_setAutomine", [False])
        await queue_proposals(h, [1])
        async with anyio.create_task_group() as tg:
            voter = await running_voter(h, tg)
            await wait_until(lambda: _count_state(h, VoteState.SENT, 5))  # each node's nonce 0, pending
            lane = voter.lanes[0]
            read_at = time.monotonic()
            stale = NonceCounts(
                int(h.rpc("eth_getTransactionCount", [lane.address, "latest"]), 16),
                int(h.rpc("eth_getTransactionCount", [lane.address, "pending"]), 16),
                read_at,
            )
            assert (stale.mined, stale.pending) == (0, 1)
            h.rpc("evm_mine")
            await wait_until(lambda: _count_state(h, VoteState.CONFIRMED, 5))  # settled: no longer tracked
            await queue_proposals(h, [2])
            await wait_until(lambda: _count_state(h, VoteState.SENT, 5))  # nonce 1, pending
            async with lane.lock:  # what a batch signed with the counts read before does first
                await lane.resync_nonce(stale)
                assert (lane.next_nonce, lane.state.free_nonces) == (2, [])  # was (2, [0])
            h.rpc("evm_setAutomine", [True])
            h.rpc("evm_mine")
            await queue_proposals(h, [3])
            await wait_until(lambda: _count_state(h, VoteState.CONFIRMED, 15))
            tg.cancel_scope.cancel()
        assert len(await vote_transactions(h.sessions)) == 15  # none refused and signed again
        assert list(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == [3] * 5


@pytest.mark.parametrize("reopen", ["reopen_confirmed", "listener_requeue"])
async def test_vote_reorged_out_is_sent_again(tmp_path: Path, reopen: str) -> None:
    with devnet_chain(1) as (node, info):
        h = await make_harness(node, info, tmp_path)
        await queue_proposals(h)
        voter = h.voter()
        await voter.drain()
        rows = await vote_rows(h.sessions)
        assert states(rows) == {VoteState.CONFIRMED: 5}
        first_vote_block = min(
            int(h.rpc("eth_getTransactionReceipt", [r.tx_hash])["blockNumber"], 16) for r in rows
        )
        head = int(h.rpc("eth_blockNumber"), 16)
        h.rpc("anvil_reorg", [head - first_vote_block + 1, []])  # the vote blocks replaced by empty ones
        assert sum(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == 0
        if reopen == "reopen_confirmed":
            # confirmed -> sent: the voter resolves the rows from the chain and rebroadcasts the same bytes.
            hashes = [r.tx_hash for r in rows if r.tx_hash]
            assert await queue.reopen_confirmed(h.sessions, tx_hashes=hashes) == 5
        else:
            # The listener's reorg handling: confirmed -> queued; hasVoted is false: the vote is sent again.
            async with h.sessions() as session:
                ids = list((await session.execute(select(Vote.id))).scalars())
            for vote_id in ids:
                assert await chain_state.requeue_orphaned_vote(
                    h.sessions, vote_id, parked=False, reason="reorg"
                )
        result = await voter.drain()
        assert result.confirmed == 5
        again = await vote_rows(h.sessions)
        assert states(again) == {VoteState.CONFIRMED: 5}
        if reopen == "reopen_confirmed":
            assert voter.status.rebroadcast == 5
            assert [r.tx_hash for r in again] == [r.tx_hash for r in rows]  # the same signed transactions
        assert list(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == [1] * 5


async def _count_state(h: Harness, state: VoteState, expected: int) -> bool:
    return sum(r.state == state for r in await vote_rows(h.sessions)) == expected


async def _transactions(h: Harness, expected: int) -> bool:
    return len(await vote_transactions(h.sessions)) >= expected


async def test_through_a_rate_limiting_provider_that_caps_batches(tmp_path: Path) -> None:
    with devnet_chain(6) as (node, info):
        async with rpc_proxy(node.ws_url, max_batch=3, rate_limit_first=8) as proxy:
            h = await make_harness(node, info, tmp_path, rpc_ws_url=proxy.url)
            await queue_proposals(h)
            await h.voter().drain()
            assert proxy.stats.rate_limited == 8 and proxy.stats.batches_refused >= 1
        assert states(await vote_rows(h.sessions)) == {VoteState.CONFIRMED: 30}
        assert list(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == [6] * 5


async def test_reconnects_after_the_node_restarts(tmp_path: Path) -> None:
    state = tmp_path / "chain.json"
    with AnvilProcess(state_file=state) as node:
        info = deploy_devnet(node.http_url, 2)
        port = node.port
        h = await make_harness(node, info, tmp_path)
        await queue_proposals(h)
        async with anyio.create_task_group() as tg:
            voter = await running_voter(h, tg)
            await wait_until(lambda: _count_state(h, VoteState.CONFIRMED, 10))
            node.stop()  # the node goes away (its state is dumped) ...
            await anyio.sleep(0.5)
            node.requested_port = port
            node.start()  # ... and comes back on the same port with the same chain
            create_proposals(
                h.web3(), info.contract_address, info.proposer_key, info.token_addresses, 2, first_index=2
            )
            await queue_proposals(h, [3, 4])
            h.signal.notify()
            await wait_until(lambda: _count_state(h, VoteState.CONFIRMED, 20), timeout=30)
            status = voter.status
            assert status.connected and status.reconnects >= 1 and status.last_connection_error
            tg.cancel_scope.cancel()
        assert list(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == [4] * 5


async def test_stored_content_that_differs_from_chain_is_refreshed_before_deciding(tmp_path: Path) -> None:
    with devnet_chain(1) as (node, info):
        h = await make_harness(node, info, tmp_path)
        [chain_data] = await queue_proposals(h)
        async with h.sessions.begin() as session:  # as if a reorg had put other content under this id
            await session.execute(update(Proposal).values(description="stale", content_hash="0xstale"))
        await h.voter().drain()
        async with h.sessions() as session:
            row = (await session.execute(select(Proposal))).scalar_one()
        assert (row.description, row.content_hash) == (chain_data.description, chain_data.content_hash())
        assert states(await vote_rows(h.sessions)) == {VoteState.CONFIRMED: 5}


async def test_fee_cap_below_the_base_fee_keeps_votes_queued_and_says_so(tmp_path: Path) -> None:
    with devnet_chain(1) as (node, info):
        h = await make_harness(node, info, tmp_path, max_fee_gwei=5.0)
        await queue_proposals(h)
        h.rpc("anvil_setNextBlockBaseFeePerGas", [hex(10 * 10**9)])
        voter = h.voter()
        result = await voter.drain()
        rows = await vote_rows(h.sessions)
        assert states(rows) == {VoteState.QUEUED: 5} and result.sent == 0 and result.deferred == 5
        assert all("fee cap 5 gwei is below the base fee 10 gwei" in (r.last_error or "") for r in rows)
        assert "fee cap" in (voter.status.nodes[0].last_error or "")
        assert sum(check_exactly_once(node.http_url, info.contract_address, h.addresses).values()) == 0


async def test_a_vote_queued_again_whose_own_transaction_is_on_chain_is_confirmed_not_already_voted(
    tmp_path: Path,
) -> None:
    """After a reorg the listener queues a vote again when its transaction left the chain; if that very
    transaction is mined again (a real node puts reorged-out transactions back in its pool), hasVoted is true
    when the voter looks. It is the service's own vote: the row ends `confirmed` with that transaction and
    keeps its decision and reason, not `already_voted` "before sending" (which names no transaction)."""
    with devnet_chain(1) as (node, info):
        h = await make_harness(node, info, tmp_path)
        await queue_proposals(h)
        await h.voter().drain()
        before = {r.node: r for r in await vote_rows(h.sessions)}
        assert {r.state for r in before.values()} == {VoteState.CONFIRMED}
        async with h.sessions() as session:
            vote_ids = [v for (v,) in await session.execute(select(Vote.id))]
        for vote_id in vote_ids:  # what the listener does for a vote whose block a reorg replaced
            assert await chain_state.requeue_orphaned_vote(
                h.sessions, vote_id, parked=False, reason="vote tx left the chain in a reorg"
            )
        await h.voter().drain()
        after = {r.node: r for r in await vote_rows(h.sessions)}
        assert {r.state for r in after.values()} == {VoteState.CONFIRMED}, after
        for name, row in after.items():
            assert row.tx_hash == before[name].tx_hash, (row, before[name])
            assert (row.decision, row.reason) == (before[name].decision, before[name].reason), row
        check_exactly_once(node.http_url, info.contract_address, h.addresses)


class TooLowOnce(GasEstimates):
    """A reused estimate far too low for the first vote asked about: it runs out of gas on chain."""

    def __init__(self) -> None:
        super().__init__()
        self.served = False

    def known(self, key: GasKey) -> int | None:
        if not self.served:
            self.served = True
            return 30_000
        return super().known(key)


async def test_a_vote_that_ran_out_of_gas_on_a_reused_estimate_is_estimated_and_sent_again(
    tmp_path: Path,
) -> None:
    with devnet_chain(1) as (node, info):
        h = await make_harness(node, info, tmp_path)
        await queue_proposals(h)
        voter = h.voter()
        for lane in voter.lanes:
            lane.state.gas = TooLowOnce()

        async def all_confirmed() -> bool:
            await voter.drain()
            return states(await vote_rows(h.sessions)) == {VoteState.CONFIRMED: 5}

        await wait_until(all_confirmed, timeout=60, what="every vote confirmed after running out of gas")
        transactions = await vote_transactions(h.sessions)
        assert Counter(outcome for *_, outcome in transactions) == {"reverted": 5, "mined": 5}
        events = vote_events(node.http_url, info.contract_address)
        assert sorted((pid, voter_address) for pid, voter_address, _ in events) == sorted(
            (1, address) for address in h.addresses
        )
        assert all(len(lane.state.gas) == 1 for lane in voter.lanes)  # estimated again, and kept
