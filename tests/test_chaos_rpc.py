"""RPC faults: `dloop run` (a real process) behind a JSON-RPC proxy that answers -32005 "Too Many Requests"
to 30% of requests, refuses 30% of WebSocket handshakes with HTTP 429, delays requests by 2 s, refuses
JSON-RPC batches and answers with malformed JSON (after forwarding: a vote may be sent without the service
hearing back). The service must not crash, must back off, and every vote must land exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from web3 import Web3

from chain.client import ChainClient
from chain.connection import open_ws
from chain.ws_client import read_subscriptions, subscribe_heads
from core.errors import ChainError, MalformedAnswer, TransientChainError, first_error
from core.retry import is_retried
from core.signals import WorkSignal
from devtools.anvil import AnvilProcess
from devtools.devnet import deploy_devnet
from tests.support.chain import Chain, devnet_chain
from tests.support.chaos import DloopRun, audit_votes, report, service_env, settled, sized
from tests.support.database import devnet_nodes, migrate, open_database
from tests.support.listener_env import make_settings, running_listener, wait_for_queue
from tests.support.rpc_faults import FaultPlan, faulty_rpc_proxy, proxy_in_thread
from tests.support.rpc_proxy import rpc_proxy
from tests.support.service import create_proposals
from tests.support.voter import check_exactly_once, make_harness, queue_proposals, vote_rows
from tests.support.waiting import poll_until, wait_until

NODES = 5
PROPOSALS = sized(12, 49)

PLANS = sized(
    [
        pytest.param(FaultPlan(max_batch=0), id="every-batch-refused"),
        pytest.param(FaultPlan(garbled=0.05), id="malformed"),
    ],
    [
        pytest.param(FaultPlan(max_batch=0), id="every-batch-refused"),
        pytest.param(FaultPlan(max_batch=3), id="batches-over-3-refused"),
        pytest.param(FaultPlan(delayed=0.1, delay_seconds=2.0), id="delays"),
        pytest.param(FaultPlan(rate_limited=0.3, handshake_429=0.3), id="rate-limits"),
        pytest.param(FaultPlan(garbled=0.05), id="malformed"),
    ],
)
SETTLE_TIMEOUT = sized(60.0, 300.0)  # 2 s delays make a 49-proposal burst take minutes


@pytest.mark.slow  # starts its own anvil
@pytest.mark.parametrize("plan", PLANS)
def test_votes_land_once_through_a_faulty_provider(plan: FaultPlan, tmp_path: Path) -> None:
    with AnvilProcess() as anvil, proxy_in_thread(anvil.ws_url, plan) as proxy:
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        db = tmp_path / "dloop.db"
        migrate(db)
        env = service_env(proxy.url, devnet, db, DLOOP_RPC_TIMEOUT="5", DLOOP_HEAD_TIMEOUT="5")
        proxy.active = False  # start-up through a healthy provider: see test_start_up_through_a_rate_limit
        with DloopRun(env, tmp_path, tmp_path / "run.log") as svc:
            svc.wait_live(timeout=60)
            proxy.active = True
            started = time.monotonic()
            ids = create_proposals(anvil, devnet, PROPOSALS)
            total = PROPOSALS * NODES
            poll_until(
                lambda: settled(db, total), timeout=SETTLE_TIMEOUT, what="every vote settled", interval=0.2
            )
            elapsed = time.monotonic() - started
            metrics = svc.get("/metrics").text
            assert svc.alive, svc.log_tail()
            tracebacks = svc.tracebacks()
            listener_reconnects = svc.overview()["listener"]["reconnects"]
            reconnect_errors = [event.get("error") for event in svc.events("voter_reconnecting")]
            voter_reconnects = len(reconnect_errors)
            assert svc.stop() == 0, svc.log_tail()
        audit = audit_votes(anvil, devnet, db, ids)
    rpc_errors = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("dloop_rpc_errors_total{")
    )
    report(
        f"rpc ({plan.describe()}): {audit.summary()}; injected {dict(sorted(proxy.counts.items()))}, "
        f"batches refused {proxy.stats.batches_refused}; listener reconnects {listener_reconnects}, "
        f"voter reconnects {voter_reconnects}, rpc errors counted {rpc_errors:g}; "
        f"all votes settled {elapsed:.1f} s after the burst"
    )
    assert audit.clean, audit
    assert audit.states == {"confirmed": total}, audit.states
    assert not tracebacks, tracebacks[:3]
    injected = sum(proxy.counts[k] for k in ("rate_limited", "handshake_429", "delayed", "garbled"))
    assert injected + proxy.stats.batches_refused > 0
    if proxy.counts["rate_limited"] or proxy.counts["garbled"] or proxy.stats.batches_refused:
        # The node's error answers are counted whichever part's request met them (once only the
        # reconciler's were, and every scenario reported 0).
        assert rpc_errors > 0, [line for line in metrics.splitlines() if "rpc_errors" in line]
    if plan.garbled and not (plan.rate_limited or plan.handshake_429 or plan.delayed or plan.max_batch):
        # A malformed answer costs its request, not the connection (bug G): the voter never reconnects.
        assert proxy.counts["garbled"] > 0
        assert voter_reconnects == 0, reconnect_errors[:3]


# -- focused reproducers of what the scenarios above found -------------------------------------------------


@pytest.mark.slow  # starts its own anvil
@pytest.mark.anyio
async def test_one_malformed_answer_does_not_stop_the_voter(tmp_path: Path) -> None:
    with devnet_chain(3) as (node, info):
        async with faulty_rpc_proxy(node.ws_url, FaultPlan()) as proxy:
            h = await make_harness(node, info, tmp_path, rpc_ws_url=proxy.url)
            voter = h.voter(poll_interval=0.3, receipt_poll_interval=0.05)
            async with anyio.create_task_group() as tg:
                await tg.start(voter.run)
                proxy.force("garbled", 1)  # the voter's next request is answered with non-JSON text
                await queue_proposals(h)
                h.signal.notify()

                async def all_confirmed() -> bool:
                    rows = await vote_rows(h.sessions)
                    return len(rows) == 15 and all(r.state == "confirmed" for r in rows)

                try:
                    await wait_until(all_confirmed, timeout=15)
                finally:
                    tg.cancel_scope.cancel()
            assert proxy.counts["garbled"] == 1
            assert voter.status.reconnects == 0, voter.status.last_connection_error  # only the request lost
            check_exactly_once(node.http_url, info.contract_address, h.addresses)


@pytest.mark.slow  # starts its own anvil
@pytest.mark.anyio
async def test_the_listener_keeps_up_through_30_percent_rate_limits(tmp_path: Path) -> None:
    with AnvilProcess() as anvil:
        info = deploy_devnet(anvil.http_url, proposals=0)
        chain = Chain(anvil, info, Web3(Web3.HTTPProvider(anvil.http_url)))
        db = await open_database(tmp_path / "listener.db", devnet_nodes(info))
        try:
            async with faulty_rpc_proxy(anvil.ws_url, FaultPlan(rate_limited=0.3)) as proxy:
                proxy.active = False
                signal = WorkSignal()
                settings = make_settings(proxy.url, info, db.url)
                # The service's own reconnect delays (0.5 s doubling to 30 s), not the tests' short ones.
                async with running_listener(
                    settings, db, signal, reconnect_base_delay=0.5, reconnect_max_delay=30.0
                ):
                    proxy.active = True
                    ids = await chain.create_async(5)
                    await wait_for_queue(db, signal, set(ids), timeout=20)
                    assert proxy.counts["rate_limited"] > 0, proxy.counts  # the fault was really served
        finally:
            await db.engine.dispose()


@pytest.mark.slow  # starts its own anvil
def test_start_up_through_a_rate_limited_first_request(tmp_path: Path) -> None:
    with AnvilProcess() as anvil, proxy_in_thread(anvil.ws_url, FaultPlan()) as proxy:
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        db = tmp_path / "dloop.db"
        migrate(db)
        proxy.force("rate_limited", 1)
        with DloopRun(service_env(proxy.url, devnet, db), tmp_path, tmp_path / "run.log") as svc:
            svc.wait_ready(timeout=30)
            assert proxy.counts["rate_limited"] == 1, proxy.counts  # the first request was refused


# -- pure: what a malformed answer and a task group's error become -----------------------------------------


def test_a_malformed_answer_is_retried_only_when_repeating_it_is_safe() -> None:
    assert is_retried(MalformedAnswer("bad frame", method="eth_call"))
    assert not is_retried(MalformedAnswer("bad frame", method="eth_sendRawTransaction", repeatable=False))
    assert is_retried(TransientChainError("timeout"))
    assert not is_retried(ChainError("RPC error -32000: boom"))


def test_the_reconnect_log_names_the_inner_error_of_a_task_group() -> None:
    inner = TransientChainError("connection lost: ConnectionClosedError")
    nested = BaseExceptionGroup("outer", [ExceptionGroup("inner", [ValueError("x"), inner])])
    assert first_error(nested) is inner
    plain = ExceptionGroup("tg", [KeyError("k")])
    assert isinstance(first_error(plain), KeyError)
    assert first_error(inner) is inner


@pytest.mark.slow  # starts its own anvil
@pytest.mark.anyio
async def test_a_malformed_notification_makes_the_listener_catch_up(tmp_path: Path) -> None:
    """A bad frame no request claims may have been a log notification: the subscriber must not lose it."""
    with AnvilProcess() as anvil:
        info = deploy_devnet(anvil.http_url, proposals=0)
        chain = Chain(anvil, info, Web3(Web3.HTTPProvider(anvil.http_url)))
        db = await open_database(tmp_path / "listener.db", devnet_nodes(info))
        try:
            async with faulty_rpc_proxy(anvil.ws_url, FaultPlan()) as proxy:
                signal = WorkSignal()
                settings = make_settings(proxy.url, info, db.url)
                async with running_listener(settings, db, signal) as listener:
                    reconnects = listener.status.reconnects
                    proxy.force("garbled_notification", 2)  # the proposal's block head and its log
                    ids = await chain.create_async(1)
                    await wait_for_queue(db, signal, set(ids), timeout=20)
                    assert proxy.counts["garbled_notification"] == 2
                    assert listener.status.reconnects > reconnects  # it started over and caught up
        finally:
            await db.engine.dispose()


@pytest.mark.slow  # starts its own anvil
@pytest.mark.anyio
async def test_a_refused_batch_is_reported_by_its_caller_and_leaves_the_socket_usable() -> None:
    """Regression: the refusal (one error object, id null) was a web3 "stray error" that ended the socket's
    listener task, so the subscription stream or any concurrent request could report it first (a plain
    ChainError) and cancel the batch's caller before it remembered the refusal: the listener reconnected
    and batched again, forever. chain/rpc_socket.py hands it to the batch waiting."""
    with AnvilProcess() as anvil:
        async with (
            rpc_proxy(anvil.ws_url, max_batch=0) as proxy,
            open_ws(proxy.url, request_timeout=5) as socket,
        ):
            client = ChainClient(socket, "0x" + "11" * 20, timeout=5)
            heads_id = await subscribe_heads(client)
            head_arrived = anyio.Event()

            def on_head(message: Mapping[str, Any]) -> None:
                assert message["subscription"] == heads_id
                head_arrived.set()

            async def read_heads() -> None:
                await read_subscriptions(client, on_head)

            async def singles_meanwhile() -> None:
                while True:
                    await client.block_number()

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_heads)
                    tg.start_soon(singles_meanwhile)
                    with pytest.raises(TransientChainError, match=r"refused a JSON-RPC batch.*not batching"):
                        await client.call_many([("eth_blockNumber", [])] * 3, batch_size=10)
                    assert client.batches_refused and proxy.stats.batches_refused == 1
                    # The same connection still answers, one by one, and still delivers notifications.
                    assert await client.call_many([("eth_chainId", [])] * 3, batch_size=10) == ["0x7a69"] * 3
                    await anyio.to_thread.run_sync(anvil.rpc, "evm_mine", [])
                    with anyio.fail_after(5):
                        await head_arrived.wait()
                    tg.cancel_scope.cancel()
            finally:
                client.batches_refused = False  # remembered per endpoint for the whole process
