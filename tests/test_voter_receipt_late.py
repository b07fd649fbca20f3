"""A mined vote whose receipt the node serves late is confirmed, not marked `already_voted`.

In a long benchmark a few rows ended `already_voted` ("nonce N was used by a transaction that is not one of
this vote's, and hasVoted is true") although their own transaction was mined with status 1: anvil under load
counted the nonce (`eth_getTransactionCount` latest) before it served the receipt, so the lane's watcher
(`ReceiptWatcher.check` -> `_nonce_used_elsewhere`) polled the receipts once more, got none, and took the
nonce for someone else's. Here the real voter (in-process, the code path of `dloop run`, no listener: the
VoteCast log would confirm the row by itself) talks to anvil (automine) through a TCP proxy that answers
`eth_getTransactionReceipt` with null for one vote transaction of ai-gov-01 (single requests and entries of
JSON-RPC batches; everything else is anvil's own answer) until the watcher has been through that check
twice. Then the receipt is served again: the row must end `confirmed` with that transaction, and nothing
may have been sent again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from eth_account import Account
from eth_utils import keccak

from tests.support.chain import devnet_chain
from tests.support.proxy import TcpProxy, answer_null_for
from tests.support.voter import (
    check_exactly_once,
    make_harness,
    queue_proposals,
    vote_rows,
    vote_transactions,
)
from tests.support.waiting import wait_until

# slow: starts its own anvil and a proxy
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PROPOSALS = 2  # two votes per node: the lane broadcasts and polls receipts in JSON-RPC batches


class LateReceipt:
    """A `TcpProxy.intercept` that hides the receipt of `sender`'s first vote transaction while `hiding`.

    The transaction is found in the client's `eth_sendRawTransaction` (its hash is the keccak of the raw
    bytes). A single receipt request for it is answered null at once; a batch holding one is sent to anvil
    over HTTP (the same node) and its answer returned with that entry set to null. It also counts what the
    lane asks about the transaction, to show which path the watcher took."""

    def __init__(self, http_url: str, sender: str) -> None:
        self.http_url = http_url
        self.sender = sender.lower()
        self.hiding = True
        self.target: str | None = None  # the hidden transaction's hash, lower case
        self.nulls_served = 0
        self.nulls_in_batches = 0
        self.asked_by_hash = 0  # eth_getTransactionByHash for the target while hidden
        self.asked_nonce = 0  # eth_getTransactionCount(sender, latest) while hidden

    def _observe(self, request: Any) -> None:
        if not isinstance(request, dict):
            return
        method, params = request.get("method"), request.get("params") or []
        if method == "eth_sendRawTransaction" and self.target is None:
            raw = str(params[0])
            if Account.recover_transaction(raw).lower() == self.sender:
                self.target = "0x" + keccak(hexstr=raw).hex()
        elif self.hiding and method == "eth_getTransactionByHash" and self._is_target(params):
            self.asked_by_hash += 1
        elif (
            self.hiding
            and method == "eth_getTransactionCount"
            and [str(p).lower() for p in params] == [self.sender, "latest"]
        ):
            self.asked_nonce += 1

    def _is_target(self, params: Any) -> bool:
        return self.target is not None and bool(params) and str(params[0]).lower() == self.target

    def _hidden(self, request: Any) -> bool:
        return (
            self.hiding
            and isinstance(request, dict)
            and request.get("method") == "eth_getTransactionReceipt"
            and self._is_target(request.get("params"))
        )

    def __call__(self, text: str) -> str | None:
        message = json.loads(text)
        for request in message if isinstance(message, list) else [message]:
            self._observe(request)
        answer, nulled = answer_null_for(text, self.http_url, self._hidden)
        self.nulls_served += len(nulled)
        if isinstance(message, list):
            self.nulls_in_batches += len(nulled)
        return answer


async def test_a_mined_vote_whose_receipt_comes_late_is_confirmed_not_already_voted(tmp_path: Path) -> None:
    with devnet_chain(PROPOSALS) as (node, info):
        async with TcpProxy(node.port, record=False) as proxy:
            # replace_after_blocks=1: the watcher checks a transaction without a receipt as soon as one
            # block has passed since it was sent (under automine its own block does), instead of waiting
            # for three blocks or a 5 s stall of the chain.
            h = await make_harness(node, info, tmp_path, rpc_ws_url=proxy.ws_url, replace_after_blocks=1)
            late = LateReceipt(node.http_url, h.addresses[0])
            proxy.intercept = late
            await queue_proposals(h)
            voter = h.voter(poll_interval=0.3, receipt_poll_interval=0.05)

            async def hidden_row_state() -> str | None:
                rows = [
                    r for r in await vote_rows(h.sessions) if r.tx_hash and r.tx_hash.lower() == late.target
                ]
                return rows[0].state if rows else None

            async def watcher_went_through_check() -> bool:
                state = await hidden_row_state()
                # Old code: the row leaves `sent` (already_voted) at the first check; new code: it stays
                # `sent` while the lane asked twice whether its own transaction is in a block.
                return state not in (None, "sent") or (state == "sent" and late.asked_by_hash >= 2)

            async with anyio.create_task_group() as tg:
                await tg.start(voter.run)
                await wait_until(lambda: late.target is not None, timeout=10)
                target = late.target
                assert target is not None
                # The hidden transaction is mined (anvil counts its nonce) while its receipt is not served.
                await wait_until(
                    lambda: (h.rpc("eth_getTransactionByHash", [target]) or {}).get("blockNumber")
                )
                h.rpc("evm_mine")  # one more (empty) block: the watcher polls receipts on a new head
                await wait_until(watcher_went_through_check, timeout=15)
                state_while_hidden = await hidden_row_state()
                nulls_while_hidden = late.nulls_served
                late.hiding = False  # the node serves the receipt from now on
                await wait_until(lambda: _all_settled(h.sessions, PROPOSALS * len(h.accounts)), timeout=10)
                tg.cancel_scope.cancel()

        rows = await vote_rows(h.sessions)
        txs = await vote_transactions(h.sessions)
        per_node = check_exactly_once(node.http_url, info.contract_address, h.addresses)

    [hidden] = [r for r in rows if r.tx_hash and r.tx_hash.lower() == target]
    assert (hidden.node, hidden.state) == ("ai-gov-01", "confirmed"), hidden
    assert state_while_hidden == "sent", state_while_hidden
    assert all(r.state == "confirmed" for r in rows), [r for r in rows if r.state != "confirmed"]
    # The receipt really was withheld from the watcher: at the new head's poll, inside a batch while the
    # lane's other vote was still tracked, and again in `_nonce_used_elsewhere` after `check()` saw the
    # nonce used; the lane then asked the node about its own transaction instead of deciding.
    assert nulls_while_hidden >= 3 and late.nulls_in_batches >= 1, (nulls_while_hidden, late.nulls_in_batches)
    assert late.asked_nonce >= 1 and late.asked_by_hash >= 2, (late.asked_nonce, late.asked_by_hash)
    # Nothing resent or re-signed: one signed transaction per vote, each mined; per node the on-chain
    # transaction count equals its VoteCast events, one per (proposal, node).
    assert len(txs) == PROPOSALS * len(h.accounts), txs
    assert {outcome for _, _, _, outcome in txs} == {"mined"}, txs
    assert list(per_node.values()) == [PROPOSALS] * len(h.accounts), per_node
    assert len(per_node) == len(h.accounts)


async def _all_settled(sessions: Any, expected: int) -> bool:
    rows = await vote_rows(sessions)
    return len(rows) == expected and all(r.state not in ("queued", "sent") for r in rows)
