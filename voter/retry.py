"""Backoff with jitter for transient chain errors (timeouts, dropped connections, rate limits) only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import anyio
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from dloop.errors import TransientChainError

P = ParamSpec("P")
T = TypeVar("T")


async def with_backoff(
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Call `fn`, retrying TransientChainError (RateLimited included) up to 4 times with jittered backoff.

    Only for operations that are safe to repeat: reads, and broadcasting the same signed bytes.
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientChainError),
        wait=wait_random_exponential(multiplier=0.2, max=5.0),
        stop=stop_after_attempt(4),
        sleep=anyio.sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn(*args, **kwargs)
    raise AssertionError("unreachable: tenacity reraises the last error")
