"""A vote queued again whose own earlier transaction is on chain after all.

After a reorg the listener queues a vote again when its transaction left the chain. A node may put that
transaction back in its pool and mine it again, so when the voter looks, `hasVoted` is true because of the
service's own vote. Such a row is confirmed with that transaction, not ended `already_voted`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chain.client import ChainClient
from storage import queue
from storage.engine import SessionFactory
from storage.queue import Confirmation, QueuedVote
from voter.jobs import as_int
from voter.retry import call_many_retrying


async def own_votes_on_chain(
    client: ChainClient, sessions: SessionFactory, rows: Sequence[QueuedVote], *, batch_size: int
) -> dict[int, Confirmation]:
    """By vote id: the row's own transaction mined with success in a block of the canonical chain."""
    hashes = await queue.own_transaction_hashes(sessions, [row.vote_id for row in rows])
    pairs = [(vote_id, tx_hash) for vote_id, signed in hashes.items() for tx_hash in signed]
    if not pairs:
        return {}
    receipts = await call_many_retrying(
        client, [("eth_getTransactionReceipt", [tx_hash]) for _, tx_hash in pairs], batch_size=batch_size
    )
    mined: dict[int, Mapping[str, Any]] = {}
    for (vote_id, _tx_hash), receipt in zip(pairs, receipts, strict=True):
        if _succeeded(receipt):
            mined.setdefault(vote_id, receipt)
    numbers = sorted({as_int(receipt["blockNumber"]) for receipt in mined.values()})
    blocks = await call_many_retrying(
        client, [("eth_getBlockByNumber", [hex(n), False]) for n in numbers], batch_size=batch_size
    )
    canonical = {
        n: str(block["hash"]).lower()
        for n, block in zip(numbers, blocks, strict=True)
        if isinstance(block, Mapping) and block.get("hash")
    }
    return {
        vote_id: Confirmation(
            vote_id,
            str(receipt["transactionHash"]),
            as_int(receipt["blockNumber"]),
            as_int(receipt["gasUsed"]),
        )
        for vote_id, receipt in mined.items()
        if canonical.get(as_int(receipt["blockNumber"])) == str(receipt["blockHash"]).lower()
    }


def _succeeded(receipt: object) -> bool:
    return (
        isinstance(receipt, Mapping)
        and receipt.get("blockHash") is not None
        and as_int(receipt.get("status", "0x0")) == 1
    )
