"""SQLAlchemy's aiosqlite adapter, with one trip to the connection's thread per statement.

aiosqlite runs each call on its connection's own thread and wakes the event loop with the answer; SQLAlchemy's
adapter makes four such trips per statement (open a cursor, execute, fetch the rows, close the cursor) and
one more to roll back every connection going back to the pool, even one that never began a transaction.
Each trip waits for the event loop to come round again: a fraction of a millisecond when it is idle, but
several next to a voting burst, so a one-statement write took about 10 ms on the voter's path. Here a
statement is one trip (cursor, execute, rows, close, all on the database thread) and the connection's
transaction state is noted there, so that a rollback with no transaction open (a read's end, the pool's
reset after a commit) makes no trip at all. Everything else is SQLAlchemy's adapter, unchanged; the engine
passes this module in as the dialect's DBAPI (`create_async_engine(..., module=...)`), so URLs and the dialect
stay `sqlite+aiosqlite`. Written against SQLAlchemy 2.1.9 and aiosqlite 0.22.1 (pinned in pyproject), whose
`Connection._execute` (queue a call on the connection's thread) it uses; tests/test_sqlite_driver.py counts
the trips.
"""

from __future__ import annotations

import collections
import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What SQLAlchemy reads from a cursor after a statement, taken on the database thread."""

    description: Any
    rowcount: int
    lastrowid: int | None
    rows: list[Any]


_NOTHING_YET = _Outcome(None, -1, None, [])


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A statement and its rows in one trip; no sqlite3 cursor outlives it (none is opened until then)."""

    __slots__ = ("_outcome",)

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        # Not the base's __init__: it opens an aiosqlite cursor, a trip of its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._outcome = _NOTHING_YET
        self._rows = collections.deque()

    @property
    def description(self) -> Any:
        return self._outcome.description

    @property
    def rowcount(self) -> int:
        return self._outcome.rowcount

    @property
    def lastrowid(self) -> Any:
        return self._outcome.lastrowid

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._run(operation, () if parameters is None else parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        self._run(operation, seq_of_parameters, many=True)

    def _run(self, operation: Any, parameters: Any, *, many: bool) -> None:
        adapt = self._adapt_connection
        assert isinstance(adapt, OneTripConnection)
        try:
            self._outcome = await_(adapt.on_thread(_statement, adapt, operation, parameters, many))
        except Exception as error:
            adapt._handle_exception(error)
        self._rows = collections.deque(self._outcome.rows)

    async def _async_soft_close(self) -> None:
        return None  # nothing open: the rows and the description are already here

    def close(self) -> None:
        self._rows.clear()


def _statement(adapt: OneTripConnection, operation: Any, parameters: Any, many: bool) -> _Outcome:
    """On the database thread: the whole statement, then whether a transaction is open now."""
    raw: sqlite3.Connection = adapt._connection._conn
    cursor = raw.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return _Outcome(cursor.description, cursor.rowcount, cursor.lastrowid, rows)
    finally:
        cursor.close()
        adapt.in_transaction = raw.in_transaction


def _transaction_end(adapt: OneTripConnection, commit: bool) -> None:
    """On the database thread: COMMIT or ROLLBACK, then whether a transaction is open now."""
    raw: sqlite3.Connection = adapt._connection._conn
    try:
        raw.commit() if commit else raw.rollback()
    finally:
        adapt.in_transaction = raw.in_transaction


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection whose cursors are `OneTripCursor`s and whose rollback with no
    transaction open (sqlite3 opens one before a write, never before a read) stays on the event loop, as does
    a commit then (sqlite3's own would do nothing)."""

    __slots__ = ("in_transaction",)

    _cursor_cls = OneTripCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        # Set on the database thread after each statement, commit and rollback; True until the first
        # (the connect-time pragmas) says otherwise, so an unknown state is always rolled back.
        self.in_transaction = True

    async def on_thread(self, function: Any, *args: Any) -> Any:
        """`function(*args)` on the connection's thread (aiosqlite's own queue of calls)."""
        async with self._execute_mutex:
            return await self._connection._execute(function, *args)

    def rollback(self) -> None:
        if self.in_transaction and self._connection._connection is not None:
            self._end(commit=False)

    def commit(self) -> None:
        if self.in_transaction and self._connection._connection is not None:
            self._end(commit=True)

    def _end(self, *, commit: bool) -> None:
        try:
            await_(self.on_thread(_transaction_end, self, commit))
        except Exception as error:
            self._handle_exception(error)


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI shim, handing out `OneTripConnection`s."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        creator_fn = kw.pop("async_creator_fn", None)
        connection = creator_fn(*arg, **kw) if creator_fn else self.aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's: an unclosed connection must not hold up the exit
        return OneTripConnection(self, await_(connection))


def one_trip_dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)
