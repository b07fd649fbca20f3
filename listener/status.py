"""The listener's status for the rest of the service, and the backfill progress report."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

from core.logs import log_event


@dataclass(frozen=True)
class ListenerStatus:
    """A snapshot; `ListenerStatus` values never change after they are handed out."""

    connected: bool  # subscribed, backfilled and following the chain live
    last_head_number: int | None
    last_head_time: dt.datetime | None  # when the newest head arrived (UTC)
    head_lag_seconds: float | None  # now minus the newest head's block timestamp
    last_head_timestamp: int | None  # the newest head's block time (a devnet's clock may run ahead)
    last_event_time: dt.datetime | None  # when the last contract log was processed (UTC)
    reconnects: int
    backfill_active: bool
    backfill_done_blocks: int
    backfill_total_blocks: int
    backfill_blocks_per_second: float | None
    reorgs_seen: int
    last_error: str | None
    cursor_block: int | None
    logs_processed: int
    votes_queued: int  # vote rows queued by this listener since start
    unknown_topics: Mapping[str, int]  # topic0 of logs of no known AssetDAO version -> how many
    proposals_recorded: int  # proposals this listener recorded first, from their ProposalCreated log


@dataclass
class StatusBoard:
    """The mutable counters behind `ListenerStatus` (one writer: the listener task)."""

    connected: bool = False
    last_head_number: int | None = None
    last_head_time: dt.datetime | None = None
    last_head_timestamp: int | None = None
    last_event_time: dt.datetime | None = None
    reconnects: int = 0
    backfill_active: bool = False
    backfill_done_blocks: int = 0
    backfill_total_blocks: int = 0
    backfill_blocks_per_second: float | None = None
    reorgs_seen: int = 0
    last_error: str | None = None
    cursor_block: int | None = None
    logs_processed: int = 0
    votes_queued: int = 0
    unknown_topics: Counter[str] = field(default_factory=Counter)
    proposals_recorded: int = 0

    def snapshot(self, now: dt.datetime | None = None) -> ListenerStatus:
        now = now or dt.datetime.now(dt.UTC)
        lag = None
        if self.last_head_timestamp is not None:
            lag = max(0.0, now.timestamp() - self.last_head_timestamp)
        return ListenerStatus(
            connected=self.connected,
            last_head_number=self.last_head_number,
            last_head_time=self.last_head_time,
            head_lag_seconds=lag,
            last_head_timestamp=self.last_head_timestamp,
            last_event_time=self.last_event_time,
            reconnects=self.reconnects,
            backfill_active=self.backfill_active,
            backfill_done_blocks=self.backfill_done_blocks,
            backfill_total_blocks=self.backfill_total_blocks,
            backfill_blocks_per_second=self.backfill_blocks_per_second,
            reorgs_seen=self.reorgs_seen,
            last_error=self.last_error,
            cursor_block=self.cursor_block,
            logs_processed=self.logs_processed,
            votes_queued=self.votes_queued,
            unknown_topics=dict(self.unknown_topics),
            proposals_recorded=self.proposals_recorded,
        )


class BackfillProgress:
    """Reports a backfill: a log line every `interval` seconds (and at the end) with blocks done / total and
    the rate; a one-line progress bar when `bar` is a terminal stream."""

    def __init__(
        self,
        board: StatusBoard,
        logger: logging.Logger,
        *,
        first_block: int,
        last_block: int,
        interval: float,
        bar: TextIO | None,
    ) -> None:
        self.board = board
        self.logger = logger
        self.first_block = first_block
        self.last_block = last_block
        self.interval = interval
        self.bar = bar
        self.total = max(0, last_block - first_block + 1)
        self.done = 0
        self.logs = 0
        self.started = time.monotonic()
        self.last_report = self.started
        board.backfill_active = True
        board.backfill_done_blocks = 0
        board.backfill_total_blocks = self.total
        board.backfill_blocks_per_second = None

    @property
    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 and self.done else None

    def advance(self, blocks: int, logs: int) -> None:
        self.done = min(self.total, self.done + blocks)
        self.logs += logs
        self.board.backfill_done_blocks = self.done
        self.board.backfill_blocks_per_second = self.rate
        now = time.monotonic()
        if now - self.last_report >= self.interval:
            self.last_report = now
            self._log("backfill_progress")
        self._draw()

    def finish(self) -> None:
        self.board.backfill_active = False
        self.board.backfill_blocks_per_second = self.rate
        if self.bar is not None and self.total:
            self.bar.write("\n")
            self.bar.flush()
        self._log("backfill_done")

    def _log(self, event: str) -> None:
        rate = self.rate
        log_event(
            self.logger,
            event,
            from_block=self.first_block,
            to_block=self.last_block,
            blocks_done=self.done,
            blocks_total=self.total,
            logs=self.logs,
            blocks_per_second=None if rate is None else round(rate, 1),
            seconds=round(time.monotonic() - self.started, 3),
        )

    def _draw(self) -> None:
        if self.bar is None or not self.total:
            return
        width = 30
        filled = width * self.done // self.total
        rate = self.rate or 0.0
        self.bar.write(
            f"\rbackfill [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.done}/{self.total} blocks {rate:,.0f} blocks/s"
        )
        self.bar.flush()


def terminal_stream(choice: bool | None) -> TextIO | None:
    """stderr for the progress bar when asked to, or by default when it is a terminal."""
    if choice is False:
        return None
    if choice is None and not sys.stderr.isatty():
        return None
    return sys.stderr
