"""One node's sender: its nonces, signing and broadcasting batches of votes, and what a refusal means.

Every signed transaction is persisted (row `sent`) before it is broadcast, so after a crash each `sent` row
is resolved from the chain (`voter.watcher`): receipt, account nonce, `hasVoted`. Rebroadcasting the same
signed bytes is always safe (same hash, same nonce); a new vote is only ever signed for a row that is
provably not cast.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from chain import requests as rpc
from chain.client import ChainClient
from chain.retrying import call_many_retrying
from core.errors import ChainError, ContractRevert, LaneLost, TransientChainError
from core.logs import log_event
from core.retry import broadcast_with_backoff, with_backoff
from storage import queue
from storage.lanes import Fencing
from storage.models import VoteState, utcnow
from storage.queue import QueuedVote, SignedTx
from voter.fees import GWEI, Fees, bump_fees, gas_limit, includable
from voter.jobs import (
    Counters,
    SignedVote,
    Tracked,
    VoteJob,
    as_int,
    estimate_request,
    estimate_value,
    vote_calldata,
    vote_gas_key,
)
from voter.lane_state import Held, LaneState, log
from voter.outcomes import Action, classify
from voter.planning import NonceCounts, nonce_plan
from voter.strategies import value_text


@dataclass(frozen=True)
class Ready:
    """A lane's votes ready to sign: each job with its call data and gas estimate, and the fees to pay."""

    items: list[tuple[VoteJob, str, int]]
    fees: Fees
    base: int


@dataclass(frozen=True)
class Signed:
    """A lane's votes signed under its lock, and the fence they are to be recorded under."""

    items: list[tuple[VoteJob, str, int]]
    txs: list[SignedVote]
    fence: Fencing

    def records(self) -> list[queue.SentRecord]:
        return [
            queue.SentRecord(
                job.row.vote_id,
                tx.tx,
                job.decision.label,
                job.decision.confidence,
                job.decision.reason,
                job.price.text() if job.price is not None else None,
                value_text(job.proposal, job.price),
            )
            for (job, _, _), tx in zip(self.items, self.txs, strict=True)
        ]


async def broadcast_one(client: ChainClient, tx: SignedTx) -> None:
    try:
        await broadcast_with_backoff(client.request, *rpc.send_raw(tx.raw_transaction))
    except ChainError as exc:
        if classify(exc) != Action.ACCEPTED:  # "already known": the node has exactly this transaction
            raise


async def broadcast_all(
    client: ChainClient, txs: Sequence[SignedTx], *, batch_size: int
) -> list[ChainError | None]:
    """Broadcast in one JSON-RPC batch; per transaction the error the node gave, if any. Sending the same
    signed bytes again is always safe, so a single transaction's transient failure is asked again."""
    if not txs:
        return []
    if len(txs) == 1:
        try:
            await broadcast_one(client, txs[0])
            return [None]
        except ChainError as exc:
            return [exc]
    requests = [rpc.send_raw(tx.raw_transaction) for tx in txs]
    try:
        # Not retried here: an unanswered broadcast may have gone through (then a resend earns "nonce too
        # low"); it stays tracked as uncertain and the watcher reads its fate from the chain.
        answers = await client.call_many(requests, batch_size=batch_size)
    except TransientChainError:
        raise  # e.g. a refused batch spoils the socket: the voter reconnects and adopts these rows again
    except ChainError as exc:
        return [exc] * len(txs)  # uncertain for all: each one's outcome is read from the chain
    return [
        answer if isinstance(answer, ChainError) and classify(answer) != Action.ACCEPTED else None
        for answer in answers
    ]


class LaneSender:
    """Sends one node's votes on its lane state: takes nonces, signs, records every signed transaction
    before broadcasting it, and decides from a refusal what the row becomes. The receipt watcher signs and
    broadcasts its replacements and nonce-gap fillers through `sign` and `broadcast`."""

    def __init__(self, state: LaneState) -> None:
        self.state = state

    # -- signing and broadcasting one transaction ------------------------------------------------------
    def sign(self, nonce: int, data: str, gas: int, fees: Fees, *, to: str | None = None) -> SignedTx:
        """A vote call to the contract; `to` another address (with `data` "0x": a plain no-op transfer)."""
        tx_hash, raw = self.state.account.sign_transaction(
            {
                "chainId": self.state.chain_id,
                "nonce": nonce,
                "to": to or self.state.chain().contract,
                "data": data,
                "gas": gas,
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
                "value": 0,
                "type": 2,
            }
        )
        return SignedTx(tx_hash, nonce, fees.max_fee_per_gas, fees.max_priority_fee_per_gas, gas, raw)

    async def broadcast(self, tx: SignedTx) -> None:
        await broadcast_one(self.state.chain(), tx)

    # -- nonces and funding ----------------------------------------------------------------------------
    async def resync_nonce(self, counts: NonceCounts | None = None) -> None:
        """The next nonce: past the account's pending count (read now unless given, e.g. with a batch's
        snapshot) and past the highest one still in flight. Nonces below our highest in-flight one that no
        mined transaction used and we do not hold are free: after a reorg dropped mined votes, later
        transactions wait behind this gap until it is filled, so the next votes take them first."""
        if counts is None:
            request = self.state.chain().request
            read_at = time.monotonic()
            counts = NonceCounts(
                mined=as_int(await with_backoff(request, *rpc.nonce(self.state.address, "latest"))),
                pending=as_int(await with_backoff(request, *rpc.nonce(self.state.address, "pending"))),
                read_at=read_at,
            )
        # Gaps from the mined count, not the pending one: anvil's pool still counted a transaction it held
        # when a reorg took the block below it away, and dropped it later, so the gap was never seen.
        previous = self.state.next_nonce
        self.state.next_nonce, self.state.free_nonces = nonce_plan(
            counts, self.state.held_nonces(), self.state.used_since(counts)
        )
        if previous != self.state.next_nonce or self.state.free_nonces:
            log_event(
                log,
                "nonce_synced",
                node=self.state.node.name,
                nonce=self.state.next_nonce,
                previous=previous,
                gap=self.state.free_nonces,
            )

    def _take_nonce(self) -> int:
        """The lowest free nonce: a gap first, else the next one."""
        if self.state.free_nonces:
            return self.state.free_nonces.pop(0)
        assert self.state.next_nonce is not None
        nonce = self.state.next_nonce
        self.state.next_nonce += 1
        return nonce

    def _give_back_nonce(self, nonce: int) -> None:
        """A nonce taken but not used (refused, or the lease was lost): the next transaction takes it."""
        if self.state.next_nonce is not None and nonce == self.state.next_nonce - 1:
            self.state.next_nonce = nonce
        elif nonce not in self.state.free_nonces:
            self.state.free_nonces = sorted([*self.state.free_nonces, nonce])

    async def check_funding(self) -> None:
        """An unfunded node is tried again once its balance covers the transaction it could not pay."""
        if not self.state.unfunded:
            return
        balance = as_int(
            await with_backoff(self.state.chain().request, *rpc.balance(self.state.address, "latest"))
        )
        if balance > 0 and balance >= self.state.needed_wei:
            self.state.unfunded = False
            self.state.last_error = None
            log_event(log, "node_funded", node=self.state.node.name, balance_wei=balance)

    # -- sending ---------------------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return len(self.state.tracked) >= self.state.settings.max_in_flight

    @property
    def free_slots(self) -> int:
        return max(1, self.state.settings.max_in_flight - len(self.state.tracked))

    async def wait_for_slot(self) -> None:
        while self.full:
            await self.state.wait_changed()

    async def send_many(self, jobs: Sequence[VoteJob], counters: Counters) -> None:
        """Sign the jobs' votes, persist them all in one transaction, then broadcast them in one batch.

        Every outcome is written to the row. Jobs whose gas was not estimated with the batch are estimated
        here; a failed estimate means nothing is signed for that job. (The voter sends several lanes' votes
        in one transaction and one batch with the same steps: `voter.service.Voter._send_together`.)
        """
        ready = await self.prepare(jobs, counters)
        if ready is None:
            return
        async with self.state.lock:
            signed = await self.sign_ready(ready, counters)
            if signed is None:
                return
            tracked = await self.track_recorded(signed, await self._record(signed), counters)
            errors = await broadcast_all(
                self.state.chain(),
                [item.latest for _, item in tracked],
                batch_size=self.state.settings.rpc_batch_size,
            )
            await self.broadcast_done(tracked, errors, signed.fence, counters)
        self.state.notify()

    async def prepare(self, jobs: Sequence[VoteJob], counters: Counters) -> Ready | None:
        """Before the lock: the gas of jobs not estimated yet, and the fees. A job whose estimate failed ends
        here (its row says why); None when nothing is left to sign."""
        client = self.state.chain()
        ready: list[tuple[VoteJob, str, int]] = []  # job, call data, gas estimate
        calldata = [vote_calldata(job) for job in jobs]
        missing = [i for i, job in enumerate(jobs) if job.gas_estimate is None]
        fresh = dict(zip(missing, await self._estimate_many([calldata[i] for i in missing]), strict=True))
        for index, answer in fresh.items():
            if isinstance(answer, int):
                self.state.gas.learn(vote_gas_key(jobs[index], calldata[index]), answer)
        for index, (job, data) in enumerate(zip(jobs, calldata, strict=True)):
            estimate = fresh.get(index, job.gas_estimate)
            assert estimate is not None
            if isinstance(estimate, ChainError):
                await self._unsent(job, estimate, counters)
            else:
                ready.append((job, data, estimate))
        if not ready:
            return None
        fees, base = await self.state.fees.initial(client)
        if not includable(fees, base):
            cap_gwei = self.state.settings.max_fee_gwei
            why = f"fee cap {cap_gwei:g} gwei is below the base fee {base / GWEI:g} gwei"
            for job, _, _ in ready:
                await self._defer(job.row, why, counters)
            return None
        return Ready(ready, fees, base)

    async def sign_ready(self, ready: Ready, counters: Counters) -> Signed | None:
        """Lock held: sign, unless the lane may not (paused, another instance's, unfunded, no nonce yet):
        then the rows go back to the queue and None is returned."""
        # Pause takes effect before the next signature: checked under the lock that signs (a pause
        # answered over HTTP waits for this lock, so nothing is signed after its answer).
        fence = await self.state.signing_fence()
        if isinstance(fence, Held):
            await self._hand_back([job.row for job, _, _ in ready.items], fence.reason, counters)
            return None
        if self.state.unfunded or self.state.next_nonce is None:
            for job, _, _ in ready.items:
                await self._defer(job.row, self.state.last_error or "node not ready", counters, backoff=False)
            return None
        txs = [
            self._sign_job(job, data, estimate, ready.fees, ready.base) for job, data, estimate in ready.items
        ]
        return Signed(ready.items, txs, fence)

    async def _record(self, signed: Signed) -> set[int] | LaneLost:
        """Store the signed votes (rows `sent`) in one shielded transaction, under the lane's fence."""
        with anyio.CancelScope(shield=True):
            (recorded,) = await queue.record_sent_lanes(
                self.state.sessions, [(signed.records(), signed.fence)], owner=self.state.owner
            )
        return recorded

    async def track_recorded(
        self, signed: Signed, recorded: set[int] | LaneLost, counters: Counters
    ) -> list[tuple[VoteJob, Tracked]]:
        """Lock held, after the record: the recorded votes are tracked (to be broadcast); a vote not recorded
        (its lease lost) gives its nonce back. The whole lane lost (LaneLost): nothing was stored, so
        nothing is broadcast; the rows wait, queued, for the lane's owner."""
        if isinstance(recorded, LaneLost):
            self.state.lane_lost(recorded.why)
            await self._hand_back([job.row for job, _, _ in signed.items], str(recorded), counters)
            return []
        tracked: list[tuple[VoteJob, Tracked]] = []
        for (job, data, _), tx in zip(signed.items, signed.txs, strict=True):
            if job.row.vote_id not in recorded:
                if tx.previous is None:
                    self._give_back_nonce(tx.tx.nonce)
                log_event(
                    log, "lease_lost", level=logging.WARNING, node=self.state.node.name, vote=job.row.vote_id
                )
                continue
            self.state.step("persisted")
            # The head as of the fee read (a moment old at most): "not mined after N blocks" counts from it.
            hashes = [*(tx.previous.hashes if tx.previous is not None else []), tx.tx.tx_hash]
            item = Tracked(
                job.row.vote_id, job.row.proposal_id, tx.tx.nonce, hashes, tx.tx, data, self.state.fees.head
            )
            self.state.tracked[item.vote_id] = item
            tracked.append((job, item))
        return tracked

    async def broadcast_done(
        self,
        tracked: Sequence[tuple[VoteJob, Tracked]],
        errors: Sequence[ChainError | None],
        fence: Fencing,
        counters: Counters,
    ) -> None:
        """Lock held, after the broadcast: each refusal decides what its row becomes."""
        for (job, item), error in zip(tracked, errors, strict=True):
            if error is not None:
                await self._rejected(item, error, counters, fence)
                continue
            self.state.step("broadcast")
            counters.sent += 1
            self.state.totals.sent += 1
            log_event(
                log,
                "vote_sent",
                node=self.state.node.name,
                proposal=job.row.proposal_id,
                decision=job.decision.label,
                tx=item.latest.tx_hash,
                nonce=item.nonce,
                max_fee_gwei=item.latest.max_fee_per_gas / GWEI,
            )

    async def _hand_back(self, rows: Sequence[QueuedVote], why: str, counters: Counters) -> None:
        """A paused node's leased rows go back to the queue untouched (no error, no delay, no attempt); so do
        the rows of a lane another instance owns now."""
        with anyio.CancelScope(shield=True):
            count = await queue.release(
                self.state.sessions, [row.vote_id for row in rows], owner=self.state.owner
            )
        counters.paused += count
        log_event(log, "votes_held_paused", node=self.state.node.name, votes=count, reason=why)

    async def _estimate_many(self, calldata: Sequence[str]) -> list[int | ChainError]:
        """Gas estimates in one batch; per call its estimate or the error (a revert names the reason)."""
        if not calldata:
            return []
        contract = self.state.chain().contract
        requests = [rpc.estimate_gas(estimate_request(self.state.address, contract, d)) for d in calldata]
        answers = await call_many_retrying(
            self.state.chain(), requests, batch_size=self.state.settings.rpc_batch_size
        )
        return [estimate_value(answer) for answer in answers]

    def _sign_job(self, job: VoteJob, data: str, estimate: int, fees: Fees, base: int) -> SignedVote:
        """Lock held. A vote sent again while its earlier transaction is still tracked (a reorg took that one
        off the chain and the row was queued again) reuses its nonce, fees bumped: at most one of the two can
        ever be mined, and no nonce gap is left behind."""
        previous = self.state.tracked.get(job.row.vote_id)
        if previous is None:
            nonce = self._take_nonce()
        else:
            nonce = previous.nonce
            old = Fees(previous.latest.max_fee_per_gas, previous.latest.max_priority_fee_per_gas)
            priority = fees.max_priority_fee_per_gas
            fees = (
                bump_fees(old, base_fee=base, priority_fee=priority, cap_wei=self.state.cap_wei).fees or fees
            )
        tx = self.sign(nonce, data, gas_limit(estimate, self.state.settings.gas_margin), fees)
        return SignedVote(tx, previous)

    async def _unsent(self, job: VoteJob, exc: ChainError, counters: Counters) -> None:
        """The gas estimate failed: nothing was signed. Contract errors decide the row's fate."""
        row = job.row
        action = classify(exc)
        name = exc.error_name if isinstance(exc, ContractRevert) else str(exc)
        if name == "ProposalNotFound":
            # A reorg took the proposal away since the snapshot: owed once it is back (the listener queues
            # pending rows when it records the create again; the reconcile pass too).
            await self._finish(
                row, VoteState.PENDING, "the proposal is not on chain (reorg?): waits for it", counters
            )
        elif action == Action.CLOSED:
            await self._finish(
                row, VoteState.CLOSED, f"closed: the contract rejects votes ({name})", counters
            )
        elif action == Action.ALREADY_VOTED:
            await self._finish(
                row, VoteState.ALREADY_VOTED, f"already voted: the contract says {name}", counters
            )
        elif action == Action.TERMINAL:
            await self._finish(row, VoteState.FAILED, f"the contract rejects the vote: {name}", counters)
        elif action == Action.UNFUNDED:
            self._mark_unfunded(str(exc), 0)
            await self._defer(row, f"node unfunded: {exc}", counters, backoff=False)
        else:
            await self._defer(row, f"gas estimate failed: {exc}", counters)

    async def _finish(self, row: QueuedVote, state: VoteState, reason: str, counters: Counters) -> None:
        done = await queue.finish_unsent(
            self.state.sessions,
            row.vote_id,
            owner=self.state.owner,
            state=state,
            decision=None,
            confidence=None,
            reason=reason,
        )
        if done:
            if hasattr(counters, state.value):  # a row parked (pending) again is not a round's outcome
                setattr(counters, state.value, getattr(counters, state.value) + 1)
            if state == VoteState.FAILED:
                self.state.totals.failed += 1
            log_event(
                log, f"vote_{state.value}", node=self.state.node.name, proposal=row.proposal_id, reason=reason
            )

    async def _defer(self, row: QueuedVote, error: str, counters: Counters, *, backoff: bool = True) -> None:
        """Back to the queue; after repeated trouble not before a growing delay (so no round spins on it)."""
        delay = min(2.0 ** max(row.attempts, 1), 60.0) if backoff else None
        until = utcnow() + dt.timedelta(seconds=delay) if delay else None
        await queue.release(
            self.state.sessions, [row.vote_id], owner=self.state.owner, error=error, defer_until=until
        )
        counters.deferred += 1
        self.state.error(error)

    def _mark_unfunded(self, error: str, needed_wei: int) -> None:
        if not self.state.unfunded:
            log_event(log, "node_unfunded", level=logging.WARNING, node=self.state.node.name, error=error)
        self.state.unfunded = True
        self.state.needed_wei = needed_wei
        self.state.last_error = f"unfunded: {error}"

    async def _rejected(self, tracked: Tracked, exc: ChainError, counters: Counters, fence: Fencing) -> None:
        """The node refused a new transaction (lock held). Decide from the error what the row becomes,
        unless the receipt poller settled the vote while the broadcast was answered (its path decided)."""
        action = classify(exc)
        if action == Action.BUMP_FEES and "replacement" in str(exc).lower():
            # A pending transaction we do not track holds this nonce (sent outside the service): never
            # replace it; take the next free nonce instead.
            action = Action.RESYNC_NONCE
        if action == Action.BACKOFF:
            # Maybe accepted, maybe not: keep tracking; the watcher finds a receipt or rebroadcasts the bytes.
            self.state.error(f"broadcast uncertain, will check the chain: {exc}")
            log_event(
                log,
                "vote_broadcast_uncertain",
                level=logging.WARNING,
                node=self.state.node.name,
                proposal=tracked.proposal_id,
                tx=tracked.latest.tx_hash,
                nonce=tracked.nonce,
                error=str(exc)[:200],
            )
            return
        if tracked.vote_id not in self.state.tracked:
            return  # settled meanwhile: nothing to bump or give back
        if action == Action.BUMP_FEES and await self._bump_rejected(tracked, fence):
            counters.sent += 1
            self.state.totals.sent += 1
            self.state.notify()
            return
        # Refused for good: the nonce stays unused and the row goes back to the queue (or ends).
        if self.state.tracked.pop(tracked.vote_id, None) is None:
            return  # settled meanwhile (the bump above awaited)
        self._give_back_nonce(tracked.nonce)
        tx = tracked.latest
        if action == Action.UNFUNDED:
            self._mark_unfunded(str(exc), tx.gas_limit * tx.max_fee_per_gas)
            await self._requeue(tracked, f"node unfunded: {exc}", backoff=False)
        elif action == Action.RESYNC_NONCE:
            await self._requeue(tracked, f"nonce {tracked.nonce} refused: {exc}")
            await self.resync_nonce()
        elif action in (Action.TERMINAL, Action.CLOSED, Action.ALREADY_VOTED):
            reason = f"transaction refused by the node: {exc}"
            if await queue.mark_failed(self.state.sessions, tracked.vote_id, reason=reason):
                counters.failed += 1
                self.state.totals.failed += 1
        else:
            await self._requeue(tracked, f"transaction refused by the node: {exc}")
        counters.requeued += 1
        self.state.notify()

    async def _requeue(self, tracked: Tracked, reason: str, *, backoff: bool = True) -> None:
        until = utcnow() + dt.timedelta(seconds=5.0) if backoff else None
        with anyio.CancelScope(shield=True):
            await queue.resolve_sent(
                self.state.sessions,
                tracked.vote_id,
                state=VoteState.QUEUED,
                reason=reason,
                tx_outcome="rejected",
                defer_until=until,
            )
        self.state.error(reason)

    async def _bump_rejected(self, tracked: Tracked, fence: Fencing) -> bool:
        """An underpriced first send: re-sign the same nonce with fees bumped from fresh chain values, under
        the `fence` the first send was recorded with (still under the same hold of `lock`).

        True when a bumped transaction was accepted, or may have been (then the watcher checks the chain).
        """
        for _ in range(3):
            base, priority = await self.state.fees.read(self.state.chain(), fresh=True)
            old = Fees(tracked.latest.max_fee_per_gas, tracked.latest.max_priority_fee_per_gas)
            bump = bump_fees(old, base_fee=base, priority_fee=priority, cap_wei=self.state.cap_wei)
            if bump.fees is None:
                self.state.error(bump.reason)
                return False
            signed = self.sign(tracked.nonce, tracked.data, tracked.latest.gas_limit, bump.fees)
            try:
                with anyio.CancelScope(shield=True):
                    stored = await queue.record_replacement(
                        self.state.sessions,
                        tracked.vote_id,
                        signed,
                        note="underpriced at first send; fees bumped",
                        fence=fence,
                    )
            except LaneLost as exc:
                self.state.lane_lost(exc.why)
                return True  # the first transaction stays recorded: the lane's new owner resolves it
            if not stored:
                return False
            tracked.hashes.append(signed.tx_hash)
            tracked.latest = signed
            try:
                await self.broadcast(signed)
                return True
            except ChainError as exc:
                action = classify(exc)
                if action == Action.BACKOFF:
                    self.state.error(f"broadcast uncertain, will check the chain: {exc}")
                    return True
                if action != Action.BUMP_FEES:
                    return False
        return False
