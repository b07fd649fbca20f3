"""Pure parts of the voter: fee maths, gas margin, batch planning, error classification. No chain."""

from __future__ import annotations

import datetime as dt

import pytest

from chain.connection import classify_rpc_error
from core.errors import (
    ChainError,
    ContractRevert,
    InsufficientFunds,
    NonceError,
    RateLimited,
    TransientChainError,
    Underpriced,
)
from storage.queue import QueuedVote
from voter.fees import GWEI, Fees, bump_fees, gas_limit, gwei_to_wei, includable, initial_fees
from voter.gas import GasEstimates, gas_key, ran_out_of_gas
from voter.outcomes import Action, classify
from voter.planning import NonceCounts, nonce_gap, nonce_plan, plan_batch, rows_by_node, used_after

CAP = gwei_to_wei(500)


def test_initial_fees_twice_base_plus_tip_capped() -> None:
    assert initial_fees(10 * GWEI, 1 * GWEI, CAP) == Fees(21 * GWEI, 1 * GWEI)
    assert initial_fees(300 * GWEI, 2 * GWEI, CAP) == Fees(CAP, 2 * GWEI)
    # A cap below the tip caps the tip too.
    assert initial_fees(1, 5 * GWEI, 2 * GWEI) == Fees(2 * GWEI, 2 * GWEI)


def test_includable_against_base_fee() -> None:
    assert includable(Fees(10, 1), 10) and not includable(Fees(10, 1), 11)


def test_gwei_to_wei_is_exact() -> None:
    assert gwei_to_wei(0.1) == 100_000_000
    assert gwei_to_wei(500.0) == 500 * GWEI
    assert gwei_to_wei(1e-9) == 1


@pytest.mark.parametrize(
    ("old", "base", "tip", "expected"),
    [
        # Chain fees unchanged: exactly +12.5% (rounded up) on both.
        (Fees(16 * GWEI, 8 * GWEI), 1 * GWEI, 1 * GWEI, Fees(18 * GWEI, 9 * GWEI)),
        (Fees(7, 3), 0, 0, Fees(8, 4)),  # ceil(7*1.125)=8, ceil(3*1.125)=4
        # The base fee rose: twice the new base fee plus the tip wins.
        (Fees(2 * GWEI, 1 * GWEI), 70 * GWEI, 1 * GWEI, Fees(141 * GWEI + GWEI // 8, GWEI + GWEI // 8)),
        # The node asks a higher tip now.
        (Fees(10 * GWEI, 1 * GWEI), 1 * GWEI, 3 * GWEI, Fees(int(11.25 * GWEI), 3 * GWEI)),
    ],
)
def test_bump_is_at_least_twelve_and_a_half_percent(old: Fees, base: int, tip: int, expected: Fees) -> None:
    bump = bump_fees(old, base_fee=base, priority_fee=tip, cap_wei=CAP)
    assert bump.fees == expected
    assert bump.fees.max_fee_per_gas * 8 >= old.max_fee_per_gas * 9
    assert bump.fees.max_priority_fee_per_gas * 8 >= old.max_priority_fee_per_gas * 9


def test_bump_within_the_cap() -> None:
    old = Fees(400 * GWEI, 1 * GWEI)
    bump = bump_fees(old, base_fee=300 * GWEI, priority_fee=1 * GWEI, cap_wei=CAP)
    assert bump.fees == Fees(CAP, GWEI + GWEI // 8)  # 2*base would be 601 gwei: capped at 500, still +25%


def test_cap_that_prevents_a_valid_bump_says_so() -> None:
    bump = bump_fees(Fees(450 * GWEI, 1 * GWEI), base_fee=10 * GWEI, priority_fee=GWEI, cap_wei=CAP)
    assert bump.fees is None
    assert "500 gwei" in bump.reason and "12.5%" in bump.reason


def test_gas_margin_rounds_up() -> None:
    assert gas_limit(100_000, 1.25) == 125_000
    assert gas_limit(127_051, 1.25) == 158_814  # 158813.75 -> up
    assert gas_limit(21_000, 1.0) == 21_000


def _row(vote_id: int, proposal: int, node: int, ends_in_hours: int) -> QueuedVote:
    ends = dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=ends_in_hours)
    return QueuedVote(vote_id, node, proposal + 100, proposal, 31337, "0xdao", "0xhash", ends, 0)


def test_plan_batch_takes_whole_proposals_most_urgent_first() -> None:
    rows = [_row(p * 10 + n, p, n, ends_in_hours=10 - p) for p in range(1, 6) for n in range(1, 4)]
    planned = plan_batch(rows, batch_size=2, node_ids={1, 2, 3})
    # Proposals 5 and 4 end first; all three nodes' rows of each.
    assert [(r.proposal_id, r.node_id) for r in planned] == [(5, 1), (5, 2), (5, 3), (4, 1), (4, 2), (4, 3)]


def test_plan_batch_leaves_out_nodes_that_cannot_send() -> None:
    rows = [_row(p * 10 + n, p, n, ends_in_hours=p) for p in range(1, 4) for n in (1, 2)]
    planned = plan_batch(rows, batch_size=5, node_ids={2})
    assert [(r.proposal_id, r.node_id) for r in planned] == [(1, 2), (2, 2), (3, 2)]
    assert plan_batch(rows, batch_size=5, node_ids=set()) == []


def test_plan_batch_ties_broken_by_proposal_id() -> None:
    rows = [_row(3, 9, 1, 5), _row(1, 7, 1, 5), _row(2, 8, 1, 5)]
    assert [r.proposal_id for r in plan_batch(rows, batch_size=2, node_ids={1})] == [7, 8]


@pytest.mark.parametrize(
    ("counts", "held", "expected"),
    [
        (NonceCounts(mined=4, pending=4), set(), (4, [])),  # idle
        (NonceCounts(mined=4, pending=7), {4, 5, 6}, (7, [])),  # three in flight, no gap
        # A reorg took the mined votes 4 and 5 away; ours at 6 waits: 4 and 5 are free for the next votes.
        (NonceCounts(mined=4, pending=4), {6}, (7, [4, 5])),
        # anvil's pool still counts a transaction it dropped after the reorg (pending 7): the gap is
        # counted from the mined count all the same.
        (NonceCounts(mined=4, pending=7), {6}, (7, [4, 5])),
        # A pending transaction sent outside the service (nonce 7) keeps its nonce; nothing below is ours.
        (NonceCounts(mined=7, pending=8), set(), (8, [])),
    ],
)
def test_nonce_plan_fills_gaps_counted_from_the_mined_nonce(
    counts: NonceCounts, held: set[int], expected: tuple[int, list[int]]
) -> None:
    assert nonce_plan(counts, held) == expected


def test_nonce_gap_is_what_no_mined_transaction_used_and_nothing_of_ours_holds() -> None:
    assert nonce_gap(3, 7, {4, 6}) == [3, 5]
    assert nonce_gap(7, 7, set()) == []


def test_nonce_plan_counts_read_before_our_votes_were_mined_show_no_gap() -> None:
    """The snapshot's counts are a moment old when the lane signs: votes 4..6 mined and settled since (no
    longer held) are not a gap. Before the fix the lane signed new votes with 4, 5 and 6: "nonce too low"."""
    stale = NonceCounts(mined=4, pending=8, read_at=10.0)
    assert nonce_plan(stale, {7}) == (8, [4, 5, 6])  # what the lane did
    assert nonce_plan(stale, {7}, used={4, 5, 6}) == (8, [])
    # All settled, none held: the next nonce is past the used ones even if the pool count lagged.
    assert nonce_plan(NonceCounts(mined=4, pending=4, read_at=10.0), set(), used={4, 5}) == (6, [])
    # A reorg gap below a used one is still a gap.
    assert nonce_plan(NonceCounts(mined=4, pending=4), {6}, used={5}) == (7, [4])


def test_used_nonces_count_for_counts_read_before_they_were_seen() -> None:
    """A used nonce counts against a gap only for counts read before it was seen (a reorg may have freed it
    since, and counts read later say so); forgotten `memory_s` after it was seen."""
    seen = {4: 100.0, 5: 105.0, 9: 20.0}
    kept, used = used_after(seen, NonceCounts(mined=4, pending=6, read_at=101.0), now=110.0, memory_s=60.0)
    assert (kept, used) == ({4: 100.0, 5: 105.0}, {5})  # 9: seen over a minute ago
    # Counts read later do not forget them: a batch may still sign with the older counts.
    fresh = NonceCounts(mined=6, pending=6, read_at=106.0)
    assert used_after(kept, fresh, now=110.0, memory_s=60.0) == (kept, set())
    older = NonceCounts(mined=4, pending=6, read_at=99.0)
    assert used_after(kept, older, now=110.0, memory_s=60.0) == (kept, {4, 5})


def test_rows_by_node_keeps_batch_order() -> None:
    rows = [_row(1, 1, 1, 1), _row(2, 1, 2, 1), _row(3, 2, 1, 2)]
    assert {n: [r.vote_id for r in rs] for n, rs in rows_by_node(rows).items()} == {1: [1, 3], 2: [2]}


REVERT = "0xdc3b0dc4"  # a custom error selector the ABI knows (VotingPeriodEnded)


@pytest.mark.parametrize(
    ("error", "action"),
    [
        ({"code": -32003, "message": "Insufficient funds for gas * price + value"}, Action.UNFUNDED),
        ({"code": -32003, "message": "nonce too low"}, Action.RESYNC_NONCE),
        ({"code": -32000, "message": "nonce too high"}, Action.RESYNC_NONCE),
        ({"code": -32003, "message": "max fee per gas less than block base fee"}, Action.BUMP_FEES),
        ({"code": -32000, "message": "replacement transaction underpriced"}, Action.BUMP_FEES),
        ({"code": -32005, "message": "Too Many Requests"}, Action.BACKOFF),
        ({"code": -32003, "message": "transaction already imported"}, Action.ACCEPTED),
        ({"code": -32000, "message": "already known"}, Action.ACCEPTED),
        ({"code": 3, "message": "execution reverted", "data": REVERT}, Action.CLOSED),
        ({"code": -32601, "message": "method not found"}, Action.WAIT),
    ],
)
def test_rpc_errors_map_to_actions(error: dict[str, object], action: Action) -> None:
    assert classify(classify_rpc_error(error)) == action


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (ContractRevert("VotingPeriodEnded"), Action.CLOSED),
        (ContractRevert("InvalidProposalState"), Action.CLOSED),
        (ContractRevert("VotingBufferNotElapsed"), Action.ALREADY_VOTED),
        (ContractRevert("ContractPaused"), Action.WAIT),
        (ContractRevert("ProposalNotFound"), Action.TERMINAL),
        (ContractRevert("NotAuthorized"), Action.TERMINAL),
        (InsufficientFunds("x"), Action.UNFUNDED),
        (NonceError("x"), Action.RESYNC_NONCE),
        (Underpriced("x"), Action.BUMP_FEES),
        (RateLimited("x"), Action.BACKOFF),
        (TransientChainError("timeout"), Action.BACKOFF),
        (ChainError("weird"), Action.WAIT),
    ],
)
def test_error_tree_maps_to_actions(exc: ChainError, action: Action) -> None:
    assert classify(exc) == action


def test_gas_estimates_keep_the_highest_per_type_and_call_until_forgotten() -> None:
    yes, no = (gas_key(0, "0xC9D27AFE" + "00" * 64, support) for support in (True, False))
    assert yes == gas_key(0, "0xc9d27afe" + "11" * 64, True)  # another proposal: the same key
    assert yes != gas_key(1, "0xc9d27afe", True) and yes != no
    estimates = GasEstimates()
    assert estimates.known(yes) is None
    estimates.learn(yes, 70_000)
    estimates.learn(yes, 52_000)  # a later vote on a tally already counted costs less: the first is kept
    estimates.learn(no, 71_000)
    assert (estimates.known(yes), estimates.known(no), len(estimates)) == (70_000, 71_000, 2)
    estimates.forget()
    assert estimates.known(yes) is None and len(estimates) == 0


@pytest.mark.parametrize(("used", "limit", "out"), [(87_500, 87_500, True), (31_000, 87_500, False)])
def test_ran_out_of_gas_when_the_limit_was_all_used(used: int, limit: int, out: bool) -> None:
    assert ran_out_of_gas(used, limit) is out
