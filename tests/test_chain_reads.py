"""Typed reads through ChainClient over a real WebSocket: decimals per asset, unknown assets, batches."""

from __future__ import annotations

from decimal import Decimal

import pytest
from web3 import Web3

from chain.client import ChainClient
from chain.codec import dao_functions
from chain.connection import open_ws
from chain.reads import Reads
from chain.types import ProposalData
from core.errors import ContractRevert, TransientChainError
from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo

pytestmark = pytest.mark.anyio


def create(
    w3: Web3, devnet: DevnetInfo, asset: str, amount: int, description: str = "devnet proposal"
) -> int:
    dao = w3.eth.contract(address=devnet.contract_address, abi=_dao_abi())
    account = w3.eth.account.from_key(devnet.proposer_key)
    tx = dao.functions.createProposal(0, asset, amount, description).build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
    )
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    )
    return int(dao.functions.getProposalCount().call())


def _dao_abi() -> list[dict[str, object]]:
    from chain.abis import assetdao_abi

    return assetdao_abi()


async def test_proposals_read_with_each_assets_decimals(
    anvil: AnvilProcess, w3: Web3, devnet: DevnetInfo, chain_snapshot: None
) -> None:
    usdc = create(w3, devnet, devnet.token_addresses["USDC"], 2_500 * 10**6, "Allocate 2,500 USDC")
    wbtc = create(w3, devnet, devnet.token_addresses["WBTC"], 5 * 10**6)  # 0.05 WBTC
    no_code = create(w3, devnet, Web3.to_checksum_address("0x" + "ab" * 20), 10**18)
    async with open_ws(anvil.ws_url) as ws:
        client = ChainClient(ws, devnet.contract_address)
        assert await client.chain_id() == 31337
        read = await Reads(client, batch_size=10, plain=True).proposals([usdc, wbtc, no_code, 0])
        first = read[usdc]
        assert isinstance(first, ProposalData)
        assert first.asset.symbol == "USDC" and first.asset.decimals == 6
        assert first.amount == 2_500_000_000 and first.amount_units == Decimal(2500)
        assert first.description == "Allocate 2,500 USDC" and first.proposer == devnet.proposer_address
        assert first.status == 1 and first.voting_ends - first.created_at == devnet.voting_period
        second = read[wbtc]
        assert isinstance(second, ProposalData)
        assert second.asset.symbol == "WBTC" and second.amount_units == Decimal("0.05")
        unknown = read[no_code]
        assert isinstance(unknown, ProposalData)
        assert unknown.asset.decimals is None and unknown.amount_units is None
        assert unknown.asset.error is not None and "no contract code" in unknown.asset.error
        # The token contract itself is an address with code but no getProposal: a clear revert, no crash.
        assert (await client.asset_info(devnet.contract_address)).decimals is None

        missing = read[0]
        assert isinstance(missing, ContractRevert) and missing.error_name == "ProposalNotFound"

        count = await client.proposal_count()
        get = dao_functions()["getProposal"]
        requests = [
            ("eth_call", [{"to": devnet.contract_address, "data": get.encode(i)}, "latest"])
            for i in range(count + 1)
        ]
        results = await client.call_many(requests, batch_size=2)
        assert isinstance(results[0], ContractRevert) and results[0].error_name == "ProposalNotFound"
        assert all(isinstance(r, str) for r in results[1:])


async def test_unreachable_node_is_a_transient_error() -> None:
    from devtools.anvil import free_port

    with pytest.raises(TransientChainError, match="cannot connect"):
        async with open_ws(f"ws://127.0.0.1:{free_port()}"):
            pass
