"""The five node accounts: name, address, strategy and a signer. The key never leaves this object.

Votes are EIP-1559 transactions signed here directly (our RLP, keccak, libsecp256k1 through coincurve): the
same bytes eth-account produces (tests/test_signing.py checks), at a fraction of its per-transaction
validation cost, which was the largest part of the service's CPU per vote in a burst.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coincurve import PrivateKey as Secp256k1Key
from eth_account import Account
from eth_utils import keccak

from core.settings import NodeSettings

EIP1559 = b"\x02"


@dataclass(frozen=True)
class NodeAccount:
    name: str
    address: str
    strategy: str
    _key: Secp256k1Key = field(repr=False, compare=False)

    def sign_transaction(self, tx: dict[str, Any]) -> tuple[str, bytes]:
        """Sign an EIP-1559 transaction (`chainId`, `nonce`, `maxPriorityFeePerGas`, `maxFeePerGas`, `gas`,
        `to`, `value`, `data`; no access list); returns (tx hash, raw signed bytes)."""
        fields: list[RlpItem] = [
            int(tx["chainId"]),
            int(tx["nonce"]),
            int(tx["maxPriorityFeePerGas"]),
            int(tx["maxFeePerGas"]),
            int(tx["gas"]),
            _hex_bytes(str(tx["to"])),
            int(tx.get("value", 0)),
            _hex_bytes(str(tx.get("data", "0x"))),
            [],  # access list
        ]
        digest = keccak(EIP1559 + rlp_list(fields))
        # 65 bytes: r, s (low-s normalised, RFC 6979 nonce: deterministic), recovery id (y parity).
        signature = self._key.sign_recoverable(digest, hasher=None)
        r, s, y_parity = signature[:32], signature[32:64], signature[64]
        raw = EIP1559 + rlp_list([*fields, y_parity, int.from_bytes(r, "big"), int.from_bytes(s, "big")])
        return "0x" + keccak(raw).hex(), raw


RlpItem = int | bytes | list[Any]


def rlp_list(items: list[RlpItem]) -> bytes:
    """RLP of a list of unsigned ints, byte strings and (empty) lists: what `rlp.encode` gives for a
    transaction's fields, without its per-call type inference (a third of a signature's cost)."""
    payload = b"".join(_rlp_item(item) for item in items)
    return _rlp_length(len(payload), 0xC0) + payload


def _rlp_item(item: RlpItem) -> bytes:
    if isinstance(item, list):
        return rlp_list(item)
    if isinstance(item, int):
        if item < 0:
            raise ValueError("RLP encodes unsigned integers only")
        item = item.to_bytes((item.bit_length() + 7) // 8, "big")  # 0 is the empty string
    if len(item) == 1 and item[0] < 0x80:
        return item
    return _rlp_length(len(item), 0x80) + item


def _rlp_length(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(size)]) + size


def _hex_bytes(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def node_accounts(nodes: tuple[NodeSettings, ...]) -> tuple[NodeAccount, ...]:
    accounts = []
    for node in nodes:
        secret = node.key.reveal()
        address = Account.from_key(secret).address
        key = Secp256k1Key(bytes.fromhex(secret.removeprefix("0x")))
        accounts.append(NodeAccount(node.name, address, node.strategy, key))
    return tuple(accounts)
