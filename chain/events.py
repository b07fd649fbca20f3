"""The AssetDAO's events in every version met in the wild, decoded by topic; and which version a deployed
contract is, read from its runtime bytecode. Pure, no I/O.

Two versions differ in the two events the service acts on (shared/reference/assetdao.md):
- production (the verified Sepolia ABI): `ProposalCreated(uint256 indexed proposalId, uint256 indexed assetId,
  address indexed proposer, uint8 proposalType)`, `VoteCast(uint256 indexed proposalId, address indexed voter,
  bool support, uint256 weight)`;
- upstream (the published source): `ProposalCreated(uint256 indexed proposalId, address indexed proposer,
  string description)`, `VoteCast(uint256 indexed proposalId, address indexed voter, bool support)`.
Both have `ProposalCanceled(uint256 indexed)` and `ProposalExecuted(uint256 indexed)` and the same other
events (assets, roles, parameters), which the service knows and ignores. Any other topic is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak

from chain.abis import assetdao_abi
from chain.codec import canonical_type, checksum, dao_functions, decode_plain

PRODUCTION = "production"
UPSTREAM = "upstream"
VERSIONS = (PRODUCTION, UPSTREAM)

# The functions the service calls on the contract: without any of them it cannot vote.
REQUIRED_FUNCTIONS = ("getProposal", "getProposalCount", "hasVoted", "vote")


# -- the events the service acts on --------------------------------------------------------------------


@dataclass(frozen=True)
class ProposalCreated:
    proposal_id: int
    proposer: str
    asset_id: int | None = None  # production only
    proposal_type: int | None = None  # production only
    description: str | None = None  # upstream only


@dataclass(frozen=True)
class VoteCast:
    proposal_id: int
    voter: str
    support: bool
    weight: int | None = None  # production only: upstream's event carries no weight


@dataclass(frozen=True)
class ProposalCanceled:
    proposal_id: int


@dataclass(frozen=True)
class ProposalExecuted:
    proposal_id: int


ChainEvent = ProposalCreated | VoteCast | ProposalCanceled | ProposalExecuted
FOLLOWED = ("ProposalCreated", "VoteCast", "ProposalCanceled", "ProposalExecuted")


@dataclass(frozen=True)
class OtherEvent:
    """A known event of the contract that the service does not act on (an asset, a role, a parameter)."""

    name: str


class UndecodableLog(ValueError):
    """A log of a followed event whose topics or data do not decode."""


class UnknownEvent(UndecodableLog):
    """A log whose topic is no event of any known AssetDAO version."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"unknown event topic {topic}")
        self.topic = topic


# -- signatures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventAbi:
    name: str
    inputs: tuple[tuple[str, bool], ...]  # (type, indexed) in declared order
    versions: tuple[str, ...] = VERSIONS

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(t for t, _ in self.inputs)})"

    @property
    def topic(self) -> str:
        return "0x" + keccak(text=self.signature).hex()

    @property
    def indexed(self) -> tuple[str, ...]:
        return tuple(t for t, is_indexed in self.inputs if is_indexed)

    @property
    def data(self) -> tuple[str, ...]:
        return tuple(t for t, is_indexed in self.inputs if not is_indexed)


_UPSTREAM_ONLY = (
    EventAbi("ProposalCreated", (("uint256", True), ("address", True), ("string", False)), (UPSTREAM,)),
    EventAbi("VoteCast", (("uint256", True), ("address", True), ("bool", False)), (UPSTREAM,)),
)
_DIFFERING = {abi.name for abi in _UPSTREAM_ONLY}


@cache
def known_events() -> dict[str, EventAbi]:
    """topic0 -> the event, for every event of both versions."""
    found: dict[str, EventAbi] = {}
    for item in assetdao_abi():
        if item.get("type") == "event":
            name = str(item["name"])
            inputs = tuple((canonical_type(p), bool(p["indexed"])) for p in item["inputs"])
            abi = EventAbi(name, inputs, (PRODUCTION,) if name in _DIFFERING else VERSIONS)
            found[abi.topic] = abi
    for abi in _UPSTREAM_ONLY:
        found[abi.topic] = abi
    return found


def event_topics(version: str = PRODUCTION) -> dict[str, str]:
    """topic0 -> name of the four followed events as `version` emits them."""
    return {
        t: abi.name for t, abi in known_events().items() if abi.name in FOLLOWED and version in abi.versions
    }


@cache
def proposal_created_topics() -> dict[str, str]:
    """topic0 of each version's ProposalCreated -> the version."""
    return {t: abi.versions[0] for t, abi in known_events().items() if abi.name == "ProposalCreated"}


def event_name(topic0: str) -> str | None:
    abi = known_events().get(topic0.lower())
    return None if abi is None else abi.name


# -- decoding ------------------------------------------------------------------------------------------


def _hex_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return bytes.fromhex(str(value).removeprefix("0x"))


def decode_log(topics: Sequence[Any], data: Any) -> ChainEvent | OtherEvent:
    """A followed event of either version, or OtherEvent for a known one the service ignores. Raises
    UnknownEvent for a topic of no known version, UndecodableLog for a followed event that does not decode."""
    if not topics:
        raise UndecodableLog("log has no topics")
    topic0 = "0x" + _hex_bytes(topics[0]).hex()
    abi = known_events().get(topic0)
    if abi is None:
        raise UnknownEvent(topic0)
    if abi.name not in FOLLOWED:
        return OtherEvent(abi.name)
    if len(topics) - 1 != len(abi.indexed):
        raise UndecodableLog(f"{abi.name}: expected {len(abi.indexed)} indexed topics, got {len(topics) - 1}")
    try:
        indexed = [
            _decode((t,), _hex_bytes(topic))[0] for t, topic in zip(abi.indexed, topics[1:], strict=True)
        ]
        values = list(_decode(abi.data, _hex_bytes(data))) if abi.data else []
    except Exception as exc:  # eth_abi raises several unrelated types for bad input
        raise UndecodableLog(f"{abi.name}: {exc}") from exc
    return _event(abi, indexed, values)


def _decode(kinds: tuple[str, ...], data: bytes) -> tuple[Any, ...]:
    # A burst brings thousands of VoteCast and ProposalCreated logs: plain layouts skip eth_abi's setup.
    fast = decode_plain(kinds, data)
    return fast if fast is not None else tuple(abi_decode(list(kinds), data))


def _event(abi: EventAbi, indexed: list[Any], values: list[Any]) -> ChainEvent:
    upstream = abi.versions == (UPSTREAM,)
    if abi.name == "ProposalCreated":
        if upstream:
            return ProposalCreated(int(indexed[0]), checksum(indexed[1]), description=str(values[0]))
        return ProposalCreated(
            int(indexed[0]),
            checksum(indexed[2]),
            asset_id=int(indexed[1]),
            proposal_type=int(values[0]),
        )
    if abi.name == "VoteCast":
        weight = None if upstream else int(values[1])
        return VoteCast(int(indexed[0]), checksum(indexed[1]), bool(values[0]), weight)
    if abi.name == "ProposalCanceled":
        return ProposalCanceled(int(indexed[0]))
    return ProposalExecuted(int(indexed[0]))


# -- which version a deployed contract is ---------------------------------------------------------------

_PUSH1, _PUSH32 = 0x60, 0x7F


def push_constants(code: bytes) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """(4-byte values, 32-byte values) pushed by the runtime bytecode, walked opcode by opcode so that data
    of a PUSH is never read as an opcode. Selectors are pushed with PUSH4 (PUSH1-3 when they start with zero
    bytes), event topics with PUSH32 (shorter when they start with zero bytes): both are padded."""
    small: set[bytes] = set()
    words: set[bytes] = set()
    i = 0
    while i < len(code):
        op = code[i]
        if _PUSH1 <= op <= _PUSH32:
            size = op - _PUSH1 + 1
            value = code[i + 1 : i + 1 + size]
            if size <= 4:
                small.add(value.rjust(4, b"\0"))
            if size >= 24:
                words.add(value.rjust(32, b"\0"))
            i += 1 + size
        else:
            i += 1
    return frozenset(small), frozenset(words)


@dataclass(frozen=True)
class ContractVersion:
    """What the runtime bytecode says: the versions whose ProposalCreated it can emit, the functions the
    service calls that it lacks."""

    versions: tuple[str, ...]
    missing_functions: tuple[str, ...]

    @property
    def name(self) -> str:
        """ "production", "upstream", both joined with "+", or "unknown"."""
        return "+".join(self.versions) or "unknown"

    @property
    def knows_proposals(self) -> bool:
        return bool(self.versions)


def detect_version(code: bytes | str) -> ContractVersion:
    raw = _hex_bytes(code) if isinstance(code, str) else code
    selectors, words = push_constants(raw)
    functions = dao_functions()
    missing = tuple(name for name in REQUIRED_FUNCTIONS if functions[name].selector not in selectors)
    versions = tuple(
        version
        for version in VERSIONS
        for topic, of in proposal_created_topics().items()
        if of == version and _hex_bytes(topic) in words
    )
    return ContractVersion(versions, missing)
