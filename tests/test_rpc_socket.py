"""chain/rpc_socket.py: answers found by id, notifications in order, bad frames and stray answers handled
on the connection, and every waiter told when the connection ends. A fake socket stands in for the node (no
server: these stay in `make test-fast`); the chaos suites run the same code against anvil behind a proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from chain.client import ChainClient
from chain.rpc_socket import RpcSocket
from chain.ws_client import read_subscriptions, subscribe_heads
from core.errors import ChainError, ContractRevert, MalformedAnswer, TransientChainError

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Refusal:
    """A JSON-RPC error answer for FakeFrames' `answers`."""

    error: dict[str, Any]


class FakeFrames:
    """A WebSocket as RpcSocket uses it: answers requests (and batches, reversed: JSON-RPC allows any order)
    from `answers` (method -> result) after a short delay, and hands out the frames a test pushes, or raises
    the exception pushed. `silent` methods get no answer."""

    def __init__(self, answers: dict[str, Any], silent: frozenset[str] = frozenset()) -> None:
        self.answers = answers
        self.silent = silent
        self.rate_limit_batches = 0  # the next batches answered with one rate-limit error per request
        self.sent: list[Any] = []
        self.frames: asyncio.Queue[str | bytes | BaseException] = asyncio.Queue()

    def push(self, *frames: Any) -> None:
        for frame in frames:
            self.frames.put_nowait(
                frame if isinstance(frame, str | bytes | BaseException) else json.dumps(frame)
            )

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = self.answers[request["method"]]
        frame = {"jsonrpc": "2.0", "id": request["id"]}
        return frame | ({"error": answer.error} if isinstance(answer, Refusal) else {"result": answer})

    async def send(self, message: bytes) -> None:
        request = json.loads(message)
        self.sent.append(request)
        if any(r["method"] in self.silent for r in (request if isinstance(request, list) else [request])):
            return
        if isinstance(request, list) and self.rate_limit_batches:
            self.rate_limit_batches -= 1
            limited = {"code": -32005, "message": "Too Many Requests"}
            frame: Any = [{"jsonrpc": "2.0", "id": None, "error": limited} for _ in request]
        elif isinstance(request, list):
            frame = [self._answer(r) for r in reversed(request)]
        else:
            frame = self._answer(request)
        asyncio.get_running_loop().call_later(0.005, self.push, frame)

    async def recv(self) -> str | bytes:
        frame = await self.frames.get()
        if isinstance(frame, BaseException):
            raise frame
        return frame


HEADS = "0x" + "aa" * 16
ANSWERS = {"eth_subscribe": HEADS, "eth_blockNumber": "0x10", "eth_chainId": "0x7a69"}


@asynccontextmanager
async def fake_connection(
    answers: dict[str, Any] | None = None, *, silent: frozenset[str] = frozenset(), queue_size: int = 500
) -> AsyncIterator[tuple[ChainClient, FakeFrames]]:
    frames = FakeFrames({**ANSWERS, **(answers or {})}, silent)
    socket = RpcSocket(frames, "ws://fake", claim_window=0.05, queue_size=queue_size)
    async with anyio.create_task_group() as tg:
        tg.start_soon(socket.read_frames)
        yield ChainClient(socket, "0x" + "11" * 20, timeout=2, malformed_grace=0.05), frames
        tg.cancel_scope.cancel()


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


async def test_requests_and_batches_get_their_own_answers() -> None:
    refusal = {"code": 3, "message": "execution reverted", "data": "0x"}
    async with fake_connection({"eth_call": Refusal(refusal)}) as (client, frames):
        block, chain = await asyncio.gather(client.block_number(), client.chain_id())
        assert (block, chain) == (16, 31337)
        with pytest.raises(ContractRevert):
            await client.request("eth_call", [{"to": "0x" + "22" * 20, "data": "0x"}, "latest"])
        # Answered in reverse order: each result is put back in its request's place.
        results = await client.batch(
            [("eth_blockNumber", []), ("eth_chainId", []), ("eth_call", [{}, "0x1"])]
        )
        assert results[:2] == ["0x10", "0x7a69"] and isinstance(results[2], ContractRevert)
    ids = [r["id"] for r in frames.sent[:3]] + [r["id"] for r in frames.sent[3]]
    assert len(set(ids)) == len(ids)  # every request of the socket has its own id
    assert frames.sent[3][0] == {"jsonrpc": "2.0", "id": ids[3], "method": "eth_blockNumber", "params": []}


async def test_a_refused_batch_gets_the_refusal_and_the_socket_goes_on() -> None:
    async with fake_connection(silent=frozenset({"eth_getBalance"})) as (client, frames):
        refusal = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch too large"}}
        socket = client.socket
        waiting = asyncio.ensure_future(socket.batch([("eth_getBalance", ["0x1", "latest"])] * 2))
        await asyncio.sleep(0.01)
        frames.push(refusal)
        ids, answer = await waiting
        assert len(ids) == 2 and answer == refusal
        assert await client.block_number() == 16


async def test_a_batch_rate_limited_item_by_item_is_asked_again() -> None:
    """Some providers refuse a batch with one id-null error per request: a refusal (here a rate limit,
    asked again after a pause), not a batch answered with the wrong ids."""
    async with fake_connection() as (client, frames):
        frames.rate_limit_batches = 1
        assert await client.batch([("eth_blockNumber", []), ("eth_chainId", [])]) == ["0x10", "0x7a69"]
        assert client.error_counts["RateLimited"] == 1 and not client.batches_refused


async def test_batches_take_turns_so_a_refusal_answers_the_batch_it_refuses() -> None:
    async with fake_connection(silent=frozenset({"eth_getBalance"})) as (client, frames):
        refusal = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch too large"}}
        first = asyncio.ensure_future(client.socket.batch([("eth_getBalance", ["0x1", "latest"])] * 2))
        second = asyncio.ensure_future(client.socket.batch([("eth_blockNumber", [])] * 3))
        await asyncio.sleep(0.02)
        assert len(frames.sent) == 1  # the second waits for the first's answer
        frames.push(refusal)
        assert (await first)[1] == refusal
        ids, answers = await second
        assert sorted(a["id"] for a in answers) == ids


async def test_an_answer_nobody_waits_for_is_dropped_and_the_socket_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with fake_connection() as (client, frames):
        await subscribe_heads(client)
        # An error answering no request (web3's provider ended its reader on this): logged, dropped.
        frames.push({"jsonrpc": "2.0", "id": 999, "error": {"code": -32000, "message": "boom"}})
        frames.push(notification(HEADS, 1), ConnectionClosedOK(Close(1000, "bye"), None))
        seen, error = await read_until_error(client)
    assert [m["result"]["number"] for m in seen] == ["0x1"] and "stream ended" in str(error)
    assert "rpc_unmatched_answer" in caplog.text


async def test_a_request_left_without_its_answer_by_a_bad_frame_fails_as_repeatable() -> None:
    async with fake_connection(silent=frozenset({"eth_getBalance"})) as (client, frames):
        asking = asyncio.ensure_future(client._request_once("eth_getBalance", ["0x1", "latest"]))
        await asyncio.sleep(0.01)
        frames.push("{not json")
        with pytest.raises(MalformedAnswer) as raised:
            await asking
        assert raised.value.repeatable
        assert client.socket.malformed.count == 1
        assert await client.block_number() == 16  # the socket is fine


async def test_notifications_come_out_as_the_node_sent_them_until_the_socket_closes() -> None:
    async with fake_connection() as (client, frames):
        assert await subscribe_heads(client) == HEADS
        frames.push(notification(HEADS, 1), notification("0xother", 2), notification(HEADS, 3))
        frames.push(ConnectionClosedOK(Close(1000, "bye"), None))
        seen, error = await read_until_error(client)
    # Every subscription's, raw (hex strings); the caller picks its own.
    assert seen == [
        notification(HEADS, 1)["params"],
        notification("0xother", 2)["params"],
        notification(HEADS, 3)["params"],
    ]
    assert isinstance(error, TransientChainError) and "stream ended" in str(error)


async def test_a_lost_connection_ends_the_reader_and_every_waiter_with_its_error() -> None:
    async with fake_connection(silent=frozenset({"eth_getBalance"})) as (client, frames):
        await subscribe_heads(client)
        asking = asyncio.ensure_future(client.socket.request("eth_getBalance", ["0x1", "latest"]))
        await asyncio.sleep(0.01)
        frames.push(notification(HEADS, 1), ConnectionClosedError(None, None))
        seen, error = await read_until_error(client)
        with pytest.raises(TransientChainError, match="ConnectionClosedError"):
            await asking
        with pytest.raises(TransientChainError, match="ConnectionClosedError"):
            await client.socket.request("eth_chainId", [])  # nothing new is sent on a dead socket
    assert [m["result"]["number"] for m in seen] == ["0x1"]  # what arrived before is still handed over
    assert isinstance(error, TransientChainError) and "ConnectionClosedError" in str(error)


async def test_an_unclaimed_malformed_frame_ends_the_reader() -> None:
    async with fake_connection() as (client, frames):
        await subscribe_heads(client)
        frames.push("{not json")  # no request claims it: a lost notification?
        seen, error = await read_until_error(client)
    assert seen == [] and isinstance(error, TransientChainError) and "malformed frame 1" in str(error)


async def test_a_notification_without_params_is_skipped() -> None:
    async with fake_connection() as (client, frames):
        await subscribe_heads(client)
        frames.push({"jsonrpc": "2.0", "method": "eth_subscription"}, notification(HEADS, 1))
        frames.push(ConnectionClosedOK(Close(1000, "bye"), None))
        seen, _ = await read_until_error(client)
    assert seen == [notification(HEADS, 1)["params"]]


async def test_a_full_notification_queue_holds_the_reader_back_and_loses_nothing() -> None:
    async with fake_connection(queue_size=2) as (client, frames):
        await subscribe_heads(client)
        frames.push(*(notification(HEADS, n) for n in range(1, 8)))
        await asyncio.sleep(0.05)  # the reader fills the queue (2) and waits for room
        frames.push(ConnectionClosedOK(Close(1000, "bye"), None))
        seen, error = await read_until_error(client)
    assert [int(m["result"]["number"], 16) for m in seen] == list(range(1, 8))
    assert "stream ended" in str(error)
