"""Helpers for the voter tests: a devnet per test, a migrated database, queued work and chain checks."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import keccak
from sqlalchemy import select
from web3 import Web3

from chain.accounts import NodeAccount, node_accounts
from chain.client import ChainClient
from chain.codec import dao_functions
from chain.connection import open_ws
from chain.events import event_topics
from chain.reads import Reads
from chain.types import ProposalData
from core.errors import ChainError
from core.settings import DEFAULT_NODE_STRATEGIES, NodeSettings, PrivateKey, Settings
from core.signals import WorkSignal
from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo, asset_dao
from storage.engine import SessionFactory
from storage.models import Node, Proposal, Vote, VoteTransaction
from storage.proposals import NodeRecord, record_proposal
from tests.support.chain import EVENT_VERSIONS
from tests.support.database import open_database, settings_nodes
from voter.service import Voter

# The vote event of every devnet contract version: production's and upstream's VoteCast, and the
# `unknown` contract's BallotCast (same shape as upstream's: proposal id, voter, support).
VOTE_CAST_TOPICS = [
    *(
        topic
        for version in EVENT_VERSIONS
        for topic, name in event_topics(version).items()
        if name == "VoteCast"
    ),
    "0x" + keccak(text="BallotCast(uint256,address,bool)").hex(),
]


def rpc(url: str, method: str, params: list[Any] | None = None) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


def voter_settings(node: AnvilProcess, info: DevnetInfo, database_url: str, **overrides: Any) -> Settings:
    keys: list[str] = overrides.pop("node_keys", list(info.node_keys))
    nodes = tuple(
        NodeSettings(f"ai-gov-{i:02d}", PrivateKey(key), DEFAULT_NODE_STRATEGIES[(i - 1) % 5])
        for i, key in enumerate(keys, start=1)
    )
    settings = Settings(
        rpc_ws_url=node.ws_url,
        contract_address=info.contract_address,
        nodes=nodes,
        database_url=database_url,
        rpc_timeout=10.0,
    )
    return replace(settings, **overrides)


@dataclass
class Harness:
    """What a voter test needs: chain, settings, database, node rows and a voter factory."""

    node: AnvilProcess
    info: DevnetInfo
    settings: Settings
    sessions: SessionFactory
    accounts: tuple[NodeAccount, ...]
    nodes: list[NodeRecord]
    signal: WorkSignal

    def voter(self, **knobs: Any) -> Voter:
        return Voter(
            self.settings, self.sessions, self.accounts, self.nodes, self.signal, self.info.chain_id, **knobs
        )

    @property
    def addresses(self) -> list[str]:
        return [a.address for a in self.accounts]

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        return rpc(self.node.http_url, method, params)

    def web3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.node.http_url))


async def make_harness(
    node: AnvilProcess, info: DevnetInfo, tmp_path: Path, *, database_url: str | None = None, **overrides: Any
) -> Harness:
    """A harness on `database_url` (the `database_url` fixture: SQLite or PostgreSQL), else an SQLite file."""
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'voter.db'}"
    settings = voter_settings(node, info, url, **overrides)
    db = await open_database(url, settings_nodes(settings))
    return Harness(node, info, settings, db.sessions, node_accounts(settings.nodes), db.nodes, WorkSignal())


async def read_proposals(h: Harness, ids: list[int] | None = None) -> list[ProposalData]:
    async with open_ws(h.node.ws_url) as socket:
        client = ChainClient(socket, h.info.contract_address)
        wanted = ids or list(range(1, await client.proposal_count() + 1))
        read = await Reads(client, batch_size=h.settings.rpc_batch_size).proposals(wanted)
    proposals = []
    for i in wanted:
        answer = read[i]
        if isinstance(answer, ChainError):
            raise answer
        proposals.append(answer)
    return proposals


async def queue_proposals(h: Harness, ids: list[int] | None = None) -> list[ProposalData]:
    """What the listener does: read each proposal and record it with one queued row per node."""
    proposals = await read_proposals(h, ids)
    for data in proposals:
        await record_proposal(
            h.sessions,
            chain_id=h.info.chain_id,
            contract=h.info.contract_address,
            data=data,
            source="backfill",
            node_ids=[n.id for n in h.nodes],
        )
    return proposals


@dataclass(frozen=True)
class VoteRow:
    proposal_id: int
    node: str
    address: str
    state: str
    decision: str | None
    confidence: float | None
    reason: str | None
    tx_hash: str | None
    last_error: str | None


async def vote_rows(sessions: SessionFactory) -> list[VoteRow]:
    async with sessions() as session:
        rows = await session.execute(
            select(
                Proposal.proposal_id,
                Node.name,
                Node.address,
                Vote.state,
                Vote.decision,
                Vote.confidence,
                Vote.reason,
                Vote.tx_hash,
                Vote.last_error,
            )
            .join(Proposal, Proposal.id == Vote.proposal_ref)
            .join(Node, Node.id == Vote.node_id)
            .order_by(Proposal.proposal_id, Node.name)
        )
        return [VoteRow(int(r[0]), *r[1:]) for r in rows.all()]


async def vote_transactions(sessions: SessionFactory) -> list[tuple[int, str, int, str | None]]:
    """(vote id, tx hash, nonce, outcome) of every signed transaction."""
    async with sessions() as session:
        rows = await session.execute(
            select(
                VoteTransaction.vote_id,
                VoteTransaction.tx_hash,
                VoteTransaction.nonce,
                VoteTransaction.outcome,
            ).order_by(VoteTransaction.id)
        )
        return [(int(r[0]), r[1], int(r[2]), r[3]) for r in rows.all()]


def vote_cast_logs(url: str, contract: str) -> list[dict[str, Any]]:
    """Every VoteCast log of the contract (whichever version's), as the node answers eth_getLogs."""
    logs: list[dict[str, Any]] = rpc(
        url,
        "eth_getLogs",
        [{"address": contract, "fromBlock": "0x0", "toBlock": "latest", "topics": [VOTE_CAST_TOPICS]}],
    )
    return logs


def vote_events(url: str, contract: str) -> list[tuple[int, str, bool]]:
    """(proposal id, voter, support) of every VoteCast on chain."""
    logs = vote_cast_logs(url, contract)
    return [
        (
            int(log["topics"][1], 16),
            Web3.to_checksum_address("0x" + log["topics"][2][-40:]),
            int(log["data"][:66], 16) == 1,
        )
        for log in logs
    ]


def check_exactly_once(url: str, contract: str, addresses: list[str]) -> Counter[str]:
    """The invariant: each node's transaction count equals its VoteCast events, and no (proposal, node)
    pair has two votes. Returns the votes per node."""
    # A transaction a killed process had already handed to the node can be mined while we read: read the
    # nonces on both sides of the logs, and again until nothing moved in between.
    for _ in range(50):
        before = [rpc(url, "eth_getTransactionCount", [a, "latest"]) for a in addresses]
        events = vote_events(url, contract)
        nonces = [rpc(url, "eth_getTransactionCount", [a, "latest"]) for a in addresses]
        if nonces == before:
            break
        time.sleep(0.1)
    pairs = Counter((pid, voter) for pid, voter, _ in events)
    assert all(n == 1 for n in pairs.values()), [p for p, n in pairs.items() if n > 1]
    per_node = Counter(voter for _, voter, _ in events)
    for address, raw_nonce in zip(addresses, nonces, strict=True):
        nonce = int(raw_nonce, 16)
        if nonce != per_node[address]:
            raise AssertionError(
                f"{address}: {nonce} transactions, {per_node[address]} votes; its transactions: "
                f"{transactions_of(url, address)}"
            )
    return per_node


def transactions_of(url: str, address: str) -> list[tuple[int, int, str, int]]:
    """(block, nonce, input prefix, receipt status) of every transaction sent by `address`, to explain a
    broken invariant."""
    found = []
    for number in range(int(rpc(url, "eth_blockNumber"), 16) + 1):
        block = rpc(url, "eth_getBlockByNumber", [hex(number), True])
        for tx in block["transactions"]:
            if tx["from"].lower() == address.lower():
                status = int(rpc(url, "eth_getTransactionReceipt", [tx["hash"]])["status"], 16)
                found.append((number, int(tx["nonce"], 16), tx["input"][:74], status))
    return found


def vote_by_hand(url: str, contract: str, key: str, proposal_id: int, support: bool) -> None:
    w3 = Web3(Web3.HTTPProvider(url))
    account = Account.from_key(key)
    tx = (
        asset_dao(w3, contract)
        .functions.vote(proposal_id, support)
        .build_transaction({"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)})
    )
    tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.02)["status"] == 1


def cancel_proposal(url: str, contract: str, proposer_key: str, proposal_id: int) -> None:
    w3 = Web3(Web3.HTTPProvider(url))
    account = Account.from_key(proposer_key)
    tx = (
        asset_dao(w3, contract)
        .functions.cancelProposal(proposal_id)
        .build_transaction({"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)})
    )
    tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.02)["status"] == 1


def has_voted(url: str, contract: str, proposal_id: int, address: str) -> bool:
    data = dao_functions()["hasVoted"].encode(proposal_id, address)
    return int(rpc(url, "eth_call", [{"to": contract, "data": data}, "latest"]), 16) == 1
