"""A WebSocket JSON-RPC proxy in front of anvil that misbehaves on a fraction of requests, like a hosted
provider under load. Built on `rpc_proxy.RpcProxy` (its batch refusal and counters are reused).

Faults, each drawn independently per request from a seeded random source:
- `rate_limited`: the request is answered at once with JSON-RPC -32005 "Too Many Requests" (not forwarded);
- `handshake_429`: the WebSocket upgrade is answered with HTTP 429 (the connection never opens);
- `delayed`: the request is held `delay_seconds` before it is forwarded (other requests pass meanwhile);
- `garbled`: the request IS forwarded (a transaction reaches the node) but its answer is replaced by text
  that is not JSON, so the client never learns the result;
- `garbled_notification` (forced only): the next subscription notification is replaced by that text;
- `swallowed` (forced only): the next single `eth_sendRawTransaction` request IS forwarded (the node takes
  the transaction; automine mines it) but its answer is dropped, so the client waits until its own timeout
  (batches and other methods are unaffected);
- `swallowed_batch` (forced only): the same for the next batch holding an `eth_sendRawTransaction`;
- `max_batch` (from RpcProxy): batches with more requests are refused with one error object.
`counts` tells the test what was injected; `active = False` lets everything through (e.g. during start-up);
`force("garbled", 1)` makes the next request(s) suffer that fault whatever the rates (deterministic tests);
`force("swallowed", 1)` the next broadcast.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import anyio
from anyio.from_thread import start_blocking_portal
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support.rpc_proxy import RpcProxy

GARBAGE = '{"jsonrpc": "2.0", "id": <html>502 Bad Gateway</html>'


@dataclass(frozen=True)
class FaultPlan:
    rate_limited: float = 0.0
    handshake_429: float = 0.0
    delayed: float = 0.0
    delay_seconds: float = 2.0
    garbled: float = 0.0
    max_batch: int | None = None
    seed: int = 7

    def describe(self) -> str:
        parts = []
        if self.rate_limited:
            parts.append(f"-32005 on {self.rate_limited:.0%} of requests")
        if self.handshake_429:
            parts.append(f"HTTP 429 on {self.handshake_429:.0%} of WebSocket handshakes")
        if self.delayed:
            parts.append(f"{self.delay_seconds:g} s delay on {self.delayed:.0%}")
        if self.garbled:
            parts.append(f"malformed JSON answers on {self.garbled:.0%}")
        if self.max_batch is not None:
            parts.append(
                "every batch refused" if self.max_batch == 0 else f"batches > {self.max_batch} refused"
            )
        return ", ".join(parts) or "no faults"


class FaultyRpcProxy(RpcProxy):
    def __init__(self, upstream_ws: str, plan: FaultPlan) -> None:
        super().__init__(upstream_ws, max_batch=plan.max_batch)
        self.plan = plan
        self.random = random.Random(plan.seed)
        self.counts: Counter[str] = Counter()
        self.active = True
        self.forced: Counter[str] = Counter()

    def force(self, fault: str, count: int = 1) -> None:
        """The next `count` requests get `fault` (rate_limited, delayed, garbled, handshake_429; swallowed:
        the next `count` single broadcasts; garbled_notification: the next notifications)."""
        self.forced[fault] += count

    def _draw(self, rate: float, fault: str) -> bool:
        if self.forced[fault] > 0:
            self.forced[fault] -= 1
            return True
        return self.active and rate > 0 and self.random.random() < rate

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._draw(self.plan.handshake_429, "handshake_429"):
            self.counts["handshake_429"] += 1
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too Many Requests\n")
        self.counts["connections"] += 1
        return None

    async def _handle(self, client: ServerConnection) -> None:
        garbled_ids: set[Any] = set()
        swallowed_ids: set[Any] = set()
        async with connect(self.upstream, max_size=2**26) as upstream:

            async def downstream() -> None:
                async for message in upstream:
                    if swallowed_ids and _answer_id(message) in swallowed_ids:
                        swallowed_ids.discard(_answer_id(message))
                        continue  # forwarded, answered by the node, never delivered
                    if garbled_ids and _answer_id(message) in garbled_ids:
                        garbled_ids.discard(_answer_id(message))
                        message = GARBAGE
                    elif self.forced["garbled_notification"] > 0 and _is_notification(message):
                        self.forced["garbled_notification"] -= 1
                        self.counts["garbled_notification"] += 1
                        message = GARBAGE
                    await client.send(message)

            async with anyio.create_task_group() as tg:
                tg.start_soon(downstream)
                try:
                    async for message in client:
                        tg.start_soon(self._one, message, client, upstream, garbled_ids, swallowed_ids)
                except ConnectionClosed:
                    pass
                tg.cancel_scope.cancel()

    async def _one(
        self,
        message: str | bytes,
        client: ServerConnection,
        upstream: ClientConnection,
        garbled_ids: set[Any],
        swallowed_ids: set[Any],
    ) -> None:
        self.counts["requests"] += 1
        try:
            payload = json.loads(message)
        except ValueError:
            payload = None
        try:
            answer = self._intercept(message) if self.active else None  # RpcProxy: refused batches
            if answer is None and self._draw(self.plan.rate_limited, "rate_limited"):
                answer = _rate_limited(payload)
                self.counts["rate_limited"] += 1
            if answer is not None:
                await client.send(answer)
                return
            if self._draw(self.plan.delayed, "delayed"):
                self.counts["delayed"] += 1
                await anyio.sleep(self.plan.delay_seconds)
            if _is_single_broadcast(payload) and self._draw(0.0, "swallowed"):
                self.counts["swallowed"] += 1
                swallowed_ids.add(payload["id"])
            elif _is_batch_broadcast(payload) and self._draw(0.0, "swallowed_batch"):
                self.counts["swallowed_batch"] += 1
                swallowed_ids.add(_batch_key(payload))
            elif isinstance(payload, dict) and "id" in payload and self._draw(self.plan.garbled, "garbled"):
                self.counts["garbled"] += 1
                garbled_ids.add(payload["id"])
            await upstream.send(message)
        except ConnectionClosed:
            pass


def _answer_id(message: str | bytes) -> Any:
    """A single answer's id; a batch answer's ids as one key (see `_batch_key`)."""
    try:
        payload = json.loads(message)
    except ValueError:
        return None
    if isinstance(payload, list):
        return _batch_key(payload)
    return payload.get("id") if isinstance(payload, dict) else None


def _batch_key(items: list[Any]) -> frozenset[Any]:
    return frozenset(item.get("id") for item in items if isinstance(item, dict))


def _is_batch_broadcast(payload: Any) -> bool:
    return isinstance(payload, list) and any(
        isinstance(item, dict) and item.get("method") == "eth_sendRawTransaction" for item in payload
    )


def _is_single_broadcast(payload: Any) -> bool:
    return isinstance(payload, dict) and "id" in payload and payload.get("method") == "eth_sendRawTransaction"


def _is_notification(message: str | bytes) -> bool:
    try:
        payload = json.loads(message)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("method") == "eth_subscription"


def _rate_limited(payload: Any) -> str:
    def error(request: Any) -> dict[str, Any]:
        request_id = request.get("id") if isinstance(request, dict) else None
        return {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": -32005, "message": "Too Many Requests"},
        }

    if isinstance(payload, list):
        return json.dumps([error(item) for item in payload])
    return json.dumps(error(payload))


@asynccontextmanager
async def faulty_rpc_proxy(upstream_ws: str, plan: FaultPlan) -> AsyncIterator[FaultyRpcProxy]:
    proxy = FaultyRpcProxy(upstream_ws, plan)
    async with serve(
        proxy._handle, "127.0.0.1", 0, max_size=2**26, process_request=proxy.process_request
    ) as server:
        proxy.port = next(iter(server.sockets)).getsockname()[1]
        yield proxy


@contextmanager
def proxy_in_thread(upstream_ws: str, plan: FaultPlan | None = None) -> Iterator[FaultyRpcProxy]:
    """`faulty_rpc_proxy` in its own event loop thread, for tests that run `dloop` as a process (no random
    fault without a plan: only forced ones)."""
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(faulty_rpc_proxy(upstream_ws, plan or FaultPlan())) as proxy,
    ):
        yield proxy
