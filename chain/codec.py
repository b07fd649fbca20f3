"""Pure ABI encoding and decoding: calls, results, event logs and custom errors. No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from chain.abis import Abi, assetdao_abi, erc20_abi


def _canonical_type(param: Mapping[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in param["components"])
        return f"({inner}){kind[5:]}"
    return kind


@dataclass(frozen=True)
class AbiFunction:
    name: str
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(self.input_types)})"

    @cached_property
    def selector(self) -> bytes:
        # Computed once per function: encode() runs on every eth_call and every vote.
        return keccak(text=self.signature)[:4]

    def encode(self, *args: Any) -> str:
        return "0x" + (self.selector + abi_encode(list(self.input_types), list(args))).hex()

    def decode(self, data: bytes) -> tuple[Any, ...]:
        return tuple(abi_decode(list(self.output_types), data))


def functions_of(abi: Abi) -> dict[str, AbiFunction]:
    return {
        str(item["name"]): AbiFunction(
            str(item["name"]),
            tuple(_canonical_type(p) for p in item.get("inputs", [])),
            tuple(_canonical_type(p) for p in item.get("outputs", [])),
        )
        for item in abi
        if item.get("type") == "function"
    }


@cache
def dao_functions() -> dict[str, AbiFunction]:
    return functions_of(assetdao_abi())


@cache
def erc20_functions() -> dict[str, AbiFunction]:
    return functions_of(erc20_abi())


# -- custom errors --------------------------------------------------------------------------------------


@cache
def error_names() -> dict[bytes, str]:
    names = {}
    for item in assetdao_abi():
        if item.get("type") == "error":
            sig = f"{item['name']}({','.join(_canonical_type(p) for p in item.get('inputs', []))})"
            names[keccak(text=sig)[:4]] = str(item["name"])
    return names


def decode_revert(data: bytes | str | None) -> str:
    """The custom error's name, `Error(message)`, `Panic(code)`, or `unknown revert`."""
    raw = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else (data or b"")
    if len(raw) < 4:
        return "unknown revert"
    selector, body = raw[:4], raw[4:]
    if selector in error_names():
        return error_names()[selector]
    try:
        if selector == keccak(text="Error(string)")[:4]:
            return f"Error({abi_decode(['string'], body)[0]})"
        if selector == keccak(text="Panic(uint256)")[:4]:
            return f"Panic({abi_decode(['uint256'], body)[0]:#x})"
    except Exception:  # malformed revert data from a foreign contract
        return "unknown revert"
    return f"unknown error 0x{selector.hex()}"


# -- events ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposalCreated:
    proposal_id: int
    asset_id: int
    proposer: str
    proposal_type: int


@dataclass(frozen=True)
class VoteCast:
    proposal_id: int
    voter: str
    support: bool
    weight: int


@dataclass(frozen=True)
class ProposalCanceled:
    proposal_id: int


@dataclass(frozen=True)
class ProposalExecuted:
    proposal_id: int


ChainEvent = ProposalCreated | VoteCast | ProposalCanceled | ProposalExecuted
EVENT_NAMES = ("ProposalCreated", "VoteCast", "ProposalCanceled", "ProposalExecuted")


class UndecodableLog(ValueError):
    """A log that is not one of the four events, or whose data does not decode."""


@dataclass(frozen=True)
class EventAbi:
    name: str
    inputs: tuple[tuple[str, bool], ...]  # (type, indexed) in declared order

    @property
    def topic(self) -> str:
        return "0x" + keccak(text=f"{self.name}({','.join(t for t, _ in self.inputs)})").hex()

    @property
    def indexed(self) -> tuple[str, ...]:
        return tuple(t for t, is_indexed in self.inputs if is_indexed)

    @property
    def data(self) -> tuple[str, ...]:
        return tuple(t for t, is_indexed in self.inputs if not is_indexed)


@cache
def event_abis() -> dict[str, EventAbi]:
    found = {}
    for item in assetdao_abi():
        if item.get("type") == "event" and item["name"] in EVENT_NAMES:
            inputs = item["inputs"]
            found[item["name"]] = EventAbi(
                item["name"], tuple((_canonical_type(p), bool(p["indexed"])) for p in inputs)
            )
    return found


@cache
def event_topics() -> dict[str, str]:
    """topic0 -> event name, for the four events the service follows."""
    return {abi.topic: name for name, abi in event_abis().items()}


def _hex_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return bytes.fromhex(str(value).removeprefix("0x"))


def decode_log(topics: Sequence[Any], data: Any) -> ChainEvent:
    """Decode one of the four events from raw topics and data."""
    if not topics:
        raise UndecodableLog("log has no topics")
    topic0 = "0x" + _hex_bytes(topics[0]).hex()
    name = event_topics().get(topic0)
    if name is None:
        raise UndecodableLog(f"unknown event topic {topic0}")
    abi = event_abis()[name]
    if len(topics) - 1 != len(abi.indexed):
        raise UndecodableLog(f"{name}: expected {len(abi.indexed)} indexed topics, got {len(topics) - 1}")
    try:
        indexed = [
            abi_decode([t], _hex_bytes(topic))[0] for t, topic in zip(abi.indexed, topics[1:], strict=True)
        ]
        values = list(abi_decode(list(abi.data), _hex_bytes(data))) if abi.data else []
    except Exception as exc:  # eth_abi raises several unrelated types for bad input
        raise UndecodableLog(f"{name}: {exc}") from exc
    if name == "ProposalCreated":
        return ProposalCreated(
            int(indexed[0]), int(indexed[1]), to_checksum_address(indexed[2]), int(values[0])
        )
    if name == "VoteCast":
        return VoteCast(int(indexed[0]), to_checksum_address(indexed[1]), bool(values[0]), int(values[1]))
    if name == "ProposalCanceled":
        return ProposalCanceled(int(indexed[0]))
    return ProposalExecuted(int(indexed[0]))
