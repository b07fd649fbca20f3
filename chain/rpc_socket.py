"""JSON-RPC over one WebSocket connection: the service's only wire to the node.

Requests and batches are matched to their answers by id (every request of the socket has its own), the
`eth_subscription` notifications of every subscription are queued in arrival order, and one task reads the
frames. What a node may send that is not a well-formed answer is handled here, on the connection:

- a frame that is not JSON (or neither an object nor a list) is counted and dropped (`MalformedFrames`);
  `ChainClient` fails a request left without its answer after one, and a bad frame no request claims within
  `claim_window` seconds ends the subscription stream with a TransientChainError (it may have been a
  notification: the subscriber reconnects and catches up rather than miss it);
- an error object answering no id (`is_batch_refusal`: a provider capping or refusing batches) answers the
  batch in flight (batches take turns, so there is at most one), and is logged when none is;
- an answer to no request waiting (a late answer to one given up on) is logged and dropped: the socket is
  still good, unlike web3's provider, which ended its reader on such an error answer.

When the connection ends, every waiter gets the reason (the websockets exception, or a TransientChainError
for a clean close) and the notification stream ends after the notifications already queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
from websockets.exceptions import ConnectionClosedOK

from core.errors import TransientChainError
from core.logs import log_event

log = logging.getLogger("dloop.chain")


class Frames(Protocol):
    """What RpcSocket needs of a WebSocket connection (websockets' `ClientConnection` has it)."""

    async def send(self, message: bytes) -> None: ...

    async def recv(self) -> str | bytes: ...


class MalformedFrames:
    """Frames of one connection that were not JSON-RPC, and an event that fires at the next one.

    A request that gives up on a bad frame claims it (by number). A frame nobody claims was no request's
    answer: most likely a subscription notification, which must not be lost silently.
    """

    def __init__(self) -> None:
        self.count = 0
        self.next = anyio.Event()
        self.claimed: set[int] = set()

    def note(self) -> int:
        self.count += 1
        arrived, self.next = self.next, anyio.Event()
        arrived.set()
        return self.count

    def claim(self, number: int) -> None:
        self.claimed.add(number)


def is_batch_refusal(answer: dict[str, Any]) -> bool:
    """An error object answering no request id (JSON-RPC's answer to a request it could not take apart)."""
    return answer.get("id") is None and "method" not in answer and isinstance(answer.get("error"), dict)


class _Waiter:
    """One request's (or batch's) answer, or the error that ended the connection first."""

    __slots__ = ("answered", "error", "value")

    def __init__(self) -> None:
        self.answered = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def resolve(self, value: Any) -> None:
        if not self.answered.is_set():
            self.value = value
            self.answered.set()

    def fail(self, error: BaseException) -> None:
        if not self.answered.is_set():
            self.error = error
            self.answered.set()

    async def wait(self) -> Any:
        await self.answered.wait()
        if self.error is not None:
            raise self.error
        return self.value


class RpcSocket:
    """JSON-RPC requests, batches and subscription notifications over one WebSocket (see the module)."""

    def __init__(
        self, frames: Frames, endpoint: str, *, claim_window: float = 3.0, queue_size: int = 20_000
    ) -> None:
        self.endpoint = endpoint  # the URL: endpoints refusing batches are remembered by it
        self.malformed = MalformedFrames()
        self.claim_window = claim_window
        self._frames = frames
        self._ids = itertools.count(1)
        self._requests: dict[int, _Waiter] = {}
        # The batch in flight and its ids. One batch at a time: a refusal (an error object with id null)
        # cannot say which batch it answers.
        self._batch_turn = anyio.Lock()
        self._batch: _Waiter | None = None
        self._batch_ids: frozenset[int] = frozenset()
        self._subscriptions: set[str] = set()
        self._notify, self._notifications = anyio.create_memory_object_stream[dict[str, Any] | Exception](
            queue_size
        )
        self._ended: BaseException | None = None  # why the connection ended, once it has

    # -- what ChainClient sends ------------------------------------------------------------------------

    async def request(self, method: str, params: Sequence[Any]) -> dict[str, Any]:
        """The node's answer object to one request (`result` or `error` in it, as sent)."""
        request_id = next(self._ids)
        waiter = self._waiter()
        self._requests[request_id] = waiter
        try:
            await self._send(_message(request_id, method, params))
            answer: dict[str, Any] = await waiter.wait()
            return answer
        finally:
            self._requests.pop(request_id, None)

    async def batch(self, requests: Sequence[tuple[str, Sequence[Any]]]) -> tuple[list[int], Any]:
        """The ids given to `requests` and the node's answer: a list of answer objects (any order), or the
        error object of a refused batch."""
        async with self._batch_turn:
            ids = [next(self._ids) for _ in requests]
            self._batch, self._batch_ids = self._waiter(), frozenset(ids)
            try:
                await self._send(
                    [_message(i, method, params) for i, (method, params) in zip(ids, requests, strict=True)]
                )
                return ids, await self._batch.wait()
            finally:
                self._batch, self._batch_ids = None, frozenset()

    def subscribed(self, subscription: str) -> None:
        """Note a subscription of this socket: an unclaimed bad frame may have been its notification."""
        self._subscriptions.add(subscription)

    async def next_notification(self) -> dict[str, Any] | None:
        """The next `eth_subscription` notification, as the node sent it; None once the connection closed
        cleanly (after those already queued). Raises the error that ended the connection, or one put in the
        stream for a bad frame no request claimed."""
        try:
            item = await self._notifications.receive()
        except anyio.EndOfStream:
            if self._ended is not None and not isinstance(self._ended, _CleanClose):
                raise _reason(self._ended) from self._ended
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def _waiter(self) -> _Waiter:
        if self._ended is not None:
            raise _reason(self._ended)
        return _Waiter()

    async def _send(self, payload: Any) -> None:
        # Binary frames of compact JSON, as web3 sent them (nodes take either kind).
        await self._frames.send(json.dumps(payload, separators=(",", ":")).encode())

    # -- the reader ------------------------------------------------------------------------------------

    async def read_frames(self) -> None:
        """Read and dispatch every frame until the connection ends; never raises (waiters get the error)."""
        try:
            while True:
                await self._dispatch(await self._frames.recv())
        except anyio.get_cancelled_exc_class():
            self._end(TransientChainError("the connection was closed"))
            raise
        except Exception as exc:
            self._end(_CleanClose() if isinstance(exc, ConnectionClosedOK) else exc)

    def close(self) -> None:
        """After the reader is done (or never ran): tell whoever still waits, and close the stream."""
        if self._ended is None:
            self._end(TransientChainError("the connection was closed"))
        self._notifications.close()

    def _end(self, reason: BaseException) -> None:
        self._ended = reason
        for waiter in [*self._requests.values(), *([self._batch] if self._batch else [])]:
            waiter.fail(_reason(reason))
        self._notify.close()

    async def _dispatch(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, bytes not UTF-8, nesting too deep for the parser
            frame = None
        if isinstance(frame, list):
            self._answer_batch(frame)
        elif isinstance(frame, dict):
            if frame.get("method") == "eth_subscription":
                await self._notify.send(frame)
            elif is_batch_refusal(frame) and self._batch is not None:
                self._batch.resolve(frame)
            else:
                self._answer_request(frame)
        else:
            self._bad_frame(raw)

    def _answer_request(self, frame: dict[str, Any]) -> None:
        request_id = frame.get("id")
        waiter = self._requests.get(request_id) if isinstance(request_id, int) else None
        if waiter is None:
            # A late answer to a request given up on (a timeout, a cancelled caller), or an error answering
            # nothing: nobody waits for it, and the socket is still good.
            log_event(
                log,
                "rpc_unmatched_answer",
                level=logging.WARNING,
                id=str(request_id)[:40],
                start=str(frame)[:80],
            )
            return
        waiter.resolve(frame)

    def _answer_batch(self, answers: list[Any]) -> None:
        ids = {a["id"] for a in answers if isinstance(a, dict) and isinstance(a.get("id"), int)}
        refusals = bool(answers) and all(isinstance(a, dict) and is_batch_refusal(a) for a in answers)
        if self._batch is not None and (ids & self._batch_ids or refusals):
            # ChainClient checks the answers against the ids it was given; `batch_refusal` reads a refusal
            # in a list as one on its own.
            self._batch.resolve(answers)
            return
        log_event(log, "rpc_unmatched_answer", level=logging.WARNING, id="batch", start=str(answers)[:80])

    def _bad_frame(self, raw: str | bytes) -> None:
        number = self.malformed.note()
        log_event(log, "rpc_malformed_frame", level=logging.WARNING, frame=number, start=str(raw[:80]))
        # A timer, not a task: the service runs on asyncio (aiosqlite needs it), and anyio has no call_later.
        asyncio.get_running_loop().call_later(self.claim_window, self._unclaimed, number)

    def _unclaimed(self, number: int) -> None:
        if number in self.malformed.claimed:
            self.malformed.claimed.discard(number)
            return
        if not self._subscriptions or self._ended is not None:
            return
        log_event(log, "rpc_malformed_notification", level=logging.WARNING, frame=number)
        lost = TransientChainError(f"malformed frame {number} answered no request: a lost notification?")
        with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
            self._notify.send_nowait(lost)


def _message(request_id: int, method: str, params: Sequence[Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}


class _CleanClose(Exception):
    """The connection was closed with a normal close frame."""


def _reason(ended: BaseException) -> TransientChainError:
    """What a waiter (each its own) is told when the connection ended for `ended`: only a new one helps."""
    if isinstance(ended, _CleanClose):
        return TransientChainError("the WebSocket closed")
    if isinstance(ended, TransientChainError):
        return TransientChainError(str(ended))
    return TransientChainError(f"connection lost: {type(ended).__name__}: {ended}")
