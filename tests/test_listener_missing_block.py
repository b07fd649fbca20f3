"""The listener's window check when the node answers null for a stored height below its head.

Under load anvil was seen to answer `eth_getBlockByNumber` with null for a height below its head after an
`anvil_reorg` (docs/reliability.md, "The automine reorg case": a block mined while the reorg ran broke
anvil's chain, and no test makes that now, but a node may still answer so); the check used to
fail with "block N not found" and the listener reconnected in a loop. Here a real anvil is reorged for real
(`anvil_reorg`), and a TCP proxy in front of it answers null for chosen heights (single requests and inside
JSON-RPC batches; everything else is anvil's own answer). The listener must handle a reorg from below the
missing height without reconnecting, lose nothing, and not handle the same gap again on the next check.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from core.signals import WorkSignal
from listener.listener import Listener
from tests.support.chain import Chain
from tests.support.database import Database
from tests.support.listener_env import (
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
from tests.support.proxy import TcpProxy, answer_null_for
from tests.support.waiting import wait_until

# A private chain for each test (the tests rewrite it) and the `db` fixture with the devnet's nodes.
pytestmark = [pytest.mark.anyio, pytest.mark.devnet(fresh=True)]


class NullBlocks:
    """A `TcpProxy.intercept` that makes the node answer null to `eth_getBlockByNumber` for `heights`.

    A single request for such a height is answered at once; a batch holding one is sent to anvil over HTTP
    (the same node) and its answer returned with those entries set to null. Anything else is forwarded."""

    def __init__(self, http_url: str) -> None:
        self.http_url = http_url
        self.heights: set[int] = set()
        self.nulls_served: list[int] = []

    def _target(self, request: Any) -> int | None:
        if not isinstance(request, dict) or request.get("method") != "eth_getBlockByNumber":
            return None
        tag = (request.get("params") or [None])[0]
        if not isinstance(tag, str) or not tag.startswith("0x"):
            return None  # "latest" and other tags: anvil answers
        number = int(tag, 16)
        return number if number in self.heights else None

    def __call__(self, text: str) -> str | None:
        if not self.heights:
            return None
        answer, nulled = answer_null_for(text, self.http_url, lambda item: self._target(item) is not None)
        self.nulls_served += [number for item in nulled if (number := self._target(item)) is not None]
        return answer


@asynccontextmanager
async def listening_through_nulls(
    chain: Chain, db: Database
) -> AsyncIterator[tuple[Listener, NullBlocks, WorkSignal]]:
    """A running listener whose node connection goes through a proxy answering null for `nulls.heights`."""
    signal = WorkSignal()
    async with TcpProxy(chain.anvil.port, record=False) as proxy:
        nulls = NullBlocks(chain.anvil.http_url)
        proxy.intercept = nulls
        settings = make_settings(proxy.ws_url, chain.info, db.url)
        async with running_listener(settings, db, signal) as listener:
            yield listener, nulls, signal


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [
        dict(getattr(r, "dloop_fields", {}))
        for r in caplog.records
        if r.name == "dloop.listener" and r.getMessage() == name
    ]


async def _head(chain: Chain) -> int:
    return int(await chain.rpc("eth_blockNumber"), 16)


async def test_a_height_answered_null_is_a_reorg_from_below_it_handled_once_without_reconnecting(
    chain: Chain, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dloop.listener")
    async with listening_through_nulls(chain, db) as (listener, nulls, signal):
        [first] = await chain.create_async(1)
        await chain.rpc("evm_mine")
        gap = await _head(chain)  # an empty block: the height the node will "lose"
        [pid] = await chain.create_async(1, first_index=1)  # just above the gap: in the re-read range
        await chain.rpc("evm_mine")
        await chain.rpc("evm_mine")
        head = await _head(chain)
        await wait_for_queue(db, signal, {first, pid})
        await wait_until(lambda: listener.status.last_head_number == head)
        before = await proposal(db, pid)
        assert before.block_number == gap + 1
        assert gap in listener._tracker.blocks  # stored: the check compares it with the chain

        # The top block is replaced, and from now on the node answers null for the gap (below its head).
        nulls.heights = {gap}
        await chain.rpc("anvil_reorg", [1, []])
        await wait_until(lambda: len(_events(caplog, "reorg_handled")) >= 1, timeout=10)
        await wait_for_queue(db, signal, {first, pid}, timeout=10)

        [missing] = _events(caplog, "blocks_missing")
        assert missing["heights"] == [gap]
        assert nulls.nulls_served.count(gap) >= 3  # read again before it was given up
        [handled] = _events(caplog, "reorg_handled")
        assert handled["fork_block"] == gap - 1  # from below the missing height, not from the new top
        assert handled["head"] == head
        assert pid in handled["proposals_rechecked"]  # its log, above the gap, was re-read
        status = listener.status
        assert status.reorgs_seen == 1 and status.reconnects == 0 and status.connected
        # The window is stored just after `reorg_handled` is logged: the gap is no longer a stored block.
        await wait_until(lambda: gap not in listener._tracker.blocks, timeout=5)

        after = await proposal(db, pid)
        assert (after.block_number, after.block_hash) == (before.block_number, before.block_hash)
        live = [log for log in await chain_logs(db) if not log.removed]
        assert sorted(log.proposal_id or 0 for log in live) == [first, pid]

        # A second check, the gap still unanswered: another top block replaced. Only that reorg is
        # handled (from just below the top); the gap is not handled a second time.
        await chain.rpc("anvil_reorg", [1, []])
        await wait_until(lambda: len(_events(caplog, "reorg_handled")) >= 2, timeout=10)
        handled_again = _events(caplog, "reorg_handled")[1]
        assert handled_again["fork_block"] == head - 1
        assert not handled_again["logs_removed"] and not handled_again["proposals_rechecked"]

        # New blocks on top are plain heads: no further reorg.
        [later] = await chain.create_async(1, first_index=2)
        await wait_for_queue(db, signal, {first, pid, later})
        status = listener.status
        assert status.reorgs_seen == 2 and status.reconnects == 0 and status.connected
        assert len(_events(caplog, "reorg_detected")) == 2

    assert await proposal_row_count(db) == 3
    assert all(states == ["queued"] * 5 for states in (await vote_states(db)).values())
    assert not [r for r in caplog.records if r.getMessage() == "listener_reconnecting"]


# A recorded log at a missing height: after the first handling the log is live again there (re-read from
# eth_getLogs); it must not count as a mismatch on every later check while the node keeps answering null.
async def test_a_null_height_holding_a_recorded_log_is_handled_once(
    chain: Chain, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dloop.listener")
    async with listening_through_nulls(chain, db) as (listener, nulls, signal):
        [pid] = await chain.create_async(1)
        await chain.rpc("evm_mine")
        await chain.rpc("evm_mine")
        head = await _head(chain)
        await wait_for_queue(db, signal, {pid})
        await wait_until(lambda: listener.status.last_head_number == head)
        before = await proposal(db, pid)
        assert before.block_number is not None

        nulls.heights = {before.block_number}
        await chain.rpc("anvil_reorg", [1, []])
        await wait_until(lambda: len(_events(caplog, "reorg_handled")) >= 1, timeout=10)
        await wait_for_queue(db, signal, {pid}, timeout=10)
        [handled] = _events(caplog, "reorg_handled")
        assert handled["fork_block"] == before.block_number - 1
        assert handled["proposals_rechecked"] == [pid]
        after = await proposal(db, pid)
        assert (after.block_number, after.block_hash) == (before.block_number, before.block_hash)

        await chain.rpc("anvil_reorg", [1, []])
        await wait_until(lambda: len(_events(caplog, "reorg_handled")) >= 2, timeout=10)
        handled_again = _events(caplog, "reorg_handled")[1]
        assert handled_again["fork_block"] == head - 1, handled_again
        status = listener.status
        assert status.reorgs_seen == 2 and status.reconnects == 0


# A vote confirmed in the missing block: its receipt names a block the node will not show, so it is not
# provably on chain. It is queued again rather than ending the connection; the voter reads hasVoted before
# any transaction, so it is not sent twice.
async def test_a_null_height_holding_a_confirmed_vote_does_not_end_the_connection(
    chain: Chain, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dloop.listener")
    async with listening_through_nulls(chain, db) as (listener, nulls, signal):
        [pid] = await chain.create_async(1)
        await wait_for_queue(db, signal, {pid})
        receipt = await chain.transact_async(chain.info.node_keys[0], "vote", pid, True)
        await chain.rpc("evm_mine")
        await wait_until(lambda: vote_state_is(db, pid, 0, "confirmed"))
        head = await _head(chain)
        await wait_until(lambda: listener.status.last_head_number == head)

        nulls.heights = {int(receipt["blockNumber"])}
        await chain.rpc("anvil_reorg", [1, []])
        await wait_until(lambda: _events(caplog, "reorg_handled") or listener.status.reconnects, timeout=10)
        assert listener.status.reconnects == 0
        [handled] = _events(caplog, "reorg_handled")
        assert handled["fork_block"] == int(receipt["blockNumber"]) - 1
        assert (await votes_of(db, pid))[0].state == "queued"
        assert _events(caplog, "vote_requeued_after_reorg")
        assert listener.status.reconnects == 0
