"""Batched reads with the one retry policy applied per answer."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import anyio

from chain.client import ChainClient
from core.errors import TransientChainError


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
