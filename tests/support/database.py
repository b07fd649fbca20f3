"""The one way tests get a database: a real SQLite file or PostgreSQL database, migrated with alembic, with
node records.

The `db` fixture in tests/conftest.py opens one per test (on both databases for a test marked
`both_databases`; `database_url` is an empty one); tests that start `dloop` processes or the service only
`migrate` one, and a few open one inside the test with `open_database` / `migrated_database`. `sql` runs
plain SQL on either, as a user's shell would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncEngine

from chain.accounts import node_accounts
from chain.types import AssetInfo, ProposalData
from core.settings import DEFAULT_NODE_NAMES, DEFAULT_NODE_STRATEGIES, Settings
from devtools.devnet import DevnetInfo
from storage.engine import SessionFactory, create_engine, session_factory
from storage.migrations import upgrade
from storage.proposals import NodeRecord, sync_nodes

# (name, address, strategy) of one node record
NodeSpec = tuple[str, str, str]


@dataclass
class Database:
    url: str
    engine: AsyncEngine
    sessions: SessionFactory
    nodes: list[NodeRecord]


def database_url(target: Settings | Path | str) -> str:
    """The SQLAlchemy URL of a settings object's database, of a file path, or the URL itself."""
    if isinstance(target, Settings):
        return target.database_url
    if isinstance(target, Path):
        return f"sqlite+aiosqlite:///{target}"
    return target


def made_up_nodes(count: int = 5) -> list[NodeSpec]:
    """Node records for tests without a chain: ai-gov-01.. at 0x0101.., 0x0202.., all conservative."""
    return [(f"ai-gov-0{i}", "0x" + f"{i:02d}" * 20, "conservative") for i in range(1, count + 1)]


def devnet_nodes(info: DevnetInfo) -> list[NodeSpec]:
    """The devnet's five funded nodes, named and configured as the defaults name them."""
    return list(zip(DEFAULT_NODE_NAMES, info.node_addresses, DEFAULT_NODE_STRATEGIES, strict=True))


def made_up_proposal(pid: int) -> ProposalData:
    """An active investment proposal `pid` (1 USDC) for tests without a chain."""
    return ProposalData(
        pid, 0, "0x" + "11" * 20, 10**6, "A proposal", "0x" + "22" * 20, 1_700_000_000, 1_700_000_000 + pid,
        0, 0, 1, False, AssetInfo("0x" + "11" * 20, "USDC", 6),
    )  # fmt: skip


def settings_nodes(settings: Settings) -> list[NodeSpec]:
    return [(a.name, a.address, a.strategy) for a in node_accounts(settings.nodes)]


def migrate(target: Settings | Path | str) -> None:
    """Bring the database to the newest schema (blocking: for tests that hand the file to another process)."""
    anyio.run(upgrade, database_url(target))


async def open_database(target: Settings | Path | str, nodes: Sequence[NodeSpec]) -> Database:
    """Migrate, connect and record `nodes`; the caller disposes of `engine` (or use `migrated_database`)."""
    url = database_url(target)
    await upgrade(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    records = await sync_nodes(sessions, list(nodes))
    return Database(url, engine, sessions, records)


@asynccontextmanager
async def migrated_database(
    target: Settings | Path | str, nodes: Sequence[NodeSpec]
) -> AsyncIterator[Database]:
    """`open_database`, its engine disposed at the end while the event loop still runs (a pooled aiosqlite
    connection left to the garbage collector answers into a closed loop)."""
    database = await open_database(target, nodes)
    try:
        yield database
    finally:
        await database.engine.dispose()


async def sql(url: str, statement: str, params: Sequence[dict[str, object]] | None = None) -> list[Row[Any]]:
    """Plain SQL on the database at `url` (named `:parameters`; several parameter sets run it once each), in
    one committed transaction; the rows of a SELECT, else []."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), list(params) if params else None)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()
