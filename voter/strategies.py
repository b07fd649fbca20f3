"""Voting strategies: pure functions from a proposal, the current tally and the asset's price to a decision.

`decide` validates first (open for voting, description, asset, amount) and only then asks the node's
strategy. A strategy is any `(proposal, tally, thresholds) -> Decision` function: the built-ins
`conservative` and `aggressive`, or a user's own named by dotted path `package.module:function`. A strategy
that also takes a keyword `price` gets the asset's `Price` (read from the contract's price oracle at decision
time): the built-ins then judge the proposal's value (amount in units x price) instead of its token count.
"""

from __future__ import annotations

import functools
import importlib
import inspect
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


PRICE_DECIMALS = 18  # the oracle's getAssetPrice answers a price normalised to 18 decimals


@dataclass(frozen=True)
class Price:
    """The price oracle's answer for one asset at decision time: the price of one whole token in the
    oracle's unit (exact), or, when there is none, why (`problem`): no oracle, a revert, a zero price."""

    value: Decimal | None
    problem: str | None = None

    @classmethod
    def from_raw(cls, raw: int) -> Price:
        """getAssetPrice's uint256, normalised to 18 decimals. Zero is no price (an unset asset)."""
        if raw <= 0:
            return cls(None, "the price oracle answers a price of zero")
        return cls(Decimal(raw).scaleb(-PRICE_DECIMALS))

    @classmethod
    def missing(cls, problem: str) -> Price:
        return cls(None, problem)

    @property
    def usable(self) -> bool:
        return self.value is not None and self.value > 0

    def text(self) -> str | None:
        """Exact decimal text for the `votes.price` column, or None."""
        return None if self.value is None else _exact(self.value)


def value_of(proposal: ProposalData, price: Price | None) -> Decimal | None:
    """The proposal's value: amount in units x price; None without a usable price or known decimals."""
    units = proposal.amount_units
    if price is None or not price.usable or price.value is None or units is None:
        return None
    return units * price.value


def value_text(proposal: ProposalData, price: Price | None) -> str | None:
    """value_of as exact decimal text for the `votes.value` column."""
    value = value_of(proposal, price)
    return None if value is None else _exact(value)


StrategyFn = Callable[..., Decision]  # (proposal, tally, thresholds[, *, price]) -> Decision


def takes_price(strategy: StrategyFn) -> bool:
    """Whether the strategy accepts the keyword `price` (the built-ins do; older users' functions do not)."""
    try:
        parameters = inspect.signature(strategy).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind == inspect.Parameter.VAR_KEYWORD
        or (p.name == "price" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )


@dataclass(frozen=True)
class NodeConfig:
    """What one node decides with: its strategy (loaded once at start) and the thresholds."""

    strategy_name: str
    strategy: StrategyFn
    thresholds: StrategySettings = field(default_factory=StrategySettings)

    @functools.cached_property
    def priced(self) -> bool:
        """Whether the strategy takes a `price` (read once: `decide` runs for every vote)."""
        return takes_price(self.strategy)


def decide(
    proposal: ProposalData,
    tally: Tally,
    chain_time: int,
    node_config: NodeConfig,
    price: Price | None = None,
) -> Decision:
    """Validation first (its failure is a "no vote" with the reason), then the node's strategy (with the
    asset's price when it takes one)."""
    problem = validation_problem(proposal, chain_time)
    if problem is not None:
        return Decision(None, 0.0, problem)
    if node_config.priced:
        decision: Decision = node_config.strategy(proposal, tally, node_config.thresholds, price=price)
    else:
        decision = node_config.strategy(proposal, tally, node_config.thresholds)
    return decision


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


@dataclass(frozen=True)
class Limit:
    """The size rule of a strategy: in value when a price is usable, else in token units."""

    over: bool
    text: str  # "over the conservative limit of 1,000.00" / "within the limit of 1,000 units (...)"
    figure: str  # "investment of 0.05 WBTC worth 3,050.00" / "2,500 USDC"
    note: str = ""  # "no price: ...; limit in token units" when a price was asked for and none answered

    def noted(self, decision: Decision) -> Decision:
        """Every reason says when the oracle did not answer, whichever rule decided."""
        if not self.note or self.note in decision.reason:
            return decision
        return Decision(decision.support, decision.confidence, f"{decision.reason} ({self.note})")


def size_limit(
    proposal: ProposalData, price: Price | None, *, name: str, max_value: Decimal, max_amount: int
) -> Limit | None:
    """Pure: the size rule's verdict, with the figures it used; None when the proposal moves no asset."""
    kind = ProposalType(proposal.proposal_type)
    if kind not in (ProposalType.INVESTMENT, ProposalType.DIVESTMENT):
        units = proposal.amount_units
        if units is None or units <= max_amount:
            return None
        return Limit(True, f"over the {name} limit of {max_amount:,} units", _amount(proposal))
    value = value_of(proposal, price)
    what = f"{_type_text(kind)} of {_amount(proposal)}"
    if value is not None:
        figure = f"{what} worth {value:,.2f}"
        if value > max_value:
            return Limit(True, f"over the {name} limit of {max_value:,.2f}", figure)
        return Limit(False, f"within the {name} limit of {max_value:,.2f}", figure)
    units = proposal.amount_units
    note = "" if price is None else f"no price: {price.problem or 'none'}; limit in token units"
    if units is not None and units > max_amount:
        return Limit(True, f"over the {name} limit of {max_amount:,} units", _amount(proposal), note)
    return Limit(False, f"within the {name} limit of {max_amount:,} units", what, note)


def conservative(
    proposal: ProposalData, tally: Tally, settings: StrategySettings, *, price: Price | None = None
) -> Decision:
    """Protect capital. Rules in order; the first that matches decides."""
    limit = size_limit(
        proposal,
        price,
        name="conservative",
        max_value=settings.conservative_max_value,
        max_amount=settings.conservative_max_amount,
    )
    decision = _conservative(proposal, tally, settings, limit)
    return limit.noted(decision) if limit is not None else decision


def _conservative(
    proposal: ProposalData, tally: Tally, settings: StrategySettings, limit: Limit | None
) -> Decision:
    kind = ProposalType(proposal.proposal_type)
    if limit is not None and limit.over:
        return Decision(False, 0.9, f"against: {limit.figure} is {limit.text}")
    if kind == ProposalType.INVESTMENT:
        if _symbol(proposal) not in _upper(settings.stablecoins):
            return Decision(
                False,
                0.8,
                f"against: investment in {_asset(proposal)}, not a stablecoin "
                f"({', '.join(settings.stablecoins)})",
            )
        within = limit.text if limit is not None else "within the limit"
        figure = limit.figure if limit is not None else f"investment of {_amount(proposal)}"
        return Decision(True, 0.8, f"for: stablecoin {figure} {within}")
    if kind == ProposalType.DIVESTMENT:
        needed = _fraction(settings.conservative_divestment_support)
        if tally.support > needed:
            return Decision(True, 0.7, f"for: divestment with {tally.describe()} (over {_percent(needed)})")
        return Decision(
            False, 0.6, f"against: divestment with only {tally.describe()} (needs over {_percent(needed)})"
        )
    return Decision(False, 0.7, f"against: {_type_text(kind)} proposals are outside the conservative policy")


def aggressive(
    proposal: ProposalData, tally: Tally, settings: StrategySettings, *, price: Price | None = None
) -> Decision:
    """Seek growth. Rules in order; the first that matches decides."""
    limit = size_limit(
        proposal,
        price,
        name="aggressive",
        max_value=settings.aggressive_max_value,
        max_amount=settings.aggressive_max_amount,
    )
    decision = _aggressive(proposal, tally, settings, limit)
    return limit.noted(decision) if limit is not None else decision


def _aggressive(
    proposal: ProposalData, tally: Tally, settings: StrategySettings, limit: Limit | None
) -> Decision:
    kind = ProposalType(proposal.proposal_type)
    if limit is not None and limit.over:
        return Decision(False, 0.8, f"against: {limit.figure} is {limit.text}")
    if kind == ProposalType.INVESTMENT:
        strong = _fraction(settings.aggressive_investment_support)
        if _symbol(proposal) in _upper(settings.growth_assets):
            figure = limit.figure if limit is not None else f"investment of {_amount(proposal)}"
            return Decision(True, 0.85, f"for: growth asset {figure}")
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


def _exact(value: Decimal) -> str:
    """Plain exact decimal text (no exponent), trailing zeros dropped."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _percent(value: Fraction) -> str:
    return f"{float(value) * 100:.1f}%"


def _type_text(kind: ProposalType) -> str:
    return {ProposalType.PARAMETER_CHANGE: "parameter change", ProposalType.OTHER: "'other'"}.get(
        kind, kind.name.lower()
    )
