"""web3's private internals the service relies on (chain/web3_internals.py) are all there. No chain needed.

When this fails after a web3 upgrade, re-read each overridden or reached-into method named in that module's
docstring against the new web3 before changing `WEB3_VERSION`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from web3 import AsyncWeb3
from web3._utils.caching.caching_utils import generate_cache_key
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close
from websockets.protocol import State

from chain.client import ChainClient
from chain.web3_internals import WEB3_VERSION, FrameTolerantWebSocketProvider, internals_problems, request_key
from chain.ws_client import read_subscriptions, subscribe_heads
from core.errors import ChainError, ContractRevert, TransientChainError


def test_the_installed_web3_has_the_internals_we_rely_on() -> None:
    problems = internals_problems()
    assert not problems, (
        f"chain/web3_internals.py was written against web3=={WEB3_VERSION} (pinned in pyproject.toml): "
        + "; ".join(problems)
    )


@pytest.mark.parametrize("request_id", [0, 7, 123456789, "batch", "7"])
def test_request_key_is_web3s_cache_key_of_the_id(request_id: int | str) -> None:
    assert request_key(request_id) == generate_cache_key(request_id)


@pytest.mark.anyio
async def test_a_batch_is_sent_as_the_json_web3_would_send() -> None:
    """The provider's one-`json.dumps` encoding of a batch says what web3's per-request encoder says."""
    provider = FrameTolerantWebSocketProvider("ws://127.0.0.1:1")
    sent: list[bytes] = []

    async def socket_send(data: bytes) -> None:
        sent.append(data)

    provider.socket_send = socket_send  # type: ignore[method-assign,assignment]
    requests = [
        ("eth_call", [{"to": "0x" + "ab" * 20, "data": "0x1234"}, "0x10"]),
        ("eth_getTransactionCount", ["0x" + "cd" * 20, "pending"]),
        ("eth_blockNumber", []),
    ]
    dicts = await provider.send_batch_request(requests)  # type: ignore[arg-type]
    assert [d["method"] for d in dicts] == [m for m, _ in requests] and provider._batches_sent == 1
    assert json.loads(sent[0]) == json.loads(provider.encode_batch_request_dicts(dicts))


def test_the_pinned_web3_is_the_version_the_internals_were_written_for() -> None:
    pinned = next(
        line.strip().strip('",')
        for line in (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith('"web3==')
    )
    assert pinned == f"web3=={WEB3_VERSION}", (
        f"pyproject.toml pins {pinned}, chain/web3_internals.py was written against web3=={WEB3_VERSION}"
    )


# -- the subscription reader over web3's real listener task --------------------------------------------------
# A fake socket stands in for the node (no server: these stay in `make test-fast`); web3's own `connect`
# starts its listener task and its done callback over it, as on a real connection.


@dataclass(frozen=True)
class Refusal:
    """A JSON-RPC error answer for FakeSocket's `answers`."""

    error: dict[str, Any]


class FakeSocket:
    """websockets' client connection, as web3's provider uses it: answers requests from `answers` (method ->
    result) and hands out the frames a test pushes, or raises the exception pushed."""

    state = State.CLOSED  # web3's `disconnect` then skips the closing handshake

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.frames: asyncio.Queue[str | BaseException] = asyncio.Queue()

    def push(self, *frames: Any) -> None:
        for frame in frames:
            self.frames.put_nowait(frame if isinstance(frame, str | BaseException) else json.dumps(frame))

    async def send(self, payload: bytes | str) -> None:
        request = json.loads(payload)
        answer = self.answers[request["method"]]
        frame = {"jsonrpc": "2.0", "id": request["id"]}
        frame |= {"error": answer.error} if isinstance(answer, Refusal) else {"result": answer}
        # After a round trip, as a node: web3 registers a request only once its `send` has returned.
        asyncio.get_running_loop().call_later(0.005, self.push, frame)

    async def recv(self) -> str:
        frame = await self.frames.get()
        if isinstance(frame, BaseException):
            raise frame
        return frame


@asynccontextmanager
async def fake_connection(
    answers: dict[str, Any] | None = None, *, queue_size: int = 500
) -> AsyncIterator[tuple[ChainClient, FakeSocket]]:
    socket = FakeSocket({"eth_subscribe": HEADS, **(answers or {})})
    provider = FrameTolerantWebSocketProvider(
        "ws://127.0.0.1:1", claim_window=0.05, subscription_response_queue_size=queue_size
    )

    async def connect() -> None:
        provider._ws = socket  # type: ignore[assignment]

    provider._provider_specific_connect = connect  # type: ignore[method-assign]
    w3 = AsyncWeb3(provider, middleware=[])
    await provider.connect()
    try:
        yield ChainClient(w3, "0x" + "11" * 20, timeout=5), socket
    finally:
        with contextlib.suppress(Exception):  # as open_ws: a dead listener's error again
            await provider.disconnect()


HEADS = "0x" + "aa" * 16


def notification(subscription: str, number: int) -> dict[str, Any]:
    head = {"number": hex(number), "hash": "0x" + "11" * 32}
    return {
        "jsonrpc": "2.0",
        "method": "eth_subscription",
        "params": {"subscription": subscription, "result": head},
    }


async def read_until_error(client: ChainClient) -> tuple[list[Any], BaseException]:
    seen: list[Any] = []
    with anyio.fail_after(5), pytest.raises(ChainError) as raised:
        await read_subscriptions(client, seen.append)
    return seen, raised.value


@pytest.mark.anyio
async def test_notifications_come_out_as_the_node_sent_them_until_the_socket_closes() -> None:
    async with fake_connection() as (client, socket):
        assert await subscribe_heads(client) == HEADS
        socket.push(notification(HEADS, 1), notification("0xother", 2), notification(HEADS, 3))
        socket.push(ConnectionClosedOK(Close(1000, "bye"), None))
        seen, error = await read_until_error(client)
    # Every subscription's, raw (hex strings, not web3's ints and HexBytes); the caller picks its own.
    assert seen == [
        notification(HEADS, 1)["params"],
        notification("0xother", 2)["params"],
        notification(HEADS, 3)["params"],
    ]
    assert isinstance(error, TransientChainError) and "stream ended" in str(error)


@pytest.mark.anyio
async def test_a_dead_listener_task_ends_the_reader_with_its_error() -> None:
    async with fake_connection() as (client, socket):
        await subscribe_heads(client)
        socket.push(notification(HEADS, 1), ConnectionClosedError(None, None))
        seen, error = await read_until_error(client)
    assert [m["result"]["number"] for m in seen] == ["0x1"]  # what arrived before is still handed over
    assert isinstance(error, TransientChainError) and "ConnectionClosedError" in str(error)


@pytest.mark.anyio
async def test_a_stray_error_that_kills_the_listener_task_ends_the_reader() -> None:
    async with fake_connection() as (client, socket):
        await subscribe_heads(client)
        # An error answering no request: web3's listener task raises it and dies.
        socket.push({"jsonrpc": "2.0", "id": 999, "error": {"code": -32000, "message": "boom"}})
        _, error = await read_until_error(client)
    assert "boom" in str(error)


@pytest.mark.anyio
async def test_an_unclaimed_malformed_frame_ends_the_reader() -> None:
    async with fake_connection() as (client, socket):
        await subscribe_heads(client)
        socket.push("{not json")  # no request claims it: a lost notification?
        seen, error = await read_until_error(client)
    assert seen == [] and isinstance(error, TransientChainError) and "malformed frame 1" in str(error)


@pytest.mark.anyio
async def test_a_notification_without_params_is_skipped_and_one_with_bad_params_ends_the_reader() -> None:
    async with fake_connection() as (client, socket):
        await subscribe_heads(client)
        socket.push({"jsonrpc": "2.0", "method": "eth_subscription"}, notification(HEADS, 1))
        # web3's listener task itself fails on params that are not an object (it looks for the id in them).
        socket.push({"jsonrpc": "2.0", "method": "eth_subscription", "params": "garbage"})
        seen, error = await read_until_error(client)
    assert seen == [notification(HEADS, 1)["params"]] and "AttributeError" in str(error)


@pytest.mark.anyio
async def test_the_reader_wakes_a_listener_task_paused_on_a_full_queue() -> None:
    async with fake_connection(queue_size=2) as (client, socket):
        await subscribe_heads(client)
        socket.push(*(notification(HEADS, n) for n in range(1, 8)))
        await asyncio.sleep(0.05)  # web3's listener fills the queue (2) and waits for a reader
        socket.push(ConnectionClosedOK(Close(1000, "bye"), None))
        seen, error = await read_until_error(client)
    assert [int(m["result"]["number"], 16) for m in seen] == list(range(1, 8))
    assert "stream ended" in str(error)


# -- single requests ---------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("web3_caching", [False, True])
async def test_single_requests_are_known_to_web3_and_forgotten_once_answered(
    web3_caching: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusal = {"code": 3, "message": "execution reverted", "data": "0x"}
    answers = {"eth_blockNumber": "0x10", "eth_call": Refusal(refusal), "eth_chainId": "0x7a69"}
    async with fake_connection(answers) as (client, _socket):
        provider = cast(FrameTolerantWebSocketProvider, client.w3.provider)
        provider.cache_allowed_requests = web3_caching
        processor = provider._request_processor
        hashed: list[str] = []
        registering = processor.cache_request_information

        def counted(*args: Any, **kwargs: Any) -> str | None:
            hashed.append(args[1])
            return registering(*args, **kwargs)

        monkeypatch.setattr(processor, "cache_request_information", counted)
        assert await client.block_number() == 16
        # An error answer is its request's (known to web3, not a stray error that kills the listener task).
        with pytest.raises(ContractRevert):
            await client.request("eth_call", [{"to": "0x" + "22" * 20, "data": "0x"}, "latest"])
        assert await client.chain_id() == 31337
        # Every entry popped with its answer (web3's request cache keeps eth_chainId's, when in use).
        assert len(processor._request_information_cache) == (1 if web3_caching else 0)
        assert provider._message_listener_task is not None and not provider._message_listener_task.done()
    # web3's md5 of each request's method and parameters only when its request cache could be in use.
    assert hashed == (["eth_blockNumber", "eth_call", "eth_chainId"] if web3_caching else [])
