"""Helpers for the service tests: settings pointing at a devnet, the service running in a thread, and
proposals and votes made outside it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from web3 import Web3

from core.settings import Settings, load_settings
from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo, asset_dao

T = TypeVar("T")


def devnet_environ(ws_url: str, devnet: DevnetInfo, db_path: Path | str, **extra: str) -> dict[str, str]:
    """The environment a user would set for this devnet (what `dloop devnet` writes to .env.devnet); the
    database is an SQLite file or a URL."""
    env = {
        "DLOOP_RPC_WS_URL": ws_url,
        "DLOOP_CONTRACT_ADDRESS": devnet.contract_address,
        "DLOOP_DATABASE_URL": db_path if isinstance(db_path, str) else f"sqlite+aiosqlite:///{db_path}",
        "DLOOP_START_BLOCK": str(devnet.deployment_block),
        "DLOOP_HTTP_PORT": "0",
    }
    for number, key in enumerate(devnet.node_keys, start=1):
        env[f"AI_NODE_{number}_PRIVATE_KEY"] = key
    env.update(extra)
    return env


def devnet_settings(ws_url: str, devnet: DevnetInfo, db_path: Path, **overrides: Any) -> Settings:
    settings = load_settings(devnet_environ(ws_url, devnet, db_path))
    return dataclasses.replace(settings, **overrides) if overrides else settings


def create_proposals(
    anvil: AnvilProcess, devnet: DevnetInfo, count: int, *, first_index: int = 0
) -> list[int]:
    from devtools.devnet import create_proposals as create

    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    return create(
        w3,
        devnet.contract_address,
        devnet.proposer_key,
        devnet.token_addresses,
        count,
        first_index=first_index,
    )


def cast_vote(
    anvil: AnvilProcess, devnet: DevnetInfo, node_index: int, proposal_id: int, support: bool
) -> None:
    """A node votes outside the service (e.g. the old bot with the same key)."""
    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    account = w3.eth.account.from_key(devnet.node_keys[node_index])
    dao = asset_dao(w3, devnet.contract_address)
    tx = dao.functions.vote(proposal_id, support).build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction),
        timeout=10,
        poll_latency=0.01,
    )
    assert receipt["status"] == 1


@dataclass
class RunningService:
    """A service running in its own event loop thread (the test's thread stays free for curl and httpx)."""

    service: Any
    portal: BlockingPortal
    url: str

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.portal.call(function, *args)


@contextmanager
def running_service(settings: Settings, *, enable_listener: bool = True) -> Iterator[RunningService]:
    """The code path of `dloop run` (preflight, schema check, node sync, task group) minus signals."""
    from dloop.commands import serve

    async def serve_started(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
        await serve(
            settings, handle_signals=False, enable_listener=enable_listener, on_ready=task_status.started
        )

    with start_blocking_portal() as portal:
        future, service = portal.start_task(serve_started)
        try:
            yield RunningService(service, portal, f"http://127.0.0.1:{service.http.port}")
        finally:
            future.cancel()
            with contextlib.suppress(concurrent.futures.CancelledError):
                future.result(timeout=15)


def queue_settled(url: str, expected_votes: int) -> bool:
    """Every vote row the service knows is out of the sending path, and there are `expected_votes` of them."""
    overview = httpx.get(f"{url}/", timeout=10).json()
    by_state = overview["queue"]["byState"]
    return overview["queue"]["depth"] == 0 and sum(by_state.values()) == expected_votes


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (a TEST-NET address on the sandbox's eth0)."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
