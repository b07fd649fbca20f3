"""Replay: decide stored proposals again with another strategy and list where it differs. Pure, no chain.

Each vote is decided again from what the database holds: the proposal, its tally and the price stored with
the decision (a decision stored without a price is replayed on token units, as it was then). The proposal is
decided as if still open (its status now may be executed or defeated): replay asks what the strategy would
have voted, not whether it could vote today.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from chain.types import ProposalData, ProposalStatus, ProposalType
from voter.strategies import NodeConfig, Price, Tally, decide


@dataclass(frozen=True)
class Recorded:
    """A recorded decision and what it was made on."""

    node: str
    strategy: str
    decision: str  # for / against / none
    reason: str | None
    price: str | None
    proposal: ProposalData


@dataclass(frozen=True)
class Difference:
    proposal_id: int
    node: str
    voted: str
    voted_reason: str | None
    replayed: str
    replayed_reason: str
    strategy: str  # what the node used


@dataclass(frozen=True)
class ReplayResult:
    decided: int
    differences: tuple[Difference, ...]


def stored_price(proposal: ProposalData, text: str | None) -> Price | None:
    if proposal.proposal_type not in (ProposalType.INVESTMENT, ProposalType.DIVESTMENT):
        return None
    if text is None:
        return Price.missing("no price stored with the decision")
    try:
        return Price(Decimal(text))
    except InvalidOperation:
        return Price.missing(f"stored price {text!r} is not a number")


def replay(votes: Iterable[Recorded], config: NodeConfig) -> ReplayResult:
    decided = 0
    differences = []
    for vote in votes:
        data = dataclasses.replace(vote.proposal, status=ProposalStatus.ACTIVE)
        decision = decide(data, Tally.of(data), data.created_at, config, stored_price(data, vote.price))
        decided += 1
        if decision.label != vote.decision:
            differences.append(
                Difference(
                    vote.proposal.proposal_id,
                    vote.node,
                    vote.decision,
                    vote.reason,
                    decision.label,
                    decision.reason,
                    vote.strategy,
                )
            )
    return ReplayResult(decided, tuple(differences))
