"""Shared fixtures: one real anvil per test session, the devnet contracts on it, and chain snapshots.

Tests that change chain state should use `chain_snapshot` (directly or through `dao`) so they see the
freshly deployed devnet and leave it unchanged for the next test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError
from web3.types import TxReceipt

from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo, deploy_devnet, load_artifact

# Tests may read the environment (library code does not): an explicit anvil overrides the pinned one.
ANVIL_BIN = os.environ.get("DLOOP_ANVIL_BIN")

Transact = Callable[[str, ContractFunction], TxReceipt]
RevertName = Callable[[str, ContractFunction], str]


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilProcess]:
    """A fresh automining anvil on a free port for the whole session."""
    with AnvilProcess(binary=ANVIL_BIN, port=0) as node:
        yield node


@pytest.fixture(scope="session")
def w3(anvil: AnvilProcess) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.http_url))


@pytest.fixture(scope="session")
def devnet(anvil: AnvilProcess) -> DevnetInfo:
    """Tokens and AssetDAO deployed, nodes and proposer funded, no proposals (tests create their own)."""
    return deploy_devnet(anvil.http_url, proposals=0)


@pytest.fixture
def chain_snapshot(anvil: AnvilProcess, devnet: DevnetInfo) -> Iterator[None]:
    """Revert every block, balance and clock change of the test (`evm_snapshot` / `evm_revert`)."""
    snapshot_id = anvil.rpc("evm_snapshot")
    yield
    assert anvil.rpc("evm_revert", [snapshot_id]) is True


@pytest.fixture
def dao(w3: Web3, devnet: DevnetInfo, chain_snapshot: None) -> Contract:
    """The devnet AssetDAO (artifact ABI), with the chain reverted after the test."""
    abi = load_artifact("AssetDAO")["abi"]
    return w3.eth.contract(address=Web3.to_checksum_address(devnet.contract_address), abi=abi)


@pytest.fixture(scope="session")
def transact(w3: Web3) -> Transact:
    """`transact(private_key, contract.functions.f(...))`: sign, send, wait; fails the test if it reverts."""

    def send(private_key: str, call: ContractFunction) -> TxReceipt:
        account = Account.from_key(private_key)
        tx = call.build_transaction(
            {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
        )
        tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)
        assert receipt["status"] == 1, f"transaction {tx_hash.hex()} reverted"
        return receipt

    return send


@pytest.fixture(scope="session")
def revert_name() -> RevertName:
    """`revert_name(private_key, contract.functions.f(...))`: the custom error name `f` reverts with."""
    errors = _custom_errors(load_artifact("AssetDAO")["abi"])

    def call(private_key: str, function: ContractFunction) -> str:
        sender = Account.from_key(private_key).address
        with pytest.raises(ContractCustomError) as raised:
            function.call({"from": sender})
        data = raised.value.data
        assert isinstance(data, str), data
        return errors.get(data[:10], f"unknown error {data}")

    return call


def _custom_errors(abi: list[dict[str, Any]]) -> dict[str, str]:
    """Selector ("0x" + 8 hex digits) -> name of every custom error in `abi`."""
    selectors = {}
    for entry in abi:
        if entry["type"] == "error":
            signature = f"{entry['name']}({','.join(arg['type'] for arg in entry['inputs'])})"
            selectors["0x" + Web3.keccak(text=signature).hex().removeprefix("0x")[:8]] = entry["name"]
    return selectors
