"""The listener's tally refreshes, coalesced, without a chain: when one is due (pure)."""

from __future__ import annotations

import functools

import pytest

from listener.planning import tally_refresh_wait


def test_a_refresh_is_due_at_once_after_a_while_then_once_per_interval_or_when_the_chain_is_quiet() -> None:
    wait = functools.partial(tally_refresh_wait, interval=1.0, quiet=0.2)
    assert wait(pending=False, since_refresh=None) is None
    assert wait(pending=False, since_refresh=0.5) is None  # nothing to refresh: wait for logs for ever
    assert wait(pending=True, since_refresh=None) == 0  # the first one
    assert wait(pending=True, since_refresh=5.0) == 0  # the first vote in a while: as fast as before
    assert wait(pending=True, since_refresh=1.0) == 0
    assert wait(pending=True, since_refresh=0.1) == pytest.approx(0.2)  # more logs within 0.2 s, or refresh
    assert wait(pending=True, since_refresh=0.9) == pytest.approx(0.1)  # due before the chain is quiet
