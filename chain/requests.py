"""Every JSON-RPC request the service sends, built in one place: the method names and parameter shapes.

Components never spell a method name: they build requests here and send them with `ChainClient.request`
(one) or `ChainClient.call_many` / `chain.retrying.call_many_retrying` (a batch). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chain.codec import AbiFunction

Request = tuple[str, list[Any]]
BlockTag = int | str  # a block number, or "latest" / "pending" / "safe" / "finalized" / "earliest"
SEND_RAW = "eth_sendRawTransaction"
SEND_TRANSACTION = "eth_sendTransaction"  # never sent by the service; a node-signed send is not repeatable


def block_tag(block: BlockTag) -> str:
    return hex(block) if isinstance(block, int) else block


def call(to: str, data: str, block: BlockTag = "latest") -> Request:
    return ("eth_call", [{"to": to, "data": data}, block_tag(block)])


def call_function(to: str, fn: AbiFunction, *args: Any, block: BlockTag = "latest") -> Request:
    return call(to, fn.encode(*args), block)


def chain_id() -> Request:
    return ("eth_chainId", [])


def block_number() -> Request:
    return ("eth_blockNumber", [])


def block_by_number(block: BlockTag) -> Request:
    """The header only (no transaction bodies)."""
    return ("eth_getBlockByNumber", [block_tag(block), False])


def code(address: str, block: BlockTag = "latest") -> Request:
    return ("eth_getCode", [address, block_tag(block)])


def storage_at(address: str, slot: int, block: BlockTag = "latest") -> Request:
    return ("eth_getStorageAt", [address, hex(slot), block_tag(block)])


def balance(address: str, block: BlockTag = "latest") -> Request:
    return ("eth_getBalance", [address, block_tag(block)])


def nonce(address: str, block: BlockTag = "latest") -> Request:
    """The account's transaction count: "latest" counts mined ones, "pending" the pool's too."""
    return ("eth_getTransactionCount", [address, block_tag(block)])


def receipt(tx_hash: str) -> Request:
    return ("eth_getTransactionReceipt", [tx_hash])


def transaction(tx_hash: str) -> Request:
    return ("eth_getTransactionByHash", [tx_hash])


def logs(
    address: str | list[str], from_block: int, to_block: int, topics: list[Any] | None = None
) -> Request:
    query: dict[str, Any] = {"address": address, "fromBlock": hex(from_block), "toBlock": hex(to_block)}
    if topics is not None:
        query["topics"] = topics
    return ("eth_getLogs", [query])


def estimate_gas(transaction: Mapping[str, Any]) -> Request:
    return ("eth_estimateGas", [dict(transaction)])


def send_raw(raw_transaction: bytes) -> Request:
    return (SEND_RAW, ["0x" + raw_transaction.hex()])


def max_priority_fee() -> Request:
    return ("eth_maxPriorityFeePerGas", [])


def fee_history(blocks: int = 1, newest: BlockTag = "latest") -> Request:
    return ("eth_feeHistory", [hex(blocks), block_tag(newest), []])


def subscribe_heads() -> Request:
    return ("eth_subscribe", ["newHeads"])


def subscribe_logs(address: str, topics: Sequence[Any] | None = None) -> Request:
    """Every log of `address` (matching `topics`, when given), as a subscription."""
    query: dict[str, Any] = {"address": address}
    if topics is not None:
        query["topics"] = list(topics)
    return ("eth_subscribe", ["logs", query])
