"""Every lane's transactions in flight, watched in one loop: one poll of the chain for all five nodes.

At each new block (and while a receipt the nonce promised is missing) one JSON-RPC batch reads the mined
nonce of every lane with transactions in flight, one batch asks for the receipts of the transactions those
nonces say are mined, and the confirmations of all lanes are stored in one transaction. A lane's own trouble
(a check that fails) stays on its lane; the judgement of a stuck, dropped or replaced transaction is the
lane's watcher's (voter/watcher.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

import anyio
import anyio.abc

from chain import requests as rpc
from chain.client import ChainClient, Receipt
from chain.reads import Reads
from chain.retrying import call_many_retrying
from core.errors import ChainError, DloopError, TransientChainError
from core.retry import with_backoff
from storage import queue
from storage.engine import SessionFactory
from voter.jobs import Tracked, as_int
from voter.lane import NodeLane


class ReceiptPoller:
    """Polls receipts for every lane of a voter over its connection, and has each lane judge what is due."""

    def __init__(
        self,
        lanes: Sequence[NodeLane],
        sessions: SessionFactory,
        *,
        batch_size: int,
        poll_interval: float = 0.2,
        stall_seconds: float = 5.0,
    ) -> None:
        self.lanes = list(lanes)
        self.sessions = sessions
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.stall_seconds = stall_seconds

    async def run(
        self, client: ChainClient, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Until cancelled (the connection's end). A transient error ends it: the voter reconnects."""
        task_status.started()
        last_head = -1
        last_change = anyio.current_time()
        unsettled: dict[int, int] = {}  # node id -> transactions below the mined nonce without a receipt yet
        while True:
            await anyio.sleep(self.poll_interval)
            for lane in self.lanes:
                if lane.tracked and not lane.state.owned:
                    await lane.watcher.forget_lost()
            watched = [lane for lane in self.lanes if lane.tracked and lane.state.owned]
            if not watched:
                continue
            try:
                head = await with_backoff(client.block_number)
                now = anyio.current_time()
                moved = head != last_head
                if moved:
                    last_head, last_change = head, now
                stalled = now - last_change >= self.stall_seconds
                due = {
                    lane.node.id: [t for t in lane.tracked.values() if stalled or lane.watcher.due(t, head)]
                    for lane in watched
                }
                active = [
                    lane for lane in watched if moved or due[lane.node.id] or unsettled.get(lane.node.id)
                ]
                if active:
                    # The nonces first: a vote mined by then has its receipt in the poll that follows.
                    mined = await self._mined_nonces(client, active)
                    await self._poll(
                        client,
                        [(lane, mined[lane.node.id]) for lane in active if lane.node.id in mined],
                        unsettled,
                    )
                    for lane in active:
                        if lane.node.id in mined:
                            await self._check(lane, due[lane.node.id], head, mined[lane.node.id])
                if stalled:
                    last_change = now  # check a stalled chain again only after another interval
            except TransientChainError:
                raise
            except DloopError as exc:
                for lane in watched:
                    lane.state.error(f"watching transactions: {exc}")
                await anyio.sleep(1.0)

    async def _mined_nonces(self, client: ChainClient, lanes: Sequence[NodeLane]) -> dict[int, int]:
        """Each lane's mined nonce, in one batch; a lane whose read failed is left out (and says why)."""
        answers = await call_many_retrying(
            client, [rpc.nonce(lane.address, "latest") for lane in lanes], batch_size=self.batch_size
        )
        mined: dict[int, int] = {}
        for lane, answer in zip(lanes, answers, strict=True):
            try:
                if isinstance(answer, ChainError):
                    raise answer
                mined[lane.node.id] = as_int(answer)
            except TransientChainError:
                raise
            except (ChainError, TypeError, ValueError) as exc:
                lane.state.error(f"watching transactions: nonce: {exc}")
        return mined

    async def _poll(
        self, client: ChainClient, lanes: Sequence[tuple[NodeLane, int]], unsettled: dict[int, int]
    ) -> None:
        """The receipts of every lane's mined transactions in one batch, their confirmations stored in one
        transaction; each lane then counts, logs and judges its reverted votes."""
        asked = [(lane, lane.watcher.receipts_asked(mined)) for lane, mined in lanes]
        hashes = [h for _, items in asked for t in items for h in t.hashes]
        if not hashes:
            for lane, _ in asked:
                unsettled[lane.node.id] = 0
            return
        results = await Reads(client, batch_size=self.batch_size).receipts(hashes)
        index = 0
        taken: list[tuple[NodeLane, list[tuple[Tracked, Receipt]], list[queue.Confirmation]]] = []
        for lane, items in asked:
            count = sum(len(t.hashes) for t in items)
            found = lane.watcher.with_receipts(items, results[index : index + count])
            index += count
            unsettled[lane.node.id] = len(items) - len(found)
            taken.append((lane, *lane.watcher.take_settled(found)))
        confirmations = [c for _, _, lane_confirmations in taken for c in lane_confirmations]
        if confirmations:
            with anyio.CancelScope(shield=True):
                await queue.mark_confirmed_many(self.sessions, confirmations)
        for lane, mined, lane_confirmations in taken:
            if mined:
                await self._lane_step(lane, lane.watcher.settled(mined, lane_confirmations))

    async def _check(self, lane: NodeLane, due: list[Tracked], head: int, mined: int) -> None:
        for tracked in due:
            step = lane.watcher.check(tracked, head, mined=mined) if tracked.vote_id in lane.tracked else None
            if step is not None and not await self._lane_step(lane, step):
                return

    @staticmethod
    async def _lane_step(lane: NodeLane, step: Awaitable[None]) -> bool:
        """Run one lane's step; its non-transient trouble stays on that lane."""
        try:
            await step
        except TransientChainError:
            raise
        except DloopError as exc:
            lane.state.error(f"watching transactions: {exc}")
            return False
        return True
