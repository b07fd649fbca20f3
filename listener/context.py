"""What the parts of the listener share: where to store and whom to wake. (Storage writes shield
themselves: storage.transactions.write.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.signals import WorkSignal
from storage.engine import SessionFactory


@dataclass(frozen=True)
class ListenerContext:
    sessions: SessionFactory
    signal: WorkSignal
    chain_id: int
    contract: str  # checksummed
    stream: str  # the cursor's key
    node_ids: tuple[int, ...]
    node_by_address: Mapping[str, int]  # lower-case address -> node id
    confirmations: int
    rpc_batch_size: int
    keep_blocks: int  # recent block hashes kept for reorg detection
