"""EIP-1559 fee and gas maths. Pure integers in wei; no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

GWEI = 10**9
# Nodes accept a replacement only with both fees raised by a minimum (geth: 10%); 12.5% clears every client.
BUMP_NUMERATOR, BUMP_DENOMINATOR = 9, 8


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclass(frozen=True)
class FeeBump:
    """Fees for a replacement, or None with the reason the cap prevents a valid bump."""

    fees: Fees | None
    reason: str = ""


def gwei_to_wei(gwei: float) -> int:
    return int(Decimal(repr(gwei)) * GWEI)


def initial_fees(base_fee: int, priority_fee: int, cap_wei: int) -> Fees:
    """Twice the base fee plus the tip (survives several full blocks of base-fee rises), capped."""
    priority = min(priority_fee, cap_wei)
    return Fees(min(2 * base_fee + priority, cap_wei), priority)


def includable(fees: Fees, base_fee: int) -> bool:
    """Whether a block with this base fee can include the transaction."""
    return fees.max_fee_per_gas >= base_fee


def _bumped(value: int) -> int:
    return (value * BUMP_NUMERATOR + BUMP_DENOMINATOR - 1) // BUMP_DENOMINATOR


def bump_fees(old: Fees, *, base_fee: int, priority_fee: int, cap_wei: int) -> FeeBump:
    """Replacement fees: at least 12.5% above the old ones, and at least what the chain asks now."""
    min_max, min_priority = _bumped(old.max_fee_per_gas), _bumped(old.max_priority_fee_per_gas)
    priority = max(min_priority, priority_fee)
    max_fee = min(max(min_max, 2 * base_fee + priority), cap_wei)
    priority = min(priority, max_fee)
    if max_fee < min_max or priority < min_priority:
        return FeeBump(
            None,
            f"the fee cap of {cap_wei / GWEI:g} gwei leaves no room for a 12.5% bump over "
            f"{old.max_fee_per_gas / GWEI:g} gwei",
        )
    return FeeBump(Fees(max_fee, priority))


def gas_limit(estimate: int, margin: float) -> int:
    return math.ceil(Decimal(estimate) * Decimal(repr(margin)))
