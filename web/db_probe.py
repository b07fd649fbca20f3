"""The database check of /health: one `SELECT 1` per `interval` (1 s), shared by every request meanwhile.

Under load a probe per request cost a session, a pooled connection and a round trip through aiosqlite's
thread each time; the answer it gives cannot change faster than a monitor polls it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from core.errors import DloopError
from storage.engine import SessionFactory
from storage.queries import check_database

PROBE_INTERVAL = 1.0


@dataclass(frozen=True)
class ProbeResult:
    checked_at: float  # monotonic seconds when the probe started
    error: str | None  # None: the database answered


def probe_is_fresh(result: ProbeResult | None, clock: float, interval: float) -> bool:
    return result is not None and 0 <= clock - result.checked_at < interval


class DatabaseProbe:
    def __init__(
        self,
        sessions: SessionFactory,
        *,
        interval: float = PROBE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.interval = interval
        self.clock = clock
        self.result: ProbeResult | None = None
        self.probes = 0
        self._lock = anyio.Lock()

    async def error(self) -> str | None:
        """Why the database is unreachable, or None; at most `interval` old."""
        result = self.result
        if result is not None and probe_is_fresh(result, self.clock(), self.interval):
            return result.error
        async with self._lock:  # one probe at a time; requests that waited share its result
            result = self.result
            if result is None or not probe_is_fresh(result, self.clock(), self.interval):
                result = self.result = await self._probe()
            return result.error

    async def _probe(self) -> ProbeResult:
        started = self.clock()
        self.probes += 1
        try:
            await check_database(self.sessions)
        except DloopError as exc:
            return ProbeResult(started, str(exc))
        return ProbeResult(started, None)
