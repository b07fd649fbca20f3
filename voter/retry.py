"""Backoff with jitter for transient chain errors (timeouts, dropped connections, rate limits) only."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import anyio
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from chain.client import ChainClient
from dloop.errors import MalformedAnswer, RateLimited, TransientChainError

P = ParamSpec("P")
T = TypeVar("T")


async def with_backoff(
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Call `fn`, retrying TransientChainError (RateLimited included) up to 4 times with jittered backoff.

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


async def _call_retrying(
    predicate: Callable[[BaseException], bool],
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    retrying = AsyncRetrying(
        retry=retry_if_exception(predicate),
        wait=wait_random_exponential(multiplier=0.2, max=5.0),
        stop=stop_after_attempt(4),
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


async def call_many_retrying(
    client: ChainClient, requests: Sequence[tuple[str, Sequence[Any]]], *, batch_size: int
) -> list[Any]:
    """`client.call_many`, then the requests answered with a transient error (rate limit, timeout) again,
    with jittered backoff, up to 3 more times. Other errors stay in the results for the caller.

    A TransientChainError raised by call_many itself (e.g. the provider refused a batch, which spoils the
    socket) is not retried here: it means "reconnect", and the caller's connection loop does that.
    """
    results = await client.call_many(requests, batch_size=batch_size)
    for attempt in range(3):
        again = [i for i, r in enumerate(results) if isinstance(r, TransientChainError)]
        if not again:
            break
        await anyio.sleep(random.uniform(0.1, 0.3) * 2**attempt)
        answers = await client.call_many([requests[i] for i in again], batch_size=batch_size)
        for i, answer in zip(again, answers, strict=True):
            results[i] = answer
    return results
