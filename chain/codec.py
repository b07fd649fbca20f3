"""Pure ABI encoding and decoding: calls, results and custom errors (events: chain/events.py). No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak

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
        return "0x" + (self.selector + abi_encode(list(self.input_types), list(args))).hex()

    def decode(self, data: bytes) -> tuple[Any, ...]:
        return tuple(abi_decode(list(self.output_types), data))


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
