"""The voter against a real anvil: every node votes by its strategy, exactly once, whatever the chain does."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chain.types import ProposalData
from storage.models import VoteState
from tests.support.chain import devnet_chain
from tests.support.voter import Harness, check_exactly_once, make_harness, queue_proposals, rpc, vote_rows
from voter.strategies import Tally, decide, node_config

# slow: starts its own anvil
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def assert_decisions_match(h: Harness, proposals: list[ProposalData], chain_time: int) -> None:
    """Each row's decision is what its node's strategy says for the same data (nobody had voted yet)."""
    by_id = {p.proposal_id: p for p in proposals}
    configs = {a.name: node_config(a.strategy, h.settings.strategies) for a in h.accounts}
    rows = await vote_rows(h.sessions)
    assert len(rows) == len(proposals) * len(h.accounts)
    for row in rows:
        expected = decide(by_id[row.proposal_id], Tally(0, 0), chain_time, configs[row.node])
        # The devnet contract has no price oracle yet: the token-unit rule decides, and the reason says so.
        reason = row.reason or ""
        assert reason == expected.reason or reason.startswith(expected.reason + " (no price: "), row
        assert (row.decision, row.confidence) == (expected.label, expected.confidence), row


@pytest.mark.parametrize("block_time", [None, 1.0], ids=["automine", "block-time-1"])
async def test_49_proposals_by_5_nodes(tmp_path: Path, block_time: float | None) -> None:
    with devnet_chain(49, block_time=block_time) as (node, info):
        h = await make_harness(node, info, tmp_path)
        proposals = await queue_proposals(h)
        chain_time = int(rpc(node.http_url, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
        started = time.monotonic()
        result = await h.voter().drain()
        elapsed = time.monotonic() - started
        rows = await vote_rows(h.sessions)
        assert {r.state for r in rows} == {VoteState.CONFIRMED}, [r for r in rows if r.state != "confirmed"]
        assert result.sent == 245 and result.confirmed == 245 and result.in_flight == 0
        assert not result.left_work
        await assert_decisions_match(h, proposals, chain_time)
        per_node = check_exactly_once(node.http_url, info.contract_address, h.addresses)
        assert list(per_node.values()) == [49] * 5
        print(f"245 votes in {elapsed:.2f} s ({'automine' if block_time is None else 'block time 1 s'})")
