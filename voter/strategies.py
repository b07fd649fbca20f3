"""Voting strategies: pure functions from a proposal and the current tally to a decision.

`decide` validates first (open for voting, description, asset, amount) and only then asks the node's
strategy. A strategy is any `(proposal, tally, thresholds) -> Decision` function: the built-ins
`conservative` and `aggressive`, or a user's own named by dotted path `package.module:function`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

from chain.types import ProposalData, ProposalStatus, ProposalType, format_units, status_name
from core.errors import ConfigError
from core.settings import StrategySettings

STRATEGY_SETTING = "DLOOP_NODE_STRATEGIES"


@dataclass(frozen=True)
class Decision:
    """support True = for, False = against, None = no vote (the reason says why)."""

    support: bool | None
    confidence: float
    reason: str

    @property
    def label(self) -> str:
        """What the `votes.decision` column holds: for / against / none."""
        return "none" if self.support is None else ("for" if self.support else "against")


@dataclass(frozen=True)
class Tally:
    """The on-chain tally (vote weights) at decision time."""

    yes: int
    no: int

    @classmethod
    def of(cls, proposal: ProposalData) -> Tally:
        return cls(proposal.yes_votes, proposal.no_votes)

    @property
    def support(self) -> Fraction:
        """yes / (yes + no); one half when nobody has voted. Exact, so thresholds compare exactly."""
        total = self.yes + self.no
        return Fraction(1, 2) if total == 0 else Fraction(self.yes, total)

    def describe(self) -> str:
        return f"{_percent(self.support)} support" + ("" if self.yes + self.no else " (no votes yet)")


StrategyFn = Callable[[ProposalData, Tally, StrategySettings], Decision]


@dataclass(frozen=True)
class NodeConfig:
    """What one node decides with: its strategy (loaded once at start) and the thresholds."""

    strategy_name: str
    strategy: StrategyFn
    thresholds: StrategySettings = field(default_factory=StrategySettings)


def decide(proposal: ProposalData, tally: Tally, chain_time: int, node_config: NodeConfig) -> Decision:
    """Validation first (its failure is a "no vote" with the reason), then the node's strategy."""
    problem = validation_problem(proposal, chain_time)
    if problem is not None:
        return Decision(None, 0.0, problem)
    return node_config.strategy(proposal, tally, node_config.thresholds)


def validation_problem(proposal: ProposalData, chain_time: int) -> str | None:
    """Why this proposal cannot be voted on sensibly, or None.

    The asset and amount checks apply to investments and divestments, whose rules depend on them; the
    contract itself allows parameter changes and "other" proposals without an asset, and both strategies
    decide those by type.
    """
    if proposal.status != ProposalStatus.ACTIVE:
        return f"not open for voting: status is {status_name(proposal.status)}"
    if chain_time > proposal.voting_ends:
        return f"not open for voting: voting ended at {proposal.voting_ends_utc:%Y-%m-%d %H:%M:%S} UTC"
    if not proposal.description.strip():
        return "invalid proposal: empty description"
    if proposal.proposal_type not in tuple(ProposalType):
        return f"invalid proposal: unknown proposal type {proposal.proposal_type}"
    if proposal.proposal_type in (ProposalType.INVESTMENT, ProposalType.DIVESTMENT):
        if not proposal.asset.known:
            detail = proposal.asset.error or "its decimals are unknown"
            return f"invalid proposal: unknown asset {proposal.asset_address} ({detail})"
        if proposal.amount <= 0:
            return "invalid proposal: amount is zero"
    return None


# -- built-in strategies ---------------------------------------------------------------------------------


def conservative(proposal: ProposalData, tally: Tally, settings: StrategySettings) -> Decision:
    """Protect capital. Rules in order; the first that matches decides."""
    units = proposal.amount_units
    kind = ProposalType(proposal.proposal_type)
    if units is not None and units > settings.conservative_max_amount:
        return Decision(
            False,
            0.9,
            f"against: {_amount(proposal)} is over the conservative limit of "
            f"{settings.conservative_max_amount:,} units",
        )
    if kind == ProposalType.INVESTMENT:
        if _symbol(proposal) not in _upper(settings.stablecoins):
            return Decision(
                False,
                0.8,
                f"against: investment in {_asset(proposal)}, not a stablecoin "
                f"({', '.join(settings.stablecoins)})",
            )
        return Decision(True, 0.8, f"for: stablecoin investment of {_amount(proposal)} within the limit")
    if kind == ProposalType.DIVESTMENT:
        needed = _fraction(settings.conservative_divestment_support)
        if tally.support > needed:
            return Decision(True, 0.7, f"for: divestment with {tally.describe()} (over {_percent(needed)})")
        return Decision(
            False, 0.6, f"against: divestment with only {tally.describe()} (needs over {_percent(needed)})"
        )
    return Decision(False, 0.7, f"against: {_type_text(kind)} proposals are outside the conservative policy")


def aggressive(proposal: ProposalData, tally: Tally, settings: StrategySettings) -> Decision:
    """Seek growth. Rules in order; the first that matches decides."""
    units = proposal.amount_units
    kind = ProposalType(proposal.proposal_type)
    if units is not None and units > settings.aggressive_max_amount:
        return Decision(
            False,
            0.8,
            f"against: {_amount(proposal)} is over the aggressive limit of "
            f"{settings.aggressive_max_amount:,} units",
        )
    if kind == ProposalType.INVESTMENT:
        strong = _fraction(settings.aggressive_investment_support)
        if _symbol(proposal) in _upper(settings.growth_assets):
            return Decision(True, 0.85, f"for: growth asset investment of {_amount(proposal)}")
        if tally.support > strong:
            return Decision(
                True, 0.75, f"for: investment with strong {tally.describe()} (over {_percent(strong)})"
            )
        if _symbol(proposal) in _upper(settings.stablecoins):
            return Decision(True, 0.4, f"for (low confidence): stablecoin investment of {_amount(proposal)}")
        return Decision(
            False,
            0.6,
            f"against: investment in {_asset(proposal)} is neither a growth asset nor strongly supported "
            f"({tally.describe()})",
        )
    if kind == ProposalType.DIVESTMENT:
        needed = _fraction(settings.aggressive_divestment_support)
        if tally.support > needed:
            return Decision(True, 0.65, f"for: divestment with {tally.describe()} (over {_percent(needed)})")
        return Decision(
            False, 0.6, f"against: divestment with only {tally.describe()} (needs over {_percent(needed)})"
        )
    return Decision(False, 0.7, f"against: {_type_text(kind)} proposals are outside the aggressive policy")


BUILTIN_STRATEGIES: Mapping[str, StrategyFn] = {"conservative": conservative, "aggressive": aggressive}


def load_strategy(spec: str) -> StrategyFn:
    """A built-in by name, or a user's function by dotted path `package.module:function`."""
    name = spec.strip()
    if name.lower() in BUILTIN_STRATEGIES:
        return BUILTIN_STRATEGIES[name.lower()]
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            STRATEGY_SETTING,
            f"unknown strategy {name!r}: use conservative, aggressive or package.module:function",
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a configuration problem
        raise ConfigError(
            STRATEGY_SETTING, f"cannot import {module_name!r} for strategy {name!r}: {exc}"
        ) from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(
            STRATEGY_SETTING, f"{module_name!r} has no function {attribute!r} (strategy {name!r})"
        )
    strategy: StrategyFn = function
    return strategy


def node_config(spec: str, thresholds: StrategySettings) -> NodeConfig:
    return NodeConfig(spec.strip(), load_strategy(spec), thresholds)


# -- wording ---------------------------------------------------------------------------------------------


def _symbol(proposal: ProposalData) -> str | None:
    return proposal.asset.symbol.upper() if proposal.asset.symbol else None


def _upper(symbols: tuple[str, ...]) -> set[str]:
    return {s.upper() for s in symbols}


def _asset(proposal: ProposalData) -> str:
    return proposal.asset.symbol or proposal.asset_address


def _amount(proposal: ProposalData) -> str:
    units = proposal.amount_units
    text = format_units(units) if units is not None else str(proposal.amount)
    if units is not None and units == units.to_integral_value() and abs(units) >= 1000:
        text = f"{int(units):,}"
    return f"{text} {_asset(proposal)}"


def _fraction(value: float) -> Fraction:
    # Through the decimal text: 0.6 means exactly 3/5, not the binary float just below it.
    return Fraction(Decimal(repr(value)))


def _percent(value: Fraction) -> str:
    return f"{float(value) * 100:.1f}%"


def _type_text(kind: ProposalType) -> str:
    return {ProposalType.PARAMETER_CHANGE: "parameter change", ProposalType.OTHER: "'other'"}.get(
        kind, kind.name.lower()
    )
