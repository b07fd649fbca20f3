"""Migrations and the proposal/vote records, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sqlite3
from pathlib import Path

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from chain.types import AssetInfo, LogRef, ProposalData
from core.errors import ConfigError, SchemaOutOfDate
from storage.engine import check_database_location, create_engine, session_factory, sqlite_run_lock
from storage.migrations import downgrade, ensure_schema_current, upgrade
from storage.models import Base, Vote, VoteState
from storage.proposals import record_proposal, sync_nodes
from tests.support.database import sql

pytestmark = [pytest.mark.anyio, pytest.mark.both_databases]

USDC = AssetInfo("0x" + "11" * 20, "USDC", 6)
PROPOSAL = ProposalData(
    proposal_id=1,
    proposal_type=0,
    asset_address=USDC.address,
    amount=2_500_000_000,
    description="Allocate 2,500 USDC to the stablecoin reserve",
    proposer="0x" + "22" * 20,
    created_at=1_700_000_000,
    voting_ends=1_700_259_200,
    yes_votes=0,
    no_votes=0,
    status=1,
    executed=False,
    asset=USDC,
)
NODES = [(f"ai-gov-0{i}", "0x" + f"{i:02d}" * 20, "conservative") for i in range(1, 6)]


async def test_the_migrations_build_exactly_the_models_tables(database_url: str) -> None:
    """A column or table added to storage/models.py without its alembic migration shows up here."""
    url = database_url
    await upgrade(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert differences == []


async def test_upgrade_downgrade_upgrade_and_views(
    database_url: str, db_backend: str, tmp_path: Path
) -> None:
    url = database_url
    with pytest.raises(SchemaOutOfDate, match="dloop migrate"):
        await ensure_schema_current(url)
    await upgrade(url)
    await ensure_schema_current(url)
    await downgrade(url)
    with pytest.raises(SchemaOutOfDate):
        await ensure_schema_current(url)
    await upgrade(url)

    engine = create_engine(url)
    sessions = session_factory(engine)
    nodes = await sync_nodes(sessions, NODES)
    await record_proposal(
        sessions, chain_id=31337, contract="0x" + "aa" * 20, data=PROPOSAL, source="subscription",
        node_ids=[n.id for n in nodes], log=LogRef(5, "0x" + "bb" * 32, "0x" + "cc" * 32, 0),
    )  # fmt: skip
    await engine.dispose()

    # What a user sees with plain SQL: UTC times, exact amounts, one row per vote.
    rows = await sql(url, "SELECT node, state, amount, asset, queued_at FROM vote_history ORDER BY node")
    assert [r[0] for r in rows] == [n[0] for n in NODES]
    assert {r[1] for r in rows} == {"queued"} and rows[0][2] == "2500" and rows[0][3] == "USDC"
    tally = await sql(url, "SELECT proposal_id, nodes_pending, node_votes, onchain_yes FROM proposal_tally")
    assert tally[0][0] == 1 and tally[0][1] == 5 and "ai-gov-01=queued" in tally[0][2] and tally[0][3] == "0"
    (created,) = (await sql(url, "SELECT created_at FROM proposals"))[0]
    if db_backend == "sqlite":  # readable text in the sqlite3 shell: 'YYYY-MM-DD HH:MM:SS...'
        with sqlite3.connect(tmp_path / "dloop.db") as db:
            assert (
                db.execute("SELECT created_at FROM proposals").fetchone()[0].startswith("2023-11-14 22:13:20")
            )
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    else:  # `timestamp without time zone`, in UTC
        assert created == dt.datetime(2023, 11, 14, 22, 13, 20)
        assert isinstance(rows[0][4], dt.datetime)


async def test_record_proposal_is_idempotent_and_handles_content_change(database_url: str) -> None:
    url = database_url
    await upgrade(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    nodes = await sync_nodes(sessions, NODES)
    ids = [n.id for n in nodes]
    kwargs = {"chain_id": 1, "contract": "0x" + "aa" * 20, "source": "backfill", "node_ids": ids}

    first = await record_proposal(sessions, data=PROPOSAL, **kwargs)  # type: ignore[arg-type]
    assert first.created and first.votes_added == 5

    # The same proposal delivered twice, concurrently: still one proposal and five vote rows.
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(lambda: record_proposal(sessions, data=PROPOSAL, **kwargs))  # type: ignore[arg-type]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Vote)) == 5

    # A node decided "no vote"; then a reorg puts other content under the same id: the decision is dropped.
    async with sessions.begin() as session:
        vote = (await session.execute(select(Vote).limit(1))).scalar_one()
        vote.state, vote.decision, vote.reason = VoteState.NO_VOTE, "none", "amount too large"
    replaced = dataclasses.replace(PROPOSAL, amount=1, description="Other content")
    again = await record_proposal(sessions, data=replaced, **kwargs)  # type: ignore[arg-type]
    assert again.content_changed and not again.created and again.votes_added == 0
    async with sessions() as session:
        states = (await session.execute(select(Vote.state, Vote.decision))).all()
    assert {tuple(s) for s in states} == {("queued", None)}

    # Adding a sixth node later gives every known proposal its row.
    more = await sync_nodes(sessions, [*NODES, ("ai-gov-06", "0x" + "06" * 20, "aggressive")])
    added = await record_proposal(sessions, data=replaced, **{**kwargs, "node_ids": [n.id for n in more]})  # type: ignore[arg-type]
    assert added.votes_added == 1
    await engine.dispose()


def test_database_location_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DLOOP_DATABASE_URL"):
        check_database_location(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'x.db'}")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root can write anywhere
            with pytest.raises(ConfigError, match="not writable"):
                check_database_location(f"sqlite+aiosqlite:///{locked / 'x.db'}")
    finally:
        locked.chmod(0o700)
    check_database_location(f"sqlite+aiosqlite:///{tmp_path / 'ok.db'}")


def test_one_run_lock_per_sqlite_file_however_it_is_named(tmp_path: Path) -> None:
    """The run lock is named from the resolved path: the same file reached through a symlink is refused, and
    the refusal names the holder's pid. (flock: two opens conflict even in one process.)"""
    real = tmp_path / "dloop.db"
    (tmp_path / "alias.db").symlink_to(real)
    alias = f"sqlite+aiosqlite:///{tmp_path / 'alias.db'}"
    with (
        sqlite_run_lock(f"sqlite+aiosqlite:///{real}"),
        pytest.raises(ConfigError, match=rf"another `dloop run` \(pid {os.getpid()}\) is using"),
        sqlite_run_lock(alias),
    ):
        pass
    with sqlite_run_lock(alias):  # free again
        pass
    assert not (tmp_path / "alias.db.run.lock").exists()  # one lock file, named after the real one


async def test_migration_0004_derives_outcomes_and_downgrades_without_losing_transactions(
    database_url: str,
) -> None:
    """Rows written before `votes.outcome` existed get the two codes the service decides on; going back
    drops the column only (vote_transactions rows stay: no table copy, no cascade)."""
    url = database_url
    await upgrade(url, "0003")
    engine = create_engine(url)
    nodes = await sync_nodes(session_factory(engine), NODES[:3])
    await record_proposal(
        session_factory(engine),
        chain_id=1,
        contract="0x" + "aa" * 20,
        data=PROPOSAL,
        source="backfill",
        node_ids=[],
    )  # fmt: skip  (no vote rows: the models have a column this schema lacks)
    await engine.dispose()
    rows = [
        {
            "node": nodes[0].id,
            "state": "closed",
            "error": "closed on chain by ProposalCanceled",
        },
        {"node": nodes[1].id, "state": "failed", "error": "reverted on chain: ProposalNotFound"},
        {"node": nodes[2].id, "state": "failed", "error": "reverted on chain: VotingPeriodEnded"},
    ]
    await sql(
        url,
        "INSERT INTO votes (proposal_ref, node_id, state, last_error, attempts, queued_at, updated_at)"
        " VALUES (1, :node, :state, :error, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
        rows,
    )
    await sql(
        url,
        "INSERT INTO vote_transactions (vote_id, tx_hash, nonce, max_fee_per_gas,"
        " max_priority_fee_per_gas, gas_limit, raw_transaction, created_at)"
        " SELECT MIN(id), '0x01', 0, '1', '1', 21000, '0x', '2026-01-01 00:00:00' FROM votes",
    )

    await upgrade(url)
    found = await sql(url, "SELECT node, outcome FROM vote_history ORDER BY node")
    assert [tuple(r) for r in found] == [
        ("ai-gov-01", "closed_by_event"),
        ("ai-gov-02", "proposal_not_found"),
        ("ai-gov-03", None),
    ]

    await downgrade(url, "0003")
    assert (await sql(url, "SELECT COUNT(*) FROM vote_transactions"))[0][0] == 1
    assert "outcome" not in (await sql(url, "SELECT * FROM votes LIMIT 1"))[0]._fields
    assert len(await sql(url, "SELECT * FROM vote_history")) == 3
    await upgrade(url)
    await ensure_schema_current(url)


async def test_migration_0008_puts_the_one_stream_on_old_blocks_and_logs(database_url: str) -> None:
    """A database that followed one contract keeps its recent blocks and logs, now under that stream."""
    url = database_url
    await upgrade(url, "0007")
    stream = "logs:31337:0x" + "aa" * 20
    await sql(
        url,
        "INSERT INTO chain_cursor (stream, block_number, updated_at) VALUES (:s, 9, '2026-01-01 00:00:00')",
        [{"s": stream}],
    )
    await sql(
        url,
        "INSERT INTO recent_blocks (number, hash, parent_hash, seen_at)"
        " VALUES (9, '0x09', '0x08', '2026-01-01 00:00:00')",
    )
    await sql(
        url,
        "INSERT INTO chain_logs (block_number, block_hash, tx_hash, log_index, event, removed, seen_at)"
        " VALUES (9, '0x09', '0x01', 0, 'ProposalCreated', false, '2026-01-01 00:00:00')",
    )
    await upgrade(url)
    assert [tuple(r) for r in await sql(url, "SELECT stream, number FROM recent_blocks")] == [(stream, 9)]
    assert [tuple(r) for r in await sql(url, "SELECT stream FROM chain_logs")] == [(stream,)]
    await downgrade(url, "0007")
    assert [tuple(r) for r in await sql(url, "SELECT number, hash FROM recent_blocks")] == [(9, "0x09")]
    await upgrade(url)
    await ensure_schema_current(url)


async def test_migration_0008_with_two_streams_keeps_what_the_rows_attribute(database_url: str) -> None:
    """A database that followed two contracts (on two chains): a log goes to the stream its rows prove (its
    proposal, our vote transaction, a block of a chain one stream alone followed); the recent blocks linked
    to a block of a known chain go to that chain's stream; the rest stays NULL / is dropped."""
    url = database_url
    await upgrade(url, "0006")
    a, b = "0x" + "aa" * 20, "0x" + "bb" * 20
    stream_a, stream_b = f"logs:31337:{a}", f"logs:31338:{b}"
    engine = create_engine(url)
    nodes = await sync_nodes(session_factory(engine), NODES[:1])
    for chain_id, contract in ((31337, a.upper().replace("0X", "0x")), (31338, b)):
        await record_proposal(
            session_factory(engine), chain_id=chain_id, contract=contract, data=PROPOSAL,
            source="backfill", node_ids=[nodes[0].id] if chain_id == 31337 else [],
        )  # fmt: skip
    await engine.dispose()
    when = "'2026-01-01 00:00:00'"
    await sql(url, "UPDATE proposals SET block_hash = '0xa1', log_index = 0 WHERE chain_id = 31337")
    await sql(url, "UPDATE proposals SET block_hash = '0xb1', log_index = 0 WHERE chain_id = 31338")
    await sql(
        url,
        "INSERT INTO vote_transactions (vote_id, tx_hash, nonce, max_fee_per_gas,"
        f" max_priority_fee_per_gas, gas_limit, raw_transaction, created_at)"
        f" SELECT MIN(id), '0xt1', 0, '1', '1', 21000, '0x', {when} FROM votes",
    )
    await sql(
        url,
        "INSERT INTO chain_cursor (stream, block_number, block_hash, updated_at)"
        f" VALUES (:s, 11, :h, {when})",
        [{"s": stream_a, "h": None}, {"s": stream_b, "h": "0xb11"}],
    )
    logs = [  # block hash, log index, tx hash, event
        ("0xa1", 0, "0xc1", "ProposalCreated"),  # proposal 1 of A
        ("0xb1", 0, "0xc2", "ProposalCreated"),  # proposal 1 of B
        ("0xa5", 3, "0xt1", "VoteCast"),  # our vote on A
        ("0xa5", 4, "0xother", "VoteCast"),  # someone's vote in the same block: chain 31337, only A there
        ("0xb9", 0, "0xc3", "ProposalExecuted"),  # nothing tells
    ]
    await sql(
        url,
        "INSERT INTO chain_logs (block_number, block_hash, tx_hash, log_index, event, proposal_id, removed,"
        f" seen_at) VALUES (5, :h, :t, :i, :e, 1, false, {when})",
        [{"h": h, "i": i, "t": t, "e": e} for h, i, t, e in logs],
    )
    blocks = [(10, "0xb10", "0xb09"), (11, "0xb11", "0xb10"), (3, "0xq3", "0xq2")]  # B's head run; a stray
    await sql(
        url,
        f"INSERT INTO recent_blocks (number, hash, parent_hash, seen_at) VALUES (:n, :h, :p, {when})",
        [{"n": n, "h": h, "p": p} for n, h, p in blocks],
    )

    await upgrade(url)
    found = await sql(
        url, "SELECT block_hash, log_index, stream FROM chain_logs ORDER BY block_hash, log_index"
    )
    assert [tuple(r) for r in found] == [
        ("0xa1", 0, stream_a),
        ("0xa5", 3, stream_a),
        ("0xa5", 4, stream_a),
        ("0xb1", 0, stream_b),
        ("0xb9", 0, None),
    ]
    window = await sql(url, "SELECT stream, number, hash FROM recent_blocks ORDER BY number")
    assert [tuple(r) for r in window] == [(stream_b, 10, "0xb10"), (stream_b, 11, "0xb11")]
    await downgrade(url, "0006")
    await upgrade(url)
    await ensure_schema_current(url)
