"""The listener against a real anvil, a real SQLite file (a few tests PostgreSQL too), and faults injected
through a TCP proxy."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from eth_account import Account
from sqlalchemy import update
from web3 import Web3

from core.errors import ConfigError
from core.signals import WorkSignal
from devtools.anvil import AnvilProcess
from devtools.devnet import asset_dao, deploy_devnet
from listener import Listener
from storage.models import ChainCursor, Vote
from tests.support.chain import EVENT_VERSIONS, Chain
from tests.support.database import Database, devnet_nodes, open_database
from tests.support.listener_env import (
    all_queued,
    chain_logs,
    make_settings,
    proposal,
    proposal_row_count,
    running_listener,
    vote_state_is,
    vote_states,
    votes_of,
    wait_for_queue,
)
from tests.support.proxy import TcpProxy
from tests.support.waiting import wait_until

# A private chain for each test (the tests rewrite it) and the `db` fixture with the devnet's nodes.
pytestmark = [pytest.mark.anyio, pytest.mark.devnet(fresh=True)]


@pytest.mark.parametrize("chain", EVENT_VERSIONS, indirect=True)
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


@pytest.mark.both_databases
async def test_burst_of_200_proposals_is_queued_each_exactly_once(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url)
    async with running_listener(settings, db, signal) as listener:
        started = time.monotonic()
        ids = await chain.create_async(200)
        mined = time.monotonic()
        states = await wait_for_queue(db, signal, set(ids), timeout=30)
        done = time.monotonic()
        assert listener.status.reconnects == 0
    print(f"200 proposals mined in {mined - started:.2f} s, all queued {done - mined:.2f} s after the last")
    assert sorted(ids) == list(range(1, 201))
    assert states == {pid: ["queued"] * 5 for pid in ids}
    assert await proposal_row_count(db) == 200
    created = [log for log in await chain_logs(db) if log.event == "ProposalCreated"]
    assert sorted(log.proposal_id for log in created) == list(range(1, 201))


@pytest.mark.parametrize("chain", EVENT_VERSIONS, indirect=True)
async def test_backfill_at_start_covers_proposals_created_while_stopped(chain: Chain, db: Database) -> None:
    ids = await chain.create_async(30)
    signal = WorkSignal()
    # Small chunks: the backfill from the deployment block takes several eth_getLogs calls.
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url, log_chunk_blocks=4)
    async with running_listener(settings, db, signal) as listener:
        # `tg.start` returns once caught up: everything created while stopped is queued already.
        assert all_queued(await vote_states(db), set(ids))
        status = listener.status
        assert status.backfill_total_blocks > 4 * 5
        assert status.backfill_done_blocks == status.backfill_total_blocks
        assert not status.backfill_active
        live = await chain.create_async(1, first_index=30)
        await wait_for_queue(db, signal, set(live), timeout=5)
    # Stopped again: more proposals; a restart backfills from the cursor, without duplicates.
    more = await chain.create_async(5, first_index=31)
    async with running_listener(settings, db, signal) as listener:
        states = await vote_states(db)
        assert listener.status.backfill_total_blocks < 20  # from the cursor, not from the deployment
    assert states == {pid: ["queued"] * 5 for pid in [*ids, *live, *more]}
    created = [log for log in await chain_logs(db) if log.event == "ProposalCreated"]
    assert len(created) == 36


async def test_first_run_without_start_block_finds_the_deployment_block(chain: Chain, db: Database) -> None:
    ids = await chain.create_async(3)
    for _ in range(20):
        await chain.rpc("evm_mine")
    # head minus DLOOP_BACKFILL_BLOCKS would miss them; the deployment block is found by eth_getCode.
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url, start_block=None, backfill_blocks=2)
    async with running_listener(settings, db):
        assert all_queued(await vote_states(db), set(ids))


@pytest.mark.both_databases
async def test_dropped_connection_mid_burst_loses_and_duplicates_nothing(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    async with TcpProxy(chain.anvil.port) as proxy:
        settings = make_settings(proxy.ws_url, chain.info, db.url)
        async with running_listener(settings, db, signal) as listener:
            async with anyio.create_task_group() as tg:
                created: list[int] = []

                async def burst() -> None:
                    created.extend(await chain.create_async(120))

                tg.start_soon(burst)
                await wait_until(lambda: _queued_count_at_least(db, 10), timeout=20)
                assert await proxy.drop_all() >= 1
            await wait_for_queue(db, signal, set(range(1, 121)), timeout=30)
            # Under load the whole burst can be queued before the listener notices the dropped socket.
            await wait_until(
                lambda: listener.status.reconnects >= 1 and proxy.connections_opened >= 2, timeout=20
            )
            assert listener.status.reconnects >= 1
            assert proxy.connections_opened >= 2
    assert sorted(created) == list(range(1, 121))
    assert await proposal_row_count(db) == 120
    created_logs = [log for log in await chain_logs(db) if log.event == "ProposalCreated"]
    assert sorted(log.proposal_id for log in created_logs) == list(range(1, 121))


async def _queued_count_at_least(db: Database, count: int) -> bool:
    return len(await vote_states(db)) >= count


@pytest.mark.slow  # starts its own anvil (interval mining)
async def test_stalled_connection_is_detected_by_the_head_timeout(tmp_path: Path) -> None:
    with AnvilProcess(block_time=0.2) as node:  # heads keep coming, as on a real chain
        info = deploy_devnet(node.http_url, proposals=0)
        chain = Chain(node, info, Web3(Web3.HTTPProvider(node.http_url)))
        db = await open_database(tmp_path / "dloop.db", devnet_nodes(info))
        signal = WorkSignal()
        try:
            async with TcpProxy(node.port) as proxy:
                settings = make_settings(proxy.ws_url, info, db.url, head_timeout=1.0)
                async with running_listener(settings, db, signal) as listener:
                    before = await chain.create_async(2)
                    await wait_for_queue(db, signal, set(before), timeout=5)
                    stalled_at = time.monotonic()
                    proxy.stall()
                    during = await chain.create_async(3, first_index=2)
                    await wait_until(lambda: listener.status.reconnects >= 1, timeout=10)
                    detected = time.monotonic() - stalled_at
                    assert "no new head" in (listener.status.last_error or "")
                    proxy.resume()
                    await wait_for_queue(db, signal, set(during), timeout=10)
                    await wait_until(lambda: listener.status.connected, timeout=10)
            print(f"stall detected after {detected:.2f} s")
            assert detected < 8  # head timeout, a probe of the same length, the bounded close
            states = await vote_states(db)
            assert states == {pid: ["queued"] * 5 for pid in [*before, *during]}
        finally:
            await db.engine.dispose()


def _signed_create_proposal(chain: Chain, nonce: int, description: str) -> str:
    """A raw createProposal from the proposer with an explicit nonce (for anvil_reorg's replacement block)."""
    dao = asset_dao(chain.w3, chain.info.contract_address)
    data = dao.encode_abi(
        "createProposal", args=[0, chain.info.token_addresses["USDC"], 7_000_000, description]
    )
    base_fee = int(chain.w3.eth.get_block("latest")["baseFeePerGas"])
    signed = Account.from_key(chain.info.proposer_key).sign_transaction(
        {
            "chainId": chain.info.chain_id,
            "nonce": nonce,
            "to": dao.address,
            "data": data,
            "gas": 500_000,
            "maxFeePerGas": 4 * base_fee + 10**9,
            "maxPriorityFeePerGas": 10**9,
            "value": 0,
            "type": 2,
        }
    )
    return "0x" + bytes(signed.raw_transaction).hex()


@pytest.mark.parametrize("chain", EVENT_VERSIONS, indirect=True)
async def test_reorg_replacing_the_proposal_block_marks_orphans_and_records_the_canonical_chain(
    chain: Chain, db: Database
) -> None:
    signal = WorkSignal()
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url)
    async with running_listener(settings, db, signal) as listener:
        nonce = chain.w3.eth.get_transaction_count(chain.info.proposer_address)
        [pid] = await chain.create_async(1)
        await wait_for_queue(db, signal, {pid})
        old = await proposal(db, pid)
        # Node 1 votes (its row is confirmed from the VoteCast log); node 2's strategy "decided" meanwhile.
        vote_receipt = await chain.transact_async(chain.info.node_keys[0], "vote", pid, True)
        await wait_until(lambda: vote_state_is(db, pid, 0, "confirmed"))
        await _record_decision(db, pid, node_index=1)

        # Blocks of the proposal and of the vote are replaced: proposal 1 now has other content.
        replacement = _signed_create_proposal(chain, nonce, "Replaced by a reorg: 7 USDC for the audit fund")
        await chain.rpc("anvil_reorg", [2, [[replacement, 0]]])
        await wait_until(lambda: listener.status.reorgs_seen >= 1)
        await wait_for_queue(db, signal, {pid}, timeout=10)

        new = await proposal(db, pid)
        assert new.description == "Replaced by a reorg: 7 USDC for the audit fund"
        assert new.block_number == old.block_number and new.block_hash != old.block_hash
        canonical = chain.w3.eth.get_block(old.block_number)["hash"]
        assert new.block_hash == "0x" + bytes(canonical).hex()
        votes = await votes_of(db, pid)
        assert [v.state for v in votes] == ["queued"] * 5
        assert votes[0].confirmed_block is None and "left the chain" in (votes[0].last_error or "")
        assert votes[1].decision is None and votes[1].reason is None  # decided on content that is gone
    logs = {(log.block_hash, log.event): log for log in await chain_logs(db)}
    assert logs[(old.block_hash, "ProposalCreated")].removed
    vote_hash = "0x" + bytes(vote_receipt["blockHash"]).hex()
    assert logs[(vote_hash, "VoteCast")].removed
    assert not logs[(new.block_hash, "ProposalCreated")].removed
    assert await proposal_row_count(db) == 1


async def _record_decision(db: Database, pid: int, *, node_index: int) -> None:
    """What the voter's strategy writes before sending (simulated: the voter is not part of this test)."""
    votes = await votes_of(db, pid)
    async with db.sessions.begin() as session:
        await session.execute(
            update(Vote)
            .where(Vote.id == votes[node_index].id)
            .values(state="no_vote", decision="none", confidence=0.9, reason="amount over the limit")
        )


def _log_message(proxy: TcpProxy, tx_hash: str) -> dict[str, Any]:
    """The eth_subscription message that delivered the log of `tx_hash` through the proxy."""
    for message in proxy.messages_json():
        result = message.get("params", {}).get("result") if isinstance(message, dict) else None
        if isinstance(result, dict) and result.get("transactionHash") == tx_hash:
            return dict(message)
    raise AssertionError(f"no log message for {tx_hash}")


async def test_removed_log_injected_through_the_proxy_is_honoured(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    async with TcpProxy(chain.anvil.port) as proxy:
        settings = make_settings(proxy.ws_url, chain.info, db.url)
        async with running_listener(settings, db, signal) as listener:
            snapshot = await chain.rpc("evm_snapshot")
            [pid] = await chain.create_async(1)
            await wait_for_queue(db, signal, {pid})
            row = await proposal(db, pid)
            delivered = _log_message(proxy, str(row.tx_hash))
            # The chain silently loses the block (anvil sends no removed logs): only the injected
            # `removed: true` message tells the listener.
            assert await chain.rpc("evm_revert", [snapshot]) is True
            removed = copy.deepcopy(delivered)
            removed["params"]["result"]["removed"] = True
            assert proxy.inject_json(removed) == 1
            await wait_until(lambda: listener.status.reorgs_seen >= 1)
            await wait_until(lambda: _states_are(db, pid, ["pending"] * 5))
            logs = await chain_logs(db)
            assert [(log.proposal_id, log.removed) for log in logs] == [(pid, True)]
            parked = await proposal(db, pid)
            assert parked.block_hash is None  # its block is not on the chain

            # The proposal comes back on the canonical chain (here with other content): queued again.
            [again] = await chain.create_async(1, first_index=7)
            assert again == pid
            await wait_for_queue(db, signal, {pid})
            assert (await proposal(db, pid)).description != row.description
    assert await proposal_row_count(db) == 1


async def _states_are(db: Database, pid: int, states: list[str]) -> bool:
    return (await vote_states(db)).get(pid) == states


async def test_duplicate_delivery_never_creates_a_second_row(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    async with TcpProxy(chain.anvil.port) as proxy:
        settings = make_settings(proxy.ws_url, chain.info, db.url)
        async with running_listener(settings, db, signal) as listener:
            [pid] = await chain.create_async(1)
            await wait_for_queue(db, signal, {pid})
            row = await proposal(db, pid)
            delivered = _log_message(proxy, str(row.tx_hash))
            for _ in range(3):
                proxy.inject_json(delivered)
            # Messages are handled in order: once a later head is processed, so were the duplicates.
            await chain.rpc("evm_mine")
            head = chain.w3.eth.block_number
            await wait_until(lambda: listener.status.last_head_number == head)
        # A replay from an old cursor (as after losing the cursor) goes over the same log again.
        async with db.sessions.begin() as session:
            await session.execute(update(ChainCursor).values(block_number=chain.info.deployment_block))
        async with running_listener(settings, db, signal) as listener:
            assert listener.status.backfill_total_blocks > 1
    assert await proposal_row_count(db) == 1
    assert await vote_states(db) == {pid: ["queued"] * 5}
    assert len(await chain_logs(db)) == 1


async def test_bad_data_is_recorded_and_the_listener_carries_on(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    dao_address = chain.info.contract_address
    async with TcpProxy(chain.anvil.port) as proxy:
        settings = make_settings(proxy.ws_url, chain.info, db.url)
        async with running_listener(settings, db, signal) as listener:
            # An asset that is not an ERC-20 (the DAO itself): recorded and queued, the problem noted.
            receipt = await chain.transact_async(
                chain.info.proposer_key, "createProposal", 0, dao_address, 5, "Invest in a non-token"
            )
            await wait_for_queue(db, signal, {1})
            delivered = _log_message(proxy, "0x" + bytes(receipt["transactionHash"]).hex())
            block_hash = delivered["params"]["result"]["blockHash"]
            topic0, _id, asset_id, proposer = delivered["params"]["result"]["topics"]
            # Synthetic logs: one that does not decode, one for a proposal getProposal does not know.
            undecodable = copy.deepcopy(delivered)
            undecodable["params"]["result"].update(topics=[topic0], logIndex="0x50")
            unknown = copy.deepcopy(delivered)
            unknown["params"]["result"].update(
                topics=[topic0, "0x" + f"{999:064x}", asset_id, proposer], logIndex="0x51"
            )
            proxy.inject_json(undecodable)
            proxy.inject_json(unknown)
            [pid] = await chain.create_async(1, first_index=1)  # the listener carries on
            await wait_for_queue(db, signal, {pid})
            assert listener.status.reconnects == 0
    logs = {log.log_index: log for log in await chain_logs(db) if log.block_hash == block_hash}
    assert "decimals" in (logs[0].error or "") and dao_address.lower() in (logs[0].error or "").lower()
    assert logs[0x50].event == "ProposalCreated" and "undecodable" in (logs[0x50].error or "")
    assert logs[0x51].proposal_id == 999 and "ProposalNotFound" in (logs[0x51].error or "")
    bad_asset = await proposal(db, 1)
    assert bad_asset.asset_decimals is None and bad_asset.read_error
    assert await proposal_row_count(db) == 2


@pytest.mark.parametrize("chain", EVENT_VERSIONS, indirect=True)
@pytest.mark.both_databases
async def test_votes_and_closing_events_update_the_records(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url)
    async with running_listener(settings, db, signal):
        ids = await chain.create_async(2)
        await wait_for_queue(db, signal, set(ids))
        receipt = await chain.transact_async(chain.info.node_keys[0], "vote", ids[0], True)
        await chain.transact_async(chain.info.proposer_key, "vote", ids[0], False)  # not one of ours
        await chain.transact_async(chain.info.proposer_key, "cancelProposal", ids[1])
        await wait_until(lambda: _states_are(db, ids[1], ["closed"] * 5))
        await wait_until(lambda: _tally_is(db, ids[0], chain.info.node_weights[0], 500 * 10**18))
    votes = await votes_of(db, ids[0])
    assert votes[0].state == "confirmed" and votes[0].confirmed_block == receipt["blockNumber"]
    assert votes[0].tx_hash == "0x" + bytes(receipt["transactionHash"]).hex()
    assert [v.state for v in votes[1:]] == ["queued"] * 4
    canceled = await proposal(db, ids[1])
    assert canceled.status_name == "canceled"


async def _tally_is(db: Database, pid: int, yes: int, no: int) -> bool:
    row = await proposal(db, pid)
    return (row.yes_votes, row.no_votes) == (str(yes), str(no))


async def test_confirmations_queue_a_proposal_only_once_its_block_is_deep(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url, confirmations=3)
    async with running_listener(settings, db, signal) as listener:
        [pid] = await chain.create_async(1)
        await wait_until(lambda: _states_are(db, pid, ["pending"] * 5))
        await chain.rpc("evm_mine")
        head = chain.w3.eth.block_number
        await wait_until(lambda: listener.status.last_head_number == head)
        assert (await vote_states(db))[pid] == ["pending"] * 5  # two blocks: not deep enough yet
        await chain.rpc("evm_mine")
        await wait_for_queue(db, signal, {pid}, timeout=5)


async def test_status_reports_heads_events_and_backfill(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    await chain.create_async(2)
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url)
    async with running_listener(settings, db, signal) as listener:
        [pid] = await chain.create_async(1, first_index=2)
        await wait_for_queue(db, signal, {pid})
        head = chain.w3.eth.block_number
        await wait_until(lambda: listener.status.last_head_number == head)
        status = listener.status
    assert status.connected and status.reconnects == 0 and status.reorgs_seen == 0
    assert status.last_error is None
    assert status.last_head_time is not None and status.last_event_time is not None
    assert status.head_lag_seconds is not None and 0 <= status.head_lag_seconds < 60
    assert status.backfill_done_blocks == status.backfill_total_blocks > 0
    assert status.logs_processed == 3 and status.votes_queued == 15
    assert status.cursor_block is not None and status.cursor_block >= head - 1


async def test_an_idle_chain_is_not_a_dead_connection(chain: Chain, db: Database) -> None:
    """Automine without traffic makes no heads: the watchdog asks the node before it reconnects."""
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url, head_timeout=0.3)
    async with running_listener(settings, db) as listener:
        await anyio.sleep(1.2)  # four head timeouts of silence
        assert listener.status.reconnects == 0 and listener.status.connected
    async with running_listener(settings, db, probe_idle_chain=False) as listener:
        await wait_until(lambda: listener.status.reconnects >= 1, timeout=5)
        assert "no new head" in (listener.status.last_error or "")


async def test_a_node_on_another_chain_is_a_configuration_error(chain: Chain, db: Database) -> None:
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url)
    listener = Listener(settings, db.sessions, db.nodes, WorkSignal(), chain_id=1)
    with anyio.fail_after(10), pytest.raises(ConfigError, match="chain 31337, expected 1"):
        await listener.run()


def _refuse_wide_log_ranges(max_blocks: int) -> Callable[[str], str | None]:
    """A provider that answers eth_getLogs over more than `max_blocks` blocks as Infura does."""

    def intercept(text: str) -> str | None:
        message = json.loads(text)
        if not isinstance(message, dict) or message.get("method") != "eth_getLogs":
            return None
        query = message["params"][0]
        if int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1 <= max_blocks:
            return None
        error = {"code": -32005, "message": "query returned more than 10000 results"}
        return json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error})

    return intercept


async def test_backfill_halves_its_chunks_when_the_provider_refuses_a_range(
    chain: Chain, db: Database
) -> None:
    ids = await chain.create_async(30)
    async with TcpProxy(chain.anvil.port) as proxy:
        proxy.intercept = _refuse_wide_log_ranges(8)
        settings = make_settings(proxy.ws_url, chain.info, db.url, log_chunk_blocks=64)
        async with running_listener(settings, db) as listener:
            assert all_queued(await vote_states(db), set(ids))
            assert listener.status.reconnects == 0
        assert proxy.intercepted == 3  # 64, 32 and 16 blocks refused; 8 accepted from then on


async def test_a_cancel_that_leaves_the_chain_reopens_the_votes(chain: Chain, db: Database) -> None:
    signal = WorkSignal()
    settings = make_settings(chain.anvil.ws_url, chain.info, db.url)
    async with running_listener(settings, db, signal) as listener:
        [pid] = await chain.create_async(1)
        await wait_for_queue(db, signal, {pid})
        await chain.transact_async(chain.info.proposer_key, "cancelProposal", pid)
        await wait_until(lambda: _states_are(db, pid, ["closed"] * 5))
        await chain.rpc("anvil_reorg", [1, []])  # the block of the cancel is replaced by an empty one
        await wait_until(lambda: listener.status.reorgs_seen >= 1)
        await wait_for_queue(db, signal, {pid}, timeout=10)
        await wait_until(lambda: _status_is(db, pid, "active"))


async def _status_is(db: Database, pid: int, status: str) -> bool:
    return (await proposal(db, pid)).status_name == status
