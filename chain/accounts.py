"""The five node accounts: name, address, strategy and a signer. The key never leaves this object.

Votes are EIP-1559 transactions signed here directly (our RLP, keccak, libsecp256k1 through coincurve): the
same bytes eth-account produces (tests/test_signing.py checks), at a fraction of its per-transaction
validation cost, which was the largest part of the service's CPU per vote in a burst.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coincurve import PrivateKey as Secp256k1Key
from eth_utils import keccak

from chain.codec import checksum
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


def rlp_decode(data: bytes) -> RlpItem:
    """The one item RLP-encoded in `data` (byte strings and lists; integers come out as their bytes)."""
    item, end = _rlp_decode_at(data, 0)
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes after the RLP item")
    return item


def _rlp_decode_at(data: bytes, at: int) -> tuple[RlpItem, int]:
    if at >= len(data):
        raise ValueError("RLP ends early")
    first = data[at]
    if first < 0x80:
        return data[at : at + 1], at + 1
    is_list = first >= 0xC0
    short = first - (0xC0 if is_list else 0x80)
    if short < 56:
        start, length = at + 1, short
    else:
        size = short - 55
        start, length = at + 1 + size, int.from_bytes(data[at + 1 : at + 1 + size], "big")
    end = start + length
    if end > len(data):
        raise ValueError("RLP ends early")
    if not is_list:
        return data[start:end], end
    items: list[RlpItem] = []
    while start < end:
        item, start = _rlp_decode_at(data, start)
        items.append(item)
    if start != end:
        raise ValueError("RLP list overruns its length")
    return items, end


def signed_calldata(raw_transaction: bytes) -> bytes:
    """The call data of a signed EIP-1559 transaction (as `NodeAccount.sign_transaction` makes them)."""
    if raw_transaction[:1] != EIP1559:
        raise ValueError("not an EIP-1559 transaction")
    fields = rlp_decode(raw_transaction[1:])
    if not isinstance(fields, list) or len(fields) != 12 or not isinstance(fields[7], bytes):
        raise ValueError("not a signed EIP-1559 transaction")
    return fields[7]


def address_of(key: Secp256k1Key) -> str:
    """The checksummed account address of a private key: the last 20 bytes of keccak(public key)."""
    return checksum("0x" + keccak(key.public_key.format(compressed=False)[1:])[-20:].hex())


def _hex_bytes(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def node_accounts(nodes: tuple[NodeSettings, ...]) -> tuple[NodeAccount, ...]:
    accounts = []
    for node in nodes:
        key = Secp256k1Key(bytes.fromhex(node.key.reveal().removeprefix("0x")))
        accounts.append(NodeAccount(node.name, address_of(key), node.strategy, key))
    return tuple(accounts)
