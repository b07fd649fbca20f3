"""Value-aware thresholds: a table of (asset, decimals, amount, price) cases with each strategy's decision,
including an oracle that reverts and one that answers zero. Pure: no chain."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chain.types import AssetInfo, ProposalData, ProposalStatus, ProposalType
from core.settings import StrategySettings
from voter.strategies import Decision, Price, Tally, decide, node_config, value_text

NOW = 1_700_000_000
CONSERVATIVE = node_config("conservative", StrategySettings())
AGGRESSIVE = node_config("aggressive", StrategySettings())
REVERTED = Price.missing("the price oracle reverted")
ZERO = Price.from_raw(0)


def proposal(symbol: str, decimals: int, amount: str, kind: int = ProposalType.INVESTMENT) -> ProposalData:
    asset = AssetInfo("0x" + "11" * 20, symbol, decimals)
    return ProposalData(
        proposal_id=1,
        proposal_type=kind,
        asset_address=asset.address,
        amount=int(Decimal(amount).scaleb(decimals)),
        description="A proposal",
        proposer="0x" + "22" * 20,
        created_at=NOW - 60,
        voting_ends=NOW + 3600,
        yes_votes=0,
        no_votes=0,
        status=ProposalStatus.ACTIVE,
        executed=False,
        asset=asset,
    )


def price(text: str) -> Price:
    """As the oracle answers it: normalised to 18 decimals."""
    return Price.from_raw(int(Decimal(text).scaleb(18)))


# (asset, decimals, amount, price, conservative, aggressive, words in the conservative reason)
CASES: list[tuple[str, int, str, Price, bool, bool, str]] = [
    # the example: 0.05 WBTC at 61,000 is worth 3,050: over 1,000, under 5,000
    (
        "WBTC",
        8,
        "0.05",
        price("61000"),
        False,
        True,
        "investment of 0.05 WBTC worth 3,050.00 is over the conservative limit of 1,000.00",
    ),
    ("WBTC", 8, "0.1", price("61000"), False, False, "worth 6,100.00"),
    # 1,200 USDC at 0.50: 1,200 units would be over the unit limit, its value (600) is not
    ("USDC", 6, "1200", price("0.5"), True, True, "worth 600.00 within the conservative limit of 1,000.00"),
    ("USDC", 6, "900", price("1"), True, True, "worth 900.00"),
    ("USDC", 6, "1000.01", price("1"), False, True, "worth 1,000.01 is over"),
    ("PAXG", 18, "2", price("2400"), False, True, "worth 4,800.00 is over"),
    ("PAXG", 18, "3", price("2400"), False, False, "worth 7,200.00 is over"),
    # a price with many decimals, exact: 100,000 DOGE at 0.0081 = 810
    ("DOGE", 18, "100000", price("0.0081"), False, False, "not a stablecoin"),
    # an oracle that reverts: token units, and the reason says so
    ("WBTC", 8, "0.05", REVERTED, False, True, "no price: the price oracle reverted; limit in token units"),
    ("USDC", 6, "1200", REVERTED, False, True, "over the conservative limit of 1,000 units"),
    # an oracle that answers zero: the same fallback
    ("USDC", 6, "900", ZERO, True, True, "no price: the price oracle answers a price of zero"),
    ("PAXG", 18, "6000", ZERO, False, False, "over the conservative limit of 1,000 units"),
]


@pytest.mark.parametrize(
    ("symbol", "decimals", "amount", "quote", "conservative", "aggressive", "words"),
    CASES,
    ids=[f"{c[0]}-{c[2]}-{c[3].value if c[3].value is not None else c[3].problem}" for c in CASES],
)
def test_value_aware_decisions(
    symbol: str, decimals: int, amount: str, quote: Price, conservative: bool, aggressive: bool, words: str
) -> None:
    data = proposal(symbol, decimals, amount)
    cons = decide(data, Tally(0, 0), NOW, CONSERVATIVE, quote)
    aggr = decide(data, Tally(0, 0), NOW, AGGRESSIVE, quote)
    assert (cons.support, aggr.support) == (conservative, aggressive), (cons.reason, aggr.reason)
    assert words in cons.reason
    if not quote.usable:
        assert "no price" in cons.reason and "no price" in aggr.reason


def test_the_reason_states_the_figures_used() -> None:
    decision = decide(proposal("WBTC", 8, "0.05"), Tally(0, 0), NOW, CONSERVATIVE, price("61000"))
    assert decision == Decision(
        False,
        0.9,
        "against: investment of 0.05 WBTC worth 3,050.00 is over the conservative limit of 1,000.00",
    )


def test_a_price_move_changes_the_decision() -> None:
    data = proposal("WBTC", 8, "0.05")
    assert decide(data, Tally(0, 0), NOW, CONSERVATIVE, price("61000")).support is False
    # below 20,000 the investment is worth under 1,000: conservative still says no (not a stablecoin)...
    assert "not a stablecoin" in decide(data, Tally(0, 0), NOW, CONSERVATIVE, price("19000")).reason
    # ...and aggressive turns from against to for when the price falls under its limit
    big = proposal("PAXG", 18, "3")
    assert decide(big, Tally(0, 0), NOW, AGGRESSIVE, price("2400")).support is False
    assert decide(big, Tally(0, 0), NOW, AGGRESSIVE, price("1600")).support is True


def test_value_limits_come_from_settings_and_values_are_stored_exactly() -> None:
    custom = node_config(
        "conservative", StrategySettings(conservative_max_value=Decimal(10_000), stablecoins=("WBTC",))
    )
    assert decide(proposal("WBTC", 8, "0.05"), Tally(0, 0), NOW, custom, price("61000")).support is True
    assert price("61000.5").text() == "61000.5"
    assert value_text(proposal("WBTC", 8, "0.05"), price("61000.5")) == "3050.025"
    assert value_text(proposal("WBTC", 8, "0.05"), REVERTED) is None


def test_a_users_strategy_without_price_still_works() -> None:
    def mine(data: ProposalData, tally: Tally, settings: StrategySettings) -> Decision:
        return Decision(True, 0.5, "for: mine")

    config = node_config("conservative", StrategySettings())
    plain = type(config)("mine", mine, StrategySettings())
    assert not plain.priced and CONSERVATIVE.priced
    assert decide(proposal("USDC", 6, "1"), Tally(0, 0), NOW, plain, price("1")).reason == "for: mine"
