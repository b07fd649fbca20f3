"""Bad chain data: proposals the contract accepts but a careless reader would choke on. Each one must end
with a vote (the strategy decided) or a clear "no vote" reason, nothing crashes, and the API answers 200
for each of them.

The devnet contract refuses amount 0 for investments and divestments (`InvalidAmount`), so the zero-amount
case is a ParameterChange and an Other with amount 0, which it accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from web3 import Web3

from devtools.devnet import DevnetInfo, ProposalType, asset_dao, load_artifact
from tests.support.chain import Chain
from tests.support.chaos import OPEN_STATES, db_rows, report
from tests.support.database import migrate
from tests.support.service import devnet_settings, running_service
from tests.support.waiting import poll_until

NODES = 5
MAX_UINT256 = 2**256 - 1
ODD_UNICODE = (
    "\u202eRTL override\u202c \u200f\u05e9\u05dc\u05d5\u05dd 🚀🦄 \x01\x07\x1b[31m tab\t bell\x7f \ufeff"
)


def _send(w3: Web3, key: str, tx: Mapping[str, Any]) -> dict[str, Any]:
    account = Account.from_key(key)
    tx = {
        "chainId": w3.eth.chain_id,
        "maxFeePerGas": 10**11,
        "maxPriorityFeePerGas": 10**9,
        **tx,
        "from": account.address,
        "nonce": w3.eth.get_transaction_count(account.address),
    }
    tx["gas"] = w3.eth.estimate_gas(tx)  # type: ignore[arg-type]
    signed = account.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=10
    )
    assert receipt["status"] == 1
    return dict(receipt)


def _zero_decimals_token(w3: Web3, devnet: DevnetInfo) -> str:
    artifact = load_artifact("DevToken")
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    data = factory.constructor("Whole Units", "WHOLE", 0).data_in_transaction
    receipt = _send(w3, devnet.owner_key, {"data": data})
    return str(receipt["contractAddress"])


pytestmark = pytest.mark.devnet()  # the `chain` fixture: a private anvil for this module


def test_odd_proposals_end_voted_or_with_a_reason_and_the_api_answers_for_each(
    chain: Chain, tmp_path: Path
) -> None:
    anvil, devnet = chain
    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    dao = asset_dao(w3, devnet.contract_address)
    usdc = devnet.token_addresses["USDC"]
    whole = _zero_decimals_token(w3, devnet)
    no_code = "0x" + "5a" * 20
    cases = {
        "10 kB description": (ProposalType.INVESTMENT, usdc, 10 * 10**6, "x" * 10_240),
        "odd Unicode": (ProposalType.INVESTMENT, usdc, 10 * 10**6, ODD_UNICODE),
        "zero amount, parameter change": (ProposalType.PARAMETER_CHANGE, usdc, 0, "Set quorum to 40%"),
        "zero amount, other": (ProposalType.OTHER, usdc, 0, "Rename the treasury"),
        "asset without code": (ProposalType.INVESTMENT, no_code, 10**18, "Invest in a ghost"),
        "amount 2^256-1": (ProposalType.INVESTMENT, usdc, MAX_UINT256, "Invest everything there is"),
        "0-decimals asset": (ProposalType.INVESTMENT, whole, 7, "Invest 7 whole units"),
    }
    ids: dict[str, int] = {}
    created_topic = dao.events.ProposalCreated().topic
    for name, (kind, asset, amount, description) in cases.items():
        call = dao.functions.createProposal(int(kind), Web3.to_checksum_address(asset), amount, description)
        receipt = _send(w3, devnet.proposer_key, call.build_transaction({"from": devnet.proposer_address}))
        logs: list[Any] = receipt["logs"]
        (log,) = [entry for entry in logs if entry["topics"][0].to_0x_hex() == created_topic]
        ids[name] = int.from_bytes(log["topics"][1], "big")

    settings = devnet_settings(anvil.ws_url, devnet, tmp_path / "dloop.db", http_port=0)
    migrate(settings)
    db = tmp_path / "dloop.db"

    def all_final() -> bool:
        rows = db_rows(db)
        return len(rows) == len(cases) * NODES and not any(r[2] in OPEN_STATES for r in rows)

    with running_service(settings) as svc:
        poll_until(all_final, timeout=30, what="every odd proposal decided")
        details = {name: httpx.get(f"{svc.url}/proposals/{pid}", timeout=10) for name, pid in ids.items()}
        active = httpx.get(f"{svc.url}/active-proposals", timeout=10)
        health = httpx.get(f"{svc.url}/", timeout=10)

    rows = db_rows(db)
    for name, pid in ids.items():
        outcome = sorted({(state, decision, reason) for p, _a, state, decision, reason in rows if p == pid})
        report(f"bad chain data: {name}: {outcome}")
        for state, _decision, reason in outcome:
            assert state in ("confirmed", "no_vote"), (name, outcome)
            assert reason, (name, outcome)
        assert details[name].status_code == 200, (name, details[name].text)
    assert active.status_code == 200 and active.json()["count"] == len(cases), active.text
    assert health.status_code == 200
    by_id = {p["id"]: p for p in active.json()["proposals"]}
    assert by_id[ids["amount 2^256-1"]]["amount"] == str(MAX_UINT256)
    assert by_id[ids["odd Unicode"]]["description"] == ODD_UNICODE
    assert len(by_id[ids["10 kB description"]]["description"]) == 10_240
    # The unknown asset cannot be judged: no vote, and the reason says why.
    ghost = {(state, reason) for p, _a, state, _d, reason in rows if p == ids["asset without code"]}
    assert all(state == "no_vote" for state, _ in ghost), ghost
    # Whole units: 7 of a 0-decimals token is 7 units, a small amount both strategies judge normally.
    assert by_id[ids["0-decimals asset"]]["amountUnits"] in ("7", 7, "7.0", 7.0), by_id[
        ids["0-decimals asset"]
    ]
