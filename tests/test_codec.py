"""Pure encoding and decoding: calls, events, custom errors, amounts. No chain."""

from __future__ import annotations

from decimal import Decimal

import pytest
from eth_abi import decode, encode
from eth_abi.exceptions import NonEmptyPaddingBytes
from eth_utils import keccak

from chain.codec import AbiFunction, checksum, decode_plain, decode_revert
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


STATIC = AbiFunction("f", ("uint256", "address", "bool", "uint8"), ("bool", "uint256", "uint8"))


@pytest.mark.parametrize(
    "args",
    [
        (0, VOTER, True, 255),
        (2**256 - 1, VOTER.lower(), False, 0),
        (7, "0x" + "00" * 20, True, 1),
    ],
)
def test_static_arguments_encode_as_eth_abi_does(args: tuple[object, ...]) -> None:
    expected = "0x" + (STATIC.selector + encode(list(STATIC.input_types), list(args))).hex()
    assert STATIC.encode(*args) == expected


@pytest.mark.parametrize(
    "args",
    [
        (-1, VOTER, True, 0),  # out of range
        (2**256, VOTER, True, 0),
        (1, VOTER, True, 256),
        (True, VOTER, True, 0),  # a bool is not a uint
        (1, VOTER.lower().replace("0x70", "0x7G"), True, 0),  # not hex
        (1, VOTER[:-2], True, 0),  # 19 bytes
        (1, VOTER, 1, 0),  # an int is not a bool
    ],
)
def test_static_arguments_eth_abi_refuses_are_refused(args: tuple[object, ...]) -> None:
    with pytest.raises(Exception) as expected:
        encode(list(STATIC.input_types), list(args))
    with pytest.raises(type(expected.value)):
        STATIC.encode(*args)


@pytest.mark.parametrize(
    "data",
    [
        encode(["bool", "uint256", "uint8"], [True, 2**256 - 1, 255]),
        encode(["bool", "uint256", "uint8"], [False, 0, 0]),
        encode(["bool", "uint256", "uint8"], [False, 0, 0]) + b"\x00" * 32,  # longer: eth_abi's way
    ],
)
def test_static_results_decode_as_eth_abi_does(data: bytes) -> None:
    assert STATIC.decode(data) == tuple(decode(list(STATIC.output_types), data))


@pytest.mark.parametrize(
    "data",
    [
        (2).to_bytes(32, "big") + bytes(64),  # a bool of 2
        bytes(64) + (256).to_bytes(32, "big"),  # a uint8 of 256
        bytes(64),  # too short
    ],
)
def test_static_results_eth_abi_refuses_are_refused(data: bytes) -> None:
    with pytest.raises(Exception) as expected:
        decode(list(STATIC.output_types), data)
    with pytest.raises(type(expected.value)):
        STATIC.decode(data)


def test_checksum_is_eth_utils_own_and_refuses_what_it_refuses() -> None:
    assert checksum(VOTER.lower()) == checksum(VOTER) == VOTER
    with pytest.raises(ValueError):
        checksum("0x1234")


@pytest.mark.parametrize(
    ("kinds", "data"),
    [
        (("address",), encode(["address"], [VOTER])),
        (("address", "bool", "uint256"), encode(["address", "bool", "uint256"], ["0x" + "00" * 20, True, 5])),
    ],
)
def test_static_addresses_decode_as_eth_abi_does(kinds: tuple[str, ...], data: bytes) -> None:
    assert decode_plain(kinds, data) == tuple(decode(list(kinds), data))


def test_an_address_word_with_high_bytes_set_is_left_to_eth_abi() -> None:
    data = b"\x01" + bytes(11) + bytes.fromhex(VOTER[2:])
    assert decode_plain(("address",), data) is None
    with pytest.raises(NonEmptyPaddingBytes):
        decode(["address"], data)


PROPOSAL = (
    "uint256", "uint8", "address", "uint256", "string", "address", "uint256", "uint256", "uint256", "uint256",
    "uint8", "bool",
)  # fmt: skip
PROPOSAL_VALUES = [7, 1, VOTER, 10**18, "Buy <b>ETH</b> ünïcode", VOTER, 1, 2, 3, 4, 0, True]


@pytest.mark.parametrize("description", ["", "x" * 31, "y" * 32, "z" * 33, "é" * 100])
def test_results_with_a_string_decode_as_eth_abi_does(description: str) -> None:
    values = [*PROPOSAL_VALUES[:4], description, *PROPOSAL_VALUES[5:]]
    data = encode(list(PROPOSAL), values)
    fast = decode_plain(PROPOSAL, data)
    assert fast is not None and fast == tuple(decode(list(PROPOSAL), data))
    kinds = ("string", "bytes", "uint256")
    both = encode(list(kinds), [description, description.encode() * 2, 5])
    assert decode_plain(kinds, both) == tuple(decode(list(kinds), both))


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


CANONICAL = encode(list(PROPOSAL), PROPOSAL_VALUES)
TAIL = 32 * len(PROPOSAL)  # where the description's length word is


@pytest.mark.parametrize(
    "data",
    [
        CANONICAL + bytes(32),  # something after the last tail
        CANONICAL[:-1],  # cut short
        CANONICAL[: 4 * 32] + _word(TAIL + 32) + CANONICAL[5 * 32 :] + bytes(32),  # pointer elsewhere
        CANONICAL[:TAIL] + _word(10**6) + CANONICAL[TAIL + 32 :],  # length past the end
        CANONICAL[:-1] + b"\x01",  # non-zero padding
        CANONICAL[:TAIL] + _word(2) + b"\xff\xfe" + bytes(30),  # not UTF-8
    ],
)
def test_results_with_an_unusual_string_layout_are_left_to_eth_abi(data: bytes) -> None:
    assert decode_plain(PROPOSAL, data) is None
    fn = AbiFunction("getProposal", ("uint256",), PROPOSAL)
    try:
        expected: object = tuple(decode(list(PROPOSAL), data))
    except Exception as exc:
        with pytest.raises(type(exc)):
            fn.decode(data)
    else:
        assert fn.decode(data) == expected
