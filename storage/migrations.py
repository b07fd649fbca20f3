"""Run and check alembic migrations from code (`dloop migrate`, start-up schema check, tests)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from core.errors import SchemaOutOfDate, StorageError
from storage.engine import create_engine


def alembic_dir() -> Path:
    """The alembic scripts (env.py, versions/).

    They live in the repository's top-level `alembic/` folder, which the wheel ships as `storage/alembic`
    (pyproject.toml maps the package `storage.alembic` to that folder), so an installed `dloop` finds them
    as package data of `storage`. In a checkout (`pip install -e .`, `make setup`, the tests) that folder
    is not inside `storage/`, and the top-level one beside the package is used.
    """
    packaged = files("storage").joinpath("alembic")
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(str(files("storage"))).resolve().parent / "alembic"
    if checkout.joinpath("env.py").is_file():
        return checkout
    raise StorageError(f"the alembic migrations are missing (looked in {packaged} and {checkout})")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(alembic_dir()))
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
