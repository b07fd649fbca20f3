"""In-process wake-up: the listener and the trigger say "work is queued", and the voter wakes at once."""

from __future__ import annotations

import anyio


class WorkSignal:
    """Level-triggered: a notify() before wait() is not lost."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for a notification (or the timeout); True if one arrived. Consumes it."""
        with anyio.move_on_after(timeout):
            await self._event.wait()
        notified = self._event.is_set()
        if notified:
            self._event = anyio.Event()
        return notified
