"""The devnet AssetDAO behaves like production where the voting service relies on it (real anvil and txs)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from devtools.anvil import ANVIL_KEYS, AnvilProcess
from devtools.devnet import (
    ASSET_PRICES,
    ZERO_ADDRESS,
    DevnetInfo,
    ProposalType,
    load_artifact,
    price_oracle,
    price_to_raw,
    to_base_units,
)
from tests.conftest import RevertName, Transact

ACTIVE, EXECUTED, CANCELED = 1, 4, 5
SIX_HOURS = 6 * 60 * 60
OUTSIDER = ANVIL_KEYS[7]  # holds no DLOOP and is neither node, proposer nor owner
PROPOSAL_FIELDS = (
    *("id", "proposalType", "assetAddress", "amount", "description", "proposer", "createdAt", "votingEnds"),
    *("yesVotes", "noVotes", "status", "executed"),
)


def proposal(dao: Contract, proposal_id: int) -> dict[str, Any]:
    return dict(zip(PROPOSAL_FIELDS, dao.functions.getProposal(proposal_id).call(), strict=True))


def create(
    dao: Contract,
    transact: Transact,
    devnet: DevnetInfo,
    proposal_type: ProposalType = ProposalType.INVESTMENT,
    symbol: str = "USDC",
    amount_units: int = 500 * 10**6,
    description: str = "Allocate 500 USDC to the stablecoin reserve",
) -> int:
    call = dao.functions.createProposal(
        int(proposal_type), devnet.token_addresses[symbol], amount_units, description
    )
    receipt = transact(devnet.proposer_key, call)
    (event,) = dao.events.ProposalCreated().process_receipt(receipt)
    return int(event["args"]["proposalId"])


def advance_time(anvil: AnvilProcess, seconds: int) -> None:
    anvil.rpc("evm_increaseTime", [seconds])
    anvil.rpc("evm_mine")


def test_ids_start_at_one_and_count_is_newest_id(
    dao: Contract, transact: Transact, revert_name: RevertName, devnet: DevnetInfo
) -> None:
    assert dao.functions.getProposalCount().call() == 0
    assert revert_name(devnet.proposer_key, dao.functions.getProposal(0)) == "ProposalNotFound"

    assert [create(dao, transact, devnet) for _ in range(3)] == [1, 2, 3]

    assert dao.functions.getProposalCount().call() == dao.functions.proposalCounter().call() == 3
    assert proposal(dao, 3)["id"] == 3
    assert revert_name(devnet.proposer_key, dao.functions.getProposal(0)) == "ProposalNotFound"
    assert revert_name(devnet.proposer_key, dao.functions.getProposal(4)) == "ProposalNotFound"


def test_create_stores_the_proposal_active_and_emits_event(
    dao: Contract, transact: Transact, devnet: DevnetInfo, w3: Web3
) -> None:
    wbtc = devnet.token_addresses["WBTC"]
    call = dao.functions.createProposal(int(ProposalType.DIVESTMENT), wbtc, 5_000_000, "Sell 0.05 WBTC")
    assert call.call({"from": devnet.proposer_address}) == 1  # the id is returned
    receipt = transact(devnet.proposer_key, call)

    (event,) = dao.events.ProposalCreated().process_receipt(receipt)
    assert event["args"] == {
        "proposalId": 1,
        "assetId": int(wbtc, 16),
        "proposer": devnet.proposer_address,
        "proposalType": int(ProposalType.DIVESTMENT),
    }
    created_at = w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert proposal(dao, 1) == {
        "id": 1,
        "proposalType": int(ProposalType.DIVESTMENT),
        "assetAddress": wbtc,
        "amount": 5_000_000,
        "description": "Sell 0.05 WBTC",
        "proposer": devnet.proposer_address,
        "createdAt": created_at,
        "votingEnds": created_at + devnet.voting_period,
        "yesVotes": 0,
        "noVotes": 0,
        "status": ACTIVE,
        "executed": False,
    }


def test_create_rejects_missing_asset_or_amount_for_investments_only(
    dao: Contract, transact: Transact, revert_name: RevertName, devnet: DevnetInfo
) -> None:
    zero = "0x" + "00" * 20
    usdc = devnet.token_addresses["USDC"]
    key = devnet.proposer_key
    invest_nothing = dao.functions.createProposal(int(ProposalType.INVESTMENT), usdc, 0, "nothing")
    assert revert_name(key, invest_nothing) == "InvalidAmount"
    divest_no_asset = dao.functions.createProposal(int(ProposalType.DIVESTMENT), zero, 10, "no asset")
    assert revert_name(key, divest_no_asset) == "ZeroAddress"
    transact(key, dao.functions.createProposal(int(ProposalType.PARAMETER_CHANGE), zero, 0, "Quorum to 8%"))
    assert proposal(dao, 1)["assetAddress"] == zero


def test_vote_weight_is_the_voters_dloop_balance(
    dao: Contract, transact: Transact, devnet: DevnetInfo
) -> None:
    proposal_id = create(dao, transact, devnet)
    weights = devnet.node_weights
    assert weights == tuple(to_base_units(n, 18) for n in (1000, 2000, 1500, 2500, 1200))

    receipts = [
        transact(devnet.node_keys[0], dao.functions.vote(proposal_id, True)),
        transact(devnet.node_keys[1], dao.functions.vote(proposal_id, False)),
        transact(devnet.node_keys[2], dao.functions.vote(proposal_id, True)),
    ]

    tally = proposal(dao, proposal_id)
    assert (tally["yesVotes"], tally["noVotes"]) == (weights[0] + weights[2], weights[1])
    events = [dao.events.VoteCast().process_receipt(receipt)[0]["args"] for receipt in receipts]
    assert [(e["voter"], e["support"], e["weight"]) for e in events] == [
        (devnet.node_addresses[0], True, weights[0]),
        (devnet.node_addresses[1], False, weights[1]),
        (devnet.node_addresses[2], True, weights[2]),
    ]
    assert [dao.functions.hasVoted(proposal_id, a).call() for a in devnet.node_addresses] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_vote_with_zero_balance_counts_as_cast(dao: Contract, transact: Transact, devnet: DevnetInfo) -> None:
    proposal_id = create(dao, transact, devnet)
    receipt = transact(OUTSIDER.private_key, dao.functions.vote(proposal_id, True))

    (event,) = dao.events.VoteCast().process_receipt(receipt)
    assert event["args"]["weight"] == 0
    assert dao.functions.hasVoted(proposal_id, OUTSIDER.address).call() is True
    assert proposal(dao, proposal_id)["yesVotes"] == 0


def test_revote_needs_the_buffer_and_moves_the_weight(
    dao: Contract,
    transact: Transact,
    revert_name: RevertName,
    devnet: DevnetInfo,
    anvil: AnvilProcess,
    w3: Web3,
) -> None:
    proposal_id = create(dao, transact, devnet)
    node_key, node_address, weight = devnet.node_keys[0], devnet.node_addresses[0], devnet.node_weights[0]
    assert dao.functions.minVotingBuffer().call() == SIX_HOURS
    transact(node_key, dao.functions.vote(proposal_id, True))
    assert revert_name(node_key, dao.functions.vote(proposal_id, False)) == "VotingBufferNotElapsed"

    # The balance changes between the votes: the re-vote removes the old weight and adds the new one.
    dloop = w3.eth.contract(
        address=Web3.to_checksum_address(devnet.dloop_token_address), abi=load_artifact("DevToken")["abi"]
    )
    bonus = to_base_units(100, 18)
    transact(devnet.owner_key, dloop.functions.mint(node_address, bonus))
    advance_time(anvil, SIX_HOURS + 1)
    transact(node_key, dao.functions.vote(proposal_id, False))

    tally = proposal(dao, proposal_id)
    assert (tally["yesVotes"], tally["noVotes"]) == (0, weight + bonus)
    assert dao.functions.hasVoted(proposal_id, node_address).call() is True


def test_proposal_stays_active_after_voting_ends_but_rejects_votes(
    dao: Contract, transact: Transact, revert_name: RevertName, devnet: DevnetInfo, anvil: AnvilProcess
) -> None:
    proposal_id = create(dao, transact, devnet)
    advance_time(anvil, devnet.voting_period + 1)

    assert proposal(dao, proposal_id)["status"] == ACTIVE
    assert revert_name(devnet.node_keys[0], dao.functions.vote(proposal_id, True)) == "VotingPeriodEnded"


def test_vote_checks_paused_then_existence_then_time_then_state(
    dao: Contract, transact: Transact, revert_name: RevertName, devnet: DevnetInfo, anvil: AnvilProcess
) -> None:
    voter = devnet.node_keys[0]
    canceled_id = create(dao, transact, devnet)
    transact(devnet.proposer_key, dao.functions.cancelProposal(canceled_id))

    transact(devnet.owner_key, dao.functions.pause())
    assert dao.functions.paused().call() is True
    assert revert_name(voter, dao.functions.vote(99, True)) == "ContractPaused"
    transact(devnet.owner_key, dao.functions.unpause())

    assert revert_name(voter, dao.functions.vote(99, True)) == "ProposalNotFound"
    assert revert_name(voter, dao.functions.vote(canceled_id, True)) == "InvalidProposalState"
    advance_time(anvil, devnet.voting_period + 1)
    assert revert_name(voter, dao.functions.vote(canceled_id, True)) == "VotingPeriodEnded"


def test_only_the_owner_pauses_and_pause_blocks_proposals(
    dao: Contract, transact: Transact, revert_name: RevertName, devnet: DevnetInfo
) -> None:
    assert revert_name(devnet.node_keys[0], dao.functions.pause()) == "NotAuthorized"
    transact(devnet.owner_key, dao.functions.pause())
    usdc = devnet.token_addresses["USDC"]
    create_call = dao.functions.createProposal(0, usdc, 1, "x")
    assert revert_name(devnet.proposer_key, create_call) == "ContractPaused"
    assert revert_name(devnet.node_keys[0], dao.functions.unpause()) == "NotAuthorized"


def test_cancel_by_proposer_or_owner_only(
    dao: Contract, transact: Transact, revert_name: RevertName, devnet: DevnetInfo
) -> None:
    by_proposer, by_owner = create(dao, transact, devnet), create(dao, transact, devnet)
    assert revert_name(devnet.node_keys[0], dao.functions.cancelProposal(by_proposer)) == "NotAuthorized"

    receipt = transact(devnet.proposer_key, dao.functions.cancelProposal(by_proposer))
    assert dao.events.ProposalCanceled().process_receipt(receipt)[0]["args"] == {"proposalId": by_proposer}
    transact(devnet.owner_key, dao.functions.cancelProposal(by_owner))

    assert [proposal(dao, i)["status"] for i in (by_proposer, by_owner)] == [CANCELED, CANCELED]
    assert revert_name(devnet.owner_key, dao.functions.cancelProposal(by_owner)) == "InvalidProposalState"
    assert revert_name(devnet.owner_key, dao.functions.cancelProposal(7)) == "ProposalNotFound"


def test_execute_needs_owner_ended_vote_and_majority(
    dao: Contract, transact: Transact, revert_name: RevertName, devnet: DevnetInfo, anvil: AnvilProcess
) -> None:
    approved, rejected = create(dao, transact, devnet), create(dao, transact, devnet)
    transact(devnet.node_keys[1], dao.functions.vote(approved, True))  # 2,000 for
    transact(devnet.node_keys[0], dao.functions.vote(approved, False))  # 1,000 against
    transact(devnet.node_keys[0], dao.functions.vote(rejected, True))
    transact(devnet.node_keys[1], dao.functions.vote(rejected, False))

    owner = devnet.owner_key
    assert revert_name(owner, dao.functions.executeProposal(approved)) == "InvalidProposalState"  # still open
    advance_time(anvil, devnet.voting_period + 1)
    assert revert_name(devnet.proposer_key, dao.functions.executeProposal(approved)) == "NotAuthorized"
    assert revert_name(owner, dao.functions.executeProposal(rejected)) == "InvalidProposalState"

    receipt = transact(owner, dao.functions.executeProposal(approved))
    assert dao.events.ProposalExecuted().process_receipt(receipt)[0]["args"] == {"proposalId": approved}
    executed = proposal(dao, approved)
    assert (executed["status"], executed["executed"]) == (EXECUTED, True)
    assert revert_name(owner, dao.functions.executeProposal(approved)) == "InvalidProposalState"


def test_governance_parameters(dao: Contract, devnet: DevnetInfo) -> None:
    assert dao.functions.votingPeriod().call() == devnet.voting_period == 3 * 24 * 60 * 60
    assert dao.functions.quorum().call() == 10
    assert dao.functions.dloopToken().call() == devnet.dloop_token_address
    assert dao.functions.paused().call() is False


def test_the_price_oracle_is_named_by_the_dao_seeded_and_set_by_its_owner_only(
    dao: Contract, w3: Web3, transact: Transact, revert_name: RevertName, devnet: DevnetInfo
) -> None:
    assert dao.functions.priceOracle().call() == devnet.price_oracle_address
    oracle = price_oracle(w3, devnet.price_oracle_address)
    assert {symbol: Decimal(text) for symbol, text in devnet.asset_prices.items()} == ASSET_PRICES
    for symbol, price in ASSET_PRICES.items():  # normalised to 18 decimals, whatever the token's decimals
        assert oracle.functions.getAssetPrice(devnet.token_addresses[symbol]).call() == price_to_raw(price)
    assert oracle.functions.getAssetPrice(devnet.dloop_token_address).call() == 0  # no price set
    assert price_to_raw("61000") == 61_000 * 10**18 and price_to_raw("1.08") == 108 * 10**16

    wbtc = devnet.token_addresses["WBTC"]
    outsider = devnet.node_keys[0]
    assert revert_name(outsider, oracle.functions.setPrice(wbtc, 1)) == "NotAuthorized"
    assert revert_name(outsider, oracle.functions.setReverting(True)) == "NotAuthorized"
    assert revert_name(outsider, dao.functions.updatePriceOracle(ZERO_ADDRESS)) == "NotAuthorized"

    transact(devnet.owner_key, oracle.functions.setPrice(wbtc, price_to_raw("70000")))
    assert oracle.functions.getAssetPrice(wbtc).call() == 70_000 * 10**18
    transact(devnet.owner_key, oracle.functions.setReverting(True))
    with pytest.raises(ContractCustomError) as raised:
        oracle.functions.getAssetPrice(wbtc).call()
    assert raised.value.data == "0x" + Web3.keccak(text="PriceUnavailable()").hex().removeprefix("0x")[:8]

    receipt = transact(devnet.owner_key, dao.functions.updatePriceOracle(ZERO_ADDRESS))
    (event,) = dao.events.PriceOracleUpdated().process_receipt(receipt)
    assert event["args"] == {"oldPriceOracle": devnet.price_oracle_address, "newPriceOracle": ZERO_ADDRESS}
    assert dao.functions.priceOracle().call() == ZERO_ADDRESS


@pytest.mark.parametrize(
    ("symbol", "decimals"), [("DLOOP", 18), ("USDC", 6), ("EURT", 6), ("WBTC", 8), ("PAXG", 18)]
)
def test_tokens_have_their_real_decimals(w3: Web3, devnet: DevnetInfo, symbol: str, decimals: int) -> None:
    address = Web3.to_checksum_address(devnet.token_addresses[symbol])
    token = w3.eth.contract(address=address, abi=load_artifact("DevToken")["abi"])
    assert (token.functions.symbol().call(), token.functions.decimals().call()) == (symbol, decimals)


def test_anvil_keys_are_anvils_funded_accounts(w3: Web3) -> None:
    assert list(w3.eth.accounts) == [account.address for account in ANVIL_KEYS]
    assert [Account.from_key(a.private_key).address for a in ANVIL_KEYS] == [a.address for a in ANVIL_KEYS]
