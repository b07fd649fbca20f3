"""Governance analytics: a scripted scenario (three proposals with known outcomes, votes at known times) whose
figures are computed by hand below, checked against the pure computation, against the same rows stored in
SQLite and read back (storage/analytics.py), against the SQL views, and as `dloop report` prints them."""

from __future__ import annotations

import datetime as dt
import json

import anyio
import pytest

from monitor.analytics import Outcome, ProposalFact, VoteFact, percentile, report
from storage.analytics import FinalResult, analytics_facts, record_results
from storage.models import Proposal, Vote
from tests.support.database import migrated_database, sql

UTC = dt.UTC


def t(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 1, day, hour, minute, second, tzinfo=UTC)


NOW = t(3, 0)
# (id, type, asset, created, ends, outcome)
PROPOSALS = [
    ProposalFact(1, "investment", "USDC", t(1, 10), t(2, 10), Outcome(300, 100, "approved", True)),
    ProposalFact(2, "divestment", "WBTC", t(1, 12), t(2, 12), Outcome(50, 200, "rejected", False)),
    ProposalFact(3, "investment", "WBTC", t(2, 9), dt.datetime(2099, 1, 1, tzinfo=UTC), None),  # still open
]
NODES = {"A": "conservative", "B": "aggressive", "C": "conservative"}
VOTES = [
    VoteFact(1, "A", "conservative", "confirmed", "for", t(1, 10, 1), 50_000, 100),
    VoteFact(1, "B", "aggressive", "confirmed", "for", t(1, 10, 3), 60_000, 200),
    VoteFact(1, "C", "conservative", "confirmed", "against", t(1, 10, 2), 55_000, 150),
    VoteFact(2, "A", "conservative", "confirmed", "against", t(1, 12, 0, 30), 50_000, 100),
    VoteFact(2, "B", "aggressive", "failed", "for"),
    VoteFact(2, "C", "conservative", "no_vote", "none"),
    VoteFact(3, "A", "conservative", "confirmed", "for", t(2, 9, 0, 10), 40_000, 80),
    VoteFact(3, "B", "aggressive", "queued"),  # on its way on an open proposal: not owed yet
    VoteFact(3, "C", "conservative", "already_voted"),  # cast by the same key elsewhere: no decision of ours
]

# By hand (see monitor/analytics.py for the definitions):
# A: owed 3 (P1, P2, P3), cast 3; latencies 60, 30, 10 s -> p50 30, p95 30 + 0.9 x 30 = 57; gas 140,000;
#    fees 280 wei; majority: P1 for = for, P2 against = against -> 2 of 2.
# B: owed 2 (P1, P2; P3 still on its way), cast 1, failed 1; latency 180; gas 60,000; 200 wei; 1 of 1.
# C: owed 2 (P1, P3; P2 declined), cast 2 (P1 confirmed, P3 already voted); latency 120 (P1 only);
#    gas 55,000; 150 wei; P1 against vs majority for -> 0 of 1.
EXPECTED_NODES = {
    "A": (3, 3, 0, 1.0, 30.0, 57.0, 140_000, 280, 2, 2),
    "B": (2, 1, 1, 0.5, 180.0, 180.0, 60_000, 200, 1, 1),
    "C": (2, 2, 0, 1.0, 120.0, 120.0, 55_000, 150, 1, 0),
}
# conservative = A + C: latencies 10, 30, 60, 120 -> p50 45, p95 60 + 0.85 x 60 = 111.
EXPECTED_STRATEGIES = {
    "aggressive": EXPECTED_NODES["B"],
    "conservative": (5, 5, 0, 1.0, 45.0, 111.0, 195_000, 430, 3, 2),
}
# Pairs on proposals both cast for/against: only P1 for B and C (C's P3 has no decision of ours).
EXPECTED_PAIRS = {("A", "B"): (1, 1, 1.0), ("A", "C"): (1, 0, 0.0), ("B", "C"): (1, 0, 0.0)}
# (proposals, decided, approved, executed, rate)
EXPECTED_TYPES = {"divestment": (1, 1, 0, 0, 0.0), "investment": (2, 1, 1, 1, 1.0)}
EXPECTED_ASSETS = {"USDC": (1, 1, 1, 1, 1.0), "WBTC": (2, 1, 0, 0, 0.0)}
# day: proposals, decided, approved, owed, cast, participation, wei
EXPECTED_DAYS = {
    dt.date(2026, 1, 1): (2, 2, 1, 5, 4, 0.8, 550),
    dt.date(2026, 1, 2): (1, 0, 0, 2, 2, 1.0, 80),
}


def _perf(p: object) -> tuple[object, ...]:
    return tuple(
        round(getattr(p, f), 9) if isinstance(getattr(p, f), float) else getattr(p, f)
        for f in (
            "votes_owed",
            "votes_cast",
            "votes_failed",
            "participation",
            "time_to_vote_p50",
            "time_to_vote_p95",
            "gas_used",
            "eth_spent_wei",
            "compared_with_majority",
            "agreed_with_majority",
        )
    )


def check_report(result: object) -> None:
    assert result.proposals == 3 and result.decided == 2 and result.approved == 1  # type: ignore[attr-defined]
    assert {p.name: _perf(p) for p in result.nodes} == EXPECTED_NODES  # type: ignore[attr-defined]
    assert {p.name: _perf(p) for p in result.strategies} == EXPECTED_STRATEGIES  # type: ignore[attr-defined]
    pairs = {(p.node_a, p.node_b): (p.compared, p.agreed, p.rate) for p in result.pairs}  # type: ignore[attr-defined]
    assert pairs == EXPECTED_PAIRS
    types = {a.key: (a.proposals, a.decided, a.approved, a.executed, a.rate) for a in result.by_type}  # type: ignore[attr-defined]
    assert types == EXPECTED_TYPES
    assets = {a.key: (a.proposals, a.decided, a.approved, a.executed, a.rate) for a in result.by_asset}  # type: ignore[attr-defined]
    assert assets == EXPECTED_ASSETS
    days = {
        d.day: (
            d.proposals,
            d.decided,
            d.approved,
            d.votes_owed,
            d.votes_cast,
            d.participation,
            d.eth_spent_wei,
        )
        for d in result.days  # type: ignore[attr-defined]
    }
    assert days == EXPECTED_DAYS


def test_percentile_interpolates_between_the_closest_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([10.0, 30.0, 60.0], 0.5) == 30.0
    assert percentile([60.0, 10.0, 30.0], 0.95) == pytest.approx(57.0)
    assert percentile([10.0, 30.0, 60.0, 120.0], 0.5) == 45.0


def test_the_scripted_scenario_gives_the_hand_computed_figures() -> None:
    check_report(report(PROPOSALS, VOTES, now=NOW, nodes=list(NODES)))


def test_a_window_keeps_the_proposals_created_in_it() -> None:
    result = report(PROPOSALS, VOTES, now=NOW, since=t(2, 0), until=t(3, 0), nodes=list(NODES))
    assert result.proposals == 1 and result.decided == 0
    by_node = {p.name: (p.votes_owed, p.votes_cast) for p in result.nodes}
    assert by_node == {"A": (1, 1), "B": (0, 0), "C": (1, 1)}
    assert [d.day for d in result.days] == [dt.date(2026, 1, 2)]


@pytest.mark.both_databases
def test_stored_rows_views_and_dloop_report_give_the_same_figures(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    anyio.run(_store_and_check, database_url)
    _check_views_and_report(database_url, capsys)


async def _store_and_check(url: str) -> None:
    nodes = [(name, "0x" + f"{i:02d}" * 20, strategy) for i, (name, strategy) in enumerate(NODES.items(), 1)]
    async with migrated_database(url, nodes) as db:
        node_ids = {n.name: n.id for n in db.nodes}
        refs: dict[int, int] = {}
        async with db.sessions.begin() as session:  # fixture rows (the service writes through write())
            for p in PROPOSALS:
                row = Proposal(
                    chain_id=31337, contract="0x" + "aa" * 20, proposal_id=p.proposal_id, proposal_type=0,
                    proposal_type_name=p.proposal_type, asset_address="0x" + "bb" * 20, asset_symbol=p.asset,
                    asset_decimals=6, amount="1", amount_units="0.000001", description=f"p {p.proposal_id}",
                    proposer="0x" + "cc" * 20, created_at=p.created_at, voting_ends_at=p.voting_ends,
                    status=1, status_name="active", executed=bool(p.outcome and p.outcome.executed),
                    content_hash="0x" + "dd" * 32, source="subscription",
                )  # fmt: skip
                session.add(row)
                await session.flush()
                refs[p.proposal_id] = row.id
            for v in VOTES:
                session.add(
                    Vote(
                        proposal_ref=refs[v.proposal_id], node_id=node_ids[v.node], state=v.state,
                        decision=v.decision, confirmed_at=v.confirmed_at, gas_used=v.gas_used,
                        fee_wei=None if v.fee_wei is None else str(v.fee_wei),
                    )
                )  # fmt: skip
        results = [
            FinalResult(
                refs[p.proposal_id], p.outcome.yes, p.outcome.no, 3, p.outcome.status, p.outcome.executed
            )
            for p in PROPOSALS
            if p.outcome is not None
        ]
        assert await record_results(db.sessions, results) == 2
        assert await record_results(db.sessions, results) == 0  # recorded once
        facts = await analytics_facts(db.sessions, None)
        check_report(report(facts.proposals, facts.votes, now=NOW, nodes=facts.nodes))


def _check_views_and_report(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = anyio.run(
        sql,
        url,
        "SELECT node, votes_owed, votes_cast, votes_failed, gas_used, eth_spent_wei, "
        "compared_with_majority, agreed_with_majority FROM node_performance ORDER BY node",
    )
    assert [tuple(r) for r in rows] == [
        ("A", 3, 3, 0, 140_000, 280, 2, 2),
        ("B", 2, 1, 1, 60_000, 200, 1, 1),
        ("C", 2, 2, 0, 55_000, 150, 1, 0),
    ]
    outcomes = anyio.run(
        sql,
        url,
        "SELECT proposal_id, final_yes, final_no, majority, approved, executed FROM proposal_outcomes "
        "ORDER BY proposal_id",
    )
    assert [tuple(r) for r in outcomes] == [(1, "300", "100", "for", 1, 1), (2, "50", "200", "against", 0, 0)]

    from dloop.cli import main

    db_url = url
    assert main(["report", "--database-url", db_url, "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert {n["name"]: (n["votesOwed"], n["votesCast"], n["ethSpentWei"]) for n in body["nodes"]} == {
        "A": (3, 3, "280"),
        "B": (2, 1, "200"),
        "C": (2, 2, "150"),
    }
    assert main(["report", "--database-url", db_url]) == 0
    table = capsys.readouterr().out
    assert "3 proposals, 2 decided" in table and "conservative" in table and "A / B" in table
    assert main(["report", "--database-url", db_url, "--format", "csv", "--since", "2026-01-02"]) == 0
    csv_text = capsys.readouterr().out
    assert csv_text.startswith("section,key,metric,value\n") and "window,all,proposals,1\n" in csv_text
