"""One node's sending lane: its own nonces, a bound on transactions in flight, and a receipt watcher.

Every signed transaction is persisted (row `sent`) before it is broadcast, so after a crash each `sent` row
is resolved from the chain: receipt, account nonce, `hasVoted`. Rebroadcasting the same signed bytes is
always safe (same hash, same nonce); a new vote is only ever signed for a row that is provably not cast.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from hexbytes import HexBytes

from chain.accounts import NodeAccount
from chain.client import ChainClient
from chain.codec import dao_functions
from chain.types import ProposalData
from dloop.errors import ChainError, ContractRevert, DloopError, TransientChainError
from dloop.logs import log_event
from dloop.settings import Settings
from storage import queue
from storage.engine import SessionFactory
from storage.models import VoteState, utcnow
from storage.proposals import NodeRecord
from storage.queue import QueuedVote, SignedTx
from voter.fees import GWEI, Fees, bump_fees, gas_limit, gwei_to_wei, includable, initial_fees
from voter.outcomes import Action, classify
from voter.retry import broadcast_with_backoff, call_many_retrying, with_backoff
from voter.strategies import Decision, NodeConfig

log = logging.getLogger("dloop.voter")

StepHook = Callable[[str], None]


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


@dataclass(frozen=True)
class VoteJob:
    row: QueuedVote
    proposal: ProposalData
    decision: Decision
    gas_estimate: int | ChainError | None = None  # estimated with the round's batch; None: by the lane


def vote_calldata(job: VoteJob) -> str:
    return dao_functions()["vote"].encode(job.proposal.proposal_id, bool(job.decision.support))


def estimate_request(sender: str, contract: str, data: str) -> dict[str, str]:
    return {"from": sender, "to": contract, "data": data}


def estimate_value(answer: object) -> int | ChainError:
    """An eth_estimateGas answer (or its error) as gas, or the error."""
    if isinstance(answer, ChainError):
        return answer
    try:
        return _int(answer)
    except (TypeError, ValueError):
        return ChainError(f"eth_estimateGas answered {answer!r}")


@dataclass
class Counters:
    """Counts of one round (or of the voter's life)."""

    sent: int = 0
    confirmed: int = 0
    failed: int = 0
    closed: int = 0
    already_voted: int = 0
    no_vote: int = 0
    deferred: int = 0
    replaced: int = 0
    rebroadcast: int = 0
    requeued: int = 0


@dataclass(frozen=True)
class SignedVote:
    tx: SignedTx
    previous: Tracked | None  # the vote's earlier transaction still tracked (same nonce), if any


# Replace an unmined transaction only after DLOOP_REPLACE_AFTER_BLOCKS blocks and at least this long.
MIN_SECONDS_BEFORE_REPLACING = 3.0
# anvil counts a mined transaction's nonce a moment before it serves the transaction and its receipt: the
# nonce must look used by someone else for this long before a vote is judged "cast elsewhere".
NONCE_USED_GRACE_S = 2.0


@dataclass
class Tracked:
    """A vote whose transaction is in flight: every hash signed for it, and the one expected to land."""

    vote_id: int
    proposal_id: int
    nonce: int
    hashes: list[str]
    latest: SignedTx
    data: str
    sent_block: int
    rebroadcasts: int = 0
    notes: list[str] = field(default_factory=list)
    sent_time: float = field(default_factory=time.monotonic)
    nonce_used_since: float | None = None  # when the nonce was first seen used without a receipt of ours


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
                self._priority = _int(await with_backoff(client.request, "eth_maxPriorityFeePerGas", []))
                self._at = anyio.current_time()
            return self._base, self._priority

    async def _next_base_fee(self, client: ChainClient) -> tuple[int, int]:
        """eth_feeHistory's last base fee is the next block's; the latest block's as a fallback."""
        try:
            history = await with_backoff(client.request, "eth_feeHistory", ["0x1", "latest", []])
            return _int(history["baseFeePerGas"][-1]), max(self.head, _int(history["oldestBlock"]))
        except (ChainError, KeyError, IndexError, TypeError, ValueError):
            block = await with_backoff(client.block, "latest")
            return block.base_fee_per_gas or 0, max(self.head, block.number)

    async def initial(self, client: ChainClient) -> tuple[Fees, int]:
        base, priority = await self.read(client)
        return initial_fees(base, priority, self.cap_wei), base


class NodeLane:
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
        self.unfunded = False
        self.needed_wei = 0
        self.last_error: str | None = None
        self.last_vote_at: dt.datetime | None = None
        self._changed = anyio.Event()  # a transaction was tracked or settled

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

    async def attach(self, client: ChainClient) -> None:
        """A new connection: forget in-memory state, resolve every `sent` row, then sync the nonce."""
        self.client = client
        self.tracked.clear()
        self.next_nonce = None
        self.free_nonces = []
        await self.adopt_sent()
        await self.resync_nonce()

    def detach(self) -> None:
        self.client = None
        self._notify()

    async def resync_nonce(self, pending: int | None = None) -> None:
        """The next nonce: the account's pending count (read now unless given, e.g. with a batch's snapshot),
        or past the highest one still in flight (a gap below it is a dropped transaction, which the watcher
        rebroadcasts)."""
        if pending is None:
            pending = _int(
                await with_backoff(
                    self._chain().request, "eth_getTransactionCount", [self.address, "pending"]
                )
            )
        in_flight = {t.nonce for t in self.tracked.values()}
        highest = max((n + 1 for n in in_flight), default=0)
        previous, self.next_nonce = self.next_nonce, max(pending, highest)
        # Nonces below our highest in-flight one that the chain has not used and we do not hold: after a
        # reorg dropped mined votes, later transactions wait behind this gap until new votes fill it.
        self.free_nonces = [n for n in range(pending, highest) if n not in in_flight]
        if previous != self.next_nonce or self.free_nonces:
            log_event(
                log,
                "nonce_synced",
                node=self.node.name,
                nonce=self.next_nonce,
                previous=previous,
                gap=self.free_nonces,
            )

    def _take_nonce(self) -> int:
        """The lowest free nonce: a gap first, else the next one."""
        if self.free_nonces:
            return self.free_nonces.pop(0)
        assert self.next_nonce is not None
        nonce = self.next_nonce
        self.next_nonce += 1
        return nonce

    def _give_back_nonce(self, nonce: int) -> None:
        """A nonce taken but not used (refused, or the lease was lost): the next transaction takes it."""
        if self.next_nonce is not None and nonce == self.next_nonce - 1:
            self.next_nonce = nonce
        elif nonce not in self.free_nonces:
            self.free_nonces = sorted([*self.free_nonces, nonce])

    async def check_funding(self) -> None:
        """An unfunded node is tried again once its balance covers the transaction it could not pay."""
        if not self.unfunded:
            return
        balance = _int(await with_backoff(self._chain().request, "eth_getBalance", [self.address, "latest"]))
        if balance > 0 and balance >= self.needed_wei:
            self.unfunded = False
            self.last_error = None
            log_event(log, "node_funded", node=self.node.name, balance_wei=balance)

    # -- restart safety --------------------------------------------------------------------------------
    async def adopt_sent(self) -> int:
        """Resolve `sent` rows this lane does not track yet (after a crash, a reconnect or a reorg)."""
        client = self._chain()
        rows = [
            r for r in await queue.sent_votes(self.sessions, self.node.id) if r.vote_id not in self.tracked
        ]
        if not rows:
            return 0
        head = await with_backoff(client.block_number)
        async with self.lock:
            for row in rows:
                self.tracked[row.vote_id] = Tracked(
                    vote_id=row.vote_id,
                    proposal_id=row.proposal_id,
                    nonce=row.nonce,
                    hashes=[tx.tx_hash for tx in row.transactions],
                    latest=row.latest,
                    data=calldata_of(row.latest),
                    sent_block=head,
                )
        log_event(log, "sent_rows_adopted", node=self.node.name, count=len(rows))
        await self.poll_receipts()
        for row in rows:
            tracked = self.tracked.get(row.vote_id)
            if tracked is not None:
                await self.check(tracked, head, adopting=True)
        self._notify()
        return len(rows)

    # -- sending ---------------------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return len(self.tracked) >= self.settings.max_in_flight

    @property
    def free_slots(self) -> int:
        return max(1, self.settings.max_in_flight - len(self.tracked))

    async def wait_for_slot(self) -> None:
        while self.full:
            await self._changed.wait()

    async def send_many(self, jobs: Sequence[VoteJob], counters: Counters) -> None:
        """Sign the jobs' votes, persist them all in one transaction, then broadcast them in one batch.

        Every outcome is written to the row. Jobs whose gas was not estimated with the batch are estimated
        here; a failed estimate means nothing is signed for that job.
        """
        client = self._chain()
        ready: list[tuple[VoteJob, str, int]] = []  # job, call data, gas estimate
        calldata = [vote_calldata(job) for job in jobs]
        missing = [i for i, job in enumerate(jobs) if job.gas_estimate is None]
        fresh = dict(zip(missing, await self._estimate_many([calldata[i] for i in missing]), strict=True))
        for index, (job, data) in enumerate(zip(jobs, calldata, strict=True)):
            estimate = fresh.get(index, job.gas_estimate)
            assert estimate is not None
            if isinstance(estimate, ChainError):
                await self._unsent(job, estimate, counters)
            else:
                ready.append((job, data, estimate))
        if not ready:
            return
        fees, base = await self.fees.initial(client)
        if not includable(fees, base):
            why = f"fee cap {self.settings.max_fee_gwei:g} gwei is below the base fee {base / GWEI:g} gwei"
            for job, _, _ in ready:
                await self._defer(job.row, why, counters)
            return
        async with self.lock:
            if self.unfunded or self.next_nonce is None:
                for job, _, _ in ready:
                    await self._defer(job.row, self.last_error or "node not ready", counters, backoff=False)
                return
            signed = [self._sign_job(job, data, estimate, fees, base) for job, data, estimate in ready]
            with anyio.CancelScope(shield=True):
                recorded = await queue.record_sent_many(
                    self.sessions,
                    [
                        queue.SentRecord(
                            job.row.vote_id,
                            tx.tx,
                            job.decision.label,
                            job.decision.confidence,
                            job.decision.reason,
                        )
                        for job, tx in zip((j for j, _, _ in ready), signed, strict=True)
                    ],
                    owner=self.owner,
                )
            tracked: list[tuple[VoteJob, Tracked]] = []
            for (job, data, _), tx in zip(ready, signed, strict=True):
                if job.row.vote_id not in recorded:
                    if tx.previous is None:
                        self._give_back_nonce(tx.tx.nonce)
                    log_event(
                        log, "lease_lost", level=logging.WARNING, node=self.node.name, vote=job.row.vote_id
                    )
                    continue
                self._step("persisted")
                # The head as of the fee read (a moment old at most): "not mined after N blocks" counts
                # from it.
                hashes = [*(tx.previous.hashes if tx.previous is not None else []), tx.tx.tx_hash]
                item = Tracked(
                    job.row.vote_id, job.row.proposal_id, tx.tx.nonce, hashes, tx.tx, data, self.fees.head
                )
                self.tracked[item.vote_id] = item
                tracked.append((job, item))
            errors = await self._broadcast_many([item.latest for _, item in tracked])
            for (job, item), error in zip(tracked, errors, strict=True):
                if error is not None:
                    await self._rejected(item, error, counters)
                    continue
                self._step("broadcast")
                counters.sent += 1
                self.totals.sent += 1
                log_event(
                    log,
                    "vote_sent",
                    node=self.node.name,
                    proposal=job.row.proposal_id,
                    decision=job.decision.label,
                    tx=item.latest.tx_hash,
                    nonce=item.nonce,
                    max_fee_gwei=item.latest.max_fee_per_gas / GWEI,
                )
        self._notify()

    async def _estimate_many(self, calldata: Sequence[str]) -> list[int | ChainError]:
        """Gas estimates in one batch; per call its estimate or the error (a revert names the reason)."""
        if not calldata:
            return []
        contract = self._chain().contract
        requests = [("eth_estimateGas", [estimate_request(self.address, contract, d)]) for d in calldata]
        answers = await call_many_retrying(self._chain(), requests, batch_size=self.settings.rpc_batch_size)
        return [estimate_value(answer) for answer in answers]

    def _sign_job(self, job: VoteJob, data: str, estimate: int, fees: Fees, base: int) -> SignedVote:
        """Lock held. A vote sent again while its earlier transaction is still tracked (a reorg took that one
        off the chain and the row was queued again) reuses its nonce, fees bumped: at most one of the two can
        ever be mined, and no nonce gap is left behind."""
        previous = self.tracked.get(job.row.vote_id)
        if previous is None:
            nonce = self._take_nonce()
        else:
            nonce = previous.nonce
            old = Fees(previous.latest.max_fee_per_gas, previous.latest.max_priority_fee_per_gas)
            priority = fees.max_priority_fee_per_gas
            fees = bump_fees(old, base_fee=base, priority_fee=priority, cap_wei=self.cap_wei).fees or fees
        tx = self._sign(nonce, data, gas_limit(estimate, self.settings.gas_margin), fees)
        return SignedVote(tx, previous)

    def _sign(self, nonce: int, data: str, gas: int, fees: Fees) -> SignedTx:
        tx_hash, raw = self.account.sign_transaction(
            {
                "chainId": self.chain_id,
                "nonce": nonce,
                "to": self._chain().contract,
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

    async def _broadcast_many(self, txs: Sequence[SignedTx]) -> list[ChainError | None]:
        """Broadcast in one JSON-RPC batch; per transaction the error the node gave, if any. Sending the same
        signed bytes again is always safe, so transient failures are asked again."""
        if len(txs) == 1:
            try:
                await self._broadcast(txs[0])
                return [None]
            except ChainError as exc:
                return [exc]
        requests = [("eth_sendRawTransaction", ["0x" + tx.raw_transaction.hex()]) for tx in txs]
        try:
            # Not retried here: an unanswered broadcast may have gone through (then a resend earns "nonce
            # too low"); it stays tracked as uncertain and the watcher reads its fate from the chain.
            answers = await self._chain().call_many(requests, batch_size=self.settings.rpc_batch_size)
        except TransientChainError:
            raise  # e.g. a refused batch spoils the socket: the voter reconnects and adopts these rows again
        except ChainError as exc:
            return [exc] * len(txs)  # uncertain for all: each one's outcome is read from the chain
        return [
            answer if isinstance(answer, ChainError) and classify(answer) != Action.ACCEPTED else None
            for answer in answers
        ]

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
            self.sessions,
            row.vote_id,
            owner=self.owner,
            state=state,
            decision=None,
            confidence=None,
            reason=reason,
        )
        if done:
            if hasattr(counters, state.value):  # a row parked (pending) again is not a round's outcome
                setattr(counters, state.value, getattr(counters, state.value) + 1)
            if state == VoteState.FAILED:
                self.totals.failed += 1
            log_event(
                log, f"vote_{state.value}", node=self.node.name, proposal=row.proposal_id, reason=reason
            )

    async def _defer(self, row: QueuedVote, error: str, counters: Counters, *, backoff: bool = True) -> None:
        """Back to the queue; after repeated trouble not before a growing delay (so no round spins on it)."""
        delay = min(2.0 ** max(row.attempts, 1), 60.0) if backoff else None
        until = utcnow() + dt.timedelta(seconds=delay) if delay else None
        await queue.release(self.sessions, [row.vote_id], owner=self.owner, error=error, defer_until=until)
        counters.deferred += 1
        self._error(error)

    def _mark_unfunded(self, error: str, needed_wei: int) -> None:
        if not self.unfunded:
            log_event(log, "node_unfunded", level=logging.WARNING, node=self.node.name, error=error)
        self.unfunded = True
        self.needed_wei = needed_wei
        self.last_error = f"unfunded: {error}"

    async def _rejected(self, tracked: Tracked, exc: ChainError, counters: Counters) -> None:
        """The node refused a new transaction (lock held). Decide from the error what the row becomes."""
        action = classify(exc)
        if action == Action.BUMP_FEES and "replacement" in str(exc).lower():
            # A pending transaction we do not track holds this nonce (sent outside the service): never
            # replace it; take the next free nonce instead.
            action = Action.RESYNC_NONCE
        if action == Action.BACKOFF:
            # Maybe accepted, maybe not: keep tracking; the watcher finds a receipt or rebroadcasts the bytes.
            self._error(f"broadcast uncertain, will check the chain: {exc}")
            return
        if action == Action.BUMP_FEES and await self._bump_rejected(tracked):
            counters.sent += 1
            self.totals.sent += 1
            self._notify()
            return
        # Refused for good: the nonce stays unused and the row goes back to the queue (or ends).
        del self.tracked[tracked.vote_id]
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
            if await queue.mark_failed(self.sessions, tracked.vote_id, reason=reason):
                counters.failed += 1
                self.totals.failed += 1
        else:
            await self._requeue(tracked, f"transaction refused by the node: {exc}")
        counters.requeued += 1
        self._notify()

    async def _requeue(self, tracked: Tracked, reason: str, *, backoff: bool = True) -> None:
        until = utcnow() + dt.timedelta(seconds=5.0) if backoff else None
        with anyio.CancelScope(shield=True):
            await queue.resolve_sent(
                self.sessions,
                tracked.vote_id,
                state=VoteState.QUEUED,
                reason=reason,
                tx_outcome="rejected",
                defer_until=until,
            )
        self._error(reason)

    async def _bump_rejected(self, tracked: Tracked) -> bool:
        """An underpriced first send: re-sign the same nonce with fees bumped from fresh chain values.

        True when a bumped transaction was accepted, or may have been (then the watcher checks the chain).
        """
        for _ in range(3):
            base, priority = await self.fees.read(self._chain(), fresh=True)
            old = Fees(tracked.latest.max_fee_per_gas, tracked.latest.max_priority_fee_per_gas)
            bump = bump_fees(old, base_fee=base, priority_fee=priority, cap_wei=self.cap_wei)
            if bump.fees is None:
                self._error(bump.reason)
                return False
            signed = self._sign(tracked.nonce, tracked.data, tracked.latest.gas_limit, bump.fees)
            with anyio.CancelScope(shield=True):
                if not await queue.record_replacement(
                    self.sessions, tracked.vote_id, signed, note="underpriced at first send; fees bumped"
                ):
                    return False
            tracked.hashes.append(signed.tx_hash)
            tracked.latest = signed
            try:
                await self._broadcast(signed)
                return True
            except ChainError as exc:
                action = classify(exc)
                if action == Action.BACKOFF:
                    self._error(f"broadcast uncertain, will check the chain: {exc}")
                    return True
                if action != Action.BUMP_FEES:
                    return False
        return False

    # -- watching --------------------------------------------------------------------------------------
    async def watch(self) -> None:
        """Poll receipts of the lane's transactions while any are in flight; resolve stuck or dropped ones."""
        last_head = -1
        last_change = anyio.current_time()
        while True:
            if not self.tracked:
                await self._changed.wait()
                continue
            await anyio.sleep(self.receipt_poll_interval)
            client = self.client
            if client is None:
                continue
            try:
                head = await with_backoff(client.block_number)
                now = anyio.current_time()
                if head != last_head:
                    last_head, last_change = head, now
                    await self.poll_receipts()
                stalled = now - last_change >= self.stall_seconds
                for tracked in list(self.tracked.values()):
                    if stalled or head - tracked.sent_block >= self.settings.replace_after_blocks:
                        await self.check(tracked, head)
                if stalled:
                    last_change = now  # check a stalled chain again only after another interval
            except TransientChainError:
                raise  # the connection is gone: the voter reconnects
            except DloopError as exc:
                self._error(f"watching transactions: {exc}")
                await anyio.sleep(1.0)

    async def poll_receipts(self) -> None:
        items = list(self.tracked.values())
        if not items:
            return
        requests = [("eth_getTransactionReceipt", [h]) for t in items for h in t.hashes]
        results = await call_many_retrying(self._chain(), requests, batch_size=self.settings.rpc_batch_size)
        index = 0
        mined: list[tuple[Tracked, Mapping[str, Any]]] = []
        for tracked in items:
            # A single request answers an AttributeDict, a batch a dict: both are Mappings.
            receipts = [r for r in results[index : index + len(tracked.hashes)] if isinstance(r, Mapping)]
            index += len(tracked.hashes)
            if receipts:
                mined.append((tracked, receipts[0]))
        await self._settle(mined)

    async def _settle(self, mined: list[tuple[Tracked, Mapping[str, Any]]]) -> None:
        """Confirmed votes in one transaction; reverted ones with their decoded error."""
        mined = [(t, r) for t, r in mined if self.tracked.pop(t.vote_id, None) is not None]
        confirmations = [
            queue.Confirmation(
                t.vote_id, str(r["transactionHash"]), _int(r["blockNumber"]), _int(r["gasUsed"])
            )
            for t, r in mined
            if _int(r["status"]) == 1
        ]
        if confirmations:
            with anyio.CancelScope(shield=True):
                await queue.mark_confirmed_many(self.sessions, confirmations)
            self.totals.confirmed += len(confirmations)
            self.last_vote_at = utcnow()
            if not self.unfunded:
                self.last_error = None  # votes land again: earlier trouble is over
            for item in confirmations:
                log_event(log, "vote_confirmed", node=self.node.name, vote=item.vote_id, tx=item.tx_hash)
                self._step("confirmed")
        for tracked, receipt in mined:
            if _int(receipt["status"]) == 1:
                continue
            tx_hash, block = str(receipt["transactionHash"]), _int(receipt["blockNumber"])
            name = await self._revert_name(tracked, block)
            if name == "ProposalNotFound":
                await self._owed_after_reorg(tracked)
                continue
            reason = f"reverted on chain: {name}"
            with anyio.CancelScope(shield=True):
                await queue.mark_failed(
                    self.sessions,
                    tracked.vote_id,
                    reason=reason,
                    tx_hash=tx_hash,
                    block_number=block,
                    gas_used=_int(receipt["gasUsed"]),
                )
            self.totals.failed += 1
            self._error(f"proposal {tracked.proposal_id}: {reason}")
            log_event(
                log, "vote_failed", node=self.node.name, proposal=tracked.proposal_id, tx=tx_hash, error=name
            )
        if mined:
            self._notify()

    async def _owed_after_reorg(self, tracked: Tracked) -> None:
        """A vote mined while a reorg had taken its proposal away reverts with ProposalNotFound: it was not
        cast, and is owed once the proposal is on the chain again. Queued again if it is back already (the
        voter reads hasVoted before signing), else pending until the listener records it again. A row that
        has moved on (the listener queued it again, maybe sent anew since) is left alone: never failed or
        queued for this stale transaction."""
        try:
            back = await with_backoff(self._chain().proposal_count) >= tracked.proposal_id
        except ChainError:
            back = False  # pending: the listener (or the reconcile pass) queues it when the proposal is seen
        state = VoteState.QUEUED if back else VoteState.PENDING
        why = "it is back on chain, queued again" if back else "waits for it to be on chain again"
        with anyio.CancelScope(shield=True):
            done = await queue.resolve_sent(
                self.sessions,
                tracked.vote_id,
                state=state,
                reason=f"reverted on chain: ProposalNotFound (a reorg took the proposal away); {why}",
                tx_outcome="reverted",
                only_if_tx_in=tracked.hashes,
            )
        if done:
            self.totals.requeued += 1
            log_event(
                log,
                "vote_owed_after_reorg",
                node=self.node.name,
                proposal=tracked.proposal_id,
                state=state.value,
            )

    async def _revert_name(self, tracked: Tracked, block: int) -> str:
        """Re-run the call at the block that mined it to get the custom error's name."""
        call = {
            "from": self.address,
            "to": self._chain().contract,
            "data": tracked.data,
            "gas": hex(tracked.latest.gas_limit),
        }
        try:
            await self._chain().request("eth_call", [call, hex(block)])
        except ContractRevert as exc:
            return exc.error_name
        except ChainError as exc:
            return f"unknown (replay failed: {exc})"
        return "unknown (the replay did not revert; out of gas?)"

    async def check(self, tracked: Tracked, head: int, *, adopting: bool = False) -> None:
        """A transaction without a receipt: still pending, replaced by someone, dropped, or stuck."""
        client = self._chain()
        mined = _int(await with_backoff(client.request, "eth_getTransactionCount", [self.address, "latest"]))
        if mined > tracked.nonce:
            await self._nonce_used_elsewhere(tracked)
            return
        known = await with_backoff(client.request, "eth_getTransactionByHash", [tracked.latest.tx_hash])
        # Blocks and time both: under automine three blocks pass in milliseconds, and replacing a
        # transaction that is being mined right now only earns "nonce too low".
        stale = (
            head - tracked.sent_block >= self.settings.replace_after_blocks
            and time.monotonic() - tracked.sent_time >= MIN_SECONDS_BEFORE_REPLACING
        )
        if known is not None:
            if stale and not adopting:
                await self.replace(tracked, head, f"not mined after {head - tracked.sent_block} blocks")
            return
        # Unknown to the node and its nonce unused: dropped. Rebroadcast the same bytes if they can still be
        # included, else replace them with higher fees.
        base, _ = await self.fees.read(client, fresh=True)
        if tracked.latest.max_fee_per_gas < base or tracked.rebroadcasts >= 2:
            await self.replace(tracked, head, "dropped, and not includable as signed")
            return
        async with self.lock:
            if tracked.vote_id not in self.tracked:
                return
            try:
                await self._broadcast(tracked.latest)
            except ChainError as exc:
                self._error(f"rebroadcast refused: {exc}", tx=tracked.latest.tx_hash)
                action = classify(exc)
                if action != Action.BUMP_FEES:
                    return  # e.g. nonce too low: mined meanwhile, the next receipt poll settles it
                bump = True
            else:
                bump = False
                tracked.rebroadcasts += 1
                tracked.sent_block = head
        if bump:
            await self.replace(tracked, head, "dropped, and underpriced as signed")
            return
        self.totals.rebroadcast += 1
        log_event(
            log,
            "vote_rebroadcast",
            node=self.node.name,
            proposal=tracked.proposal_id,
            tx=tracked.latest.tx_hash,
        )

    async def _one_of_ours_mined(self, tracked: Tracked) -> bool:
        """Whether the node says one of our transactions is in a block (or cannot say): then the nonce was
        used by us and the next receipt poll settles the row. Under load anvil counted a mined transaction's
        nonce before it served the receipt, and the vote was marked `already_voted` "by another sender"
        (the grace period in `_nonce_used_elsewhere` covers the moment it serves neither)."""
        requests = [("eth_getTransactionByHash", [tx_hash]) for tx_hash in tracked.hashes]
        answers = await call_many_retrying(self._chain(), requests, batch_size=self.settings.rpc_batch_size)
        return any(
            isinstance(a, ChainError) or (isinstance(a, Mapping) and a.get("blockNumber") is not None)
            for a in answers
        )

    async def _nonce_used_elsewhere(self, tracked: Tracked) -> None:
        """The nonce is used but none of our hashes has a receipt (checked once more): hasVoted decides."""
        await self.poll_receipts()
        if tracked.vote_id not in self.tracked or await self._one_of_ours_mined(tracked):
            return
        now = time.monotonic()
        if tracked.nonce_used_since is None:
            tracked.nonce_used_since = now
        if now - tracked.nonce_used_since < NONCE_USED_GRACE_S:
            return
        voted = await with_backoff(self._chain().has_voted, tracked.proposal_id, self.address)
        self.tracked.pop(tracked.vote_id, None)
        used = f"nonce {tracked.nonce} was used by a transaction that is not one of this vote's"
        with anyio.CancelScope(shield=True):
            if voted:
                await queue.resolve_sent(
                    self.sessions,
                    tracked.vote_id,
                    state=VoteState.ALREADY_VOTED,
                    reason=f"already voted: {used}, and hasVoted is true (a vote sent outside this service)",
                    tx_outcome="dropped",
                )
            else:
                await queue.resolve_sent(
                    self.sessions,
                    tracked.vote_id,
                    state=VoteState.QUEUED,
                    reason=f"{used}; hasVoted is false, so the vote is queued again",
                    tx_outcome="dropped",
                )
                self.totals.requeued += 1
        log_event(
            log, "vote_nonce_used_elsewhere", node=self.node.name, proposal=tracked.proposal_id, voted=voted
        )
        self._notify()

    async def replace(self, tracked: Tracked, head: int, why: str) -> None:
        """Same nonce, same call, fees bumped by at least 12.5% within the cap; the old hash stays known."""
        client = self._chain()
        base, priority = await self.fees.read(client, fresh=True)
        old = Fees(tracked.latest.max_fee_per_gas, tracked.latest.max_priority_fee_per_gas)
        bump = bump_fees(old, base_fee=base, priority_fee=priority, cap_wei=self.cap_wei)
        async with self.lock:
            if tracked.vote_id not in self.tracked:
                return
            tracked.sent_block = head  # wait another interval before the next attempt, whatever happens
            if bump.fees is None:
                note = f"{why}; cannot replace: {bump.reason}"
                await queue.set_note(self.sessions, tracked.vote_id, note)
                self._error(note)
                return
            previous = tracked.latest
            signed = self._sign(tracked.nonce, tracked.data, previous.gas_limit, bump.fees)
            with anyio.CancelScope(shield=True):
                if not await queue.record_replacement(
                    self.sessions, tracked.vote_id, signed, note=f"replaced: {why}"
                ):
                    self.tracked.pop(tracked.vote_id, None)  # settled elsewhere (e.g. the listener)
                    return
            tracked.hashes.append(signed.tx_hash)
            tracked.latest = signed
            tracked.rebroadcasts = 0
            try:
                await self._broadcast(signed)
            except ChainError as exc:
                tracked.latest = previous  # keep expecting the one the node has
                self._error(f"replacement refused: {exc}", tx=signed.tx_hash, nonce=tracked.nonce)
                return
            self._step("replaced")
        self.totals.replaced += 1
        log_event(
            log,
            "vote_replaced",
            node=self.node.name,
            proposal=tracked.proposal_id,
            tx=signed.tx_hash,
            nonce=tracked.nonce,
            why=why,
            max_fee_gwei=signed.max_fee_per_gas / GWEI,
        )

    async def settle_all(self, deadline: float) -> None:
        """Wait (up to the deadline) until nothing of this lane is in flight."""
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            while self.tracked:
                await self._changed.wait()


def calldata_of(tx: SignedTx) -> str:
    """The call data of a stored signed transaction (a replacement re-signs the same call)."""
    decoded = TypedTransaction.from_bytes(HexBytes(tx.raw_transaction)).as_dict()
    return "0x" + bytes(decoded["data"]).hex()
