"""The devnet AssetDAO has production's selectors, topics and errors for everything the service uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from devtools.devnet import load_artifact

PRODUCTION_ABI_PATH = Path(__file__).resolve().parents[1] / "chain" / "abi" / "assetdao.production.json"

USED_FUNCTIONS = (
    "createProposal",
    "vote",
    "getProposal",
    "getProposalCount",
    "proposalCounter",
    "hasVoted",
    "cancelProposal",
    "executeProposal",
    "pause",
    "unpause",
    "paused",
    "votingPeriod",
    "quorum",
    "dloopToken",
    "minVotingBuffer",
    "priceOracle",  # the voter values proposals with the oracle it names
    "updatePriceOracle",  # the devnet sets its DevPriceOracle with production's function
)
USED_EVENTS = ("ProposalCreated", "VoteCast", "ProposalCanceled", "ProposalExecuted", "PriceOracleUpdated")
DECODED_ERRORS = (
    "ProposalNotFound",
    "VotingPeriodEnded",
    "InvalidProposalState",
    "VotingBufferNotElapsed",
    "ContractPaused",
    "NotAuthorized",
    "InvalidAmount",
    "ZeroAddress",
)
# topic0 values documented in shared/reference/assetdao.md.
DOCUMENTED_TOPICS = {
    "ProposalCreated": "0xa9b7501054ec8150de9dd4c4819fea4051fa3f26ac91d7d08bfb403ea9a9c216",
    "VoteCast": "0xcbdf6214089cba887ecbf35a0b6a734589959c9763342c756bb2a80ca2bc9f6e",
}


def signature(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(arg['type'] for arg in entry['inputs'])})"


def keccak_hex(text: str) -> str:
    return "0x" + Web3.keccak(text=text).hex().removeprefix("0x")


def entry(abi: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [item for item in abi if item["type"] == kind and item["name"] == name]
    return found


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    abi: list[dict[str, Any]] = json.loads(PRODUCTION_ABI_PATH.read_text())
    return abi


@pytest.fixture(scope="module")
def devnet_abi() -> list[dict[str, Any]]:
    abi: list[dict[str, Any]] = load_artifact("AssetDAO")["abi"]
    return abi


@pytest.mark.parametrize("name", USED_FUNCTIONS)
def test_function_matches_production(
    name: str, production: list[dict[str, Any]], devnet_abi: list[dict[str, Any]]
) -> None:
    ours, theirs = entry(devnet_abi, "function", name), entry(production, "function", name)
    assert keccak_hex(signature(ours))[:10] == keccak_hex(signature(theirs))[:10]
    assert [out["type"] for out in ours["outputs"]] == [out["type"] for out in theirs["outputs"]]
    assert ours["stateMutability"] == theirs["stateMutability"]


def test_get_proposal_returns_production_tuple(
    production: list[dict[str, Any]], devnet_abi: list[dict[str, Any]]
) -> None:
    ours, theirs = entry(devnet_abi, "function", "getProposal"), entry(production, "function", "getProposal")
    as_pairs = [(out["name"], out["type"]) for out in theirs["outputs"]]
    assert [(out["name"], out["type"]) for out in ours["outputs"]] == as_pairs
    assert len(as_pairs) == 12


@pytest.mark.parametrize("name", USED_EVENTS)
def test_event_matches_production(
    name: str, production: list[dict[str, Any]], devnet_abi: list[dict[str, Any]]
) -> None:
    ours, theirs = entry(devnet_abi, "event", name), entry(production, "event", name)
    assert keccak_hex(signature(ours)) == keccak_hex(signature(theirs))
    as_fields = [(arg["name"], arg["type"], arg["indexed"]) for arg in theirs["inputs"]]
    assert [(arg["name"], arg["type"], arg["indexed"]) for arg in ours["inputs"]] == as_fields
    assert ours.get("anonymous", False) is theirs.get("anonymous", False) is False


@pytest.mark.parametrize(("name", "topic0"), DOCUMENTED_TOPICS.items())
def test_documented_topics(name: str, topic0: str, production: list[dict[str, Any]]) -> None:
    assert keccak_hex(signature(entry(production, "event", name))) == topic0
    devnet_events = Web3().eth.contract(abi=load_artifact("AssetDAO")["abi"]).events
    assert getattr(devnet_events, name).topic == topic0


@pytest.mark.parametrize("name", DECODED_ERRORS)
def test_custom_error_matches_production(
    name: str, production: list[dict[str, Any]], devnet_abi: list[dict[str, Any]]
) -> None:
    assert signature(entry(devnet_abi, "error", name)) == signature(entry(production, "error", name))
