"""Replay on a scripted history: the diff lists exactly the proposals whose decision the other strategy
changes. Pure: no chain, no database."""

from __future__ import annotations

import json
from decimal import Decimal

from chain.types import AssetInfo, ProposalData, ProposalStatus, ProposalType
from core.settings import StrategySettings
from dloop.controls import format_replay
from voter.replay import Recorded, replay, stored_price
from voter.strategies import Tally, decide, node_config

NOW = 1_700_000_000
DECIMALS = {"USDC": 6, "WBTC": 8, "PAXG": 18, "DOGE": 18}
INV, DIV, PARAM = ProposalType.INVESTMENT, ProposalType.DIVESTMENT, ProposalType.PARAMETER_CHANGE


def proposal(pid: int, kind: int, symbol: str, amount: str, yes: int = 0, no: int = 0) -> ProposalData:
    asset = AssetInfo("0x" + f"{pid:02x}" * 20, symbol, DECIMALS[symbol])
    return ProposalData(
        proposal_id=pid,
        proposal_type=kind,
        asset_address=asset.address,
        amount=int(Decimal(amount).scaleb(DECIMALS[symbol])),
        description=f"proposal {pid}",
        proposer="0x" + "22" * 20,
        created_at=NOW,
        voting_ends=NOW + 3600,
        yes_votes=yes,
        no_votes=no,
        status=ProposalStatus.EXECUTED,  # long over: replay decides as if still open
        executed=True,
        asset=asset,
    )


# (proposal, price stored with the decision); the conservative node voted on each
HISTORY = [
    (proposal(1, INV, "USDC", "500"), "1"),  # both for
    (proposal(2, INV, "WBTC", "0.05"), "61000"),  # conservative against (value), aggressive for (growth)
    (proposal(3, INV, "WBTC", "0.1"), "61000"),  # both against (over both limits)
    (proposal(4, DIV, "USDC", "100", yes=55, no=45), "1"),  # conservative for (>50 %), aggressive against
    (proposal(5, PARAM, "USDC", "0"), None),  # both against
    (proposal(6, INV, "PAXG", "1"), None),  # no price stored: token units; cons against, aggr for (growth)
    (proposal(7, INV, "USDC", "2500"), "1"),  # cons against (over), aggressive for (low confidence)
]
CHANGED = {2, 4, 6, 7}

CONSERVATIVE = node_config("conservative", StrategySettings())
AGGRESSIVE = node_config("aggressive", StrategySettings())


def recorded() -> list[Recorded]:
    out = []
    for data, price in HISTORY:
        live = ProposalData(**{**data.__dict__, "status": ProposalStatus.ACTIVE})
        decision = decide(live, Tally.of(live), NOW, CONSERVATIVE, stored_price(live, price))
        out.append(Recorded("ai-gov-01", "conservative", decision.label, decision.reason, price, data))
    return out


def test_replay_with_the_same_strategy_changes_nothing() -> None:
    result = replay(recorded(), CONSERVATIVE)
    assert result.decided == len(HISTORY) and result.differences == ()


def test_replay_lists_exactly_the_proposals_the_other_strategy_changes() -> None:
    result = replay(recorded(), AGGRESSIVE)
    assert {d.proposal_id for d in result.differences} == CHANGED
    by_id = {d.proposal_id: d for d in result.differences}
    assert (by_id[2].voted, by_id[2].replayed) == ("against", "for")
    assert "worth 3,050.00" in (by_id[2].voted_reason or "")
    assert (by_id[4].voted, by_id[4].replayed) == ("for", "against")
    assert "no price stored with the decision" in by_id[6].replayed_reason


def test_replay_output_formats() -> None:
    result = replay(recorded(), AGGRESSIVE)
    table = format_replay(result, "aggressive", "table")
    assert table.startswith("replayed 7 decisions with aggressive: 4 differ\n")
    assert len(table.splitlines()) == 2 + 4
    csv_text = format_replay(result, "aggressive", "csv")
    assert csv_text.splitlines()[0].startswith("proposal,node,strategy,voted,replayed")
    assert len(csv_text.splitlines()) == 5
    body = json.loads(format_replay(result, "aggressive", "json"))
    assert body["decided"] == 7 and body["differ"] == 4
    assert [d["proposal"] for d in body["differences"]] == sorted(CHANGED)
