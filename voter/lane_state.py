"""The shared mutable state of one node's lane: what its sender and its receipt watcher both work on."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import anyio

from chain.accounts import NodeAccount
from chain.client import ChainClient
from chain.reads import Reads
from core.errors import ChainError
from core.logs import log_event
from core.settings import Settings
from storage.controls import PauseWatch
from storage.engine import SessionFactory
from storage.proposals import NodeRecord
from voter.fee_oracle import FeeOracle
from voter.fees import gwei_to_wei
from voter.gas import GasEstimates
from voter.jobs import Counters, Tracked
from voter.strategies import NodeConfig

log = logging.getLogger("dloop.voter")

StepHook = Callable[[str], None]


class LaneState:
    """One node's lane: its account and connection, its nonces, the transactions it has in flight, and how
    it is doing (unfunded, last error). `LaneSender` and `ReceiptWatcher` each hold the same instance;
    `lock` guards nonce assignment and the in-flight bookkeeping between them."""

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
        pauses: PauseWatch | None = None,
    ) -> None:
        self.account = account
        self.pauses = pauses or PauseWatch(sessions)  # checked under `lock` right before signing
        self.node = node
        self.config = config
        self.settings = settings
        self.sessions = sessions
        self.owner = owner
        self.chain_id = chain_id
        self.fees = fees
        self.totals = totals
        self.step_hook = step_hook
        self.client: ChainClient | None = None
        self.lock = anyio.Lock()  # nonce assignment and in-flight bookkeeping
        self.next_nonce: int | None = None
        self.free_nonces: list[int] = []  # unused nonces below next_nonce (a gap a reorg left)
        self.tracked: dict[int, Tracked] = {}
        self.fillers: dict[int, float] = {}  # nonce -> when a no-op was sent to fill that nonce gap
        self.gap_seen_at: float | None = None  # when the watcher first saw a nonce gap below a vote
        self.unfunded = False
        self.needed_wei = 0
        self.gas = GasEstimates()  # reused per proposal type and call; forgotten when a vote fails on chain
        self.last_error: str | None = None
        self.last_vote_at: dt.datetime | None = None
        self._changed = anyio.Event()  # a transaction was tracked or settled

    def connect(self, client: ChainClient) -> None:
        """A new connection: forget what was in flight and the nonces (the `sent` rows are adopted again)."""
        self.client = client
        self.tracked.clear()
        self.fillers.clear()
        self.next_nonce = None
        self.free_nonces = []

    def disconnect(self) -> None:
        self.client = None
        self.notify()

    async def signing_held(self) -> str | None:
        """Why this node may not sign anything now (a vote, a replacement, a filler), or None: paused, or
        DLOOP_DRY_RUN. Checked under `lock`, right before each signature."""
        if self.settings.dry_run:
            return "dry run: nothing is signed"
        return (await self.pauses.current()).reason(self.node.name)

    def held_nonces(self) -> set[int]:
        """Nonces of transactions this lane has in flight (votes, and fillers of a nonce gap)."""
        return {t.nonce for t in self.tracked.values()} | set(self.fillers)

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def cap_wei(self) -> int:
        return gwei_to_wei(self.settings.max_fee_gwei)

    def chain(self) -> ChainClient:
        if self.client is None:
            raise ChainError("voter is not connected")
        return self.client

    def reads(self) -> Reads:
        """Batched reads over the current connection."""
        return Reads(self.chain(), batch_size=self.settings.rpc_batch_size)

    def step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    async def wait_changed(self) -> None:
        """Until a transaction is tracked or settled (or the lane is disconnected)."""
        await self._changed.wait()

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def error(self, text: str, **fields: Any) -> None:
        self.last_error = text
        log_event(log, "node_error", level=logging.WARNING, node=self.node.name, error=text, **fields)
