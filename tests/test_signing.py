"""The service's own EIP-1559 signer gives the very bytes and hash eth-account gives. No chain."""

from __future__ import annotations

import random
from typing import Any

import rlp
from eth_account import Account
from eth_utils import to_checksum_address

from chain.accounts import node_accounts, rlp_list
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
