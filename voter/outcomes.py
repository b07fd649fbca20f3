"""What to do about a failed chain operation of the voter. Pure mapping of the error tree."""

from __future__ import annotations

import enum

from core.errors import (
    ChainError,
    ContractRevert,
    InsufficientFunds,
    NonceError,
    RateLimited,
    TransientChainError,
    Underpriced,
)

# Reverts meaning the proposal is no longer open: the vote is `closed`, not `failed`.
CLOSED_ERRORS = frozenset({"VotingPeriodEnded", "InvalidProposalState"})
# The node's vote is already on chain (a re-vote inside the buffer): `already_voted`.
ALREADY_VOTED_ERRORS = frozenset({"VotingBufferNotElapsed"})
# Temporary conditions of the contract: the vote waits and is tried again later.
WAIT_ERRORS = frozenset({"ContractPaused"})


class Action(enum.StrEnum):
    ACCEPTED = "accepted"  # the node already has this exact transaction
    UNFUNDED = "unfunded"  # mark the node unfunded; its rows wait
    RESYNC_NONCE = "resync_nonce"
    BUMP_FEES = "bump_fees"
    BACKOFF = "backoff"  # transient: retry with backoff and jitter
    CLOSED = "closed"
    ALREADY_VOTED = "already_voted"
    WAIT = "wait"  # the row goes back to the queue for a later round
    TERMINAL = "terminal"  # failed, with the reason


def classify(exc: ChainError) -> Action:
    message = str(exc).lower()
    if "already known" in message or "already imported" in message or "known transaction" in message:
        return Action.ACCEPTED
    if isinstance(exc, InsufficientFunds):
        return Action.UNFUNDED
    if isinstance(exc, NonceError):
        return Action.RESYNC_NONCE
    if isinstance(exc, Underpriced):
        return Action.BUMP_FEES
    if isinstance(exc, RateLimited | TransientChainError):
        return Action.BACKOFF
    if isinstance(exc, ContractRevert):
        if exc.error_name in CLOSED_ERRORS:
            return Action.CLOSED
        if exc.error_name in ALREADY_VOTED_ERRORS:
            return Action.ALREADY_VOTED
        if exc.error_name in WAIT_ERRORS:
            return Action.WAIT
        return Action.TERMINAL
    # Unknown node errors: not provably terminal, so the vote waits for a later round (never lost).
    return Action.WAIT
