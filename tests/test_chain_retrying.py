"""chain/retrying.py::call_many_retrying: the one retry layer of batched reads, on core/retry.py's policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast
from unittest import mock

import pytest

from chain.client import ChainClient
from chain.retrying import call_many_retrying
from core import retry
from core.errors import ChainError, RateLimited

pytestmark = pytest.mark.anyio


class Client:
    """call_many that refuses the first `limited` calls as rate-limited, then answers each request with the
    next of its scripted answers (the last one repeats)."""

    def __init__(self, limited: int = 0, **answers: list[Any]) -> None:
        self.limited = limited
        self.answers = answers
        self.batch_sizes: list[int] = []
        self.sent: list[list[str]] = []

    async def call_many(
        self, requests: Sequence[tuple[str, Sequence[Any]]], *, batch_size: int, concurrency: int = 8
    ) -> list[Any]:
        self.batch_sizes.append(batch_size)
        if self.limited:
            self.limited -= 1
            raise RateLimited("429")
        self.sent.append([method for method, _ in requests])
        out = []
        for method, _ in requests:
            script = self.answers[method]
            out.append(script.pop(0) if len(script) > 1 else script[0])
        return out


@pytest.fixture(autouse=True)
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chain.retrying.backoff_delay", lambda attempt: 0.0)


def client(fake: Client) -> ChainClient:
    return cast(ChainClient, fake)


async def test_only_transient_answers_are_asked_again_up_to_the_policy_attempts() -> None:
    fake = Client(a=[RateLimited("x"), 1], b=[ChainError("reverted")], c=[RateLimited("always")])
    answers = await call_many_retrying(client(fake), [("a", []), ("b", []), ("c", [])], batch_size=10)
    assert answers[0] == 1 and isinstance(answers[1], ChainError) and isinstance(answers[2], RateLimited)
    assert fake.sent == [["a", "b", "c"], ["a", "c"], ["c"], ["c"]]  # retry.ATTEMPTS tries in all
    assert len(fake.sent) == retry.ATTEMPTS


async def test_a_rate_limited_batch_is_raised_unless_asked_to_shrink_it() -> None:
    with pytest.raises(RateLimited):
        await call_many_retrying(client(Client(limited=1, a=[1])), [("a", [])], batch_size=8)
    fake = Client(limited=2, a=[1])
    assert await call_many_retrying(client(fake), [("a", [])], batch_size=8, shrink_on_rate_limit=True) == [1]
    assert fake.batch_sizes == [8, 4, 2]
    fake = Client(limited=retry.ATTEMPTS, a=[1])
    with pytest.raises(RateLimited):
        await call_many_retrying(client(fake), [("a", [])], batch_size=8, shrink_on_rate_limit=True)
    assert len(fake.batch_sizes) == retry.ATTEMPTS


def test_the_backoff_curve_is_the_policy_one() -> None:
    for n in range(1, 12):
        assert 0 <= retry.backoff_delay(n) <= min(retry.BACKOFF_MAX, retry.BACKOFF_BASE * 2 ** (n - 1))
    with mock.patch("core.retry.random.uniform", lambda low, high: high):  # the top of each jitter range
        base = retry.BACKOFF_BASE
        assert [retry.backoff_delay(n) for n in (1, 2, 3)] == [base, 2 * base, 4 * base]
        assert retry.backoff_delay(50) == retry.BACKOFF_MAX
