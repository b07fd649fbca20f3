"""Pause switches in the database (shared, survive a restart) and how /metrics shows them. No chain."""

from __future__ import annotations

import pytest

from storage.controls import SERVICE_SCOPE, PauseWatch, read_pauses, set_paused
from storage.engine import create_engine, session_factory
from storage.migrations import upgrade
from web.metrics import MetricsSnapshot, render

pytestmark = pytest.mark.anyio


@pytest.mark.both_databases
async def test_pause_state_is_stored_shared_and_read_back(database_url: str) -> None:
    url = database_url
    await upgrade(url)
    engine = create_engine(url)
    try:
        sessions = session_factory(engine)
        one, two = PauseWatch(sessions), PauseWatch(sessions, max_age=0.0)
        assert not (await one.current()).paused("ai-gov-01")
        state = await one.set(["ai-gov-02"], True, by="http")
        assert state.paused("ai-gov-02") and not state.paused("ai-gov-01")
        assert state.reason("ai-gov-02") == "signing paused for node ai-gov-02"
        assert (await two.current()).nodes == {"ai-gov-02"}  # another instance on the same database
        assert await set_paused(sessions, "ai-gov-02", True, by="cli") is False  # already paused
        await set_paused(sessions, SERVICE_SCOPE, True, by="cli")
        stored = await read_pauses(sessions)  # what a restarted service reads
        assert stored.service and stored.paused("ai-gov-05") and stored.changed_at is not None
        await one.set([SERVICE_SCOPE, "ai-gov-02"], False, by="http")
        assert await read_pauses(sessions) == (await one.current())
        assert not (await two.current()).paused("ai-gov-02")
    finally:
        await engine.dispose()


def test_metrics_show_pause_and_dry_run() -> None:
    text = render(
        MetricsSnapshot(
            vote_counts={("ai-gov-01", "dry_run"): 3},
            queue_by_state={},
            head_block=None,
            head_lag_seconds=None,
            reconnects=0,
            sent_latencies=[],
            mined_latencies=[],
            rpc_errors={},
            proposals_known=0,
            proposals_active=0,
            listener_up=True,
            voter_up=True,
            paused_nodes=["ai-gov-02"],
            nodes=["ai-gov-01", "ai-gov-02"],
            dry_run=True,
        )
    )
    assert 'dloop_signing_paused{scope="service"} 0' in text
    assert 'dloop_signing_paused{scope="node",node="ai-gov-02"} 1' in text
    assert 'dloop_signing_paused{scope="node",node="ai-gov-01"} 0' in text
    assert "dloop_dry_run 1" in text
    assert 'dloop_votes{node="ai-gov-01",state="dry_run"} 3' in text
