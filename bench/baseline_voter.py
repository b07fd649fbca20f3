"""The latency baseline: the least a voter can do. Subscribe (web3 WebSocket), and the instant a
ProposalCreated log arrives sign and send one vote per node, with nonces counted locally and fees fixed in
advance.

No reads, no strategy, no database, no retry: the floor the real service is compared against. Run as its own
process, like the service: `python bench/baseline_voter.py --ws-url ... --contract ...`, node keys in
the BENCH_NODE_KEYS environment variable (comma-separated; anvil's public test keys). Prints `ready` once
subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from eth_account import Account
from web3 import AsyncWeb3, WebSocketProvider

from chain.codec import dao_functions
from chain.events import event_topics

PRIORITY_FEE = 1_000_000_000
VOTE_GAS = 200_000


class Node:
    def __init__(self, key: str, chain_id: int, nonce: int, max_fee: int) -> None:
        self.account = Account.from_key(key)
        self.chain_id = chain_id
        self.nonce = nonce
        self.max_fee = max_fee

    def sign_vote(self, contract: str, data: str) -> bytes:
        tx = {
            "chainId": self.chain_id,
            "nonce": self.nonce,
            "gas": VOTE_GAS,
            "maxFeePerGas": self.max_fee,
            "maxPriorityFeePerGas": PRIORITY_FEE,
            "value": 0,
            "to": contract,
            "data": data,
            "type": 2,
        }
        self.nonce += 1
        return bytes(self.account.sign_transaction(tx).raw_transaction)


async def run(ws_url: str, contract: str, keys: list[str]) -> None:
    created_topic = next(t for t, name in event_topics().items() if name == "ProposalCreated")
    vote = dao_functions()["vote"]
    provider = WebSocketProvider(ws_url, websocket_kwargs={"max_size": None})
    w3: AsyncWeb3[Any] = AsyncWeb3(provider)
    await provider.connect()
    try:
        contract = AsyncWeb3.to_checksum_address(contract)
        chain_id = await w3.eth.chain_id
        base_fee = int((await w3.eth.get_block("latest")).get("baseFeePerGas", 0))
        max_fee = 4 * base_fee + PRIORITY_FEE
        nodes = []
        for key in keys:
            address = Account.from_key(key).address
            nonce = await w3.eth.get_transaction_count(address, "pending")
            nodes.append(Node(key, chain_id, int(nonce), max_fee))
        await w3.eth.subscribe("logs", {"address": contract, "topics": [created_topic]})
        print("ready", flush=True)
        sends: set[asyncio.Task[Any]] = set()
        async for message in w3.socket.process_subscriptions():
            log = message["result"]
            proposal_id = int.from_bytes(bytes(log["topics"][1]), "big")
            data = vote.encode(proposal_id, True)
            for node in nodes:
                raw = node.sign_vote(contract, data)
                task = asyncio.create_task(w3.eth.send_raw_transaction(raw))
                sends.add(task)
                task.add_done_callback(sends.discard)
                await asyncio.sleep(0)  # let this vote go out before signing the next one
    finally:
        await provider.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ws-url", required=True)
    parser.add_argument("--contract", required=True)
    args = parser.parse_args()
    if not args.ws_url.startswith("ws://127.0.0.1:"):
        parser.error("the baseline talks to 127.0.0.1 only")
    keys = [k for k in os.environ.get("BENCH_NODE_KEYS", "").split(",") if k]
    if not keys:
        parser.error("BENCH_NODE_KEYS is empty")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.ws_url, args.contract, keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
