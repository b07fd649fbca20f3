"""Engine and session factory. The only database-specific code of the service lives here (and in
storage/sqlite_driver.py, SQLite's driver with one trip per statement): SQLite's pragmas and file checks,
PostgreSQL's pool (both through SQLAlchemy's async drivers, aiosqlite and asyncpg)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from core.errors import ConfigError
from storage.sqlite_driver import one_trip_dbapi

SessionFactory = async_sessionmaker[AsyncSession]


def sqlite_path(database_url: str) -> Path | None:
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def is_sqlite(database_url: str) -> bool:
    return make_url(database_url).drivername.startswith("sqlite")


def check_database_location(database_url: str) -> None:
    """Fail at start-up, naming the setting, when an SQLite file cannot be created or written."""
    path = sqlite_path(database_url)
    if path is None:
        return
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ConfigError("DLOOP_DATABASE_URL", f"directory {directory} does not exist")
    target = path if path.exists() else directory
    if not os.access(target, os.W_OK):
        raise ConfigError("DLOOP_DATABASE_URL", f"{target} is not writable")


@contextmanager
def sqlite_run_lock(database_url: str) -> Iterator[None]:
    """While held, no other `dloop run` may use the same SQLite file: an exclusive, non-blocking flock on
    `<file>.run.lock`, which the kernel drops when the process ends however it ends (SIGKILL included).
    Two instances on one SQLite file would only take turns on its one write lock: instances that share a
    database (and fail over) use PostgreSQL. No-op for PostgreSQL; `dloop migrate` and the read-only
    commands do not take it."""
    path = sqlite_path(database_url)
    if path is None:
        yield
        return
    path = path.resolve()  # one lock per file, however it is named (relative, via a symlink)
    lock = path.with_name(path.name + ".run.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                "DLOOP_DATABASE_URL",
                f"another `dloop run` (pid {holder}) is using the SQLite file {path} (it holds {lock}); "
                "stop it first, or use PostgreSQL to run several instances",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (removing it would race a new holder)


# SQLite's heap in this process (page caches, prepared statements, schemas: every connection's, summed).
# Without a bound each pooled connection kept up to 2 MB of pages, and the service's RSS crept up as the
# database outgrew them (9-13 MB of SQLite heap after 10,000 proposals). Over the limit, a connection
# recycles its own least recently used pages instead of allocating more; a page read again usually comes
# from the operating system's file cache.
SQLITE_SOFT_HEAP_LIMIT = 8 * 2**20


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA soft_heap_limit={SQLITE_SOFT_HEAP_LIMIT}")  # process-wide; the same each time
    # WAL lets readers (the API, a user's sqlite3 shell) work while the voter writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# PostgreSQL's connection pool: the listener, the voter's lanes, the HTTP API and the alert evaluator read and
# write at once (writes of one process take turns: storage/transactions.py), so a handful of connections and
# a burst above it. Connections are checked before use (a restarted server or a dropped idle connection is a
# new connection, not a failed write) and renewed every half hour (proxies and poolers close idle ones).
POSTGRES_POOL = {
    "pool_size": 5,
    "max_overflow": 10,
    "pool_timeout": 30,
    "pool_recycle": 1800,
    "pool_pre_ping": True,
}


def create_engine(database_url: str) -> AsyncEngine:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return create_async_engine(url, **POSTGRES_POOL)
    if url.get_backend_name() == "sqlite" and url.get_driver_name() == "aiosqlite":
        engine = create_async_engine(url, module=one_trip_dbapi())
    else:
        engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)
