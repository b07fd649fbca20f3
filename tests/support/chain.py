"""The one way tests start a chain: an automining anvil on a free port with the devnet contracts deployed.

The fixtures in tests/conftest.py (`anvil`/`devnet` for the session, `chain` for a module or a test) are built
on `devnet_chain`; tests that kill, freeze or restart their node call it directly.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from eth_account import Account
from web3 import Web3
from web3.types import TxReceipt

from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo, asset_dao, create_proposals, deploy_devnet

# The AssetDAO versions in the wild whose events the service follows: the end-to-end tests run on both.
EVENT_VERSIONS = ("production", "upstream")

# Tests may read the environment (library code does not): an explicit anvil overrides the pinned one.
ANVIL_BIN = os.environ.get("DLOOP_ANVIL_BIN")


def start_anvil(
    *,
    block_time: float | None = None,
    state_file: Path | None = None,
    port: int = 0,
    chain_id: int | None = None,
) -> AnvilProcess:
    """An anvil process (not started: use it as a context manager), DLOOP_ANVIL_BIN honoured; `chain_id`
    other than anvil's 31337 for a second chain beside the first."""
    extra = ("--chain-id", str(chain_id)) if chain_id is not None else ()
    return AnvilProcess(
        binary=ANVIL_BIN, port=port, block_time=block_time, state_file=state_file, extra_args=extra
    )


@dataclass
class Chain:
    """A private anvil with the devnet on it. Unpacks as `anvil, devnet = chain`."""

    anvil: AnvilProcess
    info: DevnetInfo
    w3: Web3

    def __iter__(self) -> Iterator[Any]:
        return iter((self.anvil, self.info))

    def create(self, count: int, *, first_index: int = 0) -> list[int]:
        """Create proposals (blocking: call through `anyio.to_thread`)."""
        return create_proposals(
            self.w3,
            self.info.contract_address,
            self.info.proposer_key,
            self.info.token_addresses,
            count,
            first_index=first_index,
        )

    async def create_async(self, count: int, *, first_index: int = 0) -> list[int]:
        return await anyio.to_thread.run_sync(functools.partial(self.create, count, first_index=first_index))

    def transact(self, private_key: str, function_name: str, *args: Any) -> TxReceipt:
        dao = asset_dao(self.w3, self.info.contract_address)
        account = Account.from_key(private_key)
        tx = getattr(dao.functions, function_name)(*args).build_transaction(
            {"from": account.address, "nonce": self.w3.eth.get_transaction_count(account.address)}
        )
        tx_hash = self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)
        assert receipt["status"] == 1
        return receipt

    async def transact_async(self, private_key: str, function_name: str, *args: Any) -> TxReceipt:
        return await anyio.to_thread.run_sync(
            functools.partial(self.transact, private_key, function_name, *args)
        )

    async def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        return await anyio.to_thread.run_sync(self.anvil.rpc, method, params)


@contextmanager
def devnet_chain(
    proposals: int = 0,
    *,
    block_time: float | None = None,
    state_file: Path | None = None,
    port: int = 0,
    events: str = "production",
    chain_id: int | None = None,
) -> Iterator[Chain]:
    """A fresh anvil with tokens and AssetDAO deployed, nodes and proposer funded, `proposals` created.
    `events`: which AssetDAO version's events the contract emits (devtools.devnet.EVENT_SETS)."""
    with start_anvil(block_time=block_time, state_file=state_file, port=port, chain_id=chain_id) as node:
        info = deploy_devnet(node.http_url, proposals=proposals, events=events)
        yield Chain(node, info, Web3(Web3.HTTPProvider(node.http_url)))
