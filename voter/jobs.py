"""What a lane works on: a vote to send, its transaction in flight, and the counts of what happened."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chain.accounts import signed_calldata
from chain.codec import dao_functions
from chain.types import ProposalData
from core.errors import ChainError
from storage.queue import QueuedVote, SignedTx
from voter.gas import GasKey, gas_key
from voter.strategies import Decision, Price


def as_int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


@dataclass(frozen=True)
class VoteJob:
    row: QueuedVote
    proposal: ProposalData
    decision: Decision
    gas_estimate: int | ChainError | None = None  # estimated with the round's batch; None: by the lane
    price: Price | None = None  # the asset's price the decision used (stored with it)


def vote_calldata(job: VoteJob) -> str:
    return dao_functions()["vote"].encode(job.proposal.proposal_id, bool(job.decision.support))


def vote_gas_key(job: VoteJob, calldata: str) -> GasKey:
    return gas_key(job.proposal.proposal_type, calldata, bool(job.decision.support))


def estimate_request(sender: str, contract: str, data: str) -> dict[str, str]:
    return {"from": sender, "to": contract, "data": data}


def estimate_value(answer: object) -> int | ChainError:
    """A gas estimate's answer (or its error) as gas, or the error."""
    if isinstance(answer, ChainError):
        return answer
    try:
        return as_int(answer)
    except (TypeError, ValueError):
        return ChainError(f"the gas estimate answered {answer!r}")


@dataclass
class Counters:
    """Counts of one round (or of the voter's life)."""

    sent: int = 0
    confirmed: int = 0
    failed: int = 0
    closed: int = 0
    already_voted: int = 0
    no_vote: int = 0
    dry_run: int = 0
    paused: int = 0  # rows handed back untouched because their node is paused
    deferred: int = 0
    replaced: int = 0
    rebroadcast: int = 0
    requeued: int = 0


@dataclass(frozen=True)
class SignedVote:
    tx: SignedTx
    previous: Tracked | None  # the vote's earlier transaction still tracked (same nonce), if any


@dataclass
class Tracked:
    """A vote whose transaction is in flight: every hash signed for it, and the one expected to land."""

    vote_id: int
    proposal_id: int
    nonce: int
    hashes: list[str]
    latest: SignedTx
    data: str
    sent_block: int
    rebroadcasts: int = 0
    notes: list[str] = field(default_factory=list)
    sent_time: float = field(default_factory=time.monotonic)
    nonce_used_since: float | None = None  # when the nonce was first seen used without a receipt of ours
    next_check: float = 0.0  # a pending transaction left alone at a fair price is not checked before this


def calldata_of(tx: SignedTx) -> str:
    """The call data of a stored signed transaction (a replacement re-signs the same call)."""
    return "0x" + signed_calldata(tx.raw_transaction).hex()
