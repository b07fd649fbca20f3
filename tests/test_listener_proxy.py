"""The fault-injection proxy itself (tests/support/proxy.py), against a real anvil."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from devtools.anvil import AnvilProcess
from tests.support.proxy import TcpProxy, text_frame

pytestmark = pytest.mark.anyio


def test_text_frames_use_the_three_length_encodings() -> None:
    assert text_frame("hi")[:2] == bytes([0x81, 2])
    assert text_frame("x" * 300)[:4] == bytes([0x81, 126, 1, 44])
    assert text_frame("x" * 70_000)[:2] == bytes([0x81, 127]) and len(text_frame("x" * 70_000)) == 70_010


async def test_http_is_forwarded_and_new_connections_can_be_refused(bare_anvil: AnvilProcess) -> None:
    async with TcpProxy(bare_anvil.port) as proxy:
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        async with httpx.AsyncClient() as client:
            answer = await client.post(proxy.http_url, json=body)
            assert answer.json()["result"] == "0x7a69"
            proxy.refuse_new = True
            with pytest.raises(httpx.TransportError):
                async with httpx.AsyncClient() as fresh:
                    await fresh.post(proxy.http_url, json=body)
        assert proxy.connections_opened == 1 and proxy.connections_refused == 1


async def test_websocket_messages_are_recorded_injected_stalled_and_dropped(bare_anvil: AnvilProcess) -> None:
    async with TcpProxy(bare_anvil.port) as proxy, connect(proxy.ws_url, max_size=2**24) as ws:
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}))
        assert json.loads(await ws.recv())["id"] == 1
        assert proxy.messages_json()[-1]["id"] == 1

        big = json.dumps({"jsonrpc": "2.0", "method": "synthetic", "params": "y" * 100_000})
        assert proxy.inject_text(big) == 1
        assert await ws.recv() == big

        proxy.stall()
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "eth_blockNumber", "params": []}))
        with anyio.move_on_after(0.3) as waited:
            await ws.recv()
        assert waited.cancelled_caught  # nothing forwarded while stalled
        proxy.resume()
        assert json.loads(await ws.recv())["id"] == 2

        def rate_limit(text: str) -> str | None:
            request = json.loads(text)
            if request.get("method") != "eth_chainId":
                return None
            error = {"code": -32005, "message": "Too Many Requests"}
            return json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error})

        proxy.intercept = rate_limit
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "eth_chainId", "params": []}))
        assert json.loads(await ws.recv())["error"]["code"] == -32005
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 4, "method": "eth_blockNumber", "params": []}))
        assert json.loads(await ws.recv())["result"] == "0x0"
        assert proxy.intercepted == 1

        assert await proxy.drop_all() == 1
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        await proxy.wait_until(lambda: proxy.active_connections == 0, timeout=5)
