"""The one retry policy: backoff with jitter, for transient chain errors (timeouts, dropped connections,
rate limits) only. Loops that retry by hand (chain/retrying.py's batched reads, the reconcile pass) wait
`backoff_delay` for the same curve. The listener's reconnects have their own, longer one
(listener/planning.py::reconnect_delay)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import anyio
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from core.errors import MalformedAnswer, RateLimited, TransientChainError

P = ParamSpec("P")
T = TypeVar("T")

ATTEMPTS = 4  # the first try and 3 retries
BACKOFF_BASE = 0.2  # seconds: retry n waits a random time up to BACKOFF_BASE * 2**(n-1) ...
BACKOFF_MAX = 5.0  # ... and never more than this


def backoff_delay(retry: int) -> float:
    """The wait before retry number `retry` (1 for the first): the curve of `with_backoff` (full jitter)."""
    return random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(retry - 1, 0)))


async def with_backoff(
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Call `fn` up to ATTEMPTS times while it raises TransientChainError (RateLimited included), with
    jittered backoff.

    Only for reads: a broadcast goes through `broadcast_with_backoff`.
    """
    return await _call_retrying(is_retried, fn, *args, **kwargs)


async def broadcast_with_backoff(
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Call `fn` (a broadcast), retrying only answers that say the node did not take the request.

    A timeout or a lost answer may hide a transaction the node took (and, on a fast chain, already mined):
    a copy would earn "nonce too low" and the row would end `already_voted` instead of `confirmed`. Those
    are raised at once; the lane keeps the transaction as uncertain and reads its fate from the chain.
    """
    return await _call_retrying(is_refused_unprocessed, fn, *args, **kwargs)


async def call_retrying(
    predicate: Callable[[BaseException], bool],
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """The same policy for other transient failures (e.g. a webhook receiver answering 5xx): `fn` is called
    again, up to 4 times in all, while `predicate` says the error is worth another try."""
    return await _call_retrying(predicate, fn, *args, **kwargs)


async def _call_retrying(
    predicate: Callable[[BaseException], bool],
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    retrying = AsyncRetrying(
        retry=retry_if_exception(predicate),
        wait=wait_random_exponential(multiplier=BACKOFF_BASE, max=BACKOFF_MAX),
        stop=stop_after_attempt(ATTEMPTS),
        sleep=anyio.sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn(*args, **kwargs)
    raise AssertionError("unreachable: tenacity reraises the last error")


def is_retried(exc: BaseException) -> bool:
    """Whether `with_backoff` tries again after `exc`."""
    if isinstance(exc, MalformedAnswer):
        return exc.repeatable
    return isinstance(exc, TransientChainError)


def is_refused_unprocessed(exc: BaseException) -> bool:
    """Whether `broadcast_with_backoff` tries again: only a rate limit answer (the request was not run)."""
    return isinstance(exc, RateLimited)
