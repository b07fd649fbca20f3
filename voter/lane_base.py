"""The state one node's lane keeps, and the plumbing its sender and watcher share."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import anyio

from chain.accounts import NodeAccount
from chain.client import ChainClient
from core.errors import ChainError
from core.logs import log_event
from core.retry import broadcast_with_backoff
from core.settings import Settings
from storage.engine import SessionFactory
from storage.proposals import NodeRecord
from storage.queue import SignedTx
from voter.fee_oracle import FeeOracle
from voter.fees import Fees, gwei_to_wei
from voter.jobs import Counters, Tracked
from voter.outcomes import Action, classify
from voter.strategies import NodeConfig

log = logging.getLogger("dloop.voter")

StepHook = Callable[[str], None]


class LaneBase:
    """A node lane's state (account, nonces, what is in flight) and its plumbing: signing and sending one
    transaction. `ReceiptWatcher` and `NodeLane` build on it."""

    def __init__(
        self,
        *,
        account: NodeAccount,
        node: NodeRecord,
        config: NodeConfig,
        settings: Settings,
        sessions: SessionFactory,
        owner: str,
        chain_id: int,
        fees: FeeOracle,
        totals: Counters,
        step_hook: StepHook | None = None,
        receipt_poll_interval: float = 0.2,
        stall_seconds: float = 5.0,
    ) -> None:
        self.account = account
        self.node = node
        self.config = config
        self.settings = settings
        self.sessions = sessions
        self.owner = owner
        self.chain_id = chain_id
        self.fees = fees
        self.totals = totals
        self.step_hook = step_hook
        self.receipt_poll_interval = receipt_poll_interval
        self.stall_seconds = stall_seconds
        self.client: ChainClient | None = None
        self.lock = anyio.Lock()  # nonce assignment and in-flight bookkeeping
        self.next_nonce: int | None = None
        self.free_nonces: list[int] = []  # unused nonces below next_nonce (a gap a reorg left)
        self.tracked: dict[int, Tracked] = {}
        self.fillers: dict[int, float] = {}  # nonce -> when a no-op was sent to fill that nonce gap
        self.gap_seen_at: float | None = None  # when the watcher first saw a nonce gap below a vote
        self.unfunded = False
        self.needed_wei = 0
        self.last_error: str | None = None
        self.last_vote_at: dt.datetime | None = None
        self._changed = anyio.Event()  # a transaction was tracked or settled

    def held_nonces(self) -> set[int]:
        """Nonces of transactions this lane has in flight (votes, and fillers of a nonce gap)."""
        return {t.nonce for t in self.tracked.values()} | set(self.fillers)

    # -- plumbing --------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.account.address

    @property
    def cap_wei(self) -> int:
        return gwei_to_wei(self.settings.max_fee_gwei)

    def _chain(self) -> ChainClient:
        if self.client is None:
            raise ChainError("voter is not connected")
        return self.client

    def _step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _error(self, text: str, **fields: Any) -> None:
        self.last_error = text
        log_event(log, "node_error", level=logging.WARNING, node=self.node.name, error=text, **fields)

    def _sign(self, nonce: int, data: str, gas: int, fees: Fees, *, to: str | None = None) -> SignedTx:
        """A vote call to the contract; `to` another address (with `data` "0x": a plain no-op transfer)."""
        tx_hash, raw = self.account.sign_transaction(
            {
                "chainId": self.chain_id,
                "nonce": nonce,
                "to": to or self._chain().contract,
                "data": data,
                "gas": gas,
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
                "value": 0,
                "type": 2,
            }
        )
        return SignedTx(tx_hash, nonce, fees.max_fee_per_gas, fees.max_priority_fee_per_gas, gas, raw)

    async def _broadcast(self, tx: SignedTx) -> None:
        try:
            await broadcast_with_backoff(
                self._chain().request, "eth_sendRawTransaction", ["0x" + tx.raw_transaction.hex()]
            )
        except ChainError as exc:
            if classify(exc) != Action.ACCEPTED:  # "already known": the node has exactly this transaction
                raise
