"""The listener's pure decisions and parsing, without a chain."""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest
from eth_utils import to_checksum_address
from hexbytes import HexBytes

from chain.client import BlockHeader, ChainClient, RawLog, parse_receipt
from chain.events import ProposalCreated, VoteCast, event_topics
from listener.blocks import BlockTracker
from listener.messages import BadMessage, HeadMessage, LogMessage, decode, parse_subscription_message
from listener.planning import (
    ChunkPlan,
    backfill_start,
    deep_enough,
    deepest_queueable_block,
    head_conflicts,
    is_range_error,
    links_hold,
    reconnect_delay,
)
from listener.status import BackfillProgress, StatusBoard

TOPICS = {name: topic for topic, name in event_topics().items()}
CONTRACT = "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707"
PROPOSER = "0x976EA74026E726554dB657fA54763abd0C3a0aa9"


def word(value: int) -> str:
    return "0x" + f"{value:064x}"


def address_word(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def raw_log(topics: list[str], data: str, *, removed: bool = False, block: int = 7) -> dict[str, object]:
    return {
        "address": CONTRACT.lower(),
        "topics": topics,
        "data": data,
        "blockNumber": hex(block),
        "blockHash": "0x" + "ab" * 32,
        "transactionHash": "0x" + "cd" * 32,
        "logIndex": "0x2",
        "removed": removed,
    }


# -- chunks ----------------------------------------------------------------------------------------------


def test_chunk_plan_walks_the_range_and_halves_on_refusal() -> None:
    plan = ChunkPlan(10, 35, 10)
    seen = []
    refused_once = False
    while (chunk := plan.current()) is not None:
        if chunk == (20, 29) and not refused_once:
            refused_once = True
            halved = plan.halved()
            assert halved is not None
            plan = halved
            continue
        seen.append(chunk)
        plan = plan.advanced()
    assert seen == [(10, 19), (20, 24), (25, 29), (30, 34), (35, 35)]
    assert plan.finished and plan.advanced() == plan


def test_a_single_block_cannot_be_halved() -> None:
    assert ChunkPlan(5, 9, 1).halved() is None
    assert ChunkPlan(5, 9, 3).halved() == ChunkPlan(5, 9, 1)
    assert ChunkPlan(9, 5, 10).current() is None  # nothing to read


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("query returned more than 10000 results", True),
        ("Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range", True),
        ("block range too large", True),
        ("exceed maximum block range: 5000", True),
        ("too many results, try a smaller range", True),
        ("Too Many Requests", False),
        ("execution reverted", False),
        ("connection lost", False),
    ],
)
def test_range_errors_are_told_apart_from_other_errors(message: str, expected: bool) -> None:
    assert is_range_error(message) is expected


# -- start, backoff, depth, heads --------------------------------------------------------------------------


def test_backfill_starts_after_the_cursor_else_start_block_else_deployment_else_recent_blocks() -> None:
    common = {"head": 50_000, "backfill_blocks": 10_000}
    assert backfill_start(cursor_block=41, start_block=5, deployment_block=3, **common) == 42
    assert backfill_start(cursor_block=None, start_block=5, deployment_block=3, **common) == 5
    assert backfill_start(cursor_block=None, start_block=None, deployment_block=3, **common) == 3
    assert backfill_start(cursor_block=None, start_block=None, deployment_block=None, **common) == 40_000
    assert (
        backfill_start(cursor_block=None, start_block=None, deployment_block=None, head=7, backfill_blocks=10)
        == 0
    )


def test_reconnect_delay_grows_exponentially_with_jitter_and_a_cap() -> None:
    low = [reconnect_delay(n, base=0.5, cap=30.0, jitter=0.0) for n in range(10)]
    high = [reconnect_delay(n, base=0.5, cap=30.0, jitter=1.0) for n in range(10)]
    assert low[:4] == [0.25, 0.5, 1.0, 2.0]
    assert high[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(high) == 30.0 and max(low) == 15.0
    assert reconnect_delay(10_000, base=0.5, cap=30.0, jitter=0.5) <= 30.0


def test_depth_counts_the_block_itself() -> None:
    assert deep_enough(100, 100, 0) and deep_enough(100, 100, 1)
    assert not deep_enough(100, 101, 3) and deep_enough(100, 102, 3)
    assert deepest_queueable_block(102, 3) == 100
    assert deep_enough(100, 99, 0)  # a log ahead of its head, with no confirmations required


def test_a_head_conflicts_with_another_block_at_its_height_or_an_unknown_parent() -> None:
    known = {9: "0x09", 10: "0x10"}
    assert not head_conflicts(known, 11, "0x11", "0x10")
    assert head_conflicts(known, 11, "0x11", "0xff")  # parent is not our block 10
    assert head_conflicts(known, 10, "0xaa", "0x09")  # another block 10 (anvil_reorg emits these)
    assert not head_conflicts(known, 10, "0x10", "0x09")  # the same head again
    assert not head_conflicts({}, 11, "0x11", "0x10")  # nothing stored yet


# -- messages and logs -------------------------------------------------------------------------------------


def test_subscription_messages_become_heads_logs_or_bad_messages() -> None:
    head = {
        "number": "0x10",
        "hash": "0x" + "11" * 32,
        "parentHash": "0x" + "22" * 32,
        "timestamp": "0x5",
        "baseFeePerGas": "0x7",
    }
    parsed = parse_subscription_message(
        {"subscription": "0xh", "result": head}, heads_id="0xh", logs_id="0xl"
    )
    assert parsed == HeadMessage(BlockHeader(16, "0x" + "11" * 32, "0x" + "22" * 32, 5, 7))
    created = raw_log([TOPICS["ProposalCreated"], word(3), word(1), address_word(PROPOSER)], word(0))
    message = parse_subscription_message(
        {"subscription": "0xl", "result": created}, heads_id="0xh", logs_id="0xl"
    )
    assert isinstance(message, LogMessage) and message.log.block_number == 7 and not message.log.removed
    bad = parse_subscription_message(
        {"subscription": "0xl", "result": {"topics": []}}, heads_id="0xh", logs_id="0xl"
    )
    assert isinstance(bad, BadMessage) and "KeyError" in bad.error
    assert (
        parse_subscription_message({"subscription": "0xother", "result": head}, heads_id="0xh", logs_id="0xl")
        is None
    )


def test_logs_decode_into_events_and_bad_logs_keep_their_reason() -> None:
    decoded = decode(
        parsed_log([TOPICS["ProposalCreated"], word(3), word(1), address_word(PROPOSER)], word(0))
    )
    assert (
        decoded.event == ProposalCreated(3, PROPOSER, asset_id=1, proposal_type=0) and decoded.error is None
    )
    assert decoded.key == ("0x" + "ab" * 32, 2) and decoded.ref.block_number == 7

    vote = decode(parsed_log([TOPICS["VoteCast"], word(3), address_word(PROPOSER)], word(1) + word(5)[2:]))
    assert vote.event == VoteCast(3, PROPOSER, True, 5)

    truncated = decode(parsed_log([TOPICS["ProposalCreated"], word(9)], "0x"))
    assert truncated.event is None and truncated.name == "ProposalCreated" and truncated.proposal_id == 9
    assert "undecodable" in (truncated.error or "")

    foreign = decode(parsed_log(["0x" + "ee" * 32], "0x"))
    assert foreign.name == "unknown" and foreign.event is None and foreign.proposal_id is None


def parsed_log(topics: list[str], data: str) -> RawLog:
    message = parse_subscription_message(
        {"subscription": "l", "result": raw_log(topics, data)}, heads_id="h", logs_id="l"
    )
    assert isinstance(message, LogMessage)
    return message.log


# The listener reads notifications as the node sent them (chain/rpc_socket.py::next_notification);
# before, web3's formatters turned them into ints, HexBytes and checksummed addresses. Both must parse alike.
RAW_HEAD = {
    "hash": "0x" + "11" * 32,
    "parentHash": "0x" + "22" * 32,
    "sha3Uncles": "0x" + "33" * 32,
    "miner": "0x0000000000000000000000000000000000000000",
    "stateRoot": "0x" + "44" * 32,
    "transactionsRoot": "0x" + "55" * 32,
    "receiptsRoot": "0x" + "66" * 32,
    "logsBloom": "0x" + "00" * 256,
    "difficulty": "0x0",
    "number": "0x1b4",
    "gasLimit": "0x1c9c380",
    "gasUsed": "0x5208",
    "timestamp": "0x6553f100",
    "extraData": "0x",
    "mixHash": "0x" + "77" * 32,
    "nonce": "0x0000000000000000",
    "baseFeePerGas": "0x3b9aca00",
}


def raw_created_log(*, removed: bool) -> dict[str, Any]:
    log = raw_log(
        [TOPICS["ProposalCreated"], word(3), word(1), address_word(PROPOSER)], word(0), removed=removed
    )
    return {**log, "transactionIndex": "0x0", "logIndex": "0x0", "blockNumber": "0x1b4"}


def web3_formatted(log: dict[str, Any]) -> dict[str, Any]:
    """What web3's `log_entry_formatter` made of a raw log: ints, HexBytes, a checksummed address."""
    return {
        **log,
        "address": to_checksum_address(log["address"]),
        "topics": [HexBytes(t) for t in log["topics"]],
        "data": HexBytes(log["data"]),
        "blockNumber": int(log["blockNumber"], 16),
        "blockHash": HexBytes(log["blockHash"]),
        "transactionHash": HexBytes(log["transactionHash"]),
        "transactionIndex": int(log["transactionIndex"], 16),
        "logIndex": int(log["logIndex"], 16),
    }


def test_a_raw_new_head_parses_as_web3_formatted_one_did() -> None:
    formatted = {
        **RAW_HEAD,
        **{k: HexBytes(RAW_HEAD[k]) for k in ("hash", "parentHash")},
        **{k: int(RAW_HEAD[k], 16) for k in ("number", "timestamp", "baseFeePerGas", "gasLimit", "gasUsed")},
    }
    raw = parse_subscription_message(
        {"subscription": "0xh", "result": RAW_HEAD}, heads_id="0xh", logs_id="0xl"
    )
    before = parse_subscription_message(
        {"subscription": "0xh", "result": formatted}, heads_id="0xh", logs_id="0xl"
    )
    assert (
        raw == before == HeadMessage(BlockHeader(436, "0x" + "11" * 32, "0x" + "22" * 32, 0x6553F100, 10**9))
    )
    # A pre-London head has no base fee; upper-case hex compares as HexBytes made it (lower case).
    shouting = {k: v for k, v in RAW_HEAD.items() if k != "baseFeePerGas"} | {"hash": "0x" + "AB" * 32}
    message = parse_subscription_message(
        {"subscription": "0xh", "result": shouting}, heads_id="0xh", logs_id="0xl"
    )
    assert isinstance(message, HeadMessage)
    assert message.header.base_fee_per_gas is None and message.header.hash == "0x" + "ab" * 32


@pytest.mark.parametrize("removed", [False, True])
def test_a_raw_log_parses_as_web3_formatted_one_did(removed: bool) -> None:
    raw = raw_created_log(removed=removed)
    parsed = parse_subscription_message({"subscription": "0xl", "result": raw}, heads_id="0xh", logs_id="0xl")
    before = parse_subscription_message(
        {"subscription": "0xl", "result": web3_formatted(raw)}, heads_id="0xh", logs_id="0xl"
    )
    assert (
        parsed
        == before
        == LogMessage(
            RawLog(
                address=CONTRACT,
                topics=(TOPICS["ProposalCreated"], word(3), word(1), address_word(PROPOSER)),
                data=word(0),
                block_number=436,
                block_hash="0x" + "ab" * 32,
                tx_hash="0x" + "cd" * 32,
                log_index=0,
                removed=removed,
            )
        )
    )
    assert decode(parsed.log).event == ProposalCreated(3, PROPOSER, asset_id=1, proposal_type=0)
    # A log without data or topics (an anonymous event with no arguments) and without `removed`.
    bare = {k: v for k, v in raw.items() if k != "removed"} | {"topics": [], "data": "0x"}
    message = parse_subscription_message(
        {"subscription": "0xl", "result": bare}, heads_id="0xh", logs_id="0xl"
    )
    assert isinstance(message, LogMessage)
    assert message.log.topics == () and message.log.data == "0x" and not message.log.removed


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (None, "KeyError"),
        ("0x" + "ab" * 32, "ValueError"),
        ({**raw_created_log(removed=False), "logIndex": "0xzz"}, "ValueError"),
        ({**raw_created_log(removed=False), "address": "0x1234"}, "ValueError"),
    ],
)
def test_a_malformed_raw_log_is_a_bad_message(result: Any, error: str) -> None:
    bad = parse_subscription_message({"subscription": "0xl", "result": result}, heads_id="0xh", logs_id="0xl")
    assert isinstance(bad, BadMessage) and bad.subscription == "0xl" and error in bad.error


# -- status ------------------------------------------------------------------------------------------------


def test_status_snapshot_is_frozen_and_computes_head_lag() -> None:
    board = StatusBoard(last_head_number=5, last_head_timestamp=1_000)
    status = board.snapshot(now=dt.datetime.fromtimestamp(1_012.5, dt.UTC))
    assert status.head_lag_seconds == 12.5 and status.last_head_number == 5
    with pytest.raises(AttributeError):
        status.connected = True  # type: ignore[misc]
    board.reconnects = 3
    assert status.reconnects == 0 and board.snapshot().reconnects == 3


def test_backfill_progress_logs_blocks_done_total_and_rate() -> None:
    board = StatusBoard()
    bar = io.StringIO()
    logger = logging.getLogger("test.backfill")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        progress = BackfillProgress(board, logger, first_block=100, last_block=199, interval=0.0, bar=bar)
        assert board.backfill_active and board.backfill_total_blocks == 100
        progress.advance(40, 3)
        progress.advance(60, 0)
        progress.finish()
    finally:
        logger.removeHandler(handler)
    events = [(r.getMessage(), r.dloop_fields) for r in records]  # type: ignore[attr-defined]
    assert [name for name, _ in events] == ["backfill_progress", "backfill_progress", "backfill_done"]
    assert events[0][1]["blocks_done"] == 40 and events[0][1]["blocks_total"] == 100
    assert events[-1][1]["logs"] == 3 and events[-1][1]["blocks_per_second"] is not None
    assert not board.backfill_active and board.backfill_done_blocks == 100
    assert "100/100 blocks" in bar.getvalue() and bar.getvalue().endswith("\n")


def header(number: int, parent: str | None = None) -> BlockHeader:
    return BlockHeader(number, f"0x{number:02x}", parent or f"0x{number - 1:02x}", 0, None)


def test_links_hold_across_a_height_the_node_has_no_block_for() -> None:
    window = {n: header(n) for n in (10, 11, 13, 14)}  # 12 missing: 13 -> 12 cannot be checked, is skipped
    assert links_hold(window, 10, 14)
    window[14] = header(14, parent="0xff")  # a real break next to present heights still counts
    assert not links_hold(window, 10, 14)


class ReceiptClient:
    """Answers every request with one receipt (all the reorg check reads: the block is in the window)."""

    contract = "0x" + "00" * 20

    def __init__(self, receipt: dict[str, object]) -> None:
        self.receipt = receipt

    async def call_many(
        self, requests: Sequence[object], *, batch_size: int, concurrency: int = 8
    ) -> list[object]:
        return [self.receipt for _ in requests]


def mined_receipt(**fields: str) -> dict[str, object]:
    return {"transactionHash": "0xaa", "blockNumber": hex(12), "blockHash": "0x0c", **fields}


def test_parse_receipt_reads_a_missing_status_as_its_caller_asks() -> None:
    assert parse_receipt(mined_receipt()) == parse_receipt(mined_receipt(status="0x0"))  # the voter: failure
    receipt = parse_receipt(mined_receipt(), missing_status=1)
    assert receipt is not None and receipt.status == 1
    assert parse_receipt({"transactionHash": "0xaa", "blockNumber": None}) is None  # not mined


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "canonical"), [({}, 12), ({"status": "0x1"}, 12), ({"status": "0x0"}, None)]
)
async def test_the_reorg_check_counts_a_receipt_without_status_as_success(
    fields: dict[str, str], canonical: int | None
) -> None:
    """listener/blocks.py's old meaning: only a mined revert proves the vote was not cast."""
    tracker = BlockTracker(
        cast(Any, SimpleNamespace(rpc_batch_size=10)), StatusBoard(), cast(Any, None), logging.getLogger()
    )
    client = cast(ChainClient, ReceiptClient(mined_receipt(**fields)))
    assert await tracker._canonical_block_of(client, "0xaa", {12: header(12)}) == canonical
