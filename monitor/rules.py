"""The alert rules: what is wrong right now, from one snapshot of facts. Pure: no I/O, no clock.

`evaluate` returns the conditions that hold, and the rules (or single fingerprints) it could not judge because
their facts were unavailable (the chain did not answer): the engine keeps those alerts as they were instead
of resolving them.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


class Rule(enum.StrEnum):
    MISSED_VOTE_RISK = "MissedVoteRisk"
    VOTE_FAILED = "VoteFailed"
    NODE_LOW_BALANCE = "NodeLowBalance"
    NODE_NO_WEIGHT = "NodeNoWeight"
    LISTENER_DOWN = "ListenerDown"
    LISTENER_BLIND = "ListenerBlind"
    RPC_ERRORS = "RpcErrors"
    ROUND_STUCK = "RoundStuck"


SEVERITY: dict[Rule, Severity] = {
    Rule.MISSED_VOTE_RISK: Severity.CRITICAL,
    Rule.VOTE_FAILED: Severity.WARNING,
    Rule.NODE_LOW_BALANCE: Severity.WARNING,
    Rule.NODE_NO_WEIGHT: Severity.WARNING,
    Rule.LISTENER_DOWN: Severity.CRITICAL,
    Rule.LISTENER_BLIND: Severity.WARNING,
    Rule.RPC_ERRORS: Severity.WARNING,
    Rule.ROUND_STUCK: Severity.WARNING,
}

RPC_WINDOW_SECONDS = 300.0  # RpcErrors: the error rate over the last 5 minutes
RPC_MIN_REQUESTS = 20  # fewer requests than this in the window: too few to call a rate
ROUND_GRACE_SECONDS = 60.0  # RoundStuck: a round running longer than DLOOP_ROUND_DEADLINE plus this
VOTE_IN_PROGRESS_SECONDS = 60.0  # MissedVoteRisk: a vote queued this recently is being voted, not missed


def fingerprint(rule: str, subject: str) -> str:
    return f"{rule}:{subject}"


@dataclass(frozen=True)
class Condition:
    """One thing wrong: `rule` about `subject` (a node, a proposal and node, the listener ...)."""

    rule: Rule
    subject: str
    summary: str

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.rule]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.subject)


@dataclass(frozen=True)
class UnvotedVote:
    """A node's vote on an open proposal that is not (yet) on chain: pending, queued, sent or failed."""

    proposal_id: int
    node: str
    state: str
    voting_ends: dt.datetime
    queued_for: float  # seconds since the row was queued (wall clock)
    reason: str | None = None  # why it failed (state failed)


@dataclass(frozen=True)
class NodeFunds:
    """A node's balances; None where the chain did not answer."""

    node: str
    eth_wei: int | None
    dloop_wei: int | None
    vote_cost_wei: int  # what one vote may cost at current fees


@dataclass(frozen=True)
class ListenerHealth:
    enabled: bool
    connected: bool
    silent_for: float  # seconds since the latest head (since start-up when none arrived yet)
    disconnected_for: float  # seconds since the listener was last seen connected (0 when connected)
    blind_reason: str | None = None


@dataclass(frozen=True)
class RpcSample:
    """Running totals of the chain client at `at` (monotonic seconds)."""

    at: float
    errors: int
    requests: int


@dataclass(frozen=True)
class RunningRound:
    id: int
    running_for: float  # seconds


@dataclass(frozen=True)
class RuleSettings:
    deadline_hours: float = 6.0
    min_votes: int = 20
    head_timeout: float = 30.0
    rpc_error_rate: float = 0.2
    round_deadline: float = 90.0


@dataclass(frozen=True)
class Facts:
    chain_now: dt.datetime  # the chain's clock (proposals close by it)
    unvoted: Sequence[UnvotedVote] = ()
    funds: Sequence[NodeFunds] | None = None  # None: the balances could not be read
    listener: ListenerHealth | None = None
    rpc_samples: Sequence[RpcSample] = ()  # oldest first
    rounds: Sequence[RunningRound] = ()


@dataclass(frozen=True)
class Evaluation:
    conditions: tuple[Condition, ...]
    unknown: frozenset[str] = field(default_factory=frozenset)  # rules or fingerprints not judged


def evaluate(facts: Facts, settings: RuleSettings) -> Evaluation:
    conditions: list[Condition] = []
    unknown: set[str] = set()
    conditions += votes_at_risk(facts, settings)
    conditions += failed_votes(facts)
    if facts.funds is None:
        unknown |= {Rule.NODE_LOW_BALANCE, Rule.NODE_NO_WEIGHT}
    else:
        found, unjudged = node_funds(facts.funds, settings)
        conditions += found
        unknown |= unjudged
    if facts.listener is not None:
        conditions += listener(facts.listener, settings)
    conditions += rpc_errors(facts.rpc_samples, settings)
    conditions += rounds_stuck(facts.rounds, settings)
    return Evaluation(tuple(conditions), frozenset(unknown))


def votes_at_risk(facts: Facts, settings: RuleSettings) -> list[Condition]:
    """MissedVoteRisk: the proposal is open, ends within the deadline, and the node's vote is not on chain
    (failed, or still pending/queued/sent for longer than a vote takes)."""
    horizon = facts.chain_now + dt.timedelta(hours=settings.deadline_hours)
    out = []
    for vote in facts.unvoted:
        if not facts.chain_now <= vote.voting_ends <= horizon:
            continue
        if vote.state != "failed" and vote.queued_for < VOTE_IN_PROGRESS_SECONDS:
            continue
        left = _duration((vote.voting_ends - facts.chain_now).total_seconds())
        out.append(
            Condition(
                Rule.MISSED_VOTE_RISK,
                f"proposal {vote.proposal_id} / {vote.node}",
                f"{vote.node} has not voted on proposal {vote.proposal_id} (vote {vote.state}); "
                f"voting ends in {left}",
            )
        )
    return out


def failed_votes(facts: Facts) -> list[Condition]:
    """VoteFailed: a vote ended `failed` on a proposal still open (after votingEnds nothing can be done)."""
    return [
        Condition(
            Rule.VOTE_FAILED,
            f"proposal {vote.proposal_id} / {vote.node}",
            f"{vote.node}'s vote on proposal {vote.proposal_id} failed: "
            f"{vote.reason or 'no reason recorded'}",
        )
        for vote in facts.unvoted
        if vote.state == "failed" and vote.voting_ends >= facts.chain_now
    ]


def votes_affordable(balance_wei: int | None, vote_cost_wei: int) -> int | None:
    """How many more votes a balance pays for at current fees: balance / (gas per vote x fee per gas); None
    when the balance or the cost is unknown. The one figure behind NodeLowBalance, the dashboard's "votes
    left" and a node's `unfunded` status."""
    if balance_wei is None or vote_cost_wei <= 0:
        return None
    return balance_wei // vote_cost_wei


def node_funds(funds: Sequence[NodeFunds], settings: RuleSettings) -> tuple[list[Condition], set[str]]:
    out: list[Condition] = []
    unknown: set[str] = set()
    for node in funds:
        if node.eth_wei is None:
            unknown.add(fingerprint(Rule.NODE_LOW_BALANCE, node.node))
        else:
            votes = votes_affordable(node.eth_wei, max(node.vote_cost_wei, 1)) or 0
            if votes < settings.min_votes:
                out.append(
                    Condition(
                        Rule.NODE_LOW_BALANCE,
                        node.node,
                        f"{node.node}'s ETH pays for {votes} votes at current fees "
                        f"(alert below {settings.min_votes})",
                    )
                )
        if node.dloop_wei is None:
            unknown.add(fingerprint(Rule.NODE_NO_WEIGHT, node.node))
        elif node.dloop_wei == 0:
            out.append(
                Condition(
                    Rule.NODE_NO_WEIGHT,
                    node.node,
                    f"{node.node} holds no DLOOP: its votes count for nothing",
                )
            )
    return out, unknown


def listener(health: ListenerHealth, settings: RuleSettings) -> list[Condition]:
    """ListenerDown: no head for over twice DLOOP_HEAD_TIMEOUT, or disconnected that long. ListenerBlind:
    the listener does not see proposals (the contract's events, or a miss a reconcile pass found)."""
    out = []
    limit = 2 * settings.head_timeout
    if health.enabled and (health.silent_for > limit or health.disconnected_for > limit):
        why = (
            f"disconnected for {_duration(health.disconnected_for)}"
            if health.disconnected_for > limit
            else f"no new block head for {_duration(health.silent_for)}"
        )
        out.append(Condition(Rule.LISTENER_DOWN, "listener", f"the listener is down: {why}"))
    if health.blind_reason is not None:
        out.append(
            Condition(Rule.LISTENER_BLIND, "listener", f"the listener is blind: {health.blind_reason}")
        )
    return out


def error_rate(samples: Sequence[RpcSample], window: float = RPC_WINDOW_SECONDS) -> tuple[float, int] | None:
    """(errors / requests, requests) between the oldest sample within `window` of the newest and the newest;
    None with fewer than two samples."""
    if len(samples) < 2:
        return None
    newest = samples[-1]
    oldest = next(s for s in samples if newest.at - s.at <= window)
    requests = newest.requests - oldest.requests
    errors = newest.errors - oldest.errors
    if requests <= 0:
        return (0.0, 0) if errors <= 0 else (1.0, 0)
    return min(1.0, errors / requests), requests


def rpc_errors(samples: Sequence[RpcSample], settings: RuleSettings) -> list[Condition]:
    measured = error_rate(samples)
    if measured is None:
        return []
    rate, requests = measured
    if requests < RPC_MIN_REQUESTS or rate <= settings.rpc_error_rate:
        return []
    return [
        Condition(
            Rule.RPC_ERRORS,
            "rpc",
            f"{rate:.0%} of {requests} chain requests failed over the last 5 minutes "
            f"(alert above {settings.rpc_error_rate:.0%})",
        )
    ]


def rounds_stuck(rounds: Sequence[RunningRound], settings: RuleSettings) -> list[Condition]:
    limit = settings.round_deadline + ROUND_GRACE_SECONDS
    return [
        Condition(
            Rule.ROUND_STUCK,
            f"round {r.id}",
            f"voting round {r.id} has run for {_duration(r.running_for)} "
            f"(deadline {settings.round_deadline:g} s)",
        )
        for r in rounds
        if r.running_for > limit
    ]


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
