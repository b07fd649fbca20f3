"""Voting rounds: a reconcile pass (the contract scan), then the voter's `sent` rows adopted and its queue
drained. One round at a time: at start-up, every `reconcile_interval` and on a trigger (the API's
`POST /trigger-voting`); a trigger while a round runs joins that round.

The web layer triggers rounds here (`web.ports.RoundControl`); a round calls the scan, then the voter,
straight: neither component knows the other, or when it runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc

from core.errors import ChainError, DloopError
from core.logs import log_event
from core.settings import Settings
from core.signals import WorkSignal
from listener.reconcile import Reconciler, ReconcileResult
from storage.engine import SessionFactory
from storage.rounds import RoundKind, RoundRecord, RoundState, finish_round, record_reconcile, start_round
from web.ports import TriggerResult

logger = logging.getLogger("listener.reconcile")  # the name round events were always logged under

Drain = Callable[[], Awaitable[object]]
AdoptSent = Callable[[], Awaitable[int]]


@dataclass
class RoundStatus:
    current_round: int | None = None
    phase: str = "idle"  # idle / reconciling / draining
    last_error: str | None = None  # of the last round (cleared by a round that completes)


class Rounds:
    """Runs rounds of `scan` then the voter. `adopt_sent`: the voter's resolution of `sent` rows (its lanes
    track receipts and replacements: they adopt rows they do not track); `drain`: the voter's queue drain."""

    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        signal: WorkSignal,
        scan: Reconciler,
        *,
        adopt_sent: AdoptSent | None = None,
        drain: Drain | None = None,
        on_scan: Callable[[ReconcileResult], None] | None = None,
        interval: Callable[[], float] | None = None,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.instance = instance  # recorded on its rounds: another instance starting up leaves them alone
        self.sessions = sessions
        self.signal = signal
        self.scan = scan
        self.adopt_sent = adopt_sent
        self.drain = drain
        self.on_scan = on_scan  # told of each pass's result (the listener watch: did the listener miss any?)
        self.interval = interval or (
            lambda: settings.reconcile_interval
        )  # shorter while the listener is blind
        self.status = RoundStatus()
        self._lock = anyio.Lock()
        self._current: TriggerResult | None = None
        self._requested = anyio.Event()
        self._finished: dict[int, anyio.Event] = {}
        # Set once `run` runs: a round triggered before (its deployment's chain not reached yet) would be a
        # `running` row nothing runs, so callers ask `started` first.
        self.started = False

    async def trigger(self, kind: RoundKind = RoundKind.MANUAL) -> TriggerResult:
        """Start a round, or join the one running; returns at once (the round runs in `run`)."""
        async with self._lock:
            if self._current is not None:
                return TriggerResult(self._current.round_id, True, self._current.started_at)
            record = await start_round(self.sessions, kind, instance=self.instance)
            self._current = TriggerResult(record.id, False, record.started_at)
            self._finished[record.id] = anyio.Event()
            self.status.current_round = record.id
            self._requested.set()
            log_event(logger, "round_started", round=record.id, kind=str(kind))
            return self._current

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.started = True
        await self.trigger(RoundKind.STARTUP)  # registered before we report ready: triggers join it
        task_status.started()
        while True:
            with anyio.move_on_after(self.interval()):
                await self._requested.wait()
            if self._current is None:
                await self.trigger(RoundKind.SCHEDULED)
            self._requested = anyio.Event()
            ticket = self._current
            assert ticket is not None
            try:
                await self._run_round(ticket.round_id)
            finally:
                with anyio.CancelScope(shield=True):
                    async with self._lock:
                        self._current = None
                        self.status.current_round = None
                        self.status.phase = "idle"
                        self._finished.pop(ticket.round_id).set()

    async def wait_for_round(self, round_id: int) -> None:
        """Return once round `round_id` has finished (at once if it is not running in this process)."""
        event = self._finished.get(round_id)
        if event is not None:
            await event.wait()

    def running(self) -> TriggerResult | None:
        """The round running now (its id and start), if any (for the RoundStuck alert)."""
        return self._current

    def phase(self, round_id: int) -> str | None:
        return self.status.phase if self.status.current_round == round_id else None

    async def _scan(self, round_id: int) -> ReconcileResult:
        """The reconcile pass, then the voter's adoption of `sent` rows (counted as resolved by the round)."""
        result = await self.scan.reconcile(round_id)
        if self.on_scan is not None:
            self.on_scan(result)
        if self.adopt_sent is None:
            return result
        try:
            adopted = await self.adopt_sent()
        except ChainError as exc:  # e.g. the voter is between connections: its lanes adopt them later
            errors = (*result.read_errors, f"resolving sent votes: {exc}")
            return dataclasses.replace(result, resolved_transactions=0, read_errors=errors)
        return dataclasses.replace(result, resolved_transactions=adopted)

    async def _run_round(self, round_id: int) -> RoundRecord | None:
        try:
            self.status.phase = "reconciling"
            result = await self._scan(round_id)
            with anyio.CancelScope(shield=True):
                await record_reconcile(self.sessions, round_id, result.counts)
            self.signal.notify()
            if self.drain is not None:
                self.status.phase = "draining"
                await self.drain()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await finish_round(
                    self.sessions,
                    round_id,
                    state=RoundState.FAILED,
                    error="interrupted",
                    instance=self.instance,
                )
            raise
        except Exception as exc:
            # A failed round must not stop the service: the listener and the voter go on, the next round
            # (scheduled or triggered) tries again. Anything not ours is a bug: keep its traceback.
            reason = str(exc) if isinstance(exc, DloopError) else f"{type(exc).__name__}: {exc}"
            self.status.last_error = reason
            if isinstance(exc, DloopError):
                log_event(logger, "round_failed", level=logging.WARNING, round=round_id, error=reason)
            else:
                logger.error("round_crashed", exc_info=exc, extra={"dloop_fields": {"round": round_id}})
            with anyio.CancelScope(shield=True):
                return await finish_round(
                    self.sessions, round_id, state=RoundState.FAILED, error=reason, instance=self.instance
                )
        self.status.last_error = None
        error = "; ".join(result.read_errors)[:2000] or None
        with anyio.CancelScope(shield=True):
            record = await finish_round(
                self.sessions, round_id, state=RoundState.DONE, error=error, instance=self.instance
            )
        if record is not None:
            log_event(
                logger,
                "round_finished",
                round=round_id,
                scanned=record.proposals_scanned,
                new=record.new_proposals,
                missing_votes=record.missing_votes,
                resolved=record.resolved_transactions,
                sent=record.votes_sent,
                confirmed=record.votes_confirmed,
            )
        return record
