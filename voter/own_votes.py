"""A vote queued again whose own earlier transaction is on chain after all.

After a reorg the listener queues a vote again when its transaction left the chain. A node may put that
transaction back in its pool and mine it again, so when the voter looks, `hasVoted` is true because of the
service's own vote. Such a row is confirmed with that transaction, not ended `already_voted`.
"""

from __future__ import annotations

from collections.abc import Sequence

from chain.client import BlockHeader, ChainClient, Receipt, mined_receipt
from chain.reads import Reads
from storage import queue
from storage.engine import SessionFactory
from storage.queue import Confirmation, QueuedVote


async def own_votes_on_chain(
    client: ChainClient,
    sessions: SessionFactory,
    rows: Sequence[QueuedVote],
    *,
    head: int,
    batch_size: int,
) -> dict[int, Confirmation]:
    """By vote id: the row's own transaction mined with success, by `head`, in a block of the canonical
    chain."""
    hashes = await queue.own_transaction_hashes(sessions, [row.vote_id for row in rows])
    pairs = [(vote_id, tx_hash) for vote_id, signed in hashes.items() for tx_hash in signed]
    if not pairs:
        return {}
    reads = Reads(client, batch_size=batch_size)
    answers = await reads.receipts([tx_hash for _, tx_hash in pairs])
    receipts: dict[int, list[Receipt | None]] = {}
    for (vote_id, _tx_hash), answer in zip(pairs, answers, strict=True):
        receipts.setdefault(vote_id, []).append(answer if isinstance(answer, Receipt) else None)
    mined = {
        vote_id: receipt
        for vote_id, signed in receipts.items()
        if (receipt := mined_receipt(signed, head, confirmations=0)) is not None
    }
    numbers = sorted({receipt.block_number for receipt in mined.values()})
    blocks = await reads.blocks(numbers)
    canonical = {
        n: block.hash.lower()
        for n, block in zip(numbers, blocks, strict=True)
        if isinstance(block, BlockHeader)
    }
    return {
        vote_id: Confirmation(
            vote_id, receipt.tx_hash, receipt.block_number, receipt.gas_used, receipt.fee_wei
        )
        for vote_id, receipt in mined.items()
        if receipt.block_hash is not None and canonical.get(receipt.block_number) == receipt.block_hash
    }
