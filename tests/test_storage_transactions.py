"""storage/transactions.py::write retries only a database that is busy or locked, briefly, and never a write
whose connection was lost (its COMMIT may have happened)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import StorageError
from storage import transactions
from storage.engine import SessionFactory, create_engine, session_factory
from storage.transactions import write
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sessions() -> AsyncIterator[SessionFactory]:
    engine = create_engine("sqlite+aiosqlite:///:memory:")
    yield session_factory(engine)
    await engine.dispose()


class PgError(Exception):
    """Shaped like a PostgreSQL driver's error: asyncpg and psycopg 3 say `sqlstate`, psycopg2 `pgcode`."""

    def __init__(self, message: str, **codes: str) -> None:
        super().__init__(message)
        for name, value in codes.items():
            setattr(self, name, value)


def sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return error


async def attempts(sessions: SessionFactory, error: OperationalError, failures: int = 1) -> int:
    """How many times `write` ran a work that fails `failures` times with `error`, then succeeds."""
    calls: list[int] = []

    async def work(session: AsyncSession) -> int:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return len(calls)

    with contextlib.suppress(StorageError):
        await write(sessions, work, what="test")
    return len(calls)


def operational(orig: BaseException, *, invalidated: bool = False) -> OperationalError:
    return OperationalError("UPDATE votes", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    "orig",
    [
        Exception("database is locked"),
        sqlite_error("busy", 5),  # SQLITE_BUSY
        sqlite_error("busy snapshot", 5 | (2 << 8)),  # SQLITE_BUSY_SNAPSHOT
        sqlite_error("locked", 6),  # SQLITE_LOCKED
        PgError("could not serialize access", sqlstate="40001"),
        PgError("deadlock detected", pgcode="40P01"),
    ],
    ids=["message", "SQLITE_BUSY", "SQLITE_BUSY_SNAPSHOT", "SQLITE_LOCKED", "40001", "40P01"],
)
async def test_a_busy_database_is_retried(sessions: SessionFactory, orig: BaseException) -> None:
    assert await attempts(sessions, operational(orig)) == 2


@pytest.mark.parametrize(
    "error",
    [
        operational(Exception("disk I/O error")),
        operational(sqlite_error("disk I/O error", 10)),  # SQLITE_IOERR
        operational(PgError("server closed the connection unexpectedly", sqlstate="08006")),
        operational(Exception("database is locked"), invalidated=True),  # lost: the COMMIT may have run
    ],
    ids=["message", "SQLITE_IOERR", "08006", "connection-invalidated"],
)
async def test_any_other_operational_error_is_not_retried(
    sessions: SessionFactory, error: OperationalError
) -> None:
    assert await attempts(sessions, error) == 1


async def test_busy_retries_are_few_and_short(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = operational(Exception("database is locked"))
    assert await attempts(sessions, busy, failures=100) == 1 + len(transactions.BUSY_RETRY_DELAYS)
    assert sum(transactions.BUSY_RETRY_DELAYS) < transactions.BUSY_RETRY_WINDOW <= 2.0
    # A write that already waited out the window (SQLite's busy timeout) is not run again.
    monkeypatch.setattr(transactions, "BUSY_RETRY_WINDOW", 0.0)
    assert await attempts(sessions, busy) == 1


@pytest.mark.slow
@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_a_real_postgresql_serialization_failure_or_deadlock_is_retried(
    postgres_server: PostgresServer, sqlstate: str
) -> None:
    """The error asyncpg raises (wrapped by SQLAlchemy) carries the SQLSTATE `is_busy` looks for."""
    with postgres_server.database(migrated=False) as url:
        engine = create_engine(url)
        try:
            calls: list[int] = []

            async def work(session: AsyncSession) -> int:
                calls.append(1)
                if len(calls) == 1:
                    await session.execute(
                        text(f"DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{sqlstate}'; END $$")
                    )
                return int((await session.execute(text("SELECT 41 + 1"))).scalar_one())

            assert await write(session_factory(engine), work, what="test") == 42
            assert len(calls) == 2
        finally:
            await engine.dispose()


async def test_an_urgent_write_does_not_queue_behind_this_process_writers(sessions: SessionFactory) -> None:
    """A lane lease renewal (urgent) goes through while a burst of vote writes holds the writers' turn."""

    async def one(session: AsyncSession) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    holding, release = anyio.Event(), anyio.Event()

    async def another_writer() -> None:  # holds the writers' turn for as long as it takes
        async with transactions._turn(sessions, urgent=False, background=False):
            holding.set()
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(another_writer)
        await holding.wait()
        with anyio.fail_after(5):
            assert await write(sessions, one, what="renewal", urgent=True) == 1
        done: list[int] = []

        async def ordinary() -> None:
            done.append(await write(sessions, one, what="an ordinary write"))

        tg.start_soon(ordinary)
        await anyio.sleep(0.3)
        assert done == []  # the ordinary one waits its turn
        release.set()
    assert done == [1]


async def test_a_waiting_vote_write_goes_before_waiting_background_bookkeeping(
    sessions: SessionFactory,
) -> None:
    """Confirmations and tallies (background) wait while a signed vote's record (foreground) is waiting."""
    order: list[str] = []
    holding, release = anyio.Event(), anyio.Event()

    async def another_writer() -> None:
        async with transactions._turn(sessions, urgent=False, background=False):
            holding.set()
            await release.wait()

    def writer(name: str) -> Callable[[AsyncSession], Awaitable[None]]:
        async def work(session: AsyncSession) -> None:
            await session.execute(text("SELECT 1"))
            order.append(name)

        return work

    async with anyio.create_task_group() as tg:
        tg.start_soon(another_writer)
        await holding.wait()
        tg.start_soon(lambda: write(sessions, writer("confirmations"), what="c", background=True))
        await anyio.sleep(0.05)
        tg.start_soon(lambda: write(sessions, writer("tallies"), what="t", background=True))
        await anyio.sleep(0.05)
        tg.start_soon(lambda: write(sessions, writer("vote"), what="v"))
        await anyio.sleep(0.05)
        release.set()
    assert order == ["vote", "confirmations", "tallies"]


async def test_a_writer_cancelled_while_waiting_leaves_the_turns_usable(sessions: SessionFactory) -> None:
    turns = transactions.WriteTurns()
    await turns.acquire(background=False)
    with anyio.move_on_after(0.05):
        await turns.acquire(background=True)  # cancelled while waiting: leaves the queue
    turns.release()  # nobody waits: free again
    with anyio.fail_after(1):
        await turns.acquire(background=False)
    turns.release()
