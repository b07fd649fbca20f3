"""Run and check alembic migrations from code (`dloop migrate`, start-up schema check, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from core.errors import SchemaOutOfDate, StorageError
from storage.engine import create_engine

ALEMBIC_DIR = Path(__file__).resolve().parents[1] / "alembic"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", database_url)
    return config


async def upgrade(database_url: str, revision: str = "head") -> None:
    await _run(database_url, lambda cfg: command.upgrade(cfg, revision))


async def downgrade(database_url: str, revision: str = "base") -> None:
    await _run(database_url, lambda cfg: command.downgrade(cfg, revision))


async def _run(database_url: str, action: object) -> None:
    config = alembic_config(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:

            def run(sync_conn: Connection) -> None:
                config.attributes["connection"] = sync_conn
                action(config)  # type: ignore[operator]

            await conn.run_sync(run)
    except SQLAlchemyError as exc:
        raise StorageError(f"migration failed: {exc}") from exc
    finally:
        await engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def ensure_schema_current(database_url: str) -> None:
    """Refuse to run on a schema that is behind (or ahead of) this code."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read the database: {exc}") from exc
    finally:
        await engine.dispose()
    head = head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at {current or 'empty'}, this version needs {head}: run `dloop migrate`"
        )
