"""Governance analytics from the vote history: pure computations on frozen facts (storage/analytics.py reads
them). Definitions, also in the README:

- a vote is *owed* by a node on every proposal of the window, except where its strategy declined (`no_vote`:
  an invalid or closed proposal), where it was decided in a dry run (`dry_run`), and where the proposal is
  still open and the vote still on its way;
- a vote is *cast* when it is on chain: `confirmed` (by this service) or `already_voted` (by the same key);
- *participation* = cast / owed; *time to vote* = from the proposal's creation (chain time) to the vote
  being mined, p50 and p95 by linear interpolation between the closest ranks;
- *gas* and *ETH spent* are of the mined votes (gas used x effective gas price);
- the *final majority* of a proposal whose voting ended is `for` when its final yes tally exceeds the no
  tally, `against` when below, none on a tie; a node *agrees* when its mined for/against decision is it;
- *pairwise agreement* of two nodes: of the proposals both cast a for/against vote on, the share where
  their decisions match;
- *approval rate* (per proposal type and per asset): of the proposals whose outcome is recorded, the share
  whose final majority is `for`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

CAST_STATES = frozenset({"confirmed", "already_voted"})
OPEN_STATES = frozenset({"pending", "queued", "sent"})
DECISIONS = frozenset({"for", "against"})


@dataclass(frozen=True)
class Outcome:
    """A proposal's result, recorded once its votingEnds passed."""

    yes: int
    no: int
    status: str
    executed: bool

    @property
    def majority(self) -> str | None:
        if self.yes > self.no:
            return "for"
        if self.no > self.yes:
            return "against"
        return None


@dataclass(frozen=True)
class ProposalFact:
    proposal_id: int
    proposal_type: str
    asset: str
    created_at: dt.datetime
    voting_ends: dt.datetime
    outcome: Outcome | None = None


@dataclass(frozen=True)
class VoteFact:
    proposal_id: int
    node: str
    strategy: str
    state: str
    decision: str | None = None
    confirmed_at: dt.datetime | None = None
    gas_used: int | None = None
    fee_wei: int | None = None


@dataclass(frozen=True)
class Performance:
    name: str  # a node, or a strategy
    votes_owed: int
    votes_cast: int
    votes_failed: int
    participation: float | None
    time_to_vote_p50: float | None  # seconds
    time_to_vote_p95: float | None
    gas_used: int
    eth_spent_wei: int
    compared_with_majority: int
    agreed_with_majority: int
    majority_agreement: float | None


@dataclass(frozen=True)
class PairAgreement:
    node_a: str
    node_b: str
    compared: int
    agreed: int
    rate: float | None


@dataclass(frozen=True)
class Approval:
    key: str  # a proposal type, or an asset
    proposals: int
    decided: int  # outcome recorded
    approved: int
    executed: int
    rate: float | None


@dataclass(frozen=True)
class DayStats:
    day: dt.date
    proposals: int
    decided: int
    approved: int
    votes_owed: int
    votes_cast: int
    participation: float | None
    eth_spent_wei: int


@dataclass(frozen=True)
class Report:
    since: dt.datetime | None
    until: dt.datetime | None
    proposals: int
    decided: int
    approved: int
    nodes: tuple[Performance, ...]
    strategies: tuple[Performance, ...]
    pairs: tuple[PairAgreement, ...]
    by_type: tuple[Approval, ...]
    by_asset: tuple[Approval, ...]
    days: tuple[DayStats, ...]


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = p * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def in_window(created_at: dt.datetime, since: dt.datetime | None, until: dt.datetime | None) -> bool:
    return (since is None or created_at >= since) and (until is None or created_at < until)


def is_owed(vote: VoteFact, proposal: ProposalFact, now: dt.datetime) -> bool:
    if vote.state in ("no_vote", "dry_run"):  # declined by the strategy, or decided in a dry run
        return False
    return not (vote.state in OPEN_STATES and proposal.voting_ends >= now)


def performance(
    name: str, votes: Iterable[VoteFact], proposals: dict[int, ProposalFact], now: dt.datetime
) -> Performance:
    owed = cast = failed = gas = eth = compared = agreed = 0
    latencies: list[float] = []
    for vote in votes:
        proposal = proposals[vote.proposal_id]
        if is_owed(vote, proposal, now):
            owed += 1
        if vote.state == "failed":
            failed += 1
        if vote.state not in CAST_STATES:
            continue
        cast += 1
        if vote.state != "confirmed":
            continue
        if vote.confirmed_at is not None:
            latencies.append((vote.confirmed_at - proposal.created_at).total_seconds())
        gas += vote.gas_used or 0
        eth += vote.fee_wei or 0
        majority = proposal.outcome.majority if proposal.outcome is not None else None
        if majority is not None and vote.decision in DECISIONS:
            compared += 1
            agreed += vote.decision == majority
    return Performance(
        name=name,
        votes_owed=owed,
        votes_cast=cast,
        votes_failed=failed,
        participation=ratio(cast, owed),
        time_to_vote_p50=percentile(latencies, 0.5),
        time_to_vote_p95=percentile(latencies, 0.95),
        gas_used=gas,
        eth_spent_wei=eth,
        compared_with_majority=compared,
        agreed_with_majority=agreed,
        majority_agreement=ratio(agreed, compared),
    )


def pairwise(votes: Sequence[VoteFact], nodes: Sequence[str]) -> list[PairAgreement]:
    decided: dict[str, dict[int, str]] = defaultdict(dict)
    for vote in votes:
        if vote.state in CAST_STATES and vote.decision in DECISIONS:
            decided[vote.node][vote.proposal_id] = str(vote.decision)
    out = []
    for a, b in itertools.combinations(sorted(nodes), 2):
        both = decided[a].keys() & decided[b].keys()
        agreed = sum(1 for p in both if decided[a][p] == decided[b][p])
        out.append(PairAgreement(a, b, len(both), agreed, ratio(agreed, len(both))))
    return out


def approvals(proposals: Iterable[ProposalFact], key: Callable[[ProposalFact], str]) -> list[Approval]:
    groups: dict[str, list[ProposalFact]] = defaultdict(list)
    for proposal in proposals:
        groups[key(proposal)].append(proposal)
    out = []
    for name in sorted(groups):
        group = groups[name]
        decided = [p for p in group if p.outcome is not None]
        approved = sum(1 for p in decided if p.outcome is not None and p.outcome.majority == "for")
        executed = sum(1 for p in decided if p.outcome is not None and p.outcome.executed)
        out.append(
            Approval(name, len(group), len(decided), approved, executed, ratio(approved, len(decided)))
        )
    return out


def report(
    proposals: Sequence[ProposalFact],
    votes: Sequence[VoteFact],
    *,
    now: dt.datetime,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    nodes: Sequence[str] = (),
) -> Report:
    """The analytics of the proposals created in [since, until) and their votes."""
    chosen = {p.proposal_id: p for p in proposals if in_window(p.created_at, since, until)}
    mine = [v for v in votes if v.proposal_id in chosen]
    node_names = sorted({*nodes, *(v.node for v in mine)})
    by_node: dict[str, list[VoteFact]] = defaultdict(list)
    by_strategy: dict[str, list[VoteFact]] = defaultdict(list)
    for vote in mine:
        by_node[vote.node].append(vote)
        by_strategy[vote.strategy].append(vote)
    decided = [p for p in chosen.values() if p.outcome is not None]
    approved = sum(1 for p in decided if p.outcome is not None and p.outcome.majority == "for")
    return Report(
        since=since,
        until=until,
        proposals=len(chosen),
        decided=len(decided),
        approved=approved,
        nodes=tuple(performance(n, by_node[n], chosen, now) for n in node_names),
        strategies=tuple(performance(s, by_strategy[s], chosen, now) for s in sorted(by_strategy)),
        pairs=tuple(pairwise(mine, node_names)),
        by_type=tuple(approvals(chosen.values(), lambda p: p.proposal_type)),
        by_asset=tuple(approvals(chosen.values(), lambda p: p.asset)),
        days=tuple(days(list(chosen.values()), mine, now)),
    )


def days(proposals: Sequence[ProposalFact], votes: Sequence[VoteFact], now: dt.datetime) -> list[DayStats]:
    by_id = {p.proposal_id: p for p in proposals}
    out = []
    for day in sorted({p.created_at.astimezone(dt.UTC).date() for p in proposals}):
        todays = [p for p in proposals if p.created_at.astimezone(dt.UTC).date() == day]
        ids = {p.proposal_id for p in todays}
        day_votes = [v for v in votes if v.proposal_id in ids]
        owed = sum(1 for v in day_votes if is_owed(v, by_id[v.proposal_id], now))
        cast = sum(1 for v in day_votes if v.state in CAST_STATES)
        decided = [p for p in todays if p.outcome is not None]
        out.append(
            DayStats(
                day=day,
                proposals=len(todays),
                decided=len(decided),
                approved=sum(1 for p in decided if p.outcome is not None and p.outcome.majority == "for"),
                votes_owed=owed,
                votes_cast=cast,
                participation=ratio(cast, owed),
                eth_spent_wei=sum(v.fee_wei or 0 for v in day_votes if v.state == "confirmed"),
            )
        )
    return out
