"""Connection faults against `dloop run` (a real process): the WebSocket dropped every few seconds and
stalled (socket open, nothing forwarded) through a TCP proxy; anvil frozen with SIGSTOP and resumed; anvil
stopped and restarted from its `--state` file while votes are in the mempool. After each fault every
proposal is voted exactly once, and the reconnects are counted (listener from `GET /`, voter from its log).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from devtools.anvil import AnvilProcess, free_port
from devtools.devnet import DevnetInfo, deploy_devnet
from tests.support.chaos import (
    DloopRun,
    audit_votes,
    frozen,
    proposal_count,
    report,
    service_env,
    settled,
    sized,
    vote_cast_count,
)
from tests.support.database import devnet_nodes, migrate, open_database
from tests.support.listener_env import make_settings, running_listener
from tests.support.proxy import TcpProxy
from tests.support.service import create_proposals
from tests.support.waiting import poll_until, wait_until

pytestmark = pytest.mark.slow  # each test starts its own anvil, proxies and `dloop run` processes

NODES = 5
FAULT_KNOBS = {
    "DLOOP_HEAD_TIMEOUT": "2",  # a silent connection is probed after 2 s
    "DLOOP_RPC_TIMEOUT": "3",
}


@contextmanager
def proxy_in_thread(upstream_port: int) -> Iterator[tuple[TcpProxy, BlockingPortal]]:
    """The asyncio TCP proxy on its own event loop thread; call it through the portal."""
    with start_blocking_portal("asyncio") as portal:
        proxy = TcpProxy(upstream_port, record=False)
        portal.call(proxy.start)
        try:
            yield proxy, portal
        finally:
            portal.call(proxy.close)


class Round:
    """Bookkeeping of one fault phase: proposals created, then everything settled and audited."""

    def __init__(self, anvil: AnvilProcess, devnet: DevnetInfo, svc: DloopRun, db: Path) -> None:
        self.anvil, self.devnet, self.svc, self.db = anvil, devnet, svc, db
        self.ids: list[int] = []
        self.created = 0

    def create(self, count: int) -> None:
        self.ids += create_proposals(self.anvil, self.devnet, count, first_index=self.created)
        self.created += count

    def listener_reconnects(self) -> int:
        return int(self.svc.overview()["listener"]["reconnects"])

    def voter_reconnects(self) -> int:
        return len(self.svc.events("voter_reconnecting"))

    def wait_settled(self, timeout: float = 90) -> float:
        """Seconds until every vote row of every proposal on chain is settled."""
        started = time.monotonic()
        total = proposal_count(self.anvil, self.devnet) * NODES
        poll_until(lambda: settled(self.db, total), timeout=timeout, what="every vote settled", interval=0.1)
        return time.monotonic() - started

    def check(self, phase: str, detail: str, recovered: float, listener: int, voter: int) -> None:
        audit = audit_votes(self.anvil, self.devnet, self.db, self.ids)
        report(
            f"connection {phase}: {detail}; {audit.summary()}; listener reconnects {listener}, "
            f"voter reconnects {voter}; settled {recovered:.1f} s after the fault ended"
        )
        assert audit.clean, audit
        assert set(audit.states) == {"confirmed"}, audit.states


def test_dropped_and_stalled_websocket(tmp_path: Path) -> None:
    drop_every = 2.0
    drop_for = sized(7.0, 60.0)
    stall_for = sized(5.0, 20.0)
    with AnvilProcess() as anvil, proxy_in_thread(anvil.port) as (proxy, portal):
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        db = tmp_path / "dloop.db"
        migrate(db)
        env = service_env(proxy.ws_url, devnet, db, **FAULT_KNOBS)
        with DloopRun(env, tmp_path, tmp_path / "run.log") as svc:
            svc.wait_live()
            work = Round(anvil, devnet, svc, db)

            # Drops: every connection aborted every `drop_every` s while proposals keep coming.
            listener_before, voter_before = work.listener_reconnects(), work.voter_reconnects()
            drops = dropped_connections = 0
            end = time.monotonic() + drop_for
            while time.monotonic() < end:
                work.create(3)
                time.sleep(drop_every)
                dropped_connections += portal.call(proxy.drop_all)
                drops += 1
            recovered = work.wait_settled()
            work.check(
                "drops",
                f"{drops} drops every {drop_every:g} s ({dropped_connections} connections aborted), "
                f"{work.created} proposals created meanwhile",
                recovered,
                work.listener_reconnects() - listener_before,
                work.voter_reconnects() - voter_before,
            )
            assert work.listener_reconnects() - listener_before >= drops

            # Stall: sockets stay open, nothing is forwarded, during a burst.
            listener_before, voter_before = work.listener_reconnects(), work.voter_reconnects()
            work.create(10)
            portal.call(proxy.stall)
            time.sleep(stall_for)
            portal.call(proxy.resume)
            recovered = work.wait_settled()
            work.check(
                "stall",
                f"stalled {stall_for:g} s mid-burst of 10 proposals",
                recovered,
                work.listener_reconnects() - listener_before,
                work.voter_reconnects() - voter_before,
            )
            if stall_for >= 15:  # longer than any request timeout: the stall must have been detected
                assert work.listener_reconnects() - listener_before >= 1
            assert svc.alive and not svc.tracebacks(), svc.tracebacks()[:3]
            assert svc.stop() == 0


def test_anvil_frozen_with_sigstop_then_restarted_from_its_state(tmp_path: Path) -> None:
    freeze_for = sized(3.0, 10.0)
    port = free_port()
    state = tmp_path / "anvil-state.json"
    anvil = AnvilProcess(port=port, block_time=1, state_file=state).start()
    try:
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        db = tmp_path / "dloop.db"
        migrate(db)
        env = service_env(anvil.ws_url, devnet, db, **FAULT_KNOBS)
        with DloopRun(env, tmp_path, tmp_path / "run.log") as svc:
            svc.wait_live()
            work = Round(anvil, devnet, svc, db)

            # SIGSTOP while a burst is being voted: the process lives, its sockets are open, nothing answers.
            listener_before, voter_before = work.listener_reconnects(), work.voter_reconnects()
            work.create(20)
            poll_until(lambda: vote_cast_count(anvil, devnet) > 0, timeout=30, what="the first votes")
            with frozen(anvil):
                time.sleep(freeze_for)
            recovered = work.wait_settled()
            work.check(
                "sigstop",
                f"anvil SIGSTOPped {freeze_for:g} s mid-burst of 20 proposals (--block-time 1)",
                recovered,
                work.listener_reconnects() - listener_before,
                work.voter_reconnects() - voter_before,
            )

            # Restart from --state while votes wait in the mempool: the pool is lost with the process.
            listener_before, voter_before = work.listener_reconnects(), work.voter_reconnects()
            first_vote = vote_cast_count(anvil, devnet)
            work.create(20)
            poll_until(
                lambda: vote_cast_count(anvil, devnet) > first_vote, timeout=30, what="votes of the burst"
            )
            anvil.stop()  # SIGTERM: anvil writes its state file
            time.sleep(1.0)
            anvil.start()
            recovered = work.wait_settled()
            work.check(
                "restart",
                "anvil stopped mid-burst of 20 proposals and restarted from --state after 1 s",
                recovered,
                work.listener_reconnects() - listener_before,
                work.voter_reconnects() - voter_before,
            )
            assert work.listener_reconnects() - listener_before >= 1
            assert svc.alive and not svc.tracebacks(), svc.tracebacks()[:3]
            assert svc.stop() == 0
    finally:
        anvil.stop()


# -- focused reproducer of what the drops above showed -------------------------------------------------------


@pytest.mark.anyio
async def test_the_listener_backoff_starts_over_after_a_connection_that_was_live(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with AnvilProcess() as anvil:
        info = deploy_devnet(anvil.http_url, proposals=0)
        db = await open_database(tmp_path / "listener.db", devnet_nodes(info))
        try:
            async with TcpProxy(anvil.port, record=False) as proxy:
                settings = make_settings(proxy.ws_url, info, db.url)
                async with running_listener(
                    settings, db, reconnect_base_delay=0.05, reconnect_max_delay=30.0
                ) as listener:
                    for drop in range(1, 5):
                        await proxy.drop_all()
                        await wait_until(
                            lambda: (
                                listener.status.reconnects == drop  # noqa: B023
                                and listener.status.connected
                            ),
                            timeout=20,
                        )
        finally:
            await db.engine.dispose()
    attempts = [
        getattr(r, "dloop_fields", {}).get("attempt")
        for r in caplog.records
        if r.getMessage() == "listener_reconnecting"
    ]
    assert attempts == [1, 1, 1, 1], attempts
