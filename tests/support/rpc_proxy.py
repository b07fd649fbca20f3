"""A WebSocket JSON-RPC proxy in front of anvil that behaves like a difficult hosted provider.

- `max_batch`: batches with more requests are refused with one JSON-RPC error (like providers that cap
  batches at a few requests); `max_batch=0` refuses every batch.
- `rate_limit_first`: the first N single requests are answered with -32005 "Too Many Requests".
Counters tell the test what happened.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


@dataclass
class ProxyStats:
    batches_forwarded: int = 0
    batches_refused: int = 0
    singles_forwarded: int = 0
    rate_limited: int = 0


class RpcProxy:
    def __init__(self, upstream_ws: str, *, max_batch: int | None = None, rate_limit_first: int = 0) -> None:
        self.upstream = upstream_ws
        self.max_batch = max_batch
        self.rate_limit_left = rate_limit_first
        self.stats = ProxyStats()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _handle(self, client: ServerConnection) -> None:
        async with connect(self.upstream, max_size=2**26) as upstream:

            async def downstream() -> None:
                async for message in upstream:
                    await client.send(message)

            async with anyio.create_task_group() as tg:
                tg.start_soon(downstream)
                try:
                    async for message in client:
                        answer = self._intercept(message)
                        if answer is not None:
                            await client.send(answer)
                        else:
                            await upstream.send(message)
                except ConnectionClosed:
                    pass
                tg.cancel_scope.cancel()

    def _intercept(self, message: str | bytes) -> str | None:
        try:
            payload = json.loads(message)
        except ValueError:
            return None
        if isinstance(payload, list):
            if self.max_batch is not None and len(payload) > self.max_batch:
                self.stats.batches_refused += 1
                return json.dumps(
                    {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch too large"}}
                )
            self.stats.batches_forwarded += 1
            return None
        if isinstance(payload, dict) and self.rate_limit_left > 0 and payload.get("method") == "eth_call":
            self.rate_limit_left -= 1
            self.stats.rate_limited += 1
            return json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": payload.get("id"),
                    "error": {"code": -32005, "message": "Too Many Requests"},
                }
            )
        self.stats.singles_forwarded += 1
        return None


@asynccontextmanager
async def rpc_proxy(upstream_ws: str, **options: int | None) -> AsyncIterator[RpcProxy]:
    proxy = RpcProxy(upstream_ws, **options)  # type: ignore[arg-type]
    async with serve(proxy._handle, "127.0.0.1", 0, max_size=2**26) as server:
        proxy.port = next(iter(server.sockets)).getsockname()[1]
        yield proxy
