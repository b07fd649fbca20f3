"""Gas estimates reused: one `eth_estimateGas` per proposal type and call, not one per vote (pure, no I/O).

A vote's gas hardly depends on the proposal: it writes the voter's ballot and adds to one tally. The first
vote on a proposal costs the most (its tally goes from zero), and every vote of a batch is estimated before
any is mined, so the highest estimate seen is kept and the usual margin is added when signing. What makes
an estimate wrong (a vote that ran out of gas, or reverted on chain) forgets them all: the next votes are
estimated again, and a failed estimate decides the row as before.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GasKey:
    proposal_type: int
    selector: str  # the call's 4-byte selector, "0x" and 8 hex digits
    support: bool  # yes and no add to different tallies


def gas_key(proposal_type: int, calldata: str, support: bool) -> GasKey:
    return GasKey(proposal_type, calldata[:10].lower(), support)


def ran_out_of_gas(gas_used: int, gas_limit: int) -> bool:
    """A failed transaction that used all of its gas: the limit, not the contract, stopped it."""
    return gas_used >= gas_limit


class GasEstimates:
    """The highest estimate seen per key, until something says they are wrong."""

    def __init__(self) -> None:
        self._known: dict[GasKey, int] = {}

    def known(self, key: GasKey) -> int | None:
        return self._known.get(key)

    def learn(self, key: GasKey, estimate: int) -> None:
        if estimate > self._known.get(key, 0):
            self._known[key] = estimate

    def forget(self) -> None:
        self._known.clear()

    def __len__(self) -> int:
        return len(self._known)
