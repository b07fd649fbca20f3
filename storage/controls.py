"""Operator controls stored in the database: pause and resume signing, per node or for the whole service.

The state lives in `operator_controls`, so it survives a restart and every instance on the same database
shares it. `PauseWatch` keeps it in memory: read again after every change made through this process and at
least every `max_age` seconds (changes made by another instance, or by `dloop pause` in a shell).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection
from dataclasses import dataclass

import anyio
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.logs import log_event
from storage.engine import SessionFactory
from storage.models import OperatorControl, utcnow
from storage.transactions import read, write

log = logging.getLogger("dloop.controls")

SERVICE_SCOPE = "*"  # the row of the whole service; other rows are named by node


@dataclass(frozen=True)
class PauseState:
    """Who is paused: the whole service, and the nodes paused by name (a node may be both)."""

    service: bool = False
    nodes: frozenset[str] = frozenset()
    changed_at: dt.datetime | None = None  # the latest change of any scope

    def paused(self, node: str) -> bool:
        return self.service or node in self.nodes

    def reason(self, node: str) -> str | None:
        """Why `node` does not sign now, or None."""
        if self.service:
            return "signing paused for the whole service"
        if node in self.nodes:
            return f"signing paused for node {node}"
        return None


async def read_pauses(sessions: SessionFactory) -> PauseState:
    async def work(session: AsyncSession) -> PauseState:
        rows = (await session.execute(select(OperatorControl))).scalars().all()
        latest = max((r.changed_at for r in rows), default=None)
        return PauseState(
            service=any(r.paused for r in rows if r.scope == SERVICE_SCOPE),
            nodes=frozenset(r.scope for r in rows if r.paused and r.scope != SERVICE_SCOPE),
            changed_at=latest,
        )

    return await read(sessions, work, what="operator controls", brief=True)


async def set_paused(sessions: SessionFactory, scope: str, paused: bool, *, by: str) -> bool:
    """Pause or resume `scope` (SERVICE_SCOPE or a node name); True when this changed the stored state.
    Portable SQL: an UPDATE, and an INSERT only when the scope has no row yet."""

    async def work(session: AsyncSession) -> bool:
        now = utcnow()
        current = (
            await session.execute(select(OperatorControl.paused).where(OperatorControl.scope == scope))
        ).scalar_one_or_none()
        if current is None:
            session.add(OperatorControl(scope=scope, paused=paused, changed_at=now, changed_by=by))
            return paused
        if bool(current) == paused:
            return False
        await session.execute(
            update(OperatorControl)
            .where(OperatorControl.scope == scope)
            .values(paused=paused, changed_at=now, changed_by=by)
        )
        return True

    changed = await write(sessions, work, what="operator controls")
    log_event(
        log,
        "signing_paused" if paused else "signing_resumed",
        level=logging.WARNING if paused else logging.INFO,
        scope="service" if scope == SERVICE_SCOPE else scope,
        by=by,
        changed=changed,
    )
    return changed


class PauseWatch:
    """The pause state in memory, for the signing path (it must not wait on the database per vote) and the
    HTTP API. `current()` reads the database again when the copy is older than `max_age` seconds."""

    def __init__(self, sessions: SessionFactory, *, max_age: float = 1.0) -> None:
        self.sessions = sessions
        self.max_age = max_age
        self._state = PauseState()
        self._read_at: float | None = None
        self._lock = anyio.Lock()

    @property
    def cached(self) -> PauseState:
        """The last state read (no database access): for synchronous callers such as status views."""
        return self._state

    async def current(self) -> PauseState:
        if self._read_at is None or anyio.current_time() - self._read_at >= self.max_age:
            await self.refresh()
        return self._state

    async def refresh(self) -> PauseState:
        async with self._lock:
            previous = self._state
            self._state = await read_pauses(self.sessions)
            self._read_at = anyio.current_time()
        if previous.service != self._state.service or previous.nodes != self._state.nodes:
            log_event(
                log,
                "pause_state",
                service_paused=self._state.service,
                paused_nodes=sorted(self._state.nodes),
            )
        return self._state

    async def set(self, scopes: Collection[str], paused: bool, *, by: str) -> PauseState:
        """Change the stored state of each scope, then read it back at once."""
        for scope in scopes:
            await set_paused(self.sessions, scope, paused, by=by)
        return await self.refresh()
