"""Whether the listener sees the proposals: the contract's events are of a known version, and no proposal the
reconcile pass recorded first went unseen by the live listener (listener/blindness.py decides). While it is
blind, rounds run every DLOOP_RECONCILE_FALLBACK_INTERVAL instead of DLOOP_RECONCILE_INTERVAL, and /health,
/metrics and the log say why.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from chain.events import ContractVersion
from core.logs import log_event
from core.settings import Settings
from listener.blindness import BlindWatch, ListenerProgress, after_scan, due, judge
from listener.reconcile import ReconcileResult
from storage.chain_state import logged_proposals
from storage.engine import SessionFactory

logger = logging.getLogger("dloop.listener_watch")

JUDGE_EVERY = 1.0  # seconds between looks while a sighting waits for the listener to pass its block


class ListenerWatch:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        contract: ContractVersion,
        progress: Callable[[], ListenerProgress],
        *,
        stream: str,
        on_blind: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.contract = contract
        self.progress = progress
        self.stream = stream  # the listener's log stream: proposal ids mean something only within it
        self.on_blind = on_blind  # e.g. start a round at once: the miss may have been a burst
        self.state = BlindWatch()

    @property
    def blind_reason(self) -> str | None:
        if not self.contract.knows_proposals:
            return (
                f"the contract emits no known ProposalCreated event (version {self.contract.name}): the "
                "listener sees no proposal; votes come from reconcile passes every "
                f"{self.settings.reconcile_fallback_interval:g} s"
            )
        return self.state.blind_reason

    def reconcile_interval(self) -> float:
        if self.blind_reason is not None:
            return min(self.settings.reconcile_fallback_interval, self.settings.reconcile_interval)
        return self.settings.reconcile_interval

    def scanned(self, result: ReconcileResult) -> None:
        """A reconcile pass finished: remember what it recorded before the listener did."""
        self.state = after_scan(self.state, result.new_proposal_ids, result.read_block, self.progress())

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await anyio.sleep(JUDGE_EVERY)
            if self.state.pending or self.state.blind:
                await self.look()

    async def look(self) -> None:
        progress = self.progress()
        wanted = due(self.state, progress)
        logged = await logged_proposals(self.sessions, self.stream, wanted) if wanted else set()
        before = self.state
        self.state = judge(before, progress, logged)
        if self.state.missed_total > before.missed_total:
            log_event(
                logger,
                "listener_missed_proposals",
                level=logging.WARNING,
                missed=self.state.missed_total - before.missed_total,
                missed_total=self.state.missed_total,
                reason=self.state.blind_reason,
                reconcile_interval=self.reconcile_interval(),
            )
            if self.on_blind is not None:
                await self.on_blind()
        elif before.blind and not self.state.blind:
            log_event(logger, "listener_sees_proposals_again", missed_total=self.state.missed_total)
