"""The listener's tally refreshes, coalesced, without a chain: when one is due (pure), what stays pending
across batches, failures and reorgs (the processor with its reads and writes stubbed), and the follow loop
refreshing once the subscription goes quiet."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from chain.client import BlockHeader, ChainClient, RawLog
from chain.events import event_topics
from core.errors import TransientChainError
from core.settings import Settings
from core.signals import WorkSignal
from listener.listener import Listener
from listener.messages import (
    BadMessage,
    HeadMessage,
    LogMessage,
    Message,
    parse_subscription_message,
    waits_for_more,
)
from listener.planning import tally_refresh_wait
from listener.processor import LogProcessor, ProposalRead
from listener.status import StatusBoard
from storage import chain_state
from tests.support.waiting import wait_until

CONTRACT = "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707"
VOTER = "0x976EA74026E726554dB657fA54763abd0C3a0aa9"
VOTE_CAST = {name: topic for topic, name in event_topics().items()}["VoteCast"]
CLIENT = cast(ChainClient, None)  # the stubbed reads never use it


def test_a_refresh_is_due_at_once_after_a_while_then_once_per_interval_or_when_the_chain_is_quiet() -> None:
    wait = functools.partial(tally_refresh_wait, interval=1.0, quiet=0.2)
    assert wait(pending=False, since_refresh=None) is None
    assert wait(pending=False, since_refresh=0.5) is None  # nothing to refresh: wait for logs for ever
    assert wait(pending=True, since_refresh=None) == 0  # the first one
    assert wait(pending=True, since_refresh=5.0) == 0  # the first vote in a while: as fast as before
    assert wait(pending=True, since_refresh=1.0) == 0
    assert wait(pending=True, since_refresh=0.1) == pytest.approx(0.2)  # more logs within 0.2 s, or refresh
    assert wait(pending=True, since_refresh=0.9) == pytest.approx(0.1)  # due before the chain is quiet


def vote_log(proposal_id: int, block: int) -> RawLog:
    topics = [VOTE_CAST, "0x" + f"{proposal_id:064x}", "0x" + "0" * 24 + VOTER[2:].lower()]
    result = {
        "address": CONTRACT.lower(),
        "topics": topics,
        "data": "0x" + f"{1:064x}" + f"{5:064x}",
        "blockNumber": hex(block),
        "blockHash": "0x" + f"{block:064x}",
        "transactionHash": "0x" + "cd" * 32,
        "logIndex": "0x0",
        "removed": False,
    }
    message = parse_subscription_message({"subscription": "l", "result": result}, heads_id="h", logs_id="l")
    assert isinstance(message, LogMessage)
    return message.log


class StubReads:
    """`LogProcessor.read_proposals`: records the ids of each tally refresh (`process` also asks for the
    created proposals: none here); fails while `failing`."""

    def __init__(self) -> None:
        self.calls: list[set[int]] = []
        self.failing = False

    async def __call__(self, client: ChainClient, proposal_ids: Iterable[int]) -> dict[int, ProposalRead]:
        ids = set(proposal_ids)
        if not ids:
            return {}
        if self.failing:
            raise TransientChainError("the connection was lost")
        self.calls.append(ids)
        return {}


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> tuple[LogProcessor, StubReads]:
    async def nothing_seen(sessions: object, keys: object) -> set[object]:
        return set()

    async def record_vote_casts(
        sessions: object, *, casts: Sequence[chain_state.VoteCastLog], **_: object
    ) -> list[chain_state.VoteCastRecord]:
        return [chain_state.VoteCastRecord(known_proposal=True, confirmed=False) for _cast in casts]

    monkeypatch.setattr(chain_state, "processed_log_keys", nothing_seen)
    monkeypatch.setattr(chain_state, "record_vote_casts", record_vote_casts)
    ctx = SimpleNamespace(contract=CONTRACT, sessions=None, stream="s", chain_id=1, node_by_address={})
    processor = LogProcessor(
        cast(Any, ctx), StatusBoard(), logging.getLogger(), chunk_blocks=10, tally_refresh_s=1.0
    )
    reads = StubReads()
    monkeypatch.setattr(processor, "read_proposals", reads)
    return processor, reads


@pytest.mark.anyio
async def test_the_processor_keeps_voted_proposals_pending_until_a_refresh_succeeds(
    stubbed: tuple[LogProcessor, StubReads],
) -> None:
    processor, reads = stubbed

    async def batch(*proposal_ids: int) -> None:
        logs = [vote_log(pid, block=10 * pid + index) for index, pid in enumerate(proposal_ids)]
        await processor.process(CLIENT, logs, source="subscription", head_number=100)

    await batch(1)  # the first refresh: at once
    assert reads.calls == [{1}] and not processor.pending_tallies and processor.tally_wait() is None
    await batch(1, 2)
    await batch(3)
    assert reads.calls == [{1}] and processor.pending_tallies == {1, 2, 3}  # within the interval: later
    wait = processor.tally_wait()
    assert wait is not None and 0 < wait <= processor.tally_quiet_s

    reads.failing = True  # the connection drops during the idle refresh: nothing is lost
    with pytest.raises(TransientChainError):
        await processor.refresh_tallies(CLIENT)
    assert processor.pending_tallies == {1, 2, 3}
    reads.failing = False

    await processor.refresh_tallies(CLIENT, [7])  # a reorg: its proposals, with every pending one, at once
    assert reads.calls[1:] == [{1, 2, 3, 7}] and not processor.pending_tallies

    processor._tallies_refreshed_at = anyio.current_time() - processor.tally_refresh_s  # an interval later
    await batch(4)  # while logs keep coming: once per interval
    assert reads.calls[2:] == [{4}] and not processor.pending_tallies


@pytest.mark.anyio
async def test_the_follow_loop_refreshes_once_the_subscription_is_quiet(
    stubbed: tuple[LogProcessor, StubReads], monkeypatch: pytest.MonkeyPatch
) -> None:
    processor, reads = stubbed
    processor.tally_refresh_s, processor.tally_quiet_s = 60.0, 0.5
    settings = Settings(rpc_ws_url="ws://127.0.0.1:1", contract_address=CONTRACT, nodes=())
    listener = Listener(settings, cast(Any, None), [], WorkSignal(), 1, hold_s=0.0)
    listener._processor = processor
    handled: list[int] = []

    async def handle_batch(client: ChainClient, batch: Sequence[Message]) -> None:
        logs = [m.log for m in batch if isinstance(m, LogMessage)]
        handled.extend(log.block_number for log in logs)
        await processor.process(client, logs, source="subscription", head_number=100)

    monkeypatch.setattr(listener, "_handle_batch", handle_batch)
    send, receive = anyio.create_memory_object_stream[Message](max_buffer_size=math.inf)
    async with send, receive, anyio.create_task_group() as tg:
        tg.start_soon(listener._follow, CLIENT, receive)
        for block, pid in enumerate([1, 1, 2, 3, 2], start=1):
            send.send_nowait(LogMessage(vote_log(pid, block)))
            await anyio.sleep(0.05)  # logs keep coming: each within the quiet time of the last
        assert reads.calls == [{1}] and processor.pending_tallies == {1, 2, 3}
        await wait_until(lambda: len(reads.calls) == 2, timeout=5, what="the refresh once quiet")
        tg.cancel_scope.cancel()
    assert reads.calls == [{1}, {1, 2, 3}] and handled == [1, 2, 3, 4, 5]  # every log handled, none lost


@pytest.mark.anyio
async def test_heads_and_vote_casts_wait_a_moment_and_anything_else_takes_them_along_at_once(
    stubbed: tuple[LogProcessor, StubReads], monkeypatch: pytest.MonkeyPatch
) -> None:
    processor, _reads = stubbed
    processor.tally_refresh_s = processor.tally_quiet_s = 60.0
    settings = Settings(rpc_ws_url="ws://127.0.0.1:1", contract_address=CONTRACT, nodes=())
    listener = Listener(settings, cast(Any, None), [], WorkSignal(), 1, hold_s=0.3)
    listener._processor = processor
    batches: list[list[int]] = []

    async def handle_batch(client: ChainClient, batch: Sequence[Message]) -> None:
        batches.append([m.log.block_number for m in batch if isinstance(m, LogMessage)])

    monkeypatch.setattr(listener, "_handle_batch", handle_batch)
    created = {name: topic for topic, name in event_topics().items()}["ProposalCreated"]
    send, receive = anyio.create_memory_object_stream[Message](max_buffer_size=math.inf)
    async with send, receive, anyio.create_task_group() as tg:
        tg.start_soon(listener._follow, CLIENT, receive)
        for block in (1, 2):
            send.send_nowait(LogMessage(vote_log(1, block)))
            await anyio.sleep(0.05)
        assert batches == []  # VoteCast logs wait for more
        send.send_nowait(
            LogMessage(dataclasses.replace(vote_log(2, 3), topics=(created, *vote_log(2, 3).topics[1:])))
        )
        await wait_until(lambda: batches == [[1, 2, 3]], timeout=5, what="the created proposal, with them")
        send.send_nowait(LogMessage(vote_log(2, 4)))
        await wait_until(lambda: len(batches) == 2, timeout=5, what="the held VoteCast, once nothing came")
        tg.cancel_scope.cancel()
    assert batches == [[1, 2, 3], [4]]  # in order, none lost


def test_only_heads_and_vote_casts_may_wait() -> None:
    vote = vote_log(1, 5)
    created = {name: topic for topic, name in event_topics().items()}["ProposalCreated"]
    head = HeadMessage(
        BlockHeader(
            number=5, hash="0x" + "05" * 32, parent_hash="0x" + "04" * 32, timestamp=1, base_fee_per_gas=None
        )
    )
    assert waits_for_more(head) and waits_for_more(LogMessage(vote))
    assert not waits_for_more(LogMessage(dataclasses.replace(vote, removed=True)))  # a reorg: at once
    assert not waits_for_more(LogMessage(dataclasses.replace(vote, topics=(created, *vote.topics[1:]))))
    assert not waits_for_more(LogMessage(dataclasses.replace(vote, topics=())))
    assert not waits_for_more(BadMessage("l", "bad"))
