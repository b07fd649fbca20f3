"""A thin raw JSON-RPC client over one WebSocket, for the benchmark's own traffic (not the service's).

The harness needs two things web3 would blur: the arrival time of each log notification, taken the moment the
frame is read, and many requests in flight on one connection (pipelined sends). Both fit in ~100 lines.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect

Notification = Callable[[dict[str, Any], float], None]


class RpcError(Exception):
    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"{method}: {error}")
        self.error = error


class WsRpc:
    """`async with WsRpc(url) as rpc`: `await rpc.call(m, params)`, `await rpc.subscribe(params, cb)`."""

    def __init__(self, url: str) -> None:
        if not url.startswith("ws://127.0.0.1:"):
            raise ValueError(f"benchmarks talk to 127.0.0.1 only, not {url}")
        self.url = url
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._subscriptions: dict[str, Notification] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._ws = await connect(self.url, max_size=None, ping_interval=None, compression=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for frame in self._ws:
                arrived = time.perf_counter()  # before any parsing: the moment the node's message is here
                message = json.loads(frame)
                for item in message if isinstance(message, list) else [message]:
                    self._dispatch(item, arrived)
        except Exception as exc:  # the connection died: fail every waiter instead of hanging
            for _method, future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"{self.url}: {exc!r}"))
            raise

    def _dispatch(self, item: dict[str, Any], arrived: float) -> None:
        if item.get("method") == "eth_subscription":
            params = item["params"]
            callback = self._subscriptions.get(params["subscription"])
            if callback is not None:
                callback(params["result"], arrived)
            return
        entry = self._pending.pop(item.get("id", -1), None)
        if entry is None:
            return
        method, future = entry
        if future.done():
            return
        if "error" in item:
            future.set_exception(RpcError(method, item["error"]))
        else:
            future.set_result(item.get("result"))

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        assert self._ws is not None, "use `async with WsRpc(url)`"
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (method, future)
        await self._ws.send(
            json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)})
        )
        return await future

    async def subscribe(self, params: Sequence[Any], callback: Notification) -> str:
        subscription = str(await self.call("eth_subscribe", params))
        self._subscriptions[subscription] = callback
        return subscription

    async def send_raw_many(self, raw_transactions: Sequence[bytes], *, window: int = 64) -> list[str]:
        """eth_sendRawTransaction for each, in order, up to `window` in flight; their hashes.

        Pipelined, anvil's pool has been seen to strand some of one account's transactions as `queued`:
        wrap the wait for them in harness.AnvilWatchdog, which repairs that.
        """
        limit = asyncio.Semaphore(window)

        async def send(raw: bytes) -> str:
            async with limit:
                return str(await self.call("eth_sendRawTransaction", ["0x" + raw.hex()]))

        tasks = [asyncio.create_task(send(raw)) for raw in raw_transactions]
        return list(await asyncio.gather(*tasks))
