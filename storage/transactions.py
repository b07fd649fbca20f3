"""The one way storage/ runs a transaction: `write` for anything that changes rows, `read` for the rest.

A write is shielded from cancellation: cancelled mid-statement, its rollback would be cancelled too (anyio
cancellation is level-triggered), leaving the connection holding SQLite's write lock until the busy timeout.
So a cancelled write still commits or rolls back before the cancellation takes effect. Writers of one
process take turns on a lock (SQLite has one writer at a time, and its busy handler sleeps up to 100 ms per
retry; each write here is a few ms). A database still busy (another process writing) is retried a few times.
Errors leave as core.errors.StorageError, never as SQLAlchemy exceptions.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import StorageError
from storage.engine import SessionFactory

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[T]]

# Waits before retrying a write the database refused as busy or locked (another process holds the lock
# beyond SQLite's own busy timeout, or PostgreSQL aborted it on a conflict). Portable: OperationalError.
BUSY_RETRY_DELAYS = (0.05, 0.2, 0.5)

_write_locks: weakref.WeakKeyDictionary[SessionFactory, anyio.Lock] = weakref.WeakKeyDictionary()


def _write_lock(sessions: SessionFactory) -> anyio.Lock:
    lock = _write_locks.get(sessions)
    if lock is None:
        lock = _write_locks[sessions] = anyio.Lock()
    return lock


async def write(sessions: SessionFactory, work: Work[T], *, what: str, conflict_retries: int = 0) -> T:
    """Run `work` in one shielded write transaction, committed when it returns.

    `what` names the operation in a StorageError. `conflict_retries`: run again after an IntegrityError
    (a concurrent writer won an insert race; `work` then reads its row back instead of inserting). The
    transaction rolled back before any retry, so `work` must keep no state across runs.
    """
    with anyio.CancelScope(shield=True):
        result = await _retrying(sessions, work, what, conflict_retries)
    return result


async def _retrying(sessions: SessionFactory, work: Work[T], what: str, conflict_retries: int) -> T:
    busy = iter(BUSY_RETRY_DELAYS)
    conflicts = conflict_retries
    while True:
        try:
            async with _write_lock(sessions), sessions.begin() as session:
                return await work(session)
        except IntegrityError as exc:
            if conflicts <= 0:
                raise StorageError(f"{what}: {exc}") from exc
            conflicts -= 1
        except OperationalError as exc:
            delay = next(busy, None)
            if delay is None:
                raise StorageError(f"{what}: {exc}") from exc
            await anyio.sleep(delay)  # outside the lock: the other writers of this process go on
        except SQLAlchemyError as exc:
            raise StorageError(f"{what}: {exc}") from exc


async def read(sessions: SessionFactory, work: Work[T], *, what: str, brief: bool = False) -> T:
    """Run `work` in a read session (not shielded, no lock: a cancelled read holds no write lock).

    `brief`: the StorageError names only the error's type (answers of the HTTP API show it).
    """
    try:
        async with sessions() as session:
            return await work(session)
    except SQLAlchemyError as exc:
        raise StorageError(f"{what}: {type(exc).__name__ if brief else exc}") from exc
