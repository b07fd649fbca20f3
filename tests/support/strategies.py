"""Strategies for tests, loaded as `DLOOP_NODE_STRATEGIES=...,tests.support.strategies:explode`."""

from __future__ import annotations

from chain.types import ProposalData
from core.settings import StrategySettings
from voter.strategies import Decision, Tally


def explode(proposal: ProposalData, tally: Tally, settings: StrategySettings) -> Decision:
    """A user's strategy with a bug: it raises on every proposal (the vote ends `failed`)."""
    raise RuntimeError(f"strategy bug on proposal {proposal.proposal_id}")
