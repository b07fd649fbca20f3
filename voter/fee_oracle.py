"""The fee oracle the lanes share: the next block's base fee and a priority fee, read from the chain."""

from __future__ import annotations

import anyio

from chain import requests as rpc
from chain.client import ChainClient
from core.errors import ChainError
from core.retry import with_backoff
from voter.fees import Fees, initial_fees
from voter.jobs import as_int


class FeeOracle:
    """Base fee and priority fee from the chain, shared by the lanes and cached briefly."""

    def __init__(self, cap_wei: int, ttl: float = 0.5) -> None:
        self.cap_wei = cap_wei
        self.ttl = ttl
        self._lock = anyio.Lock()
        self._at = -1e9
        self._base = 0
        self._priority = 0
        self.head = 0  # number of the latest block seen

    async def read(self, client: ChainClient, *, fresh: bool = False) -> tuple[int, int]:
        """(base fee of the next block, suggested priority fee)."""
        async with self._lock:
            if fresh or anyio.current_time() - self._at > self.ttl:
                self._base, self.head = await self._next_base_fee(client)
                self._priority = as_int(await with_backoff(client.request, *rpc.max_priority_fee()))
                self._at = anyio.current_time()
            return self._base, self._priority

    async def _next_base_fee(self, client: ChainClient) -> tuple[int, int]:
        """The fee history's last base fee is the next block's; the latest block's as a fallback."""
        try:
            history = await with_backoff(client.request, *rpc.fee_history(1, "latest"))
            return as_int(history["baseFeePerGas"][-1]), max(self.head, as_int(history["oldestBlock"]))
        except (ChainError, KeyError, IndexError, TypeError, ValueError):
            block = await with_backoff(client.block, "latest")
            return block.base_fee_per_gas or 0, max(self.head, block.number)

    async def initial(self, client: ChainClient) -> tuple[Fees, int]:
        base, priority = await self.read(client)
        return initial_fees(base, priority, self.cap_wei), base
