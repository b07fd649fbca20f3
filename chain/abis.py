"""ABIs shipped with the package: the production AssetDAO ABI, a minimal ERC-20 and the price oracle's
`getAssetPrice(address)` (the contract named by AssetDAO's `priceOracle()`)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ABI_DIR = Path(__file__).resolve().parent / "abi"

Abi = list[dict[str, Any]]


def _load(name: str) -> Abi:
    data = json.loads((ABI_DIR / name).read_text())
    return list(data["abi"] if isinstance(data, dict) else data)


@cache
def assetdao_abi() -> Abi:
    return _load("assetdao.production.json")


@cache
def erc20_abi() -> Abi:
    return _load("erc20.json")


@cache
def price_oracle_abi() -> Abi:
    return _load("price_oracle.json")
