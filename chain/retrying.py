"""Batched reads with the one retry policy (core/retry.py's attempts and backoff curve) applied per answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from chain.client import ChainClient
from core.errors import RateLimited, TransientChainError
from core.retry import ATTEMPTS, backoff_delay


async def call_many_retrying(
    client: ChainClient,
    requests: Sequence[tuple[str, Sequence[Any]]],
    *,
    batch_size: int,
    concurrency: int = 8,
    shrink_on_rate_limit: bool = False,
) -> list[Any]:
    """`client.call_many`, then the requests answered with a transient error (rate limit, timeout) again,
    up to ATTEMPTS tries in all, waiting `core.retry.backoff_delay` between them. Other errors stay in the
    results for the caller, and so do transient ones still there after the last try.

    A TransientChainError raised by call_many itself (e.g. the provider refused a batch, which spoils the
    socket) is not retried here: it means "reconnect", and the caller's connection loop does that. Except,
    with `shrink_on_rate_limit`, a RateLimited batch: it is sent again (within the same tries), in batches
    half the size each time.
    """
    if not requests:
        return []
    results: list[Any] = [None] * len(requests)
    pending = list(range(len(requests)))
    for attempt in range(ATTEMPTS):
        if attempt:
            await anyio.sleep(backoff_delay(attempt))
        try:
            answers = await client.call_many(
                [requests[i] for i in pending], batch_size=batch_size, concurrency=concurrency
            )
        except RateLimited:
            if not shrink_on_rate_limit or attempt == ATTEMPTS - 1:
                raise
            batch_size = max(1, batch_size // 2)
            continue
        for i, answer in zip(pending, answers, strict=True):
            results[i] = answer
        pending = [i for i in pending if isinstance(results[i], TransientChainError)]
        if not pending:
            break
    return results
