"""`GET /events`: the dashboard's live feed (Server-Sent Events), fed by one watcher per application.

The watcher runs only while someone listens. Every `interval` (0.5 s) it reads a `LiveState`: the write
counter of web.caches (DataVersion: moves when this process writes proposals, votes or nodes), and only when
it moved (or every `recheck` seconds, for other processes' writes) the highest proposal id and the vote
counts by state, and the firing alerts (their fingerprints); the latest round (one indexed row); the pause
switches (storage.controls.PauseWatch: read again at most every second); the listener's view and the health
status (in memory). `changes` (pure) turns two states into events: one `proposal` per proposal recorded,
`votes` when vote states changed, `round` when a round starts or ends, `listener` when the listener's state
changes, `alert` when the set of firing alerts or the health status does, `controls` when a pause switch
does. So the listener, the voter, the rounds and the alert evaluator know nothing of the dashboard.

Each subscriber has a bounded queue: when a browser reads slowly the oldest events are dropped (the page
refetches the current state on any event anyway), and the watcher never waits on a subscriber. `close()`
ends every stream at once, before uvicorn's graceful shutdown would wait on them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from core.logs import log_event
from storage import queries
from storage.alerts import firing_alerts
from storage.rounds import last_round
from web.caches import WebCaches
from web.ports import WebContext, pause_control
from web.present import health_checks, health_status, queue_out

logger = logging.getLogger(__name__)

INTERVAL = 0.5
RECHECK = 2.0  # seconds between database checks when this process wrote nothing (other processes' writes)
KEEPALIVE = 15.0
QUEUE_SIZE = 64
MAX_PROPOSAL_EVENTS = 50  # per tick: a burst of proposals sends the newest ones


@dataclass(frozen=True)
class LiveEvent:
    kind: str  # proposal / votes / round / listener / alert / controls
    data: dict[str, object]

    def encoded(self) -> str:
        return json.dumps(self.data, separators=(",", ":"), sort_keys=True, default=str)


@dataclass(frozen=True)
class LiveState:
    highest_proposal: int = 0
    vote_states: tuple[tuple[str, int], ...] = ()
    round: tuple[int, str, str] | None = None  # id, kind, state
    listener: tuple[bool, int, str | None] = (False, 0, None)  # connected, reconnects, blind reason
    health: str = "unknown"
    alerts: tuple[str, ...] = ()  # fingerprints of the firing alerts, sorted
    pauses: tuple[bool, tuple[str, ...]] = (False, ())  # service paused, paused nodes (sorted)


def changes(before: LiveState | None, after: LiveState) -> list[LiveEvent]:
    """The events between two states (none against no state: a new watcher reports from where it starts)."""
    if before is None:
        return []
    events: list[LiveEvent] = []
    first_new = max(before.highest_proposal + 1, after.highest_proposal - MAX_PROPOSAL_EVENTS + 1)
    events.extend(LiveEvent("proposal", {"id": pid}) for pid in range(first_new, after.highest_proposal + 1))
    if after.vote_states != before.vote_states:
        events.append(LiveEvent("votes", {"byState": dict(after.vote_states)}))
    if after.round is not None and after.round != before.round:
        round_id, kind, state = after.round
        events.append(LiveEvent("round", {"id": round_id, "kind": kind, "state": state}))
    if after.listener != before.listener:
        connected, reconnects, blind = after.listener
        events.append(
            LiveEvent("listener", {"connected": connected, "reconnects": reconnects, "blindReason": blind})
        )
    if after.alerts != before.alerts or after.health != before.health:
        events.append(
            LiveEvent(
                "alert",
                {
                    "firing": list(after.alerts),
                    "fired": sorted(set(after.alerts) - set(before.alerts)),
                    "resolved": sorted(set(before.alerts) - set(after.alerts)),
                    "status": after.health,
                    "was": before.health,
                },
            )
        )
    if after.pauses != before.pauses:
        service, nodes = after.pauses
        events.append(LiveEvent("controls", {"servicePaused": service, "pausedNodes": list(nodes)}))
    return events


class Subscriber:
    """One browser's queue: bounded, the oldest event dropped when full."""

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        self.queue: deque[LiveEvent] = deque(maxlen=size)
        self.dropped = 0
        self.closed = False
        self._ready = anyio.Event()

    def put(self, event: LiveEvent) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def take(self, timeout: float) -> list[LiveEvent] | None:
        """Every queued event (waiting up to `timeout`); [] on timeout; None once closed."""
        if not self.queue and not self.closed:
            with anyio.move_on_after(timeout):
                await self._ready.wait()
        self._ready = anyio.Event()
        if self.closed:
            return None
        events = list(self.queue)
        self.queue.clear()
        return events


@dataclass
class LiveFeed:
    read_state: Callable[[LiveState | None, bool], Awaitable[LiveState]]
    version: Callable[[], int]
    interval: float = INTERVAL
    recheck: float = RECHECK
    subscribers: set[Subscriber] = field(default_factory=set)
    closed: bool = False
    _wake: anyio.Event = field(default_factory=anyio.Event)

    @classmethod
    def for_context(cls, context: WebContext, caches: WebCaches) -> LiveFeed:
        async def read(previous: LiveState | None, data_may_have_changed: bool) -> LiveState:
            listener = context.listener()
            if previous is None or data_may_have_changed:
                counts = await queries.proposal_counts(context.sessions, context.everything(), now=_utcnow())
                queue = queue_out(await queries.vote_counts(context.sessions, context.everything()))
                by_state = {state: count for state, count in queue.by_state.items() if count}
                highest, states = counts["highest_id"], tuple(sorted(by_state.items()))
                alerts = tuple(sorted(a.fingerprint for a in await firing_alerts(context.sessions)))
            else:
                highest, states = previous.highest_proposal, previous.vote_states
                alerts = previous.alerts
            latest = await last_round(context.sessions)
            pauses = await pause_control(context).current()
            checks = health_checks(
                database_error=await caches.database.error(),
                listener=listener,
                now=_utcnow(),
                head_timeout=context.head_timeout,
            )
            return LiveState(
                highest_proposal=highest,
                vote_states=states,
                round=None if latest is None else (latest.id, latest.kind, latest.state),
                listener=(
                    listener.connected and listener.subscribed,
                    listener.reconnects,
                    listener.blind_reason,
                ),
                health=health_status(checks),
                alerts=alerts,
                pauses=(pauses.service, tuple(sorted(pauses.nodes))),
            )

        return cls(read_state=read, version=lambda: caches.version.value)

    # -- subscribers -----------------------------------------------------------------------------------
    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        if self.closed:
            subscriber.close()
        self.subscribers.add(subscriber)
        self._wake.set()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def publish(self, events: list[LiveEvent]) -> None:
        for subscriber in tuple(self.subscribers):
            for event in events:
                subscriber.put(event)

    def close(self) -> None:
        """End every stream now (shutdown) and refuse new ones."""
        self.closed = True
        for subscriber in tuple(self.subscribers):
            subscriber.close()
        self._wake.set()

    # -- the watcher -----------------------------------------------------------------------------------
    async def run(self) -> None:
        state: LiveState | None = None
        seen_version = -1
        checked_at = 0.0
        while not self.closed:
            if not self.subscribers:  # nobody watches: no reads at all
                state = None
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            version, clock = self.version(), time.monotonic()
            fresh = version != seen_version or clock - checked_at >= self.recheck
            try:
                current = await self.read_state(state, fresh)
            except Exception as exc:  # the feed must not stop the app: the next tick tries again
                log_event(logger, "live_feed_read_failed", level=logging.WARNING, error=str(exc))
            else:
                if fresh:
                    seen_version, checked_at = version, clock
                self.publish(changes(state, current))
                state = current
            await anyio.sleep(self.interval)

    async def stream(self, keepalive: float = KEEPALIVE) -> AsyncIterator[dict[str, object]]:
        """One browser's SSE messages (dicts for Litestar's ServerSentEvent); a comment when idle. Subscribes
        when the response starts streaming; unsubscribes however the stream ends (client gone, close)."""
        subscriber = self.subscribe()
        try:
            yield {"event": "hello", "data": json.dumps({"interval": self.interval}), "retry": 2000}
            while True:
                events = await subscriber.take(keepalive)
                if events is None:
                    return
                if not events:
                    yield {"comment": "keep-alive", "data": None}
                for event in events:
                    yield {"event": event.kind, "data": event.encoded()}
        finally:
            self.unsubscribe(subscriber)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
