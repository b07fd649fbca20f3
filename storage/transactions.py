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

_write_locks: weakref.WeakKeyDictionary[SessionFactory, anyio.Lock] = weakref.WeakKeyDictionary()


def _write_lock(sessions: SessionFactory) -> anyio.Lock:
    lock = _write_locks.get(sessions)
    if lock is None:
        lock = _write_locks[sessions] = anyio.Lock()
    return lock


async def write(
    sessions: SessionFactory,
    work: Work[T],
    *,
    what: str,
    conflict_retries: int = 0,
    urgent: bool = False,
) -> T:
    """Run `work` in one shielded write transaction, committed when it returns.

    `what` names the operation in a StorageError. `conflict_retries`: run again after an IntegrityError
    (a concurrent writer won an insert race; `work` then reads its row back instead of inserting). The
    transaction rolled back before any retry, so `work` must keep no state across runs. `urgent`: do not
    queue behind this process's other writers (a lease renewal that waited out a burst of vote writes
    would lapse); the database still orders it (SQLite's busy timeout, PostgreSQL's row locks).
    """
    with anyio.CancelScope(shield=True):
        result = await _retrying(sessions, work, what, conflict_retries, urgent)
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
    sessions: SessionFactory, work: Work[T], what: str, conflict_retries: int, urgent: bool
) -> T:
    busy = iter(BUSY_RETRY_DELAYS)
    started = time.monotonic()
    conflicts = conflict_retries
    while True:
        try:
            async with _turn(sessions, urgent), sessions.begin() as session:
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
async def _turn(sessions: SessionFactory, urgent: bool) -> AsyncIterator[None]:
    """This process's writers one at a time; an urgent one goes first."""
    if urgent:
        yield
        return
    async with _write_lock(sessions):
        yield


async def read(sessions: SessionFactory, work: Work[T], *, what: str, brief: bool = False) -> T:
    """Run `work` in a read session (not shielded, no lock: a cancelled read holds no write lock).

    `brief`: the StorageError names only the error's type (answers of the HTTP API show it).
    """
    try:
        async with sessions() as session:
            return await work(session)
    except SQLAlchemyError as exc:
        raise StorageError(f"{what}: {type(exc).__name__ if brief else exc}") from exc
