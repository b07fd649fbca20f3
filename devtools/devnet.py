"""A local devnet: anvil with DLOOP, four asset tokens, the AssetDAO with its price oracle, and proposals.

`deploy_devnet` and `create_proposals` are used by `dloop devnet`, the tests and the benchmarks. Transactions
of one account are signed locally and sent back to back with locally counted nonces, and only then awaited:
49 proposals take a fraction of a second with automine and about one block with `--block-time`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from enum import IntEnum
from importlib.resources import files
from pathlib import Path
from types import FrameType
from typing import Any

from eth_account import Account
from eth_typing import HexStr
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import Web3Exception
from web3.types import Nonce, TxParams, TxReceipt
from web3.utils.address import get_create_address

from core.errors import ChainError, DloopError
from devtools.anvil import ANVIL_BIN_SETTING, ANVIL_KEYS, AnvilProcess

# Package data (pyproject.toml): found the same way in a checkout and in an installed wheel.
ARTIFACTS_DIR = Path(str(files("devtools").joinpath("contracts", "artifacts")))

DEFAULT_PROPOSALS = 49
DEFAULT_VOTING_PERIOD_SECONDS = 3 * 24 * 60 * 60  # production default: 3 days
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

# Gas for a mint of a fresh holder (two zero-to-non-zero stores); estimating is impossible before the
# token's deployment is mined, and a fixed limit lets mints follow the deployments in the same batch.
_MINT_GAS = 120_000
# The same for the oracle's setPrice and the AssetDAO's updatePriceOracle, sent right after the deployments.
_SETTER_GAS = 120_000
_GAS_MARGIN = Decimal("1.25")
_PRIORITY_FEE_WEI = 1_000_000_000
_RECEIPT_TIMEOUT_SECONDS = 120.0


class ProposalType(IntEnum):
    INVESTMENT = 0
    DIVESTMENT = 1
    PARAMETER_CHANGE = 2
    OTHER = 3


@dataclass(frozen=True)
class TokenSpec:
    symbol: str
    name: str
    decimals: int


DLOOP = TokenSpec("DLOOP", "DLOOP Governance Token", 18)
ASSET_TOKENS: tuple[TokenSpec, ...] = (
    TokenSpec("USDC", "USD Coin", 6),
    TokenSpec("EURT", "Euro Tether", 6),
    TokenSpec("WBTC", "Wrapped BTC", 8),
    TokenSpec("PAXG", "Paxos Gold", 18),
)
TOKEN_DECIMALS: Mapping[str, int] = {spec.symbol: spec.decimals for spec in (DLOOP, *ASSET_TOKENS)}

# What `DevPriceOracle` answers for each asset on a fresh devnet: the price of one whole token in the oracle's
# unit (US dollars here), set as price x 1e18 as production's oracle answers. Realistic, so that the
# value-aware thresholds decide the demo's proposals by what they are worth (0.05 WBTC: 3,050).
ASSET_PRICES: Mapping[str, Decimal] = {
    "USDC": Decimal("1"),
    "EURT": Decimal("1.08"),
    "WBTC": Decimal("61000"),
    "PAXG": Decimal("2400"),
}
PRICE_DECIMALS = 18  # getAssetPrice answers prices normalised to 18 decimals

# Deliberately different voting weights (whole DLOOP) for the five nodes, anvil accounts 1-5.
NODE_DLOOP_BALANCES: tuple[int, ...] = (1000, 2000, 1500, 2500, 1200)
PROPOSER_DLOOP_BALANCE = 500
OWNER_ACCOUNT = ANVIL_KEYS[0]
NODE_ACCOUNTS = ANVIL_KEYS[1:6]
PROPOSER_ACCOUNT = ANVIL_KEYS[6]


def to_base_units(amount: Decimal | str | int, decimals: int) -> int:
    """`amount` whole tokens in the token's smallest unit; refuses amounts finer than one unit."""
    scaled = Decimal(amount).scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than {decimals} decimals")
    return int(scaled)


@dataclass(frozen=True)
class PlannedProposal:
    """A proposal to create; `asset_symbol` None means no asset (zero address, amount 0)."""

    proposal_type: ProposalType
    asset_symbol: str | None
    amount_tokens: Decimal
    description: str

    @property
    def amount_units(self) -> int:
        if self.asset_symbol is None:
            return 0
        return to_base_units(self.amount_tokens, TOKEN_DECIMALS[self.asset_symbol])


_INV, _DIV = ProposalType.INVESTMENT, ProposalType.DIVESTMENT
_PARAM, _OTHER = ProposalType.PARAMETER_CHANGE, ProposalType.OTHER

# Amounts straddle the strategy thresholds (1,000 and 5,000 token units) and cover stablecoin and
# non-stablecoin assets in both directions, plus a few parameter changes and "other" proposals.
_CATALOGUE: tuple[tuple[ProposalType, str | None, str, str], ...] = (
    (_INV, "USDC", "500", "Allocate 500 USDC to the stablecoin reserve for Q1 liquidity"),
    (_INV, "USDC", "2500", "Add 2,500 USDC to the market-making float of the DLOOP/USDC pool"),
    (_INV, "WBTC", "0.05", "Buy 0.05 WBTC as a first step towards a long-term BTC treasury position"),
    (_INV, "PAXG", "10", "Invest 10 PAXG to hedge the treasury's inflation exposure with tokenised gold"),
    (_INV, "EURT", "6000", "Move 6,000 EURT into the euro operating budget for contributor grants"),
    (_INV, "EURT", "800", "Top up the EURT payroll buffer with 800 EURT for January contributor payments"),
    (
        _INV,
        "WBTC",
        "1.5",
        "Acquire 1.5 WBTC for the strategic reserve while BTC trades below its 200-day average",
    ),
    (_INV, "USDC", "12000", "Deploy 12,000 USDC into the audited lending vault for a six-month fixed yield"),
    (_DIV, "USDC", "750", "Withdraw 750 USDC from the reserve to pay the Q4 infrastructure invoice"),
    (_DIV, "WBTC", "0.25", "Take profit: sell 0.25 WBTC from the strategic reserve back to stablecoins"),
    (_INV, "PAXG", "1.2", "Add 1.2 PAXG to keep the gold allocation at 5% of the treasury"),
    (_DIV, "EURT", "3000", "Divest 3,000 EURT after the euro grant programme closed under budget"),
    (_PARAM, None, "0", "Extend the voting period from 3 to 5 days so more token holders can take part"),
    (_INV, "USDC", "950", "Fund a 950 USDC bug bounty escrow for the v2 vault contracts"),
    (_INV, "WBTC", "0.4", "Rebalance: add 0.4 WBTC to bring BTC back to its 20% target weight"),
    (_DIV, "PAXG", "5", "Sell 5 PAXG to fund the next two months of operations"),
    (_INV, "EURT", "4500", "Allocate 4,500 EURT to the EU market expansion budget for Q2"),
    (_DIV, "USDC", "8000", "Withdraw 8,000 USDC from the lending vault after its yield fell below 3%"),
    (_OTHER, "USDC", "1000", "Pay 1,000 USDC for an independent security review of the governance contracts"),
    (_INV, "PAXG", "25", "Invest 25 PAXG as a long-duration store of value for the endowment"),
    (_INV, "USDC", "300", "Seed the community events fund with 300 USDC"),
    (_DIV, "WBTC", "0.8", "Reduce BTC exposure by selling 0.8 WBTC ahead of expected volatility"),
    (_INV, "EURT", "1000", "Hold 1,000 EURT for euro-denominated legal and accounting fees"),
    (_INV, "WBTC", "3", "Buy 3 WBTC with last quarter's USDC surplus"),
    (_DIV, "EURT", "450", "Return 450 EURT of unused conference budget to the treasury"),
    (_INV, "USDC", "5000", "Add 5,000 USDC to the protocol-owned liquidity position"),
    (_PARAM, None, "0", "Lower the quorum from 10% to 8% of votes cast"),
    (_INV, "PAXG", "0.5", "Start a small gold position with 0.5 PAXG to test the custody set-up"),
    (_DIV, "USDC", "1500", "Withdraw 1,500 USDC to prepay a year of front-end hosting and RPC service"),
    (_OTHER, None, "0", "Signal vote: adopt the updated contributor code of conduct"),
)


def proposal_plan(count: int, *, first_index: int = 0) -> list[PlannedProposal]:
    """`count` deterministic proposals; entry i is always the same, later rounds repeat the catalogue."""
    plan = []
    for index in range(first_index, first_index + count):
        rounds, position = divmod(index, len(_CATALOGUE))
        proposal_type, symbol, amount, description = _CATALOGUE[position]
        if rounds:
            description = f"{description} (resubmitted, round {rounds + 1})"
        plan.append(PlannedProposal(proposal_type, symbol, Decimal(amount), description))
    return plan


@dataclass(frozen=True)
class DevnetInfo:
    """Everything a client needs to use a deployed devnet. Keys are anvil's public test keys."""

    chain_id: int
    rpc_http_url: str
    contract_address: str
    deployment_block: int
    voting_period: int
    token_addresses: dict[str, str]  # symbol -> address, DLOOP and the four assets
    owner_address: str
    owner_key: str
    node_addresses: tuple[str, ...]
    node_keys: tuple[str, ...]
    node_weights: tuple[int, ...]  # DLOOP balance in wei, i.e. the vote weight
    proposer_address: str
    proposer_key: str
    proposals_created: int = 0
    token_decimals: dict[str, int] = field(default_factory=lambda: dict(TOKEN_DECIMALS))
    events: str = "production"  # which AssetDAO version's events the contract emits (EVENT_SETS)
    # The DevPriceOracle named by the AssetDAO's priceOracle() ("" in a record of an older devnet, which had
    # none) and the prices seeded in it: symbol -> price of one whole token, exact decimal text.
    price_oracle_address: str = ""
    asset_prices: dict[str, str] = field(default_factory=dict)

    @property
    def dloop_token_address(self) -> str:
        return self.token_addresses[DLOOP.symbol]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DevnetInfo:
        data: dict[str, Any] = json.loads(text)
        for name in ("node_addresses", "node_keys", "node_weights"):
            data[name] = tuple(data[name])
        return cls(**data)


# `dloop devnet --events`: the AssetDAO versions the devnet can deploy, by the events they emit. The functions
# are the same in all three; only ProposalCreated and VoteCast differ (devtools/contracts/src/AssetDAO.sol).
EVENT_SETS = {"production": "AssetDAO", "upstream": "AssetDAOUpstream", "unknown": "AssetDAOUnknownEvents"}


def load_artifact(name: str) -> dict[str, Any]:
    """`{"contractName", "abi", "bytecode"}` of a compiled devnet contract."""
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        artifact: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DloopError(f"contract artifact {path} unreadable (run `make compile`): {exc}") from exc
    return artifact


def asset_dao(w3: Web3, address: str) -> Contract:
    """The devnet AssetDAO at `address`, with the devnet artifact's ABI."""
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact("AssetDAO")["abi"])


def price_oracle(w3: Web3, address: str) -> Contract:
    """The devnet's DevPriceOracle at `address`."""
    abi = load_artifact("DevPriceOracle")["abi"]
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)


def price_to_raw(price: Decimal | str | int) -> int:
    """A price of one whole token as `setPrice` takes it and `getAssetPrice` answers it (18 decimals)."""
    return to_base_units(price, PRICE_DECIMALS)


def set_asset_price(w3: Web3, info: DevnetInfo, symbol: str, price: Decimal | str | int) -> None:
    """Move an asset's price on the devnet oracle (owner's transaction, awaited)."""
    oracle = price_oracle(w3, info.price_oracle_address)
    call = oracle.encode_abi("setPrice", args=[info.token_addresses[symbol], price_to_raw(price)])
    with _translated_chain_errors(f"setting the devnet price of {symbol}"):
        sender = _Sender(w3, info.owner_key)
        sender.send(oracle.address, call, sender.estimate(oracle.address, call))
        sender.wait_all()


def set_oracle_reverting(w3: Web3, info: DevnetInfo, reverting: bool) -> None:
    """Make the devnet oracle's getAssetPrice revert (True) or answer again (False)."""
    oracle = price_oracle(w3, info.price_oracle_address)
    call = oracle.encode_abi("setReverting", args=[reverting])
    with _translated_chain_errors("switching the devnet price oracle"):
        sender = _Sender(w3, info.owner_key)
        sender.send(oracle.address, call, sender.estimate(oracle.address, call))
        sender.wait_all()


@contextmanager
def _translated_chain_errors(action: str) -> Iterator[None]:
    """Connection and web3 failures become ChainError naming what was being done."""
    try:
        yield
    except (OSError, Web3Exception) as exc:  # requests' errors are OSErrors
        raise ChainError(f"{action} failed: {exc}") from exc


class _Sender:
    """Signs and sends one account's transactions back to back, counting nonces locally."""

    def __init__(self, w3: Web3, private_key: str) -> None:
        self.w3 = w3
        self.account = Account.from_key(private_key)
        self.chain_id = w3.eth.chain_id
        self.nonce = int(w3.eth.get_transaction_count(self.account.address, "pending"))
        base_fee = w3.eth.get_block("latest").get("baseFeePerGas", 0)
        # Twice the base fee survives several full blocks of base-fee increase.
        self.max_fee = 2 * base_fee + _PRIORITY_FEE_WEI
        self.sent: list[HexBytes] = []

    def estimate(self, to: str | None, data: str) -> int:
        call: TxParams = {"from": self.account.address, "data": HexStr(data)}
        if to is not None:
            call["to"] = Web3.to_checksum_address(to)
        return int(self.w3.eth.estimate_gas(call) * _GAS_MARGIN)

    def send(self, to: str | None, data: str, gas: int) -> int:
        """Send and return the nonce used (a contract created by it lives at `created_address(nonce)`)."""
        nonce = self.nonce
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "gas": gas,
            "maxFeePerGas": self.max_fee,
            "maxPriorityFeePerGas": _PRIORITY_FEE_WEI,
            "value": 0,
            "data": data,
            "type": 2,
        }
        if to is not None:
            tx["to"] = to
        signed = self.account.sign_transaction(tx)
        self.sent.append(self.w3.eth.send_raw_transaction(signed.raw_transaction))
        self.nonce += 1
        return nonce

    def created_address(self, nonce: int) -> str:
        return str(get_create_address(self.account.address, Nonce(nonce)))

    def wait_all(self) -> list[TxReceipt]:
        """Wait for the last transaction (nonces mine in order), then require every one succeeded."""
        if not self.sent:
            return []
        eth = self.w3.eth
        eth.wait_for_transaction_receipt(self.sent[-1], timeout=_RECEIPT_TIMEOUT_SECONDS, poll_latency=0.05)
        receipts = [
            eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.05) for tx_hash in self.sent
        ]
        failed = [receipt["transactionHash"].hex() for receipt in receipts if receipt["status"] != 1]
        if failed:
            raise ChainError(f"{len(failed)} devnet transaction(s) reverted, first {failed[0]}")
        self.sent.clear()
        return receipts


def create_proposals(
    w3: Web3,
    contract_address: str,
    proposer_key: str,
    token_addresses: Mapping[str, str],
    count: int,
    *,
    first_index: int = 0,
) -> list[int]:
    """Create `proposal_plan(count, first_index=...)` from `proposer_key`; returns the new proposal ids."""
    if count <= 0:
        return []
    with _translated_chain_errors("creating devnet proposals"):
        return _create_proposals(w3, contract_address, proposer_key, token_addresses, count, first_index)


def _create_proposals(
    w3: Web3,
    contract_address: str,
    proposer_key: str,
    token_addresses: Mapping[str, str],
    count: int,
    first_index: int,
) -> list[int]:
    dao = asset_dao(w3, contract_address)
    sender = _Sender(w3, proposer_key)
    calls = []
    for planned in proposal_plan(count, first_index=first_index):
        asset = token_addresses[planned.asset_symbol] if planned.asset_symbol else ZERO_ADDRESS
        args = [int(planned.proposal_type), asset, planned.amount_units, planned.description]
        calls.append(dao.encode_abi("createProposal", args=args))
    # Gas grows with the description: one estimate for the longest call covers them all.
    gas = sender.estimate(dao.address, max(calls, key=len))
    for data in calls:
        sender.send(dao.address, data, gas)
    # createProposal emits one event, whichever version's: its first indexed topic is the new id.
    return [
        int.from_bytes(log["topics"][1], "big")
        for receipt in sender.wait_all()
        for log in receipt["logs"]
        if log["address"] == dao.address and len(log["topics"]) > 1
    ]


def deploy_devnet(
    rpc_http_url: str,
    proposals: int = DEFAULT_PROPOSALS,
    *,
    voting_period: int = DEFAULT_VOTING_PERIOD_SECONDS,
    events: str = "production",
) -> DevnetInfo:
    """Deploy DLOOP, USDC, EURT, WBTC, PAXG, the AssetDAO (emitting `events`, a key of EVENT_SETS) and its
    price oracle (seeded with ASSET_PRICES) from anvil account 0, fund the five nodes and the proposer with
    DLOOP, and create `proposals` proposals."""
    if events not in EVENT_SETS:
        raise DloopError(f"unknown event set {events!r}: choose one of {', '.join(EVENT_SETS)}")
    with _translated_chain_errors(f"deploying the devnet on {rpc_http_url}"):
        return _deploy_devnet(rpc_http_url, proposals, voting_period, events)


def _deploy_devnet(rpc_http_url: str, proposals: int, voting_period: int, events: str) -> DevnetInfo:
    w3 = Web3(Web3.HTTPProvider(rpc_http_url, request_kwargs={"timeout": 30}))
    owner = _Sender(w3, OWNER_ACCOUNT.private_key)
    token_artifact = load_artifact("DevToken")
    token_factory = w3.eth.contract(abi=token_artifact["abi"], bytecode=token_artifact["bytecode"])

    token_addresses: dict[str, str] = {}
    for spec in (DLOOP, *ASSET_TOKENS):
        data = token_factory.constructor(spec.name, spec.symbol, spec.decimals).data_in_transaction
        token_addresses[spec.symbol] = owner.created_address(
            owner.send(None, data, owner.estimate(None, data))
        )

    dao_artifact = load_artifact(EVENT_SETS[events])
    dao_factory = w3.eth.contract(abi=dao_artifact["abi"], bytecode=dao_artifact["bytecode"])
    data = dao_factory.constructor(token_addresses[DLOOP.symbol], voting_period).data_in_transaction
    dao_nonce = owner.send(None, data, owner.estimate(None, data))
    contract_address = owner.created_address(dao_nonce)

    # The oracle after the AssetDAO: the contract's address stays what it was before the devnet had one.
    oracle_artifact = load_artifact("DevPriceOracle")
    data = (
        w3.eth.contract(abi=oracle_artifact["abi"], bytecode=oracle_artifact["bytecode"])
        .constructor()
        .data_in_transaction
    )
    oracle_address = owner.created_address(owner.send(None, data, owner.estimate(None, data)))
    oracle = w3.eth.contract(address=Web3.to_checksum_address(oracle_address), abi=oracle_artifact["abi"])
    for symbol, price in ASSET_PRICES.items():
        call = oracle.encode_abi("setPrice", args=[token_addresses[symbol], price_to_raw(price)])
        owner.send(oracle.address, call, _SETTER_GAS)
    dao = w3.eth.contract(address=Web3.to_checksum_address(contract_address), abi=dao_artifact["abi"])
    owner.send(dao.address, dao.encode_abi("updatePriceOracle", args=[oracle.address]), _SETTER_GAS)

    dloop = w3.eth.contract(
        address=Web3.to_checksum_address(token_addresses[DLOOP.symbol]), abi=token_artifact["abi"]
    )
    holders = [
        (node.address, balance) for node, balance in zip(NODE_ACCOUNTS, NODE_DLOOP_BALANCES, strict=True)
    ]
    holders.append((PROPOSER_ACCOUNT.address, PROPOSER_DLOOP_BALANCE))
    for holder, balance in holders:
        owner.send(
            dloop.address,
            dloop.encode_abi("mint", args=[holder, to_base_units(balance, DLOOP.decimals)]),
            _MINT_GAS,
        )

    receipts = owner.wait_all()
    deployment_block = next(r["blockNumber"] for r in receipts if r["contractAddress"] == contract_address)
    proposal_ids = create_proposals(
        w3, contract_address, PROPOSER_ACCOUNT.private_key, token_addresses, proposals
    )

    return DevnetInfo(
        chain_id=owner.chain_id,
        rpc_http_url=rpc_http_url,
        contract_address=contract_address,
        deployment_block=deployment_block,
        voting_period=voting_period,
        token_addresses=token_addresses,
        owner_address=OWNER_ACCOUNT.address,
        owner_key=OWNER_ACCOUNT.private_key,
        node_addresses=tuple(node.address for node in NODE_ACCOUNTS),
        node_keys=tuple(node.private_key for node in NODE_ACCOUNTS),
        node_weights=tuple(to_base_units(balance, DLOOP.decimals) for balance in NODE_DLOOP_BALANCES),
        proposer_address=PROPOSER_ACCOUNT.address,
        proposer_key=PROPOSER_ACCOUNT.private_key,
        proposals_created=len(proposal_ids),
        events=events,
        price_oracle_address=oracle_address,
        asset_prices={symbol: str(price) for symbol, price in ASSET_PRICES.items()},
    )


def env_file_values(info: DevnetInfo, ws_url: str) -> dict[str, str]:
    """The settings `dloop` reads, pointing at this devnet."""
    values = {
        "DLOOP_RPC_WS_URL": ws_url,
        "DLOOP_RPC_HTTP_URL": info.rpc_http_url,
        "DLOOP_CHAIN_ID": str(info.chain_id),
        "DLOOP_CONTRACT_ADDRESS": info.contract_address,
        "DLOOP_START_BLOCK": str(info.deployment_block),
    }
    for number, key in enumerate(info.node_keys, start=1):
        values[f"AI_NODE_{number}_PRIVATE_KEY"] = key
    values["DLOOP_DLOOP_TOKEN_ADDRESS"] = info.dloop_token_address
    for spec in ASSET_TOKENS:
        values[f"DLOOP_ASSET_{spec.symbol}_ADDRESS"] = info.token_addresses[spec.symbol]
    values["DLOOP_DEVNET_PROPOSER_KEY"] = info.proposer_key
    return values


def write_env_file(path: Path, info: DevnetInfo, ws_url: str) -> None:
    """Write `KEY=value` lines for `set -a; . FILE; set +a`, atomically and readable by the owner only."""
    lines = ["# Written by `dloop devnet`: anvil's public test keys, local chain only."]
    lines += [f"{key}={value}" for key, value in env_file_values(info, ws_url).items()]
    _write_file(path, "\n".join(lines) + "\n", mode=0o600)


def _write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` atomically: readers polling for the file never see half of it."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text)
        partial.chmod(mode)
        os.replace(partial, path)
    except OSError as exc:
        raise DloopError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --- the `dloop devnet` command -------------------------------------------------------------------------


def add_devnet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=8545, help="JSON-RPC port (HTTP and WebSocket), 0 = any free"
    )
    parser.add_argument(
        "--block-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="mine on an interval instead of automine",
    )
    parser.add_argument(
        "--state", type=Path, default=None, metavar="FILE", help="keep the chain in FILE across restarts"
    )
    parser.add_argument(
        "--proposals",
        type=int,
        default=DEFAULT_PROPOSALS,
        metavar="N",
        help="proposals to create on a new chain",
    )
    parser.add_argument(
        "--events",
        choices=list(EVENT_SETS),
        default="production",
        help="which AssetDAO version's events the contract emits (production: the verified Sepolia ABI; "
        "upstream: the published source; unknown: neither)",
    )
    parser.add_argument(
        "--env-file", type=Path, default=Path(".env.devnet"), help="where to write the settings"
    )
    parser.add_argument(
        "--anvil-bin",
        default=None,
        metavar="PATH",
        help=f"anvil executable (default: ${ANVIL_BIN_SETTING}, pinned)",
    )


def sidecar_path(state_file: Path) -> Path:
    """Where the deployment of a `--state` chain is recorded (next to the state file)."""
    return state_file.with_name(f"{state_file.name}.devnet.json")


def _restored_deployment(state_file: Path | None, rpc_http_url: str) -> DevnetInfo | None:
    """The deployment recorded for a restored `--state` chain, if its contract is really on this chain."""
    if state_file is None or not sidecar_path(state_file).is_file():
        return None
    try:
        info = DevnetInfo.from_json(sidecar_path(state_file).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None
    w3 = Web3(Web3.HTTPProvider(rpc_http_url))
    if w3.eth.chain_id != info.chain_id or not w3.eth.get_code(
        Web3.to_checksum_address(info.contract_address)
    ):
        return None
    return replace(info, rpc_http_url=rpc_http_url, proposals_created=0)


def _print_summary(info: DevnetInfo, anvil: AnvilProcess, env_file: Path, reused: bool) -> None:
    w3 = Web3(Web3.HTTPProvider(info.rpc_http_url))
    on_chain = asset_dao(w3, info.contract_address).functions.getProposalCount().call()
    mining = f"every {anvil.block_time:g} s" if anvil.block_time else "automine"
    lines = [
        f"devnet ready ({'restored from ' + str(anvil.state_file) if reused else 'fresh deployment'})",
        f"  chain id        {info.chain_id} ({mining})",
        f"  RPC             {info.rpc_http_url}  {anvil.ws_url}",
        f"  AssetDAO        {info.contract_address} (deployed in block {info.deployment_block}, "
        f"{info.events} events)",
    ]
    lines += [
        f"  {symbol:<15} {address}"
        + (f" (price {Decimal(info.asset_prices[symbol]):,})" if symbol in info.asset_prices else "")
        for symbol, address in info.token_addresses.items()
    ]
    if info.price_oracle_address:
        lines.append(f"  price oracle    {info.price_oracle_address} (DevPriceOracle, prices in USD)")
    for number, (address, weight) in enumerate(
        zip(info.node_addresses, info.node_weights, strict=True), start=1
    ):
        lines.append(f"  node {number}          {address} ({weight // 10**18:,} DLOOP)")
    lines += [
        f"  proposer        {info.proposer_address}",
        f"  proposals       {info.proposals_created} created now, {on_chain} on chain",
        f"  env file        {env_file}",
        f"load it with:     set -a; . {env_file}; set +a",
        "Ctrl-C stops the chain.",
    ]
    print("\n".join(lines), flush=True)


def devnet_command(args: argparse.Namespace) -> int:
    """Run anvil with a deployed devnet until SIGINT or SIGTERM; exit 0 after a clean stop."""
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    # Handlers first: a stop during deployment must still end with anvil stopped (and its state dumped).
    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        anvil_bin = args.anvil_bin or os.environ.get(ANVIL_BIN_SETTING)
        state_file: Path | None = args.state
        with AnvilProcess(
            binary=anvil_bin, port=args.port, block_time=args.block_time, state_file=state_file
        ) as anvil:
            with _translated_chain_errors("reading the restored devnet"):
                info = _restored_deployment(state_file, anvil.http_url)
            reused = info is not None
            if info is None:
                info = deploy_devnet(anvil.http_url, args.proposals, events=args.events)
                if state_file is not None:
                    _write_file(sidecar_path(state_file), info.to_json())
            write_env_file(args.env_file, info, anvil.ws_url)
            with _translated_chain_errors("reading the devnet"):
                _print_summary(info, anvil, args.env_file, reused)
            while not stop_requested.wait(0.25):
                if not anvil.running:
                    print("dloop: error: anvil exited unexpectedly", file=sys.stderr, flush=True)
                    return 1
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
