"""One node's nonce lane: a sender and a receipt watcher over one shared lane state.

- `voter.lane_state.LaneState`: the account, nonces, transactions in flight, the unfunded flag, last error.
- `voter.sender.LaneSender`: nonces, batches, signing, persisting before broadcasting, broadcasting, refusals.
- `voter.watcher.ReceiptWatcher`: receipts, stuck / dropped / replaced transactions, the nonce-gap filler,
  and the `sent` rows a new connection adopts. It signs and broadcasts through the sender.

`NodeLane` builds the three for one node and is what the voter service holds per node.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import anyio

from chain.accounts import NodeAccount
from chain.client import ChainClient
from core.settings import Settings
from storage.controls import PauseWatch
from storage.engine import SessionFactory
from storage.proposals import NodeRecord
from voter.fee_oracle import FeeOracle
from voter.jobs import Counters, Tracked, VoteJob
from voter.lane_state import LaneState, StepHook
from voter.ownership import LaneOwnership
from voter.planning import NonceCounts
from voter.sender import LaneSender
from voter.strategies import NodeConfig
from voter.watcher import ReceiptWatcher

__all__ = ["NodeLane", "StepHook"]


class NodeLane:
    """One node's lane as the voter service uses it: `state`, its `sender` and its `watcher`."""

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
        self.state = LaneState(
            account=account,
            node=node,
            config=config,
            settings=settings,
            sessions=sessions,
            owner=owner,
            chain_id=chain_id,
            fees=fees,
            totals=totals,
            step_hook=step_hook,
            pauses=pauses,
            ownership=ownership,
        )
        self.sender = LaneSender(self.state)
        self.watcher = ReceiptWatcher(self.state, self.sender)

    # -- connection ------------------------------------------------------------------------------------
    async def attach(self, client: ChainClient) -> None:
        """A new connection: forget in-memory state, resolve every `sent` row, then sync the nonce."""
        self.state.connect(client)
        await self.watcher.adopt_sent()
        await self.sender.resync_nonce()

    def detach(self) -> None:
        self.state.disconnect()

    async def release(self) -> None:
        """Another instance owns the lane now: forget what is in flight (see LaneState.release)."""
        await self.state.release()

    # -- the sender's and the watcher's work -----------------------------------------------------------
    async def send_many(self, jobs: Sequence[VoteJob], counters: Counters) -> None:
        await self.sender.send_many(jobs, counters)

    async def resync_nonce(self, counts: NonceCounts | None = None) -> None:
        await self.sender.resync_nonce(counts)

    async def check_funding(self) -> None:
        await self.sender.check_funding()

    async def wait_for_slot(self) -> None:
        await self.sender.wait_for_slot()

    async def adopt_sent(self) -> int:
        return await self.watcher.adopt_sent()

    async def settle_all(self, deadline: float) -> None:
        await self.watcher.settle_all(deadline)

    # -- what the service reads ------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return self.sender.full

    @property
    def free_slots(self) -> int:
        return self.sender.free_slots

    @property
    def node(self) -> NodeRecord:
        return self.state.node

    @property
    def config(self) -> NodeConfig:
        return self.state.config

    @property
    def address(self) -> str:
        return self.state.address

    @property
    def lock(self) -> anyio.Lock:
        return self.state.lock

    @property
    def next_nonce(self) -> int | None:
        return self.state.next_nonce

    @property
    def tracked(self) -> dict[int, Tracked]:
        return self.state.tracked

    @property
    def unfunded(self) -> bool:
        return self.state.unfunded

    @property
    def last_vote_at(self) -> dt.datetime | None:
        return self.state.last_vote_at

    @property
    def last_error(self) -> str | None:
        return self.state.last_error

    @last_error.setter
    def last_error(self, text: str | None) -> None:
        self.state.last_error = text
