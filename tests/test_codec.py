"""Pure decoding: events, custom errors, amounts. No chain."""

from __future__ import annotations

from decimal import Decimal

import pytest
from eth_abi import encode
from eth_utils import keccak

from chain.codec import decode_revert
from chain.events import (
    ProposalCanceled,
    ProposalCreated,
    UndecodableLog,
    VoteCast,
    decode_log,
    event_topics,
)
from chain.types import AssetInfo, ProposalData, format_units

VOTER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def topic(value: int | str, kind: str = "uint256") -> str:
    return "0x" + encode([kind], [value]).hex()


def test_topics_match_production() -> None:
    topics = {name: t for t, name in event_topics().items()}
    assert topics["ProposalCreated"] == "0xa9b7501054ec8150de9dd4c4819fea4051fa3f26ac91d7d08bfb403ea9a9c216"
    assert topics["VoteCast"] == "0xcbdf6214089cba887ecbf35a0b6a734589959c9763342c756bb2a80ca2bc9f6e"


def test_decode_each_event() -> None:
    topics = {name: t for t, name in event_topics().items()}
    created = decode_log(
        [topics["ProposalCreated"], topic(7), topic(99), topic(VOTER, "address")],
        "0x" + encode(["uint8"], [1]).hex(),
    )
    assert created == ProposalCreated(7, VOTER, asset_id=99, proposal_type=1)
    vote = decode_log(
        [topics["VoteCast"], topic(7), topic(VOTER, "address")], encode(["bool", "uint256"], [True, 10**18])
    )
    assert vote == VoteCast(7, VOTER, True, 10**18)
    assert decode_log([topics["ProposalCanceled"], topic(3)], "0x") == ProposalCanceled(3)


@pytest.mark.parametrize(
    ("topics", "data"),
    [([], "0x"), (["0x" + "00" * 32], "0x"), ([next(iter(event_topics()))], "0x")],
)
def test_undecodable_logs_raise_one_error_type(topics: list[str], data: str) -> None:
    with pytest.raises(UndecodableLog):
        decode_log(topics, data)


def test_vote_cast_with_truncated_data() -> None:
    vote_topic = {name: t for t, name in event_topics().items()}["VoteCast"]
    with pytest.raises(UndecodableLog):
        decode_log([vote_topic, topic(1), topic(VOTER, "address")], "0x01")


@pytest.mark.parametrize(
    "name",
    [
        "ProposalNotFound",
        "VotingPeriodEnded",
        "InvalidProposalState",
        "VotingBufferNotElapsed",
        "ContractPaused",
    ],
)
def test_custom_errors_decode_by_name(name: str) -> None:
    assert decode_revert("0x" + keccak(text=f"{name}()")[:4].hex()) == name


def test_other_reverts() -> None:
    assert decode_revert(keccak(text="Error(string)")[:4] + encode(["string"], ["nope"])) == "Error(nope)"
    assert decode_revert(keccak(text="Panic(uint256)")[:4] + encode(["uint256"], [0x11])) == "Panic(0x11)"
    assert decode_revert("0x") == "unknown revert"
    assert decode_revert("0xdeadbeef").startswith("unknown error 0xdeadbeef")


@pytest.mark.parametrize(
    ("amount", "decimals", "units"),
    [
        (500_000_000, 6, "500"),
        (5_000_000, 8, "0.05"),
        (10 * 10**18, 18, "10"),
        (2**256 - 1, 0, str(2**256 - 1)),
    ],
)
def test_amounts_scale_by_the_assets_own_decimals(amount: int, decimals: int, units: str) -> None:
    asset = AssetInfo("0x" + "11" * 20, "X", decimals)
    data = ProposalData(1, 0, asset.address, amount, "d", VOTER, 0, 10, 0, 0, 1, False, asset)
    assert format_units(data.amount_units) == units
    assert data.open_at(10) and not data.open_at(11)


def test_unknown_asset_has_no_units() -> None:
    asset = AssetInfo("0x" + "11" * 20, None, None, "no code")
    data = ProposalData(1, 0, asset.address, 5, "d", VOTER, 0, 2**255, 0, 0, 1, False, asset)
    assert data.amount_units is None and format_units(None) is None
    assert data.voting_ends_utc.year == 9999  # absurd timestamps are clamped, not crashing
    assert format_units(Decimal("1.500")) == "1.5"
