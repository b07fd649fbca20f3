"""WebSocket connections to the node, and translation of websockets/OS errors and JSON-RPC error answers
into the service's tree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from chain.codec import decode_revert
from chain.rpc_socket import RpcSocket, is_batch_refusal
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
    if isinstance(responses, list):  # the refusal repeated for each request, or once in a list
        if not responses or not all(isinstance(r, dict) and is_batch_refusal(r) for r in responses):
            return None
        responses = responses[0]
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
    claim_window: float = 3.0,
) -> AsyncIterator[RpcSocket]:
    """A fresh JSON-RPC socket per connection, its frames read by a task of its own until the block ends;
    tight pings so a frozen peer is noticed in seconds, not minutes.

    `request_timeout` bounds the opening handshake; `close_timeout` the closing one (a frozen peer never
    answers it: websockets would wait 10 s).
    """
    try:
        frames = await connect(
            url,
            open_timeout=request_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            max_size=2**26,
        )
    except (OSError, TimeoutError, WebSocketException) as exc:
        detail = str(exc).replace(url, safe_url(url))  # an error may repeat the full URL
        if isinstance(translate_exception(exc), RateLimited) or "429" in detail:
            raise RateLimited(f"cannot connect to {safe_url(url)}: rate limited ({detail})") from exc
        raise TransientChainError(
            f"cannot connect to {safe_url(url)}: {type(exc).__name__}: {detail}"
        ) from exc
    socket = RpcSocket(frames, url, claim_window=claim_window)
    # The reader is the connection's own task, like websockets' own (pings, buffering), cancelled and awaited
    # on the way out: a task group around `yield` would hand the body's errors back in an ExceptionGroup.
    reader = asyncio.ensure_future(socket.read_frames())
    try:
        yield socket
    finally:
        reader.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait([reader])
            socket.close()
            with contextlib.suppress(Exception):
                await frames.close()  # the socket is gone either way


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
    """Map an exception raised by websockets or the OS to the service's error tree."""
    if isinstance(exc, ChainError):
        return exc
    if isinstance(exc, OSError | TimeoutError):
        return TransientChainError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, InvalidStatus) and exc.response.status_code == 429:
        return RateLimited(f"handshake answered HTTP 429: {exc}")
    name = type(exc).__module__
    if name.startswith("websockets"):
        return TransientChainError(f"connection lost: {type(exc).__name__}: {exc}")
    return ChainError(f"{type(exc).__name__}: {exc}")
