"""Both AssetDAO versions' events decoded by topic, and the version read from a contract's bytecode.
No chain."""

from __future__ import annotations

import json

import pytest
from eth_abi import encode
from eth_utils import keccak

from chain.events import (
    PRODUCTION,
    UPSTREAM,
    OtherEvent,
    ProposalCreated,
    UndecodableLog,
    UnknownEvent,
    VoteCast,
    decode_log,
    detect_version,
    event_topics,
    known_events,
    push_constants,
)
from devtools.devnet import ARTIFACTS_DIR, EVENT_SETS

VOTER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def word(value: int | str, kind: str = "uint256") -> str:
    return "0x" + encode([kind], [value]).hex()


def test_the_topics_are_the_documented_ones() -> None:
    production = {name: t for t, name in event_topics(PRODUCTION).items()}
    upstream = {name: t for t, name in event_topics(UPSTREAM).items()}
    assert (
        production["ProposalCreated"] == "0xa9b7501054ec8150de9dd4c4819fea4051fa3f26ac91d7d08bfb403ea9a9c216"
    )
    assert production["VoteCast"] == "0xcbdf6214089cba887ecbf35a0b6a734589959c9763342c756bb2a80ca2bc9f6e"
    assert upstream["ProposalCreated"] == "0x7585f467599d0f008985f231af99293be388626ac16ca59505c2f8f88969cd63"
    assert upstream["VoteCast"] == "0xe71fcdac32df1877c1700e7bda2a03157e20993363a28fc35ac495cefc76e4d4"
    assert production["ProposalCanceled"] == upstream["ProposalCanceled"]
    assert production["ProposalExecuted"] == upstream["ProposalExecuted"]


def test_upstream_events_decode_with_what_they_carry() -> None:
    upstream = {name: t for t, name in event_topics(UPSTREAM).items()}
    created = decode_log(
        [upstream["ProposalCreated"], word(7), word(VOTER, "address")],
        encode(["string"], ["Buy <b>WBTC</b>"]),
    )
    assert created == ProposalCreated(7, VOTER, description="Buy <b>WBTC</b>")
    vote = decode_log([upstream["VoteCast"], word(7), word(VOTER, "address")], encode(["bool"], [False]))
    assert vote == VoteCast(7, VOTER, False, weight=None)


def test_known_events_the_service_does_not_act_on_are_other_events() -> None:
    quorum = keccak(text="QuorumChanged(uint256,uint256)")
    assert decode_log(["0x" + quorum.hex()], encode(["uint256", "uint256"], [1, 2])) == OtherEvent(
        "QuorumChanged"
    )
    role = next(t for t, abi in known_events().items() if abi.name == "RoleGranted")
    assert decode_log([role, word(1), word(VOTER, "address"), word(VOTER, "address")], "0x") == OtherEvent(
        "RoleGranted"
    )


def test_an_unknown_topic_is_its_own_error_naming_the_topic() -> None:
    topic = "0x" + keccak(text="ProposalSubmitted(uint256,address)").hex()
    with pytest.raises(UnknownEvent) as raised:
        decode_log([topic, word(1), word(VOTER, "address")], "0x")
    assert raised.value.topic == topic and isinstance(raised.value, UndecodableLog)


def test_a_followed_event_with_the_wrong_shape_is_undecodable_not_unknown() -> None:
    upstream = {name: t for t, name in event_topics(UPSTREAM).items()}
    with pytest.raises(UndecodableLog) as raised:
        decode_log([upstream["VoteCast"], word(7)], "0x")
    assert not isinstance(raised.value, UnknownEvent)


def test_push_data_is_never_read_as_an_opcode() -> None:
    selector = bytes.fromhex("12345678")
    topic = keccak(text="X()")
    # PUSH2 0x6363 hides a PUSH4 opcode inside its data; PUSH3 of a selector with a leading zero byte.
    code = (
        bytes([0x61, 0x63, 0x63, 0x63]) + selector + bytes([0x7F]) + topic + bytes([0x62]) + b"\x00\xab\xcd"
    )
    small, words = push_constants(code)
    assert selector in small and b"\x00\x00\xab\xcd" in small and topic in words
    assert bytes.fromhex("63636312") not in small


@pytest.mark.parametrize(
    ("event_set", "version"), [("production", "production"), ("upstream", "upstream"), ("unknown", "unknown")]
)
def test_each_devnet_contract_is_recognised_from_its_bytecode(event_set: str, version: str) -> None:
    artifact = json.loads((ARTIFACTS_DIR / f"{EVENT_SETS[event_set]}.json").read_text())
    detected = detect_version(artifact["bytecode"])  # the creation code holds the runtime code
    assert detected.name == version and detected.missing_functions == ()
    assert detected.knows_proposals == (version != "unknown")


def test_a_contract_without_the_voting_functions_says_which_are_missing() -> None:
    token = json.loads((ARTIFACTS_DIR / "DevToken.json").read_text())
    detected = detect_version(token["bytecode"])
    assert set(detected.missing_functions) == {"getProposal", "getProposalCount", "hasVoted", "vote"}
    assert detected.name == "unknown"
