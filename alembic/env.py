"""Alembic environment. Migrations run on a connection handed in by storage.migrations, or on the URL.

This folder ships in the wheel as `storage/alembic` (see pyproject.toml); it has no `__init__.py` on
purpose (in a checkout it would shadow the alembic library).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from storage.models import Base

target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    # `alembic upgrade head` from the shell: SQLite through the sync driver for the same file; PostgreSQL
    # through asyncpg (the only PostgreSQL driver installed, by the `postgres` extra).
    url = context.config.get_main_option("sqlalchemy.url") or "sqlite:///dloop.db"
    if make_url(url).get_backend_name() == "postgresql":
        asyncio.run(_run_async(make_url(url).set(drivername="postgresql+asyncpg").render_as_string(False)))
        return
    engine = create_engine(url.replace("+aiosqlite", ""))
    with engine.begin() as conn:
        run_on(conn)


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    main()
