"""storage/sqlite_driver.py: one trip to aiosqlite's thread per statement, none for a rollback with no
transaction open, and everything SQLAlchemy reads from a cursor (rows, row counts, errors) as before."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.errors import StorageError
from storage import transactions
from storage.engine import SQLITE_SOFT_HEAP_LIMIT, SessionFactory, create_engine, session_factory
from storage.models import one_of
from storage.sqlite_driver import OneTripConnection

pytestmark = pytest.mark.anyio

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String, nullable=False, unique=True),
    Column("count", Integer, nullable=False, default=0),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> SessionFactory:
    return session_factory(engine)


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the calls queued on aiosqlite's connection threads from now on."""
    names: list[str] = []
    queue_call = cast(Callable[..., Awaitable[Any]], aiosqlite.Connection._execute)

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        names.append(getattr(fn, "__name__", repr(fn)))
        return await queue_call(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    yield names


async def _count(session: AsyncSession, name: str) -> int | None:
    return (await session.execute(select(items.c.count).where(items.c.name == name))).scalar_one_or_none()


async def test_a_statement_is_one_trip_and_a_read_ends_without_one(
    engine: AsyncEngine, sessions: SessionFactory, trips: list[str]
) -> None:
    async def add(session: AsyncSession) -> None:
        await session.execute(insert(items).values(name="a", count=1))

    await transactions.write(sessions, add, what="add")
    assert trips == ["_statement", "_transaction_end"]  # INSERT, COMMIT; the pool's reset makes no trip

    trips.clear()
    assert await transactions.read(sessions, lambda s: _count(s, "a"), what="read") == 1
    assert trips == ["_statement"]  # no transaction was open: the end of the read stays on the event loop

    trips.clear()

    async def two(session: AsyncSession) -> None:
        await session.execute(update(items).values(count=items.c.count + 1))
        await session.execute(select(items.c.id))

    await transactions.write(sessions, two, what="two")
    assert trips == ["_statement", "_statement", "_transaction_end"]


async def test_a_failed_write_is_rolled_back_before_the_connection_is_used_again(
    sessions: SessionFactory,
) -> None:
    """The rollback is skipped only with no transaction open: a write that fails after its INSERT leaves
    nothing behind, not even for the next write on the same pooled connection to commit."""

    async def add_then_fail(session: AsyncSession) -> None:
        await session.execute(insert(items).values(name="lost"))
        raise RuntimeError("after the insert")

    with pytest.raises(RuntimeError):
        await transactions.write(sessions, add_then_fail, what="fails")

    async def add_other(session: AsyncSession) -> None:
        await session.execute(insert(items).values(name="kept"))

    await transactions.write(sessions, add_other, what="other")
    names = await transactions.read(
        sessions, lambda s: _scalars(s, select(items.c.name).order_by(items.c.name)), what="names"
    )
    assert names == ["kept"]


async def _scalars(session: AsyncSession, statement: Any) -> list[Any]:
    return list((await session.execute(statement)).scalars())


async def test_rows_counts_and_ids_read_as_sqlalchemy_expects(sessions: SessionFactory) -> None:
    async def work(session: AsyncSession) -> tuple[Any, ...]:
        first = await session.execute(insert(items).values(name="x", count=5).returning(items.c.id))
        new_id = first.scalar_one()
        many = cast(
            CursorResult[Any],
            await session.execute(insert(items), [{"name": f"m{i}", "count": i} for i in range(3)]),
        )
        changed = cast(
            CursorResult[Any], await session.execute(update(items).where(items.c.count < 5).values(count=9))
        )
        lastrow = cast(CursorResult[Any], await session.execute(insert(items).values(name="y")))
        return new_id, many.rowcount, changed.rowcount, lastrow.inserted_primary_key

    new_id, many, changed, last_key = await transactions.write(sessions, work, what="work")
    assert new_id == 1
    assert many == 3
    assert changed == 3  # m0..m2
    assert tuple(last_key) == (5,)
    counts = await transactions.read(
        sessions, lambda s: _scalars(s, select(items.c.count).order_by(items.c.id)), what="counts"
    )
    assert counts == [5, 9, 9, 9, 0]


async def test_errors_keep_their_types_and_the_connection_stays_usable(
    engine: AsyncEngine, sessions: SessionFactory
) -> None:
    async def add(session: AsyncSession) -> None:
        await session.execute(insert(items).values(name="same"))

    await transactions.write(sessions, add, what="first")
    async with sessions() as session:
        with pytest.raises(IntegrityError):
            await session.execute(insert(items).values(name="same"))
            await session.commit()
    with pytest.raises(StorageError, match="second"):
        await transactions.write(sessions, add, what="second")
    async with engine.connect() as connection:
        with pytest.raises(Exception, match="no such table"):
            await connection.execute(text("SELECT * FROM missing"))
    assert await transactions.read(sessions, lambda s: _count(s, "same"), what="read") == 0


async def test_the_engine_uses_it_for_sqlite_files(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert isinstance(raw.dbapi_connection, OneTripConnection)
        journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
        heap_limit = (await connection.execute(text("PRAGMA soft_heap_limit"))).scalar_one()
    assert journal == "wal"  # the connect-time pragmas went through it too
    assert heap_limit == SQLITE_SOFT_HEAP_LIMIT
    assert sqlite3.sqlite_version_info >= (3, 35)  # RETURNING, which the storage layer relies on


async def test_in_lists_of_any_length_share_a_few_statement_texts(
    engine: AsyncEngine, sessions: SessionFactory
) -> None:
    """`one_of` pads an IN list to a power of two: the same rows, and at most a dozen SQL texts (each kept
    prepared by sqlite3, per connection) however many lengths the lists have."""

    async def add(session: AsyncSession) -> None:
        await session.execute(insert(items), [{"name": f"n{i}", "count": i} for i in range(1, 301)])

    await transactions.write(sessions, add, what="add")
    texts: set[str] = set()

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        texts.add(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    for length in range(1, 301):
        wanted = list(range(length, 0, -1))
        query = select(items.c.count).where(one_of(items.c.id, wanted)).order_by(items.c.id)
        async with sessions() as session:
            assert await _scalars(session, query) == sorted(wanted)
    event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert len(texts) == 10  # 1, 2, 4, ... 512 placeholders
