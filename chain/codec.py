"""Pure ABI encoding and decoding: calls, results and custom errors (events: chain/events.py). No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from typing import Any, cast

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from chain.abis import Abi, assetdao_abi, erc20_abi, price_oracle_abi


def canonical_type(param: Mapping[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param["components"])
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
        # hasVoted(uint256,address) and the like, thousands per reconcile pass: one 32-byte word per argument
        # without eth_abi's per-call setup; anything else (or a value it would refuse) goes through eth_abi.
        words = [_static_word(kind, value) for kind, value in zip(self.input_types, args, strict=False)]
        if len(args) == len(self.input_types) and None not in words:
            return "0x" + self.selector.hex() + b"".join(cast(list[bytes], words)).hex()
        return "0x" + (self.selector + abi_encode(list(self.input_types), list(args))).hex()

    def decode(self, data: bytes) -> tuple[Any, ...]:
        fast = decode_plain(self.output_types, data)
        return fast if fast is not None else tuple(abi_decode(list(self.output_types), data))


_WORD = 32
_UINT_BITS = {f"uint{bits}": bits for bits in range(8, 257, 8)}
_FALSE, _TRUE = bytes(_WORD), (1).to_bytes(_WORD, "big")


@lru_cache(maxsize=1024)
def _address_word(value: str) -> bytes:
    """eth_abi's own encoding (and checks) of an address, once per address: the nodes' few repeat."""
    return abi_encode(["address"], [value])


def _static_word(kind: str, value: Any) -> bytes | None:
    """The ABI word of a uintN, bool or address argument that eth_abi would accept as is; None otherwise."""
    if kind == "address" and isinstance(value, str):
        return _address_word(value)
    if kind == "bool" and isinstance(value, bool):
        return _TRUE if value else _FALSE
    bits = _UINT_BITS.get(kind)
    if bits is not None and type(value) is int and 0 <= value < 1 << bits:
        return value.to_bytes(_WORD, "big")
    return None


def decode_plain(kinds: tuple[str, ...], data: bytes) -> tuple[Any, ...] | None:
    """Values made only of uintN, bool and address words and `string`/`bytes` tails, laid out exactly as
    eth_abi encodes them (each tail right after the one before, zero padding, nothing after the last), decoded
    as eth_abi would: contract results (getProposal), event data (ProposalCreated's description), topics.
    None sends anything else (other types, padding or pointers eth_abi would check or follow, invalid UTF-8,
    short or long data) through eth_abi, which decodes it or raises its own error."""
    head = _WORD * len(kinds)
    if not kinds or len(data) < head:
        return None
    values: list[Any] = []
    tail = head  # where the next string or bytes must start
    for index, kind in enumerate(kinds):
        word = int.from_bytes(data[index * _WORD : (index + 1) * _WORD], "big")
        if kind == "bool" and word <= 1:
            values.append(word == 1)
        elif kind == "address" and not word >> 160:
            values.append("0x" + data[index * _WORD + 12 : (index + 1) * _WORD].hex())  # eth_abi's lowercase
        elif kind in ("string", "bytes"):
            if word != tail or tail + _WORD > len(data):
                return None
            size = int.from_bytes(data[tail : tail + _WORD], "big")
            end = tail + _WORD + size
            padded = tail + _WORD + -(-size // _WORD) * _WORD
            if padded > len(data) or any(data[end:padded]):
                return None
            raw = data[tail + _WORD : end]
            if kind == "bytes":
                values.append(raw)
            else:
                try:
                    values.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    return None
            tail = padded
        else:
            bits = _UINT_BITS.get(kind)
            if bits is None or word >> bits:
                return None
            values.append(word)
    return tuple(values) if tail == len(data) else None


@lru_cache(maxsize=4096)
def checksum(address: str) -> str:
    """`to_checksum_address` once per address (a keccak each time): the logs and proposals of a burst or a
    reconcile pass name the same few nodes, assets and proposers over and over."""
    return to_checksum_address(address)


def functions_of(abi: Abi) -> dict[str, AbiFunction]:
    return {
        str(item["name"]): AbiFunction(
            str(item["name"]),
            tuple(canonical_type(p) for p in item.get("inputs", [])),
            tuple(canonical_type(p) for p in item.get("outputs", [])),
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


@cache
def oracle_functions() -> dict[str, AbiFunction]:
    return functions_of(price_oracle_abi())


# -- custom errors --------------------------------------------------------------------------------------


@cache
def error_names() -> dict[bytes, str]:
    names = {}
    for item in assetdao_abi():
        if item.get("type") == "error":
            sig = f"{item['name']}({','.join(canonical_type(p) for p in item.get('inputs', []))})"
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
