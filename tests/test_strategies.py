"""Every rule of both built-in strategies, the validation step and the strategy registry. No chain."""

from __future__ import annotations

import sys
import types
from dataclasses import replace
from decimal import Decimal

import pytest

from chain.types import AssetInfo, ProposalData, ProposalStatus, ProposalType
from core.errors import ConfigError
from core.settings import StrategySettings
from voter.strategies import (
    Decision,
    NodeConfig,
    Tally,
    aggressive,
    conservative,
    decide,
    load_strategy,
    node_config,
)

NOW = 1_700_000_000
DECIMALS = {"USDC": 6, "EURT": 6, "WBTC": 8, "PAXG": 18, "DOGE": 18}
INV, DIV = ProposalType.INVESTMENT, ProposalType.DIVESTMENT
PARAM, OTHER = ProposalType.PARAMETER_CHANGE, ProposalType.OTHER
ZERO = "0x0000000000000000000000000000000000000000"


def proposal(
    kind: int,
    symbol: str | None,
    amount: str,
    *,
    yes: int = 0,
    no: int = 0,
    status: int = ProposalStatus.ACTIVE,
    voting_ends: int = NOW + 3600,
    description: str = "A proposal",
) -> ProposalData:
    if symbol is None:
        asset = AssetInfo(ZERO, None, None, "asset address has no contract code")
        raw = int(amount)
    else:
        asset = AssetInfo("0x" + "11" * 20, symbol, DECIMALS[symbol])
        raw = int(Decimal(amount).scaleb(DECIMALS[symbol]))
    return ProposalData(
        proposal_id=1,
        proposal_type=kind,
        asset_address=asset.address,
        amount=raw,
        description=description,
        proposer="0x" + "22" * 20,
        created_at=NOW - 60,
        voting_ends=voting_ends,
        yes_votes=yes,
        no_votes=no,
        status=status,
        executed=False,
        asset=asset,
    )


CONSERVATIVE = node_config("conservative", StrategySettings())
AGGRESSIVE = node_config("aggressive", StrategySettings())

# (strategy, proposal, tally (yes, no), expected support, words in the reason)
RULES: list[tuple[NodeConfig, ProposalData, tuple[int, int], bool | None, str]] = [
    # conservative 1: over 1,000 units -> against, whatever the type (amount through the asset's decimals)
    (CONSERVATIVE, proposal(INV, "USDC", "2500"), (0, 0), False, "over the conservative limit"),
    (CONSERVATIVE, proposal(DIV, "EURT", "1000.000001"), (9, 1), False, "over the conservative limit"),
    (CONSERVATIVE, proposal(INV, "WBTC", "1500"), (0, 0), False, "over the conservative limit"),
    # exactly 1,000 is not "over": the next rules decide
    (CONSERVATIVE, proposal(INV, "USDC", "1000"), (0, 0), True, "stablecoin investment"),
    # conservative 2: non-stablecoin investment -> against
    (CONSERVATIVE, proposal(INV, "WBTC", "0.05"), (0, 0), False, "not a stablecoin"),
    (CONSERVATIVE, proposal(INV, "PAXG", "10"), (9, 0), False, "not a stablecoin"),
    # conservative 3: stablecoin investment -> for (USDC at 6 decimals is 500 units, not 5e-10)
    (CONSERVATIVE, proposal(INV, "USDC", "500"), (0, 0), True, "stablecoin investment"),
    (CONSERVATIVE, proposal(INV, "EURT", "800"), (0, 9), True, "stablecoin investment"),
    # conservative 4: divestment only with > 50% support
    (CONSERVATIVE, proposal(DIV, "USDC", "750"), (51, 49), True, "51.0% support"),
    (CONSERVATIVE, proposal(DIV, "USDC", "750"), (50, 50), False, "needs over 50.0%"),
    (CONSERVATIVE, proposal(DIV, "WBTC", "0.25"), (0, 0), False, "no votes yet"),
    # conservative 5: parameter changes and other types -> against
    (CONSERVATIVE, proposal(PARAM, None, "0"), (0, 0), False, "parameter change"),
    (CONSERVATIVE, proposal(OTHER, "USDC", "1000"), (10, 0), False, "'other'"),
    # aggressive 1: over 5,000 units -> against
    (AGGRESSIVE, proposal(INV, "USDC", "12000"), (0, 0), False, "over the aggressive limit"),
    (AGGRESSIVE, proposal(DIV, "USDC", "8000"), (10, 0), False, "over the aggressive limit"),
    (AGGRESSIVE, proposal(INV, "WBTC", "5001"), (0, 0), False, "over the aggressive limit"),
    # aggressive 2: growth asset investment -> for
    (AGGRESSIVE, proposal(INV, "WBTC", "1.5"), (0, 9), True, "growth asset"),
    (AGGRESSIVE, proposal(INV, "PAXG", "25"), (0, 0), True, "growth asset"),
    # aggressive 3: investment with > 70% support -> for
    (AGGRESSIVE, proposal(INV, "DOGE", "100"), (71, 29), True, "strong 71.0% support"),
    (AGGRESSIVE, proposal(INV, "USDC", "100"), (8, 2), True, "strong 80.0% support"),
    # aggressive 4: stablecoin investment -> for, low confidence
    (AGGRESSIVE, proposal(INV, "USDC", "2500"), (0, 0), True, "low confidence"),
    (AGGRESSIVE, proposal(INV, "EURT", "4500"), (7, 3), True, "low confidence"),  # exactly 70%: not strong
    # aggressive 5: other investments -> against
    (AGGRESSIVE, proposal(INV, "DOGE", "100"), (7, 3), False, "neither a growth asset"),
    # aggressive 6: divestment with > 60% support
    (AGGRESSIVE, proposal(DIV, "WBTC", "0.8"), (61, 39), True, "61.0% support"),
    (AGGRESSIVE, proposal(DIV, "WBTC", "0.8"), (3, 2), False, "needs over 60.0%"),  # exactly 60%
    (AGGRESSIVE, proposal(DIV, "PAXG", "5"), (0, 0), False, "no votes yet"),
    # aggressive 7: parameter changes and other types -> against
    (AGGRESSIVE, proposal(PARAM, None, "0"), (9, 0), False, "parameter change"),
    (AGGRESSIVE, proposal(OTHER, None, "0"), (0, 0), False, "'other'"),
]


@pytest.mark.parametrize(
    ("config", "data", "tally", "support", "words"),
    RULES,
    ids=[f"{r[0].strategy_name}-{i}-{r[4]}" for i, r in enumerate(RULES)],
)
def test_rules(
    config: NodeConfig, data: ProposalData, tally: tuple[int, int], support: bool | None, words: str
) -> None:
    decision = decide(data, Tally(*tally), NOW, config)
    assert decision.support is support
    assert words in decision.reason
    assert 0.0 < decision.confidence <= 1.0
    assert decision.reason.startswith("for" if support else "against")


def test_aggressive_stablecoin_confidence_is_low() -> None:
    low = decide(proposal(INV, "USDC", "100"), Tally(0, 0), NOW, AGGRESSIVE)
    growth = decide(proposal(INV, "WBTC", "1"), Tally(0, 0), NOW, AGGRESSIVE)
    assert low.support and growth.support
    assert low.confidence < 0.5 < growth.confidence


def test_first_matching_rule_decides() -> None:
    # A large growth-asset investment: the size rule comes first for aggressive.
    assert decide(proposal(INV, "PAXG", "6000"), Tally(0, 0), NOW, AGGRESSIVE).support is False
    # A well-supported large divestment: still against for conservative.
    assert decide(proposal(DIV, "USDC", "3000"), Tally(100, 0), NOW, CONSERVATIVE).support is False


VALIDATION: list[tuple[ProposalData, int, str]] = [
    (proposal(INV, "USDC", "10", status=ProposalStatus.CANCELED), NOW, "status is canceled"),
    (proposal(INV, "USDC", "10", status=ProposalStatus.EXECUTED), NOW, "status is executed"),
    (proposal(INV, "USDC", "10", voting_ends=NOW - 1), NOW, "voting ended"),
    (proposal(INV, "USDC", "10", description="   "), NOW, "empty description"),
    (proposal(INV, None, "10"), NOW, "unknown asset"),
    (proposal(DIV, None, "10"), NOW, "unknown asset"),
    (proposal(INV, "USDC", "0"), NOW, "amount is zero"),
    (replace(proposal(OTHER, None, "0"), proposal_type=9), NOW, "unknown proposal type 9"),
]


@pytest.mark.parametrize(("data", "chain_time", "words"), VALIDATION, ids=[v[2] for v in VALIDATION])
@pytest.mark.parametrize("config", [CONSERVATIVE, AGGRESSIVE], ids=["conservative", "aggressive"])
def test_validation_gives_no_vote(
    config: NodeConfig, data: ProposalData, chain_time: int, words: str
) -> None:
    decision = decide(data, Tally(0, 0), chain_time, config)
    assert decision.support is None
    assert decision.label == "none"
    assert words in decision.reason


def test_open_until_voting_ends_inclusive() -> None:
    data = proposal(INV, "USDC", "10", voting_ends=NOW)
    assert decide(data, Tally(0, 0), NOW, CONSERVATIVE).support is True
    assert decide(data, Tally(0, 0), NOW + 1, CONSERVATIVE).support is None


def test_thresholds_and_lists_come_from_settings() -> None:
    custom = StrategySettings(
        conservative_max_amount=100, aggressive_max_amount=50, stablecoins=("dai",), growth_assets=("doge",)
    )
    cons = node_config("conservative", custom)
    aggr = node_config("Aggressive", custom)
    assert decide(proposal(INV, "USDC", "500"), Tally(0, 0), NOW, cons).support is False  # over 100
    assert "not a stablecoin" in decide(proposal(INV, "USDC", "50"), Tally(0, 0), NOW, cons).reason
    assert decide(proposal(INV, "DOGE", "10"), Tally(0, 0), NOW, aggr).reason.startswith("for: growth")
    assert decide(proposal(INV, "WBTC", "60"), Tally(0, 0), NOW, aggr).support is False  # over 50


def test_tally_support() -> None:
    assert Tally(0, 0).support == Decimal("0.5")
    assert Tally(3, 1).support == Decimal("0.75")
    assert Tally(0, 5).support == 0


def test_unknown_strategy_names_the_setting() -> None:
    with pytest.raises(ConfigError) as raised:
        load_strategy("reckless")
    assert raised.value.setting == "DLOOP_NODE_STRATEGIES"
    with pytest.raises(ConfigError, match="cannot import"):
        load_strategy("no_such_package_xyz.mod:fn")
    with pytest.raises(ConfigError, match="has no function"):
        load_strategy("voter.strategies:nothing_here")


def test_user_strategy_by_dotted_path(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("my_dao_strategies")

    def always_for(data: ProposalData, tally: Tally, settings: StrategySettings) -> Decision:
        return Decision(True, 0.99, f"for: always, proposal {data.proposal_id}")

    module.always_for = always_for  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "my_dao_strategies", module)
    config = node_config("my_dao_strategies:always_for", StrategySettings())
    assert decide(proposal(PARAM, None, "0"), Tally(0, 9), NOW, config) == Decision(
        True, 0.99, "for: always, proposal 1"
    )
    # Validation still comes first for a user's strategy.
    closed = proposal(INV, "USDC", "1", status=ProposalStatus.CANCELED)
    assert decide(closed, Tally(0, 0), NOW, config).support is None


def test_builtins_are_plain_functions() -> None:
    assert load_strategy("conservative") is conservative
    assert load_strategy(" aggressive ") is aggressive
