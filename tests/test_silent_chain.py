"""A deployment whose chain passed preflight and then went silent (it accepts TCP, never answers) does not
hold up the service: the API comes up, `dloop run` reports ready (`service_started`), and the other
deployment votes (issue #17 review). On SQLite it votes without lane leases (the run lock)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
from anyio.from_thread import start_blocking_portal

from core.settings import load_settings
from dloop.commands import DeploymentPlan, _run_service
from dloop.preflight import ChainIdentity, preflight_chain
from storage.engine import create_engine, session_factory
from storage.lanes import acquire as acquire_lanes
from tests.support.chain import Chain
from tests.support.database import migrate
from tests.support.waiting import poll_until

NODES = 5
SILENT_CHAIN_ID = 31999


@contextlib.contextmanager
def silent_socket() -> Iterator[str]:
    """A listening socket nobody accepts from: the kernel completes the TCP handshake, no byte comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}"


def config(chain: Chain, silent_url: str) -> str:
    nodes = "\n".join(
        f'[[deployments.nodes]]\nname = "ai-gov-0{i}"\nkey_env = "NODE{i}_KEY"\nstrategy = "aggressive"\n'
        for i in range(1, NODES + 1)
    )

    def deployment(name: str, url: str) -> str:
        return (
            f'[[deployments]]\nname = "{name}"\nrpc_ws_url = "{url}"\n'
            f'contract_address = "{chain.info.contract_address}"\n'
            f"start_block = {chain.info.deployment_block}\n{nodes}\n"
        )

    return deployment("alpha", chain.anvil.ws_url) + deployment("beta", silent_url)


def test_a_silent_chain_holds_up_neither_the_api_nor_the_other_deployment(
    chain: Chain, tmp_path: Path
) -> None:
    db = tmp_path / "dloop.db"
    migrate(db)
    with silent_socket() as silent_url:
        (tmp_path / "dloop.toml").write_text(config(chain, silent_url))
        env = {
            "DLOOP_CONFIG": str(tmp_path / "dloop.toml"),
            "DLOOP_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
            "DLOOP_HTTP_PORT": "0",
            "DLOOP_RECONCILE_INTERVAL": "3600",
            "DLOOP_RPC_TIMEOUT": "3",
            **{f"NODE{i}_KEY": key for i, key in enumerate(chain.info.node_keys, 1)},
        }
        settings = load_settings(env)
        plans = [DeploymentPlan(settings, d, "test-instance") for d in settings.deployments]

        async def serve(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
            alpha = await preflight_chain(plans[0].view)
            # Lease rows an earlier run with lane ownership left: on SQLite (one instance by its run lock)
            # they are forgotten at start, or they would refuse every "no lanes" record.
            engine = create_engine(settings.database_url)
            try:
                await acquire_lanes(
                    session_factory(engine),
                    chain_id=alpha.chain_id,
                    addresses=[a.address.lower() for a in plans[0].accounts],
                    owner="an-earlier-run",
                    seconds=3600,
                )
            finally:
                await engine.dispose()
            # Beta "passed preflight" (its chain answered then) and has gone silent since.
            beta = ChainIdentity(SILENT_CHAIN_ID, "0x" + "11" * 32, alpha.contract)
            identities: dict[str, Any] = {"alpha": alpha, "beta": beta}
            await _run_service(settings, plans, identities, task_status.started, False, True)

        with start_blocking_portal() as portal:
            began = time.monotonic()
            future, service = portal.start_task(serve)  # on_ready: `service_started` was logged
            try:
                assert time.monotonic() - began < 15.0
                url = f"http://127.0.0.1:{service.http.port}"
                health = httpx.get(f"{url}/health", timeout=10)
                # Beta down, alpha live: degraded (not unhealthy), naming beta.
                checks = health.json()["checks"]
                assert health.json()["status"] == "degraded", health.text
                assert not checks["deployments"]["ok"] and "beta" in checks["deployments"]["detail"]
                assert health.json()["lanes"]["mode"] == "run-lock"
                assert service.running["alerts"]  # the notifier ends at once without webhooks

                ids = chain.create(1)

                def voted() -> bool:
                    body = httpx.get(f"{url}/votes?deployment=alpha&proposal={ids[0]}", timeout=10).json()
                    votes = body["votes"]
                    return len(votes) == NODES and all(v["state"] == "confirmed" for v in votes)

                poll_until(voted, timeout=30, interval=0.2, what="alpha's votes while beta is silent")
                beta_view = next(d for d in service.deployments if d.name == "beta").voter_view()
                assert not beta_view.running
            finally:
                future.cancel()
                with contextlib.suppress(concurrent.futures.CancelledError):
                    future.result(timeout=20)
