"""The one way storage/ runs a transaction: `write` for anything that changes rows, `read` for the rest.

A write is shielded from cancellation: cancelled mid-statement, its rollback would be cancelled too (anyio
cancellation is level-triggered), leaving the connection holding SQLite's write lock until the busy timeout.
So a cancelled write still commits or rolls back before the cancellation takes effect. Writers of one
process take turns on a lock (SQLite has one writer at a time, and its busy handler sleeps up to 100 ms per
retry; each write here is a few ms). A database still busy or locked (another process writing, a PostgreSQL
serialization failure or deadlock) is retried a few times, briefly: only while the first attempt began less
than `BUSY_RETRY_WINDOW` ago, so a write that already sat out SQLite's busy timeout (10 s, storage/engine.py)
is not run again and the shield holds a cancellation off for at most about one busy timeout plus a second
(systemd's TimeoutStopSec is 30 s). Any other error (a dropped connection: the COMMIT may have happened) is
never retried. Errors leave as core.errors.StorageError, never as SQLAlchemy exceptions.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import StorageError
from storage.engine import SessionFactory

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[T]]

# Waits before retrying a write the database refused as busy or locked (SQLite gave up at once, e.g. a read
# transaction that cannot become a write one, or PostgreSQL aborted it on a conflict): see `is_busy`.
BUSY_RETRY_DELAYS = (0.05, 0.2, 0.5)
# No retry once this long has passed since the first attempt began (seconds).
BUSY_RETRY_WINDOW = 1.0

_SQLITE_BUSY = 5  # SQLITE_BUSY; extended codes (SQLITE_BUSY_SNAPSHOT...) share the low byte
_SQLITE_LOCKED = 6
_PG_RETRYABLE = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_BUSY_MESSAGES = ("database is locked", "database is busy", "database table is locked")


class WriteTurns:
    """This process's writers, one at a time, in order of arrival; a `background` writer (bookkeeping no vote
    waits for: confirmations, tallies) lets every waiting foreground writer go first. A signed vote's record
    then waits behind at most one write, not behind the confirmations of the votes before it."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: tuple[deque[anyio.Event], deque[anyio.Event]] = (deque(), deque())

    async def acquire(self, *, background: bool) -> None:
        if not self._busy:
            self._busy = True
            return
        turn = anyio.Event()
        queue = self._waiting[1 if background else 0]
        queue.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():
                self.release()  # handed the turn while being cancelled: pass it on
            else:
                queue.remove(turn)
            raise

    def release(self) -> None:
        """The next waiter's turn (it stays busy), foreground first; else free."""
        for queue in self._waiting:
            if queue:
                queue.popleft().set()
                return
        self._busy = False


_write_turns: weakref.WeakKeyDictionary[SessionFactory, WriteTurns] = weakref.WeakKeyDictionary()


def _turns(sessions: SessionFactory) -> WriteTurns:
    turns = _write_turns.get(sessions)
    if turns is None:
        turns = _write_turns[sessions] = WriteTurns()
    return turns


async def write(
    sessions: SessionFactory,
    work: Work[T],
    *,
    what: str,
    conflict_retries: int = 0,
    urgent: bool = False,
    background: bool = False,
) -> T:
    """Run `work` in one shielded write transaction, committed when it returns.

    `what` names the operation in a StorageError. `conflict_retries`: run again after an IntegrityError
    (a concurrent writer won an insert race; `work` then reads its row back instead of inserting). The
    transaction rolled back before any retry, so `work` must keep no state across runs. `urgent`: do not
    queue behind this process's other writers (a lease renewal that waited out a burst of vote writes
    would lapse); the database still orders it (SQLite's busy timeout, PostgreSQL's row locks).
    `background`: bookkeeping that may wait until this process's other waiting writers are done.
    """
    with anyio.CancelScope(shield=True):
        result = await _retrying(sessions, work, what, conflict_retries, urgent, background)
    return result


def is_busy(exc: DBAPIError) -> bool:
    """Whether the database refused `exc`'s statement only because another writer held it up, so that running
    the whole transaction again is safe and may succeed. Never after the connection was lost."""
    if exc.connection_invalidated:
        return False
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)  # sqlite3 (aiosqlite), Python 3.11+
    if isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    for attribute in ("sqlstate", "pgcode"):  # asyncpg / psycopg 3, psycopg2
        if getattr(orig, attribute, None) in _PG_RETRYABLE:
            return True
    message = str(orig).lower()
    return any(busy in message for busy in _BUSY_MESSAGES)


async def _retrying(
    sessions: SessionFactory, work: Work[T], what: str, conflict_retries: int, urgent: bool, background: bool
) -> T:
    busy = iter(BUSY_RETRY_DELAYS)
    started = time.monotonic()
    conflicts = conflict_retries
    while True:
        try:
            async with _turn(sessions, urgent, background), sessions.begin() as session:
                return await work(session)
        except IntegrityError as exc:
            if conflicts <= 0:
                raise StorageError(f"{what}: {exc}") from exc
            conflicts -= 1
        except DBAPIError as exc:
            delay = next(busy, None) if is_busy(exc) else None
            if delay is None or time.monotonic() - started + delay > BUSY_RETRY_WINDOW:
                raise StorageError(f"{what}: {exc}") from exc
            await anyio.sleep(delay)  # outside the lock: the other writers of this process go on
        except SQLAlchemyError as exc:
            raise StorageError(f"{what}: {exc}") from exc


@asynccontextmanager
async def _turn(sessions: SessionFactory, urgent: bool, background: bool) -> AsyncIterator[None]:
    """This process's writers one at a time (see WriteTurns); an urgent one does not wait."""
    if urgent:
        yield
        return
    turns = _turns(sessions)
    await turns.acquire(background=background)
    try:
        yield
    finally:
        turns.release()


async def read(sessions: SessionFactory, work: Work[T], *, what: str, brief: bool = False) -> T:
    """Run `work` in a read session (not shielded, no lock: a cancelled read holds no write lock).

    `brief`: the StorageError names only the error's type (answers of the HTTP API show it).
    """
    try:
        async with sessions() as session:
            return await work(session)
    except SQLAlchemyError as exc:
        raise StorageError(f"{what}: {type(exc).__name__ if brief else exc}") from exc
