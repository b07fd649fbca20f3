"""Fencing end to end, on a real anvil and database: an instance that still believes it owns the node lanes
(its lease has not lapsed by its clock) while another instance has taken them over signs votes, but the
database refuses to record them under its stale token, so nothing is broadcast; it stops signing, and the new
owner votes every row exactly once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import anyio
import pytest

from storage import lanes
from storage.models import VoteState, utcnow
from tests.support.chain import devnet_chain
from tests.support.voter import check_exactly_once, make_harness, queue_proposals, vote_rows
from voter.ownership import LaneOwnership

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.both_databases]

PROPOSALS = 3


async def test_a_fenced_off_instance_records_and_broadcasts_nothing_the_new_owner_votes_once(
    tmp_path: Path, database_url: str
) -> None:
    with devnet_chain(PROPOSALS) as (node, info):
        h = await make_harness(node, info, tmp_path, database_url=database_url)
        await queue_proposals(h)
        old = LaneOwnership(
            h.sessions, chain_id=info.chain_id, addresses=h.addresses, owner="voter-old", takeover_seconds=60
        )
        await old.tick()
        assert all(old.fence(a) is not None for a in h.addresses)
        # The other instance takes every lane, as it may once the old lease has expired by the database's
        # rows (the old instance was frozen, or its clock runs behind): the old one has not noticed.
        await lanes.acquire(
            h.sessions,
            chain_id=info.chain_id,
            addresses=h.addresses,
            owner="voter-new",
            seconds=600,
            now=utcnow() + dt.timedelta(seconds=60),
        )
        assert all(old.fence(a) is not None for a in h.addresses)  # still "ours" by its own view

        stale = h.voter(owner="voter-old", ownership=old)
        result = await stale.drain(deadline=anyio.current_time() + 20)
        assert result.sent == 0 and result.leased > 0, result
        assert all(old.fence(a) is None for a in h.addresses)  # told by the refused record: stopped
        assert not any(lane.owned for lane in stale.status.lanes)
        for address in h.addresses:  # nothing reached the chain: no nonce used
            assert int(h.rpc("eth_getTransactionCount", [address, "pending"]), 16) == 0
        rows = await vote_rows(h.sessions)
        assert {r.state for r in rows} == {VoteState.QUEUED} and not any(r.tx_hash for r in rows)

        new = LaneOwnership(
            h.sessions, chain_id=info.chain_id, addresses=h.addresses, owner="voter-new", takeover_seconds=60
        )
        await new.tick()
        owner = h.voter(owner="voter-new", ownership=new)
        done = await owner.drain(deadline=anyio.current_time() + 60)
        assert done.sent == PROPOSALS * len(h.addresses), done
        rows = await vote_rows(h.sessions)
        assert {r.state for r in rows} == {VoteState.CONFIRMED}, rows
        votes = check_exactly_once(node.http_url, info.contract_address, h.addresses)
        assert sum(votes.values()) == PROPOSALS * len(h.addresses)
