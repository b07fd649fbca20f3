"""Every use of web3's private internals, in one place, written against web3 8.0.0 (pinned in pyproject).

The service relies on web3's WebSocket provider beyond its public API in these ways:

- `FrameTolerantWebSocketProvider` overrides `_get_response_for_request_id` (wait on a frame-arrival event
  instead of web3's `asyncio.sleep(0)` poll) and `socket_recv` (drop bad frames; file a batch refusal under
  web3's batch key), reads `_ws`, calls `_handle_listener_task_exceptions`, and reaches into the request
  processor: `_request_response_cache`, `pop_raw_response`, `active_subscriptions`,
  `_subscription_response_queue`;
- `next_notification` reads subscription notifications straight from the request processor
  (`pop_raw_response(subscription=True)`, the queue behind web3's `process_subscriptions`), skipping web3's
  result formatters, and reads the provider's `_message_listener_task` (its error, once web3's
  `TaskNotRunning` in that queue says it ended);
- `ChainClient` sends batches with `send_batch_request` / `recv_for_batch_request` and registers (then drops)
  their requests with the processor's `cache_request_information` / `pop_cached_request_information`, and
  sends single requests through `w3.manager.socket_request`, or its parts `w3.manager.send` and
  `w3.manager.recv_for_request`;
- `ChainClient`'s batches are registered straight into the processor's `_request_information_cache` (as a
  `RequestInformation`) when the provider's `_request_cache` is empty, and so are its single requests when
  request caching is also off (`cache_allowed_requests`);
- `web3._utils.batching.BATCH_REQUEST_ID` and `web3._utils.caching.caching_utils.generate_cache_key`
  (`request_key` computes the same key directly);
- `FrameTolerantWebSocketProvider.send_batch_request` forms the requests with web3's `form_request` and
  sends its own JSON with `socket_send`.

`internals_problems()` lists what of that the installed web3 lacks; tests/test_web3_internals.py fails on
any, naming `WEB3_VERSION`. Upgrading web3 means re-reading each of the overridden methods above.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
from collections.abc import Awaitable, Sequence
from importlib.metadata import version
from typing import Any, cast

import anyio
from web3 import AsyncWeb3, WebSocketProvider
from web3._utils.batching import BATCH_REQUEST_ID
from web3._utils.caching.caching_utils import RequestInformation, generate_cache_key
from web3.exceptions import TaskNotRunning, TimeExhausted
from web3.providers.persistent import PersistentConnectionProvider
from web3.types import RPCEndpoint, RPCId, RPCRequest, RPCResponse

from core.errors import TransientChainError
from core.logs import log_event

log = logging.getLogger("dloop.chain")

WEB3_VERSION = "8.0.0"  # the version these internals were written against
ANSWER_RECHECK_S = 0.05  # a waiter re-checks web3's answer cache at least this often


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


def is_batch_refusal(answer: dict[str, Any]) -> bool:
    """An error object answering no request id (JSON-RPC's answer to a request it could not take apart)."""
    return answer.get("id") is None and "method" not in answer and isinstance(answer.get("error"), dict)


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
        key = request_key(request_id)
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
        """web3's, with the batch encoded by one `json.dumps`: web3 encodes each request through its own
        JSON encoder (7 % of a reconcile pass). The parameters are plain JSON (hex strings, numbers, objects
        of them); anything else is encoded web3's way."""
        dicts = [self.form_request(method, params) for method, params in requests]
        try:
            data = json.dumps(dicts, separators=(",", ":")).encode()
        except TypeError:
            data = self.encode_batch_request_dicts(dicts)
        self._batches_sent += 1  # before sending: the answer may be read before the send returns
        try:
            await self.socket_send(data)
        except BaseException:
            self._batches_sent -= 1
            raise
        return dicts

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
                if self._batches_answered < self._batches_sent and is_batch_refusal(answer):
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


# -- subscriptions ---------------------------------------------------------------------------------------


async def next_notification(w3: AsyncWeb3[Any]) -> dict[str, Any] | None:
    """The connection's next `eth_subscription` notification, as the node sent it (JSON, hex strings); None
    once web3's listener task has ended cleanly (the socket closed).

    It comes from the queue web3's `process_subscriptions` reads, without web3's result formatters (hex to
    int and HexBytes, checksums), which our parsers only converted back: about 8 % of the service's CPU in a
    voting burst. Notifications of every subscription of the socket come out. `pop_raw_response` also wakes
    web3's listener task if a full queue paused it. Raises the error web3's listener task died of, and an
    error put in the queue (`FrameTolerantWebSocketProvider._unclaimed`).
    """
    provider = cast(WebSocketProvider, w3.provider)
    if provider._message_listener_task is None:
        raise TransientChainError("the WebSocket is not connected: web3 has no listener task")
    try:
        return cast(dict[str, Any], await provider._request_processor.pop_raw_response(subscription=True))
    except TaskNotRunning:
        # Queued by the task's done callback, so the task's outcome is final. A cancelled task (web3's own
        # `disconnect`) has no error to report.
        task = provider._message_listener_task
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error from None
        return None


# -- what ChainClient needs -------------------------------------------------------------------------------


async def socket_request(w3: AsyncWeb3[Any], method: str, params: Sequence[Any]) -> Any:
    """One request through web3's request manager, so web3 knows it: an error answer to a request it does
    not know is raised as a "stray error" inside the next, unrelated request.

    As `manager.socket_request`, less its `cache_request_information`, which hashes the method and every
    parameter (md5, recursively: ~60 us for an eth_call) to look for an answer in web3's request cache; with
    request caching off (the service never turns it on) that cache is always empty. The request is registered
    as it would be, under the key of its id, before its answer can be read (no await in between)."""
    manager = w3.manager
    provider = cast(WebSocketProvider, w3.provider)
    if provider.cache_allowed_requests or provider._request_cache._data:  # web3's own way
        return await manager.socket_request(cast(RPCEndpoint, method), list(params))
    request = await manager.send(cast(RPCEndpoint, method), list(params))
    provider._request_processor._request_information_cache.cache(
        request_key(request["id"]),
        RequestInformation(request["method"], request["params"], ((), (), ())),  # type: ignore[arg-type]
    )
    return await manager.recv_for_request(request)


def request_key(request_id: object) -> str:
    """web3's `generate_cache_key` of a request id (an int, or a string), which files its answer: the md5
    of the id's text. web3 gets there through generic type checks that took 3 % of a reconcile pass;
    tests/test_web3_internals.py checks that both agree."""
    text = request_id if isinstance(request_id, str) else repr(request_id)
    return hashlib.md5(text.encode()).hexdigest()


async def send_batch(w3: AsyncWeb3[Any], requests: Sequence[tuple[str, Sequence[Any]]]) -> list[RPCRequest]:
    provider = cast(WebSocketProvider, w3.provider)
    return await provider.send_batch_request([(cast(RPCEndpoint, m), list(p)) for m, p in requests])


def register_batch(w3: AsyncWeb3[Any], sent: Sequence[RPCRequest], keys: list[str | None]) -> None:
    """Register a sent batch's requests with web3's request processor (appending their cache keys to
    `keys` as it goes, so that `forget_batch` drops each one registered even if this fails midway).

    web3's `cache_request_information` first hashes each request's method and parameters (md5, recursively)
    to look for an answer in its request cache, which is empty unless request caching is on (the service
    leaves it off): that lookup took 40 % of a reconcile pass's CPU. With the cache empty, the same entry is
    stored directly under the key of the request's id."""
    provider = cast(WebSocketProvider, w3.provider)
    processor = provider._request_processor
    if provider._request_cache._data:  # request caching in use: web3's own way
        for request in sent:
            keys.append(
                processor.cache_request_information(
                    request["id"],
                    request["method"],
                    request["params"],
                    response_formatters=((), (), ()),  # type: ignore[arg-type]
                )
            )
        return
    information = processor._request_information_cache
    for request in sent:
        key = request_key(request["id"])
        information.cache(
            key,
            RequestInformation(request["method"], request["params"], ((), (), ())),  # type: ignore[arg-type]
        )
        keys.append(key)


def forget_batch(w3: AsyncWeb3[Any], keys: Sequence[str | None]) -> None:
    """A batch answer is popped as a whole: drop its requests' entries too, or they fill web3's
    request-information cache (500) and evict the entries of requests still in flight."""
    processor = cast(WebSocketProvider, w3.provider)._request_processor
    for key in keys:
        if key is not None:
            processor.pop_cached_request_information(key)


def receive_batch(w3: AsyncWeb3[Any], sent: list[RPCRequest]) -> Awaitable[Any]:
    return cast(WebSocketProvider, w3.provider).recv_for_batch_request(sent)


# -- the check ------------------------------------------------------------------------------------------

_PROVIDER_METHODS = (
    "_get_response_for_request_id",
    "_handle_listener_task_exceptions",
    "socket_recv",
    "send_batch_request",
    "form_request",
    "encode_batch_request_dicts",
    "socket_send",
    "recv_for_batch_request",
    "connect",
    "disconnect",
)
_PROCESSOR_METHODS = ("pop_raw_response", "cache_request_information", "pop_cached_request_information")
_POP_RAW_RESPONSE_PARAMETERS = ["self", "cache_key", "subscription"]
_PROCESSOR_ATTRIBUTES = (
    "_request_response_cache",
    "_request_information_cache",
    "active_subscriptions",
    "_subscription_response_queue",
)


def internals_problems() -> list[str]:
    """What the installed web3 lacks of the internals above (empty when all is there)."""
    problems = []
    installed = version("web3")
    if installed != WEB3_VERSION:
        problems.append(
            f"web3 {installed} is installed; chain/web3_internals.py was written for {WEB3_VERSION}"
        )
    for name in _PROVIDER_METHODS:
        if not callable(getattr(WebSocketProvider, name, None)):
            problems.append(f"WebSocketProvider.{name} is missing")
    override = getattr(WebSocketProvider, "_get_response_for_request_id", None)
    if override is not None and list(inspect.signature(override).parameters) != [
        "self",
        "request_id",
        "timeout",
    ]:
        problems.append(
            "WebSocketProvider._get_response_for_request_id(request_id, timeout) changed signature"
        )
    provider = WebSocketProvider("ws://127.0.0.1:1")
    processor = getattr(provider, "_request_processor", None)
    if processor is None:
        problems.append("WebSocketProvider._request_processor is missing")
    else:
        for name in _PROCESSOR_METHODS:
            if not callable(getattr(processor, name, None)):
                problems.append(f"RequestProcessor.{name} is missing")
        for name in _PROCESSOR_ATTRIBUTES:
            if not hasattr(processor, name):
                problems.append(f"RequestProcessor.{name} is missing")
        pop = getattr(type(processor), "pop_raw_response", None)
        if pop is not None and list(inspect.signature(pop).parameters) != _POP_RAW_RESPONSE_PARAMETERS:
            problems.append("RequestProcessor.pop_raw_response(cache_key, subscription) changed signature")
    for name in ("_ws", "_message_listener_task"):
        if not hasattr(provider, name):
            problems.append(f"WebSocketProvider.{name} is missing")
    # `next_notification` learns of a dead listener task only from this signal: without it, it waits forever.
    callback = getattr(PersistentConnectionProvider, "_message_listener_callback", None)
    if callback is None or "_subscription_response_queue" not in inspect.getsource(callback):
        problems.append(
            "PersistentConnectionProvider._message_listener_callback no longer signals the subscription queue"
        )
    if not hasattr(getattr(provider, "_request_cache", None), "_data"):
        problems.append("WebSocketProvider._request_cache._data is missing")
    if list(inspect.signature(RequestInformation).parameters)[:3] != [
        "method",
        "params",
        "response_formatters",
    ]:
        problems.append("RequestInformation(method, params, response_formatters) changed signature")
    w3 = AsyncWeb3(provider, middleware=[])
    for name in ("socket_request", "send", "recv_for_request"):
        if not callable(getattr(getattr(w3, "manager", None), name, None)):
            problems.append(f"AsyncWeb3.manager.{name} is missing")
    if not isinstance(getattr(provider, "cache_allowed_requests", None), bool):
        problems.append("WebSocketProvider.cache_allowed_requests is missing")
    if not isinstance(BATCH_REQUEST_ID, str) or not callable(generate_cache_key):
        problems.append("web3._utils.batching.BATCH_REQUEST_ID or generate_cache_key changed")
    return problems
