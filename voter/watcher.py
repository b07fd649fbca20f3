"""A lane's receipt watcher: settles mined votes, and finds stuck, dropped or replaced transactions.

A transaction without a receipt is judged from the chain only: the account's nonce, the node's pool, and
`hasVoted`. It is rebroadcast as signed (same hash, always safe) or replaced with the same nonce and higher
fees; a new vote is never signed here. Replacements and nonce-gap fillers are signed and broadcast through
the lane's sender; the `sent` rows of a new connection are adopted here before the sender takes a nonce.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence

import anyio

from chain import requests as rpc
from chain.client import Receipt
from core.errors import ChainError, ContractRevert, LaneLost
from core.logs import log_event
from core.retry import with_backoff
from storage import queue
from storage.models import VoteOutcome, VoteState, utcnow
from voter.fees import GWEI, Fees, bump_fees, includable
from voter.gas import ran_out_of_gas
from voter.jobs import Tracked, as_int, calldata_of
from voter.lane_state import Held, LaneState, log
from voter.outcomes import ALREADY_VOTED_ERRORS, WAIT_ERRORS, Action, classify
from voter.planning import nonce_gap
from voter.sender import LaneSender

# Replace an unmined transaction only after DLOOP_REPLACE_AFTER_BLOCKS blocks and at least this long.
MIN_SECONDS_BEFORE_REPLACING = 3.0
# anvil counts a mined transaction's nonce a moment before it serves the transaction and its receipt: the
# nonce must look used by someone else for this long before a vote is judged "cast elsewhere".
NONCE_USED_GRACE_S = 2.0
# A nonce gap below a vote stays open this long before a no-op transaction fills it: time for a vote queued
# again after the reorg to take it first.
GAP_FILL_AFTER_S = 3.0
FILLER_GAS = 21_000  # a plain transfer
FILLER_RESEND_S = 30.0
REVERT_RETRY_SECONDS = 5.0
# A pending transaction whose fees are still fair is replaced only after this long (see `_outbid`).
STUCK_AT_FAIR_PRICE_S = 30.0  # a vote that reverted for a reason that may pass is sent again after this


class ReceiptWatcher:
    """Watches one node's transactions in flight (its lane state's `tracked`) until each is settled."""

    def __init__(self, state: LaneState, sender: LaneSender) -> None:
        self.state = state
        self.sender = sender  # signs and broadcasts replacements and fillers

    # -- restart safety --------------------------------------------------------------------------------
    async def adopt_sent(self) -> int:
        """Resolve `sent` rows this lane does not track yet (after a crash, a reconnect or a reorg)."""
        client = self.state.chain()
        rows = [
            r
            for r in await queue.sent_votes(
                self.state.sessions,
                self.state.node.id,
                scope=queue.ContractScope(self.state.chain_id, self.state.settings.contract_address),
            )
            if r.vote_id not in self.state.tracked
        ]
        if not rows:
            return 0
        head = await with_backoff(client.block_number)
        async with self.state.lock:
            for row in rows:
                self.state.tracked[row.vote_id] = Tracked(
                    vote_id=row.vote_id,
                    proposal_id=row.proposal_id,
                    nonce=row.nonce,
                    hashes=[tx.tx_hash for tx in row.transactions],
                    latest=row.latest,
                    data=calldata_of(row.latest),
                    sent_block=head,
                )
        log_event(log, "sent_rows_adopted", node=self.state.node.name, count=len(rows))
        await self.poll_receipts()
        for row in rows:
            tracked = self.state.tracked.get(row.vote_id)
            if tracked is not None:
                await self.check(tracked, head, adopting=True)
        self.state.notify()
        return len(rows)

    # -- watching (one poll of every lane: voter/receipts.py) ----------------------------------------------
    def due(self, tracked: Tracked, head: int) -> bool:
        """Unmined for DLOOP_REPLACE_AFTER_BLOCKS blocks and a few seconds: judged from the chain (`check`).
        Blocks alone are not enough: under automine they pass in milliseconds while the node works through
        its pool, and every check reads the transaction from the node."""
        return (
            head - tracked.sent_block >= self.state.settings.replace_after_blocks
            and time.monotonic() - tracked.sent_time >= MIN_SECONDS_BEFORE_REPLACING
            and time.monotonic() >= tracked.next_check
        )

    async def forget_lost(self) -> None:
        """Another instance owns the lane now: its transactions (ours included) are the new owner's to
        watch, settle or replace. Forgotten under `lock`, not in the middle of a signature or a broadcast."""
        async with self.state.lock:
            if self.state.owned:
                return  # attached again meanwhile
            self.state.forget_in_flight()
        self.state.notify()

    def receipts_asked(self, mined: int | None = None) -> list[Tracked]:
        """The transactions whose receipts a poll asks for: with `mined` (the account's mined nonce, read
        before the poll) only those below it; none for a lane lost (see `forget_lost`)."""
        if not self.state.owned:
            return []
        return [t for t in self.state.tracked.values() if mined is None or t.nonce < mined]

    @staticmethod
    def with_receipts(items: list[Tracked], results: Sequence[object]) -> list[tuple[Tracked, Receipt]]:
        """`items` with the first receipt found among their hashes' answers (`results`, in hash order)."""
        index = 0
        mined: list[tuple[Tracked, Receipt]] = []
        for tracked in items:
            receipts = [r for r in results[index : index + len(tracked.hashes)] if isinstance(r, Receipt)]
            index += len(tracked.hashes)
            if receipts:
                mined.append((tracked, receipts[0]))
        return mined

    async def poll_receipts(self) -> None:
        """Settle what has a receipt now (a restart's or a reconnect's adoption, a nonce used elsewhere)."""
        items = self.receipts_asked()
        if items:
            results = await self.state.reads().receipts([h for t in items for h in t.hashes])
            await self._settle(self.with_receipts(items, results))

    async def _settle(self, mined: list[tuple[Tracked, Receipt]]) -> None:
        """Confirmed votes in one transaction; reverted ones with their decoded error."""
        taken, confirmations = self.take_settled(mined)
        if confirmations:
            with anyio.CancelScope(shield=True):
                await queue.mark_confirmed_many(self.state.sessions, confirmations)
        await self.settled(taken, confirmations)

    def take_settled(
        self, mined: list[tuple[Tracked, Receipt]]
    ) -> tuple[list[tuple[Tracked, Receipt]], list[queue.Confirmation]]:
        """The mined ones still tracked, no longer tracked now, and the confirmations of those that
        succeeded (to be stored, then `settled`)."""
        mined = [(t, r) for t, r in mined if self.state.untrack_used(t.vote_id) is not None]
        confirmations = [
            queue.Confirmation(t.vote_id, r.tx_hash, r.block_number, r.gas_used, r.fee_wei)
            for t, r in mined
            if r.status == 1
        ]
        return mined, confirmations

    async def settled(
        self, mined: list[tuple[Tracked, Receipt]], confirmations: Sequence[queue.Confirmation]
    ) -> None:
        """After the confirmations were stored: counts and logs; each reverted vote's fate."""
        if confirmations:
            self.state.totals.confirmed += len(confirmations)
            self.state.last_vote_at = utcnow()
            if not self.state.unfunded:
                self.state.last_error = None  # votes land again: earlier trouble is over
            for item in confirmations:
                log_event(
                    log, "vote_confirmed", node=self.state.node.name, vote=item.vote_id, tx=item.tx_hash
                )
                self.state.step("confirmed")
        for tracked, receipt in mined:
            if receipt.status == 1:
                continue
            tx_hash, block = receipt.tx_hash, receipt.block_number
            # Gas estimates are reused (voter/gas.py): whatever made this vote fail may make them wrong.
            self.state.gas.forget()
            out_of_gas = ran_out_of_gas(receipt.gas_used, tracked.latest.gas_limit)
            name = "out of gas" if out_of_gas else await self._revert_name(tracked, block)
            if name == "ProposalNotFound":
                await self._owed_after_reorg(tracked)
                continue
            if name in ALREADY_VOTED_ERRORS:
                # The estimate (reused, so not run before this send) would have said so: another vote of
                # this key, cast outside this service, came first. Not a failure of ours.
                await self._already_voted_on_chain(tracked, name)
                continue
            if out_of_gas or name in WAIT_ERRORS:
                # Not cast, and nothing says it never can be: estimated again and sent in a later round
                # (a reused estimate skipped the check that would have deferred it).
                await self._owed_after_revert(tracked, name)
                continue
            reason = f"reverted on chain: {name}"
            with anyio.CancelScope(shield=True):
                await queue.mark_failed(
                    self.state.sessions,
                    tracked.vote_id,
                    reason=reason,
                    tx_hash=tx_hash,
                    block_number=block,
                    gas_used=receipt.gas_used,
                )
            self.state.totals.failed += 1
            self.state.error(f"proposal {tracked.proposal_id}: {reason}")
            log_event(
                log,
                "vote_failed",
                node=self.state.node.name,
                proposal=tracked.proposal_id,
                tx=tx_hash,
                error=name,
            )
        if mined:
            self.state.notify()

    async def _owed_after_reorg(self, tracked: Tracked) -> None:
        """A vote mined while a reorg had taken its proposal away reverts with ProposalNotFound: it was not
        cast, and is owed once the proposal is on the chain again. Queued again if it is back already (the
        voter reads hasVoted before signing), else pending until the listener records it again. A row that
        has moved on (the listener queued it again, maybe sent anew since) is left alone: never failed or
        queued for this stale transaction."""
        try:
            back = await with_backoff(self.state.chain().proposal_count) >= tracked.proposal_id
        except ChainError:
            back = False  # pending: the listener (or the reconcile pass) queues it when the proposal is seen
        state = VoteState.QUEUED if back else VoteState.PENDING
        why = "it is back on chain, queued again" if back else "waits for it to be on chain again"
        with anyio.CancelScope(shield=True):
            done = await queue.resolve_sent(
                self.state.sessions,
                tracked.vote_id,
                state=state,
                reason=f"reverted on chain: ProposalNotFound (a reorg took the proposal away); {why}",
                tx_outcome="reverted",
                only_if_tx_in=tracked.hashes,
                outcome=VoteOutcome.PROPOSAL_NOT_FOUND,
            )
        if done:
            self.state.totals.requeued += 1
            log_event(
                log,
                "vote_owed_after_reorg",
                node=self.state.node.name,
                proposal=tracked.proposal_id,
                state=state.value,
            )

    async def _already_voted_on_chain(self, tracked: Tracked, name: str) -> None:
        reason = f"already voted: reverted on chain with {name} (this key's vote, cast outside the service)"
        with anyio.CancelScope(shield=True):
            await queue.resolve_sent(
                self.state.sessions,
                tracked.vote_id,
                state=VoteState.ALREADY_VOTED,
                reason=reason,
                tx_outcome="reverted",
                only_if_tx_in=tracked.hashes,
            )
        log_event(
            log, "vote_already_cast", node=self.state.node.name, proposal=tracked.proposal_id, error=name
        )

    async def _owed_after_revert(self, tracked: Tracked, name: str) -> None:
        reason = f"reverted on chain: {name}; estimated again and sent later"
        with anyio.CancelScope(shield=True):
            done = await queue.resolve_sent(
                self.state.sessions,
                tracked.vote_id,
                state=VoteState.QUEUED,
                reason=reason,
                tx_outcome="reverted",
                defer_until=utcnow() + dt.timedelta(seconds=REVERT_RETRY_SECONDS),
                only_if_tx_in=tracked.hashes,
            )
        if done:
            self.state.totals.requeued += 1
            self.state.error(f"proposal {tracked.proposal_id}: {reason}")

    async def _revert_name(self, tracked: Tracked, block: int) -> str:
        """Re-run the call at the block that mined it to get the custom error's name."""
        method, params = rpc.call(self.state.chain().contract, tracked.data, block)
        params[0] |= {"from": self.state.address, "gas": hex(tracked.latest.gas_limit)}  # the call as sent
        try:
            await self.state.chain().request(method, params)
        except ContractRevert as exc:
            return exc.error_name
        except ChainError as exc:
            return f"unknown (replay failed: {exc})"
        return "unknown (the replay did not revert; out of gas?)"

    async def _mined_nonce(self) -> int:
        client = self.state.chain()
        return as_int(await with_backoff(client.request, *rpc.nonce(self.state.address, "latest")))

    async def check(
        self, tracked: Tracked, head: int, *, adopting: bool = False, mined: int | None = None
    ) -> None:
        """A transaction without a receipt: still pending, replaced by someone, dropped, or stuck. `mined`:
        the account's mined nonce, read before the latest receipt poll (read here when not given)."""
        if not self.state.owned:
            return  # the lane's new owner judges its transactions now
        client = self.state.chain()
        polled = mined is not None
        if mined is None:
            mined = await self._mined_nonce()
        if mined > tracked.nonce:
            await self._nonce_used_elsewhere(tracked, polled=polled)
            return
        await self._fill_gap_below(tracked, mined)
        known = await with_backoff(client.request, *rpc.transaction(tracked.latest.tx_hash))
        # Blocks and time both: under automine three blocks pass in milliseconds, and replacing a
        # transaction that is being mined right now only earns "nonce too low".
        stale = (
            head - tracked.sent_block >= self.state.settings.replace_after_blocks
            and time.monotonic() - tracked.sent_time >= MIN_SECONDS_BEFORE_REPLACING
        )
        if known is not None:
            if stale and not adopting:
                why = await self._outbid(tracked)
                if why is None:
                    # In the node's pool at a price the chain still takes: it waits for room in a block (a
                    # busy pool, e.g. our own burst), and a bump would not make room. Looked at again later.
                    tracked.next_check = time.monotonic() + MIN_SECONDS_BEFORE_REPLACING
                    return
                await self.replace(
                    tracked, head, f"not mined after {head - tracked.sent_block} blocks ({why})"
                )
            return
        # Unknown to the node and its nonce unused: dropped. Rebroadcast the same bytes if they can still be
        # included, else replace them with higher fees.
        base, _ = await self.state.fees.read(client, fresh=True)
        if tracked.latest.max_fee_per_gas < base or tracked.rebroadcasts >= 2:
            await self.replace(tracked, head, "dropped, and not includable as signed")
            return
        async with self.state.lock:
            if tracked.vote_id not in self.state.tracked or not self.state.owned:
                return
            try:
                await self.sender.broadcast(tracked.latest)
            except ChainError as exc:
                self.state.error(f"rebroadcast refused: {exc}", tx=tracked.latest.tx_hash)
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
        self.state.totals.rebroadcast += 1
        log_event(
            log,
            "vote_rebroadcast",
            node=self.state.node.name,
            proposal=tracked.proposal_id,
            tx=tracked.latest.tx_hash,
        )

    async def _outbid(self, tracked: Tracked) -> str | None:
        """Why a pending transaction's fees no longer get it mined: below the next block's base fee, a tip
        below what the node suggests now, or unmined for STUCK_AT_FAIR_PRICE_S whatever its price (a bump
        also makes the node send it to its peers again). None: its price is still fair."""
        base, priority = await self.state.fees.read(self.state.chain())
        tx = tracked.latest
        if tx.max_fee_per_gas < base:
            return f"max fee {tx.max_fee_per_gas / GWEI:g} gwei is below the base fee {base / GWEI:g} gwei"
        if tx.max_priority_fee_per_gas < priority:
            tip = tx.max_priority_fee_per_gas / GWEI
            return f"tip {tip:g} gwei is below the {priority / GWEI:g} gwei asked now"
        if time.monotonic() - tracked.sent_time >= STUCK_AT_FAIR_PRICE_S:
            return f"unmined for {STUCK_AT_FAIR_PRICE_S:g} s at a fair price"
        return None

    async def _fill_gap_below(self, tracked: Tracked, mined: int) -> None:
        """Use the lowest nonce below this transaction's that no mined transaction used and nothing of ours
        holds, with a no-op transfer to the node itself: a transaction behind such a gap is never mined.

        A reorg leaves such a gap when it takes mined votes off the chain and they are not sent again at
        once (their proposal is gone with them, or they wait for a round); anvil does not put a reorged-out
        transaction back in its pool. A vote queued again takes a gap's nonce first (`resync_nonce`), so
        the filler is sent only after the gap has stayed open for GAP_FILL_AFTER_S.
        """
        now = time.monotonic()
        # Mined fillers are done (their nonces used, like a mined vote's); one the node dropped (still
        # unmined after a while) may be sent again.
        for nonce in self.state.fillers:
            if nonce < mined:
                self.state.nonce_used(nonce)
        self.state.fillers = {
            n: t for n, t in self.state.fillers.items() if n >= mined and now - t < FILLER_RESEND_S
        }
        # Below the lane's highest nonce in flight, not this transaction's: `gap_seen_at` is the lane's, and
        # checking a lower transaction (nothing missing below it) must not start the wait over.
        held = self.state.held_nonces()
        gap = nonce_gap(mined, max(held, default=tracked.nonce), held)
        if not gap:
            self.state.gap_seen_at = None
            return
        if self.state.gap_seen_at is None:
            self.state.gap_seen_at = now
        if now - self.state.gap_seen_at < GAP_FILL_AFTER_S:
            return
        fees, base = await self.state.fees.initial(self.state.chain())
        if not includable(fees, base):
            return  # the fee cap is below the base fee: the votes wait too, and say why
        async with self.state.lock:
            nonce = gap[0]
            if nonce in self.state.held_nonces():
                return  # a vote took it meanwhile
            fence = await self.state.signing_fence()
            if isinstance(fence, Held):
                return  # paused, dry run or the lane lost: no signature, the gap waits
            waiting = max(self.state.tracked.values(), key=lambda t: t.nonce, default=tracked)
            reason = f"nonce {nonce} left unused (a reorg?); vote tx {waiting.latest.tx_hash} waits behind it"
            filler = self.sender.sign(nonce, "0x", FILLER_GAS, fees, to=self.state.address)
            try:
                with anyio.CancelScope(shield=True):
                    await queue.record_nonce_filler(
                        self.state.sessions,
                        node_id=self.state.node.id,
                        nonce=nonce,
                        tx_hash=filler.tx_hash,
                        reason=reason,
                        fence=fence,
                    )
            except LaneLost as exc:
                self.state.lane_lost(exc.why)
                return
            self.state.fillers[nonce] = now
            self.state.free_nonces = [n for n in self.state.free_nonces if n != nonce]
            try:
                await self.sender.broadcast(filler)
            except ChainError as exc:
                # Refused (e.g. "nonce too low": used meanwhile): the next check looks again.
                self.state.fillers.pop(nonce, None)
                self.state.error(f"nonce gap filler refused: {exc}", nonce=nonce)
                return
        self.state.gap_seen_at = None
        log_event(
            log,
            "nonce_gap_filled",
            level=logging.WARNING,
            node=self.state.node.name,
            nonce=nonce,
            tx=filler.tx_hash,
            waiting_vote=waiting.proposal_id,
        )

    async def _one_of_ours_mined(self, tracked: Tracked) -> bool:
        """Whether the node says one of our transactions is in a block (or cannot say): then the nonce was
        used by us and the next receipt poll settles the row. Under load anvil counted a mined transaction's
        nonce before it served the receipt, and the vote was marked `already_voted` "by another sender"
        (the grace period in `_nonce_used_elsewhere` covers the moment it serves neither)."""
        answers = await self.state.reads().transactions(tracked.hashes)
        return any(
            isinstance(a, ChainError) or (isinstance(a, Mapping) and a.get("blockNumber") is not None)
            for a in answers
        )

    async def _nonce_used_elsewhere(self, tracked: Tracked, *, polled: bool = False) -> None:
        """The nonce is used but none of our hashes has a receipt (checked once more, unless the receipts
        were polled after the nonce was read): hasVoted decides."""
        if not polled:
            await self.poll_receipts()
        if tracked.vote_id not in self.state.tracked or await self._one_of_ours_mined(tracked):
            return
        now = time.monotonic()
        if tracked.nonce_used_since is None:
            tracked.nonce_used_since = now
        if now - tracked.nonce_used_since < NONCE_USED_GRACE_S:
            return
        voted = await with_backoff(self.state.chain().has_voted, tracked.proposal_id, self.state.address)
        self.state.untrack_used(tracked.vote_id)
        used = f"nonce {tracked.nonce} was used by a transaction that is not one of this vote's"
        if voted:
            state = VoteState.ALREADY_VOTED
            reason = f"already voted: {used}, and hasVoted is true (a vote sent outside this service)"
        else:
            state, reason = VoteState.QUEUED, f"{used}; hasVoted is false, so the vote is queued again"
        with anyio.CancelScope(shield=True):
            # Only while the row's transaction is one this lane tracked: if another instance took the lane
            # and replaced it, its replacement is what used the nonce, and that row is the new owner's.
            done = await queue.resolve_sent(
                self.state.sessions,
                tracked.vote_id,
                state=state,
                reason=reason,
                tx_outcome="dropped",
                only_if_tx_in=tracked.hashes,
            )
        if done and not voted:
            self.state.totals.requeued += 1
        log_event(
            log,
            "vote_nonce_used_elsewhere",
            node=self.state.node.name,
            proposal=tracked.proposal_id,
            voted=voted,
            resolved=done,
        )
        self.state.notify()

    async def replace(self, tracked: Tracked, head: int, why: str) -> None:
        """Same nonce, same call, fees bumped by at least 12.5% within the cap; the old hash stays known."""
        client = self.state.chain()
        base, priority = await self.state.fees.read(client, fresh=True)
        old = Fees(tracked.latest.max_fee_per_gas, tracked.latest.max_priority_fee_per_gas)
        bump = bump_fees(old, base_fee=base, priority_fee=priority, cap_wei=self.state.cap_wei)
        async with self.state.lock:
            if tracked.vote_id not in self.state.tracked:
                return
            tracked.sent_block = head  # wait another interval before the next attempt, whatever happens
            fence = await self.state.signing_fence()
            if isinstance(fence, Held):  # paused, dry run or lost: not even a fee bump is signed
                if self.state.owned:
                    note = f"{why}; not replaced: {fence.reason}"
                    await queue.set_note(self.state.sessions, tracked.vote_id, note)
                return
            if bump.fees is None:
                note = f"{why}; cannot replace: {bump.reason}"
                await queue.set_note(self.state.sessions, tracked.vote_id, note)
                self.state.error(note)
                return
            previous = tracked.latest
            signed = self.sender.sign(tracked.nonce, tracked.data, previous.gas_limit, bump.fees)
            try:
                with anyio.CancelScope(shield=True):
                    stored = await queue.record_replacement(
                        self.state.sessions,
                        tracked.vote_id,
                        signed,
                        note=f"replaced: {why}",
                        fence=fence,
                    )
            except LaneLost as exc:
                self.state.lane_lost(exc.why)
                return
            if not stored:
                self.state.untrack_used(tracked.vote_id)  # settled elsewhere (e.g. the listener)
                return
            tracked.hashes.append(signed.tx_hash)
            tracked.latest = signed
            tracked.rebroadcasts = 0
            try:
                await self.sender.broadcast(signed)
            except ChainError as exc:
                tracked.latest = previous  # keep expecting the one the node has
                self.state.error(f"replacement refused: {exc}", tx=signed.tx_hash, nonce=tracked.nonce)
                return
            self.state.step("replaced")
        self.state.totals.replaced += 1
        log_event(
            log,
            "vote_replaced",
            node=self.state.node.name,
            proposal=tracked.proposal_id,
            tx=signed.tx_hash,
            nonce=tracked.nonce,
            why=why,
            max_fee_gwei=signed.max_fee_per_gas / GWEI,
        )

    async def settle_all(self, deadline: float) -> None:
        """Wait (up to the deadline) until nothing of this lane is in flight."""
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            while self.state.tracked:
                await self.state.wait_changed()
