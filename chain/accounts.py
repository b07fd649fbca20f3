"""The five node accounts: name, address, strategy and a signer. The key never leaves this object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from core.settings import NodeSettings


@dataclass(frozen=True)
class NodeAccount:
    name: str
    address: str
    strategy: str
    _signer: LocalAccount = field(repr=False, compare=False)

    def sign_transaction(self, tx: dict[str, Any]) -> tuple[str, bytes]:
        """Sign an EIP-1559 transaction; returns (tx hash, raw signed bytes)."""
        signed = self._signer.sign_transaction(tx)
        return "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction)


def node_accounts(nodes: tuple[NodeSettings, ...]) -> tuple[NodeAccount, ...]:
    accounts = []
    for node in nodes:
        signer: LocalAccount = Account.from_key(node.key.reveal())
        accounts.append(NodeAccount(node.name, signer.address, node.strategy, signer))
    return tuple(accounts)
