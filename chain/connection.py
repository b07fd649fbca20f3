"""WebSocket connections to the node, and translation of web3/websockets errors into the service's tree."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
from web3 import AsyncWeb3, WebSocketProvider
from web3._utils.batching import BATCH_REQUEST_ID
from web3._utils.caching.caching_utils import generate_cache_key
from web3.exceptions import (
    BadResponseFormat,
    PersistentConnectionError,
    ProviderConnectionError,
    TaskNotRunning,
    TimeExhausted,
    TooManyRequests,
    Web3RPCError,
)
from web3.types import RPCEndpoint, RPCId, RPCRequest, RPCResponse
from websockets.exceptions import InvalidStatus

from chain.codec import decode_revert
from core.errors import (
    ChainError,
    ContractRevert,
    InsufficientFunds,
    NonceError,
    RateLimited,
    TransientChainError,
    Underpriced,
)
from core.logs import log_event

log = logging.getLogger("dloop.chain")

ANSWER_RECHECK_S = 0.05  # a waiter re-checks web3's answer cache at least this often


def safe_url(url: str) -> str:
    """scheme://host:port of an RPC URL: hosted providers put API keys in the path or the query."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


class MalformedFrames:
    """Frames of one connection that were not JSON-RPC, and an event that fires at the next one.

    A request that gives up on a bad frame claims it (by number). A frame nobody claims was no request's
    answer: most likely a subscription notification, which the provider must not lose silently.
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


class FrameTolerantWebSocketProvider(WebSocketProvider):
    """web3's WebSocketProvider, minus its one fatal reaction to a bad frame.

    In web3 8.0.0 the provider's listener task parses every frame with `json.loads`; an exception ends the
    task, and every later request of the socket re-raises it (`_handle_listener_task_exceptions`), so one
    malformed answer spoils a healthy connection. (`silence_listener_task_exceptions=True` would keep the
    task alive but also swallow a closed socket's error in a tight loop.) Here a frame that is not a JSON
    object or batch is dropped and counted; `ChainClient` fails the request left without its answer. A
    bad frame no request claims within `claim_window` seconds ends the subscription stream (if any) with a
    TransientChainError: the subscriber reconnects and catches up rather than miss a notification.

    A batch refused with one error object (id null, like a provider capping batches) is that batch's answer,
    not a stray error: web3 only files it under the batch key inside its `batch_requests()` context (a
    context variable its listener task never sees), so it would end the listener task and every request of
    the socket would re-raise it, racing the batch's own caller to report it.
    """

    def __init__(self, *args: Any, claim_window: float = 3.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.malformed = MalformedFrames()
        self.claim_window = claim_window
        self._batches_sent = 0
        self._batches_answered = 0  # batches in flight: sent - answered (a late answer still counts)
        self._frame_arrived = asyncio.Event()  # set at each frame read; waiters re-check the cache

    async def _get_response_for_request_id(
        self, request_id: RPCId | list[RPCId], timeout: float | None = None
    ) -> RPCResponse:
        """Wait for an answer without spinning: web3 8.0.0 polls its cache with `asyncio.sleep(0)` per waiter,
        which under load took most of the service's CPU. Waiters sleep until a frame arrives; the short
        re-check interval covers a frame cached just after the wake-up and a listener task that died."""
        limit = self.request_timeout if timeout is None else timeout
        key = generate_cache_key(request_id)
        cache = self._request_processor._request_response_cache
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            self._handle_listener_task_exceptions()
            if key in cache:
                return cast(RPCResponse, await self._request_processor.pop_raw_response(cache_key=key))
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeExhausted(f"no answer to request id {request_id!r} within {limit:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._frame_arrived.wait(), min(remaining, ANSWER_RECHECK_S))

    async def send_batch_request(self, requests: list[tuple[RPCEndpoint, Any]]) -> list[RPCRequest]:
        self._batches_sent += 1  # before sending: the answer may be read before the send returns
        try:
            return await super().send_batch_request(requests)
        except BaseException:
            self._batches_sent -= 1
            raise

    async def socket_recv(self) -> RPCResponse:
        if self._ws is None:
            raise TransientChainError("the WebSocket is not connected")
        while True:
            raw = await self._ws.recv()
            # Wake the waiters; they run after web3's listener has cached this frame (it does not yield
            # between our return and its caching of an answer).
            self._frame_arrived.set()
            self._frame_arrived = asyncio.Event()
            try:
                answer = json.loads(raw)
            except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
                answer = None
            if isinstance(answer, list):
                self._batches_answered += 1
                return cast(RPCResponse, answer)
            if isinstance(answer, dict):
                if self._batches_answered < self._batches_sent and _is_batch_refusal(answer):
                    self._batches_answered += 1
                    # Filed as a one-item list: web3's stray-error check skips lists (not dicts) in the cache.
                    cache = self._request_processor._request_response_cache
                    cache.cache(generate_cache_key(BATCH_REQUEST_ID), [answer])
                    continue
                return cast(RPCResponse, answer)
            number = self.malformed.note()
            log_event(log, "rpc_malformed_frame", level=logging.WARNING, frame=number, start=str(raw[:80]))
            asyncio.get_running_loop().call_later(self.claim_window, self._unclaimed, number)

    def _unclaimed(self, number: int) -> None:
        if number in self.malformed.claimed:
            self.malformed.claimed.discard(number)
            return
        if not self._request_processor.active_subscriptions:
            return
        log_event(log, "rpc_malformed_notification", level=logging.WARNING, frame=number)
        with contextlib.suppress(asyncio.QueueFull):
            # web3's queue raises an exception item at its reader (`TaskReliantQueue.get`).
            lost = TransientChainError(f"malformed frame {number} answered no request: a lost notification?")
            self._request_processor._subscription_response_queue.put_nowait(lost)  # type: ignore[arg-type]


def _is_batch_refusal(answer: dict[str, Any]) -> bool:
    """An error object answering no request id (JSON-RPC's answer to a request it could not take apart)."""
    return answer.get("id") is None and "method" not in answer and isinstance(answer.get("error"), dict)


def batch_refusal(responses: Any) -> dict[str, Any] | None:
    """The error object of a batch answered with one error instead of a list of answers, else None."""
    if isinstance(responses, list):
        if len(responses) != 1 or not isinstance(responses[0], dict) or not _is_batch_refusal(responses[0]):
            return None
        responses = responses[0]  # as FrameTolerantWebSocketProvider files a refusal
    error = responses.get("error", {}) if isinstance(responses, dict) else {}
    return dict(error) if isinstance(error, dict) else {"message": str(error)}


@asynccontextmanager
async def open_ws(
    url: str,
    *,
    request_timeout: float = 20.0,
    ping_interval: float = 5.0,
    ping_timeout: float = 10.0,
    close_timeout: float = 2.0,
) -> AsyncIterator[AsyncWeb3[Any]]:
    """A fresh client per connection; tight pings so a frozen peer is noticed in seconds, not minutes.

    `close_timeout` bounds the closing handshake: a frozen peer never answers it (websockets waits 10 s).
    """
    provider = FrameTolerantWebSocketProvider(
        url,
        websocket_kwargs={
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "close_timeout": close_timeout,
            "max_size": 2**26,
        },
        request_timeout=request_timeout,
        max_connection_retries=1,
        subscription_response_queue_size=20_000,
    )
    try:
        # No default middleware: its validation step sent eth_chainId before and after every eth_call
        # (three round trips for one read), and its ENS step rewrote filters. Requests go out as written.
        w3 = AsyncWeb3(provider, middleware=[])
        await provider.connect()
    except (OSError, ProviderConnectionError, PersistentConnectionError, TimeoutError, InvalidStatus) as exc:
        detail = str(exc).replace(url, safe_url(url))  # web3 repeats the full URL in its message
        if isinstance(translate_exception(exc), RateLimited) or "429" in detail:
            raise RateLimited(f"cannot connect to {safe_url(url)}: rate limited ({detail})") from exc
        raise TransientChainError(f"cannot connect to {safe_url(url)}: {detail}") from exc
    try:
        yield w3
    finally:
        # web3 re-raises the stray errors of a dead socket while closing it; the socket is gone either way.
        with contextlib.suppress(Exception):
            await provider.disconnect()


# Providers word "your eth_getLogs range or result set is too big" in many ways (Infura even uses -32005).
_RANGE_ERROR_PHRASES = (
    "range too large",
    "range is too large",
    "block range",
    "too many results",
    "too many logs",
    "query returned more than",
    "more than 10000",
    "exceed maximum block range",
    "exceeds the range",
    "response size",
    "response is too big",
    "logs matched by query exceeds",
    "result window",
    "too large",
)


def is_log_range_error(message: str) -> bool:
    """Whether an eth_getLogs error asks for a smaller block range."""
    lowered = message.lower()
    return any(phrase in lowered for phrase in _RANGE_ERROR_PHRASES)


def classify_rpc_error(error: dict[str, Any]) -> ChainError:
    """Map a JSON-RPC error object to the service's error tree."""
    code = error.get("code")
    message = str(error.get("message", ""))
    lowered = message.lower()
    data = error.get("data")
    if is_log_range_error(message):
        return ChainError(f"RPC error {code}: {message}")  # Infura words this as -32005 too: not a rate limit
    if code == -32005 or "too many requests" in lowered or "rate limit" in lowered:
        return RateLimited(message)
    if code == 3 or "execution reverted" in lowered or "revert" in lowered:
        raw = data if isinstance(data, str) else (data or {}).get("data") if isinstance(data, dict) else None
        return ContractRevert(decode_revert(raw), message)
    if "insufficient funds" in lowered:
        return InsufficientFunds(message)
    if "nonce too low" in lowered or "nonce too high" in lowered or "invalid nonce" in lowered:
        return NonceError(message)
    if "underpriced" in lowered or "fee too low" in lowered or "max fee per gas less than" in lowered:
        return Underpriced(message)
    if code in (-32603, -32000) and ("timeout" in lowered or "timed out" in lowered):
        return TransientChainError(message)
    return ChainError(f"RPC error {code}: {message}")


def translate_exception(exc: BaseException) -> ChainError:
    """Map an exception raised by web3/websockets/OS to the service's error tree."""
    if isinstance(exc, ChainError):
        return exc
    if isinstance(exc, TooManyRequests):
        return RateLimited(str(exc))
    if isinstance(exc, Web3RPCError) and isinstance(exc.rpc_response, dict) and "error" in exc.rpc_response:
        error = exc.rpc_response["error"]
        if isinstance(error, dict):
            return classify_rpc_error(dict(error))
    if isinstance(
        exc, OSError | TimeoutError | TimeExhausted | PersistentConnectionError | ProviderConnectionError
    ):
        return TransientChainError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, json.JSONDecodeError | BadResponseFormat | TaskNotRunning):
        # web3's listener task ended (FrameTolerantWebSocketProvider drops bad frames, so something else
        # killed it): web3 re-raises its error on every later request of the socket. Only a new connection
        # helps, so this is transient (reconnect), not a lasting error.
        return TransientChainError(f"connection unusable: {type(exc).__name__}: {exc}")
    if isinstance(exc, InvalidStatus) and exc.response.status_code == 429:
        return RateLimited(f"handshake answered HTTP 429: {exc}")
    name = type(exc).__module__
    if name.startswith("websockets"):
        return TransientChainError(f"connection lost: {type(exc).__name__}: {exc}")
    return ChainError(f"{type(exc).__name__}: {exc}")
