"""Plain, frozen values read from the chain. No I/O here."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from decimal import Context, Decimal

from eth_utils import keccak


class ProposalStatus(enum.IntEnum):
    PENDING = 0
    ACTIVE = 1
    REJECTED = 2
    APPROVED = 3
    EXECUTED = 4
    CANCELED = 5


class ProposalType(enum.IntEnum):
    INVESTMENT = 0
    DIVESTMENT = 1
    PARAMETER_CHANGE = 2
    OTHER = 3


def status_name(value: int) -> str:
    try:
        return ProposalStatus(value).name.lower()
    except ValueError:
        return f"unknown({value})"


def type_name(value: int) -> str:
    try:
        return ProposalType(value).name.lower()
    except ValueError:
        return f"unknown({value})"


@dataclass(frozen=True)
class AssetInfo:
    """An asset's ERC-20 metadata; symbol/decimals are None when the address is not a readable ERC-20."""

    address: str
    symbol: str | None
    decimals: int | None
    error: str | None = None

    @property
    def known(self) -> bool:
        return self.decimals is not None


@dataclass(frozen=True)
class ProposalData:
    """`getProposal(id)` plus the asset's metadata."""

    proposal_id: int
    proposal_type: int
    asset_address: str
    amount: int
    description: str
    proposer: str
    created_at: int
    voting_ends: int
    yes_votes: int
    no_votes: int
    status: int
    executed: bool
    asset: AssetInfo

    @property
    def amount_units(self) -> Decimal | None:
        """The amount in token units, through the asset's own decimals (USDC 6, WBTC 8)."""
        if self.asset.decimals is None:
            return None
        # uint256 has 78 digits; the default 28-digit context would round it.
        return Decimal(self.amount).scaleb(-self.asset.decimals, context=Context(prec=100))

    @property
    def created_at_utc(self) -> dt.datetime:
        return _utc(self.created_at)

    @property
    def voting_ends_utc(self) -> dt.datetime:
        return _utc(self.voting_ends)

    def open_at(self, chain_time: int) -> bool:
        """Open for voting: status Active and chain time <= votingEnds (status stays Active after)."""
        return self.status == ProposalStatus.ACTIVE and chain_time <= self.voting_ends

    def content_hash(self) -> str:
        """What a decision depends on besides the tally; a reorg that changes it invalidates decisions."""
        parts = (
            self.proposal_type,
            self.asset_address.lower(),
            self.amount,
            self.description,
            self.proposer.lower(),
            self.created_at,
            self.voting_ends,
        )
        return "0x" + keccak(text=repr(parts)).hex()


def _utc(timestamp: int) -> dt.datetime:
    # uint256 from chain: clamp anything absurd instead of raising OverflowError.
    try:
        return dt.datetime.fromtimestamp(timestamp, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return dt.datetime.max.replace(tzinfo=dt.UTC)


def format_units(amount: Decimal | None) -> str | None:
    """Exact, human text for a token amount (no exponent, no trailing zeros)."""
    if amount is None:
        return None
    text = f"{amount:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


@dataclass(frozen=True)
class LogRef:
    """Where a log sits on chain."""

    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
