"""Pure parsing of what the node sends: subscription messages and contract logs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chain.client import BlockHeader, RawLog, parse_block, parse_log
from chain.codec import ChainEvent, UndecodableLog, decode_log, event_topics
from chain.types import LogRef


@dataclass(frozen=True)
class HeadMessage:
    header: BlockHeader


@dataclass(frozen=True)
class LogMessage:
    log: RawLog


@dataclass(frozen=True)
class BadMessage:
    """A subscription message that could not be parsed; logged and skipped."""

    subscription: str
    error: str


Message = HeadMessage | LogMessage | BadMessage


def parse_subscription_message(message: Mapping[str, Any], *, heads_id: str, logs_id: str) -> Message | None:
    """One `{"subscription": id, "result": ...}` message; None for a subscription that is not ours."""
    subscription = str(message.get("subscription", ""))
    result = message.get("result")
    try:
        if subscription == heads_id:
            return HeadMessage(parse_block(dict(result or {})))
        if subscription == logs_id:
            return LogMessage(parse_log(dict(result or {})))
    except (KeyError, TypeError, ValueError) as exc:
        return BadMessage(subscription, f"{type(exc).__name__}: {exc}")
    return None


@dataclass(frozen=True)
class DecodedLog:
    """A contract log with its event, or the reason it could not be decoded."""

    raw: RawLog
    event: ChainEvent | None
    name: str
    proposal_id: int | None
    error: str | None

    @property
    def ref(self) -> LogRef:
        return log_ref(self.raw)

    @property
    def key(self) -> tuple[str, int]:
        return self.raw.block_hash, self.raw.log_index


def log_ref(raw: RawLog) -> LogRef:
    return LogRef(raw.block_number, raw.block_hash, raw.tx_hash, raw.log_index)


def decode(raw: RawLog) -> DecodedLog:
    """Decode one of the four events; anything else is kept with its error so it can be recorded."""
    name = event_topics().get(raw.topics[0].lower(), "unknown") if raw.topics else "unknown"
    try:
        event = decode_log(raw.topics, raw.data)
    except UndecodableLog as exc:
        return DecodedLog(raw, None, name, _indexed_id(raw), f"undecodable log: {exc}")
    return DecodedLog(raw, event, name, event.proposal_id, None)


def _indexed_id(raw: RawLog) -> int | None:
    """The first indexed topic is the proposal id in all four events; best effort for a broken log."""
    if len(raw.topics) < 2:
        return None
    try:
        value = int(raw.topics[1], 16)
    except ValueError:
        return None
    return value if value < 2**63 else None
