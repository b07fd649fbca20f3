"""A small asyncio TCP proxy between a client and anvil, for fault injection.

Bytes are forwarded both ways untouched. Faults:
- `drop_all()`: abort every open connection (the client sees a reset, as when a node dies);
- `stall()` / `resume()`: keep the sockets open but forward nothing (a frozen peer), then carry on;
- `refuse_new = True`: accept and immediately close new connections (a node that is down);
- `inject_text(text)`: send a synthetic WebSocket text frame to the client of every WebSocket connection, at
  a frame boundary (e.g. an `eth_subscription` message with a `removed: true` log);
- `intercept = fn`: `fn(text)` sees every WebSocket message from a client (text, or UTF-8 binary as web3
  sends); when it returns a string, that goes back to the client as the answer and the message is not
  forwarded (fake RPC errors, rate limits, refused batches).
WebSocket traffic is parsed into frames (after the HTTP upgrade) so that injection never splits a frame, and
server text messages are recorded in `server_messages` for tests to inspect. Plain HTTP is forwarded raw.

Use it in the test's event loop (asyncio backend): `async with TcpProxy(anvil.port) as proxy: proxy.ws_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2


def text_frame(text: str) -> bytes:
    """An unmasked, final, uncompressed WebSocket text frame (server to client)."""
    payload = text.encode()
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | _OP_TEXT, length])
    elif length < 2**16:
        header = bytes([0x80 | _OP_TEXT, 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | _OP_TEXT, 127]) + length.to_bytes(8, "big")
    return header + payload


def answer_null_for(text: str, http_url: str, hidden: Callable[[Any], bool]) -> tuple[str | None, list[Any]]:
    """For an `intercept`: the JSON-RPC requests of `text` that `hidden` picks get a null result.

    A single picked request is answered at once; a batch holding one is sent to the node over HTTP
    (`http_url`, the same node) and its answer returned with those entries set to null. Returns the answer
    to send back (None: forward `text` untouched) and the requests answered null.
    """
    message = json.loads(text)
    if isinstance(message, dict):
        if not hidden(message):
            return None, []
        return json.dumps({"jsonrpc": "2.0", "id": message.get("id"), "result": None}), [message]
    if not isinstance(message, list) or not any(hidden(item) for item in message):
        return None, []
    post = urllib.request.Request(http_url, data=text.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=5) as answer:
        answers = {item["id"]: item for item in json.loads(answer.read())}
    nulled = [request for request in message if hidden(request)]
    for request in nulled:
        answers[request["id"]] = {"jsonrpc": "2.0", "id": request["id"], "result": None}
    return json.dumps([answers[request["id"]] for request in message]), nulled


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    upstream_reader: asyncio.StreamReader
    upstream_writer: asyncio.StreamWriter
    websocket: bool = False
    in_message: bool = False  # a fragmented server message is being forwarded: no injection now
    fragments: list[bytes] = field(default_factory=list)
    fragment_opcode: int = 0
    fragment_compressed: bool = False
    pending: list[bytes] = field(default_factory=list)  # injected frames waiting for a message boundary
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client_writer, self.upstream_writer):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class TcpProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.requested_port = port
        self.record = record
        self.refuse_new = False
        self.intercept: Callable[[str], str | None] | None = None
        self.intercepted = 0  # client messages answered by `intercept` instead of the server
        self.connections_opened = 0  # accepted and connected upstream
        self.connections_refused = 0
        self.server_messages: list[str] = []  # data messages server -> client (UTF-8), in order
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._changed = asyncio.Event()  # pulsed on every new connection or recorded message
        self._server: asyncio.Server | None = None

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self.requested_port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.resume()
        await self.drop_all()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def active_connections(self) -> int:
        return len(self._links)

    # -- faults -----------------------------------------------------------------------------------------
    async def drop_all(self) -> int:
        """Abort every open connection (both sides); returns how many were dropped."""
        links = list(self._links)
        for link in links:
            link.abort()
        for link in links:
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
        return len(links)

    def stall(self) -> None:
        """Forward nothing (in either direction, on open and new connections) until `resume()`."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def inject_text(self, text: str) -> int:
        """Send `text` as a WebSocket text frame to the client of every open WebSocket connection (after
        the current message if one is being forwarded in fragments). Returns the number of connections."""
        frame = text_frame(text)
        links = [link for link in self._links if link.websocket]
        for link in links:
            self._deliver(link, frame)
        return len(links)

    @staticmethod
    def _deliver(link: _Link, frame: bytes) -> None:
        if link.in_message:
            link.pending.append(frame)
        else:
            link.client_writer.write(frame)

    def inject_json(self, payload: Any) -> int:
        return self.inject_text(json.dumps(payload))

    # -- observation ------------------------------------------------------------------------------------
    def messages_json(self) -> list[Any]:
        """Recorded server messages that parse as JSON."""
        parsed = []
        for text in self.server_messages:
            with contextlib.suppress(ValueError):
                parsed.append(json.loads(text))
        return parsed

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait for a condition on the proxy's state (connections, recorded messages)."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()  # before the check: a change right after it still wakes us
            if condition():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("proxy condition not met in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _pulse(self) -> None:
        self._changed.set()

    # -- forwarding -------------------------------------------------------------------------------------
    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refuse_new:
            self.connections_refused += 1
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            client_writer.transport.abort()
            return
        link = _Link(client_reader, client_writer, upstream_reader, upstream_writer)
        self._links.add(link)
        self.connections_opened += 1
        self._pulse()
        link.tasks = [
            asyncio.create_task(self._pump_up(link)),
            asyncio.create_task(self._pump_down(link)),
        ]
        try:
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.abort()
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            self._links.discard(link)
            self._pulse()

    async def _pump_up(self, link: _Link) -> None:
        """Client to server: the HTTP request head, then WebSocket frames (or raw bytes for plain HTTP)."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            head = await link.client_reader.readuntil(b"\r\n\r\n")
            await self._flowing.wait()
            link.upstream_writer.write(head)
            await link.upstream_writer.drain()
            if b"upgrade: websocket" not in head.lower():
                while data := await link.client_reader.read(65536):
                    await self._flowing.wait()
                    link.upstream_writer.write(data)
                    await link.upstream_writer.drain()
                return
            held: list[bytes] = []  # raw frames of the message being received
            parts: list[bytes] = []
            data_message = False  # text, or binary (web3 sends its JSON-RPC requests as binary frames)
            while True:
                frame, fin, opcode, compressed, payload = await _read_frame(link.client_reader)
                await self._flowing.wait()
                if opcode >= 0x8:  # control frames pass at once, even inside a fragmented message
                    link.upstream_writer.write(frame)
                    await link.upstream_writer.drain()
                    continue
                if opcode != _OP_CONTINUATION:
                    data_message = opcode in (_OP_TEXT, _OP_BINARY) and not compressed
                held.append(frame)
                parts.append(payload)
                if not fin:
                    continue
                answer = None
                if self.intercept is not None and data_message:
                    with contextlib.suppress(UnicodeDecodeError):
                        answer = self.intercept(b"".join(parts).decode())
                if answer is None:
                    link.upstream_writer.write(b"".join(held))
                    await link.upstream_writer.drain()
                else:
                    self.intercepted += 1
                    self._deliver(link, text_frame(answer))
                held, parts = [], []

    async def _pump_down(self, link: _Link) -> None:
        """Server to client: the HTTP answer head, then WebSocket frames one by one (or raw bytes)."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            head = await link.upstream_reader.readuntil(b"\r\n\r\n")
            await self._flowing.wait()
            link.websocket = head.startswith(b"HTTP/1.1 101")
            link.client_writer.write(head)
            await link.client_writer.drain()
            if not link.websocket:
                while data := await link.upstream_reader.read(65536):
                    await self._flowing.wait()
                    link.client_writer.write(data)
                    await link.client_writer.drain()
                return
            while True:
                frame, fin, opcode, compressed, payload = await _read_frame(link.upstream_reader)
                await self._flowing.wait()
                link.client_writer.write(frame)  # whole frames only: injected frames land between them
                self._track(link, fin, opcode, compressed, payload)
                if not link.in_message and link.pending:
                    for injected in link.pending:
                        link.client_writer.write(injected)
                    link.pending.clear()
                await link.client_writer.drain()

    def _track(self, link: _Link, fin: bool, opcode: int, compressed: bool, payload: bytes) -> None:
        if opcode in (_OP_TEXT, _OP_BINARY):
            link.fragments, link.fragment_opcode, link.fragment_compressed = [payload], opcode, compressed
        elif opcode == _OP_CONTINUATION:
            link.fragments.append(payload)
        else:
            return  # control frames may sit inside a fragmented message
        link.in_message = not fin
        if fin and not link.fragment_compressed and self.record:  # text, or UTF-8 binary
            with contextlib.suppress(UnicodeDecodeError):
                self.server_messages.append(b"".join(link.fragments).decode())
                self._pulse()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bool, int, bool, bytes]:
    """One WebSocket frame: (raw bytes, fin, opcode, compressed (RSV1), unmasked payload)."""
    header = await reader.readexactly(2)
    fin, compressed, opcode = bool(header[0] & 0x80), bool(header[0] & 0x40), header[0] & 0x0F
    masked, length = bool(header[1] & 0x80), header[1] & 0x7F
    extended = b""
    if length == 126:
        extended = await reader.readexactly(2)
        length = int.from_bytes(extended, "big")
    elif length == 127:
        extended = await reader.readexactly(8)
        length = int.from_bytes(extended, "big")
    mask = await reader.readexactly(4) if masked else b""
    body = await reader.readexactly(length)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(body)) if masked else body
    return header + extended + mask + body, fin, opcode, compressed, payload
