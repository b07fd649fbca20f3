"""The reconcile pass's plan (listener/reconcile_plan.py), pure: no chain, no database."""

from __future__ import annotations

import dataclasses

import pytest

from chain.client import Receipt, mined_receipt
from chain.types import AssetInfo, ProposalData, ProposalStatus
from listener.reconcile_plan import (
    KnownProposal,
    ProposalRecord,
    VoteRow,
    id_windows,
    ids_to_read,
    mined_sent_votes,
    plan_records,
    plan_vote_fixes,
)
from storage.models import VoteState

ASSET = AssetInfo("0x" + "11" * 20, "USDC", 6)


def proposal(
    proposal_id: int, *, status: int = ProposalStatus.ACTIVE, voting_ends: int = 1_000
) -> ProposalData:
    return ProposalData(
        proposal_id=proposal_id,
        proposal_type=0,
        asset_address=ASSET.address,
        amount=10**6,
        description="buy",
        proposer="0x" + "22" * 20,
        created_at=0,
        voting_ends=voting_ends,
        yes_votes=0,
        no_votes=0,
        status=status,
        executed=False,
        asset=ASSET,
    )


def test_the_ids_to_consider_start_at_one_include_the_newest_and_have_no_cap() -> None:
    assert id_windows(0, 3) == []
    assert id_windows(3, 3) == [range(1, 4)]
    assert id_windows(4, 3) == [range(1, 4), range(4, 5)]
    assert id_windows(7, 3) == [range(1, 4), range(4, 7), range(7, 8)]
    assert [i for w in id_windows(120, 7) for i in w] == list(range(1, 121))
    with pytest.raises(ValueError, match="at least one id"):
        id_windows(5, 0)
    assert ids_to_read(range(1, 1), {}, 100) == []
    assert ids_to_read(range(101, 121), {}, 100) == list(range(101, 121))  # a later window, all unknown


def test_what_to_read_only_skips_proposals_that_can_no_longer_change() -> None:
    active, executed, canceled = ProposalStatus.ACTIVE, ProposalStatus.EXECUTED, ProposalStatus.CANCELED
    known = {
        1: KnownProposal(1, status=active, voting_ends=50, has_open_votes=False),  # ended, nothing open: skip
        2: KnownProposal(2, status=active, voting_ends=50, has_open_votes=True),  # ended, a vote still queued
        3: KnownProposal(3, status=executed, voting_ends=500, has_open_votes=False),  # final
        4: KnownProposal(4, status=active, voting_ends=500, has_open_votes=False),  # open: tally may move
        5: KnownProposal(5, status=canceled, voting_ends=500, has_open_votes=False),  # final
    }
    assert ids_to_read(range(1, 7), known, chain_time=100) == [2, 4, 6]


def test_what_to_insert_open_proposals_queue_their_votes_the_others_start_closed() -> None:
    read = [proposal(1), proposal(2, voting_ends=10), proposal(3, status=ProposalStatus.CANCELED)]
    plan = plan_records(read, chain_time=100)
    assert plan.records == (
        ProposalRecord(read[0], VoteState.QUEUED),
        ProposalRecord(read[1], VoteState.CLOSED),
        ProposalRecord(read[2], VoteState.CLOSED),
    )
    assert plan.open_ids == {1} and plan.read_ids == {1, 2, 3}
    assert plan_records([], chain_time=100).records == ()


def test_the_plan_is_made_of_frozen_values() -> None:
    plan = plan_records([proposal(1)], chain_time=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.open_ids = frozenset()  # type: ignore[misc]
    assert isinstance(plan.records, tuple)
    assert isinstance(plan.open_ids, frozenset) and isinstance(plan.read_ids, frozenset)


def test_fixes_close_mark_promote_and_reopen() -> None:
    plan = plan_records([proposal(7, voting_ends=10), proposal(8)], chain_time=100)
    rows = [
        VoteRow(1, proposal_id=7, node_id=1, state="queued", tx_hash=None),  # no longer open: closed
        VoteRow(2, proposal_id=8, node_id=1, state="queued", tx_hash=None),  # voted elsewhere
        VoteRow(3, proposal_id=8, node_id=2, state="pending", tx_hash=None),  # deep enough: queued
        VoteRow(4, proposal_id=8, node_id=3, state="sent", tx_hash="0xaa"),  # the voter's
        VoteRow(5, proposal_id=8, node_id=4, state="confirmed", tx_hash="0xbb", confirmed_block=40),  # reorg
        VoteRow(6, proposal_id=8, node_id=5, state="confirmed", tx_hash="0xcc", confirmed_block=40),  # fine
        VoteRow(7, proposal_id=9, node_id=1, state="queued", tx_hash=None),  # not read this pass
    ]
    has_voted = {(8, 1): True, (8, 2): False, (8, 3): True, (8, 4): False, (8, 5): True}
    fixes = plan_vote_fixes(rows, plan.open_ids, plan.read_ids, has_voted, read_block=50)
    assert [(f.vote_id, f.from_states, f.to_state) for f in fixes] == [
        (1, (VoteState.PENDING, VoteState.QUEUED), VoteState.CLOSED),
        (2, (VoteState.PENDING, VoteState.QUEUED), VoteState.ALREADY_VOTED),
        (3, (VoteState.PENDING,), VoteState.QUEUED),
        (5, (VoteState.CONFIRMED,), VoteState.QUEUED),
    ]
    # Nothing ever moves a sent row, and no fix puts a row into `sent`.
    assert all(f.vote_id != 4 and f.to_state != VoteState.SENT for f in fixes)


def test_sent_votes_are_confirmed_only_by_a_successful_deep_enough_receipt() -> None:
    ok = Receipt("0x1", status=1, block_number=10, gas_used=50_000)
    reverted = Receipt("0x2", status=0, block_number=10, gas_used=50_000)
    receipts: dict[int, list[Receipt | None]] = {1: [None, ok], 2: [reverted], 3: [None]}
    assert mined_sent_votes(receipts, head=12, confirmations=2) == {1: ok}
    assert mined_sent_votes(receipts, head=11, confirmations=2) == {}


def test_a_confirmed_vote_the_chain_does_not_have_is_queued_again() -> None:
    # A reorg the listener missed: the row says confirmed, the chain (read at block 50) says not voted.
    rows = [
        VoteRow(1, proposal_id=8, node_id=1, state="confirmed", tx_hash="0xaa", confirmed_block=40),
        VoteRow(2, proposal_id=8, node_id=2, state="confirmed", tx_hash="0xbb", confirmed_block=40),
        VoteRow(3, proposal_id=8, node_id=3, state="confirmed", tx_hash="0xcc", confirmed_block=55),  # newer
        VoteRow(4, proposal_id=8, node_id=4, state="confirmed", tx_hash="0xdd", confirmed_block=40),  # unread
        VoteRow(5, proposal_id=7, node_id=1, state="confirmed", tx_hash="0xee", confirmed_block=40),  # closed
    ]
    has_voted = {(8, 1): False, (8, 2): True, (8, 3): False, (7, 1): False}
    fixes = plan_vote_fixes(rows, open_ids={8}, read_ids={7, 8}, has_voted=has_voted, read_block=50)
    assert [(f.vote_id, f.to_state) for f in fixes] == [(1, VoteState.QUEUED)]
    assert "reorg" in fixes[0].reason
    # Without the block read, nothing confirmed is touched.
    assert plan_vote_fixes(rows, open_ids={8}, read_ids={8}, has_voted=has_voted) == []


def test_mined_receipt_needs_success_and_depth() -> None:
    ok = Receipt("0x1", status=1, block_number=10, gas_used=50_000)
    reverted = Receipt("0x2", status=0, block_number=10, gas_used=50_000)
    assert mined_receipt([None, reverted, ok], head=10, confirmations=0) == ok
    assert mined_receipt([ok], head=10, confirmations=2) is None
    assert mined_receipt([reverted, None], head=20, confirmations=0) is None
