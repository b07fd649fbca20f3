"""The service's own EIP-1559 signer gives the very bytes and hash eth-account gives. No chain."""

from __future__ import annotations

import random
from typing import Any

import pytest
import rlp
from eth_account import Account
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_utils import to_checksum_address
from hexbytes import HexBytes

from chain.accounts import node_accounts, rlp_decode, rlp_list, signed_calldata
from core.settings import NodeSettings, PrivateKey


def test_signatures_equal_eth_accounts_for_many_transactions() -> None:
    rng = random.Random(7)
    for round_ in range(40):
        secret = "0x" + rng.randbytes(32).hex()
        [account] = node_accounts((NodeSettings("n", PrivateKey(secret), "conservative"),))
        tx = {
            "chainId": rng.choice([1, 31337, 11155111]),
            "nonce": rng.randrange(0, 2**20) if round_ else 0,
            "to": to_checksum_address("0x" + rng.randbytes(20).hex()),
            "data": "0x" + rng.randbytes(rng.choice([0, 4, 68])).hex(),
            "gas": rng.randrange(21_000, 500_000),
            "maxFeePerGas": rng.randrange(1, 10**12),
            "maxPriorityFeePerGas": rng.randrange(0, 10**10),
            "value": 0,
            "type": 2,
        }
        expected = Account.from_key(secret).sign_transaction(tx)
        tx_hash, raw = account.sign_transaction(tx)
        assert raw == bytes(expected.raw_transaction)
        assert tx_hash == "0x" + bytes(expected.hash).hex()
        assert account.address == Account.from_key(secret).address


def test_rlp_of_transaction_fields_is_the_rlp_librarys() -> None:
    rng = random.Random(11)
    edges: list[int | bytes] = [0, 1, 127, 128, 255, 256, 2**64, 2**256 - 1, b"", b"\x00", b"\x7f", b"\x80"]
    edges += [bytes(55), bytes(56), rng.randbytes(300), rng.randbytes(70_000)]
    for _ in range(200):
        fields: list[Any] = [rng.choice(edges) for _ in range(rng.randrange(0, 12))]
        if rng.random() < 0.5:
            fields.append([])
        assert rlp_list(fields) == rlp.encode(fields)


def test_rlp_decoding_gives_back_what_the_rlp_library_encoded() -> None:
    rng = random.Random(13)
    edges: list[Any] = [b"", b"\x00", b"\x7f", b"\x80", bytes(55), bytes(56), rng.randbytes(300), []]
    edges += [rng.randbytes(70_000), [b"\x01", [b"", [bytes(60)]]]]
    for _ in range(200):
        item: Any = [rng.choice(edges) for _ in range(rng.randrange(0, 12))]
        assert rlp_decode(rlp.encode(item)) == item
    assert rlp_decode(rlp.encode(b"\x05")) == b"\x05"
    for broken in (b"", b"\x83ab", b"\xc3\x01\x02", b"\x01\x02", b"\xb9\x01"):
        with pytest.raises(ValueError):
            rlp_decode(broken)


def test_the_call_data_read_back_from_a_signed_vote_is_eth_accounts() -> None:
    rng = random.Random(17)
    [account] = node_accounts((NodeSettings("n", PrivateKey("0x" + "42" * 32), "conservative"),))
    for size in (0, 4, 55, 56, 68, 1_000):
        data = "0x" + rng.randbytes(size).hex()
        tx = {
            "chainId": 31337,
            "nonce": rng.randrange(0, 2**20),
            "to": "0x" + "ab" * 20,
            "data": data,
            "gas": 90_000,
            "maxFeePerGas": 10**9,
            "maxPriorityFeePerGas": 10**8,
        }
        _, raw = account.sign_transaction(tx)
        decoded = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        assert signed_calldata(raw) == bytes(decoded["data"]) == bytes.fromhex(data[2:])
    with pytest.raises(ValueError):
        signed_calldata(b"\x01" + raw[1:])  # not EIP-1559
