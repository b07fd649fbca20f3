"""The shared mutable state of one node's lane: what its sender and its receipt watcher both work on."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from storage.lanes import NO_LANES, Fencing, LaneFence
from storage.proposals import NodeRecord
from voter.fee_oracle import FeeOracle
from voter.fees import gwei_to_wei
from voter.gas import GasEstimates
from voter.jobs import Counters, Tracked
from voter.ownership import LaneOwnership
from voter.planning import NonceCounts, used_after
from voter.strategies import NodeConfig

log = logging.getLogger("dloop.voter")

StepHook = Callable[[str], None]
USED_NONCE_MEMORY_S = 60.0  # how long a used nonce is remembered, for counts read before it was seen


@dataclass(frozen=True)
class Held:
    """Why this node may not sign anything now."""

    reason: str


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
        ownership: LaneOwnership | None = None,
    ) -> None:
        self.account = account
        # Several instances on one database: this lane signs only under the fence it was attached with,
        # while `ownership` still holds it. None: this process is the only signer (no lane leases).
        self.ownership = ownership
        self.fence: LaneFence | None = None
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
        # nonce -> when it was seen used on chain (a vote or filler of ours mined, or a transaction not ours
        # took it): not a gap for nonce counts read before that moment (see `nonce_plan`)
        self.used_nonces: dict[int, float] = {}
        self.gap_seen_at: float | None = None  # when the watcher first saw a nonce gap below a vote
        self.unfunded = False
        self.needed_wei = 0
        self.gas = GasEstimates()  # reused per proposal type and call; forgotten when a vote fails on chain
        self.last_error: str | None = None
        self.last_vote_at: dt.datetime | None = None
        self._changed = anyio.Event()  # a transaction was tracked or settled

    def connect(self, client: ChainClient | None) -> None:
        """A new connection: forget what was in flight and the nonces (the `sent` rows are adopted again)."""
        self.client = client
        self.forget_in_flight()
        self.next_nonce = None
        self.free_nonces = []

    def disconnect(self) -> None:
        self.client = None
        self.notify()

    async def release(self) -> None:
        """The lane is another instance's now: forget it all (its transactions are the new owner's to
        watch); taken again, it is attached afresh from the chain. Under `lock`: not in the middle of a
        signature, a record or a broadcast."""
        async with self.lock:
            self.fence = None
            self.connect(None)
            self.disconnect()

    def current_fence(self) -> Fencing | None:
        """What this lane's next record goes under (NO_LANES: no ownership in play), or None: not ours now
        (lost, or not attached under the fence held). Synchronous, so a caller under `lock` checks and uses
        the very same value."""
        if self.ownership is None:
            return NO_LANES
        fence = self.fence
        if fence is None or self.ownership.fence(self.address) != fence:
            return None
        return fence

    @property
    def owned(self) -> bool:
        """This instance may act for the node (sign, broadcast, settle): no ownership in play, or the fence
        it was attached with is still the one held. Turns False the moment the lane is lost."""
        return self.current_fence() is not None

    def lane_lost(self, why: str) -> None:
        """The database refused a record under our fence: stop signing at once."""
        if self.ownership is not None:
            self.ownership.lost(self.address, why)

    async def signing_fence(self) -> Fencing | Held:
        """The fence to record the next signature under (a vote, a replacement, a filler), or why nothing
        may be signed: another instance owns the lane, paused, or DLOOP_DRY_RUN. Called under `lock`, right
        before each signature. The fence is read before the pause check's await and returned as read: a lane
        lost meanwhile is refused by the database's check of that fence, never recorded without one."""
        fence = self.current_fence()
        if fence is None:
            return Held("another instance owns this node's lane")
        if self.settings.dry_run:
            return Held("dry run: nothing is signed")
        paused = (await self.pauses.current()).reason(self.node.name)
        return Held(paused) if paused is not None else fence

    def forget_in_flight(self) -> None:
        """Drop what this lane tracks of its transactions (votes, fillers, nonces seen used): a new connection
        adopts its `sent` rows again, a lost lane leaves them to its new owner."""
        self.tracked.clear()
        self.fillers.clear()
        self.used_nonces.clear()

    def nonce_used(self, nonce: int) -> None:
        """`nonce` is used on chain (see `used_nonces`)."""
        self.used_nonces[nonce] = time.monotonic()

    def untrack_used(self, vote_id: int) -> Tracked | None:
        """The vote's transaction leaves `tracked` because its nonce is used on chain (mined, or taken by
        another transaction); None when it was no longer tracked (settled by another path)."""
        tracked = self.tracked.pop(vote_id, None)
        if tracked is not None:
            self.nonce_used(tracked.nonce)
        return tracked

    def used_since(self, counts: NonceCounts) -> set[int]:
        """Our nonces seen used after `counts` were read (see `used_after`); the rest is forgotten."""
        self.used_nonces, used = used_after(
            self.used_nonces, counts, now=time.monotonic(), memory_s=USED_NONCE_MEMORY_S
        )
        return used

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
