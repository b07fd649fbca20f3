"""WebSocket connections to the node, and translation of web3/websockets errors into the service's tree."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from web3 import AsyncWeb3
from web3.exceptions import (
    BadResponseFormat,
    PersistentConnectionError,
    ProviderConnectionError,
    TaskNotRunning,
    TimeExhausted,
    TooManyRequests,
    Web3RPCError,
)
from websockets.exceptions import InvalidStatus

from chain.codec import decode_revert
from chain.web3_internals import FrameTolerantWebSocketProvider, is_batch_refusal
from core.errors import (
    ChainError,
    ContractRevert,
    InsufficientFunds,
    NonceError,
    RateLimited,
    TransientChainError,
    Underpriced,
)

log = logging.getLogger("dloop.chain")


def safe_url(url: str) -> str:
    """scheme://host:port of an RPC URL: hosted providers put API keys in the path or the query."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def batch_refusal(responses: Any) -> dict[str, Any] | None:
    """The error object of a batch answered with one error instead of a list of answers, else None."""
    if isinstance(responses, list):
        if len(responses) != 1 or not isinstance(responses[0], dict) or not is_batch_refusal(responses[0]):
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
