"""The vote state machine (storage/votes.py), as a table: pure, no database, no chain."""

from __future__ import annotations

from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from storage import votes
from storage.models import Vote, VoteOutcome, VoteState
from storage.votes import ALLOWED, INITIAL, IllegalTransition, allowed, sources

S = VoteState

# Every transition the service makes, by who makes it. A change here is a change of the design.
EXPECTED = {
    (S.PENDING, S.QUEUED),  # deep enough (listener heads, created log again, reconcile)
    (S.PENDING, S.CLOSED),  # closing log, reconcile: not open
    (S.PENDING, S.ALREADY_VOTED),  # reconcile: hasVoted, nothing sent
    (S.PENDING, S.CONFIRMED),  # our VoteCast log
    (S.QUEUED, S.QUEUED),  # decided again: other content under the proposal id (reorg)
    (S.QUEUED, S.PENDING),  # parked by a reorg; gas estimate says ProposalNotFound
    (S.QUEUED, S.SENT),  # signed, persisted before the broadcast
    (S.QUEUED, S.CONFIRMED),  # our VoteCast log; our earlier transaction found on chain
    (S.QUEUED, S.FAILED),  # the contract rejects the vote; the strategy raised
    (S.QUEUED, S.ALREADY_VOTED),
    (S.QUEUED, S.CLOSED),
    (S.QUEUED, S.NO_VOTE),
    (S.SENT, S.QUEUED),  # the transaction will never land: sent again
    (S.SENT, S.PENDING),  # reverted with ProposalNotFound: owed once the proposal is back
    (S.SENT, S.CONFIRMED),  # receipt (voter, reconcile), our VoteCast log
    (S.SENT, S.FAILED),  # reverted, or refused for good
    (S.SENT, S.ALREADY_VOTED),  # the nonce went to a vote sent outside the service
    (S.CONFIRMED, S.CONFIRMED),  # confirmed again (listener first), or in another block after a reorg
    (S.CONFIRMED, S.SENT),  # its transaction reorged out: checked again from the chain
    (S.CONFIRMED, S.QUEUED),  # reorged out and not voted on chain
    (S.CONFIRMED, S.PENDING),  # the same while the proposal is parked
    (S.FAILED, S.CONFIRMED),  # our VoteCast log
    (S.FAILED, S.QUEUED),  # reverted with ProposalNotFound, the proposal is back
    (S.FAILED, S.PENDING),
    (S.CLOSED, S.CONFIRMED),  # our VoteCast log
    (S.CLOSED, S.QUEUED),  # the closing log left the chain
    (S.CLOSED, S.PENDING),
    (S.NO_VOTE, S.QUEUED),  # decided again after a reorg changed the content
}


def test_the_table_is_the_documented_one() -> None:
    assert set(ALLOWED) == set(VoteState)
    assert {(a, b) for a, targets in ALLOWED.items() for b in targets} == EXPECTED
    assert {S.PENDING, S.QUEUED, S.CLOSED} == INITIAL  # closed: the reconcile pass finds it ended


def test_already_voted_is_final_and_every_state_is_reachable() -> None:
    assert ALLOWED[S.ALREADY_VOTED] == frozenset()
    reached, todo = set(INITIAL), list(INITIAL)
    while todo:
        for target in ALLOWED[todo.pop()]:
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert reached == set(VoteState)


def test_only_the_voter_signing_or_a_reorg_recheck_lead_to_sent() -> None:
    """Never two votes: a row enters `sent` when the voter signs it (from queued), or when a confirmed vote's
    transaction left the chain and is checked again (no new transaction)."""
    assert set(sources(S.SENT)) == {S.QUEUED, S.CONFIRMED}
    assert not allowed(S.ALREADY_VOTED, S.SENT) and not allowed(S.NO_VOTE, S.SENT)


def test_sources_checks_every_state_asked_for() -> None:
    assert sources(S.CLOSED, [S.PENDING, S.QUEUED]) == (S.PENDING, S.QUEUED)
    assert sources(S.CLOSED, ["queued", "queued"]) == (S.QUEUED,)  # type: ignore[list-item]
    with pytest.raises(IllegalTransition, match="sent -> no_vote"):
        sources(S.NO_VOTE, [S.QUEUED, S.SENT])
    with pytest.raises(IllegalTransition):
        sources(S.QUEUED, [])


def test_default_outcomes_name_allowed_targets() -> None:
    assert all(allowed(S.QUEUED, state) for state in votes.UNSENT_OUTCOMES)
    assert all(allowed(S.SENT, state) for state in votes.RESOLVED_OUTCOMES)


def test_outcome_codes_fit_the_column() -> None:
    length = Vote.__table__.c.outcome.type.length  # type: ignore[attr-defined]
    assert all(len(code) <= length for code in VoteOutcome)
    assert len({str(code) for code in VoteOutcome}) == len(VoteOutcome)


@pytest.mark.anyio
async def test_an_illegal_change_is_refused_before_any_statement() -> None:
    nothing = cast(AsyncSession, object())  # never used: the check comes first
    with pytest.raises(IllegalTransition, match="cannot become sent"):  # record_sent's, with its tx
        await votes.finish_unsent(
            nothing, 1, owner="o", state=S.SENT, decision=None, confidence=None, reason="r"
        )
    with pytest.raises(IllegalTransition, match="cannot become confirmed"):
        await votes.resolve_sent(nothing, 1, state=S.CONFIRMED, reason="r", deferred_owner="d")
    with pytest.raises(IllegalTransition):
        await votes.insert_missing(nothing, 1, [1], S.SENT)
    with pytest.raises(IllegalTransition, match="already_voted -> queued"):
        await votes.apply_reconcile_fix(
            nothing, 1, from_states=[S.ALREADY_VOTED], to_state=S.QUEUED, reason="r"
        )
