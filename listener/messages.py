"""Pure parsing of what the node sends: subscription messages and contract logs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chain.client import BlockHeader, RawLog, parse_block, parse_log
from chain.events import ChainEvent, OtherEvent, UndecodableLog, UnknownEvent, decode_log, event_name
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


def waits_for_more(message: Message) -> bool:
    """Whether the listener may hold this message back a moment to handle it with the next ones: a head, or
    a VoteCast log (our votes confirmed, a tally changed: the receipt poll and the tally refresh do not wait
    for it). A proposal created or closed, any other log, a removed log (a reorg) or a bad message is acted
    on at once."""
    if isinstance(message, HeadMessage):
        return True
    if isinstance(message, LogMessage):
        log = message.log
        return not log.removed and bool(log.topics) and event_name(log.topics[0]) == "VoteCast"
    return False


def parse_subscription_message(message: Mapping[str, Any], *, heads_id: str, logs_id: str) -> Message | None:
    """One notification's `{"subscription": id, "result": ...}`, as the node sent it (hex strings) or as web3
    formats it; None for a subscription that is not ours."""
    subscription = str(message.get("subscription", ""))
    if subscription != heads_id and subscription != logs_id:
        return None
    result = message.get("result")
    try:
        raw = result if isinstance(result, Mapping) else dict(result or {})
        if subscription == heads_id:
            return HeadMessage(parse_block(raw))
        return LogMessage(parse_log(raw))
    except (KeyError, TypeError, ValueError) as exc:
        return BadMessage(subscription, f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class DecodedLog:
    """A contract log with its event, or the reason it could not be decoded. `ignored` marks a known event
    the service does not act on; `unknown_topic` a topic of no known AssetDAO version."""

    raw: RawLog
    event: ChainEvent | None
    name: str
    proposal_id: int | None
    error: str | None
    ignored: bool = False
    unknown_topic: str | None = None

    @property
    def ref(self) -> LogRef:
        return log_ref(self.raw)

    @property
    def key(self) -> tuple[str, int]:
        return self.raw.block_hash, self.raw.log_index


def log_ref(raw: RawLog) -> LogRef:
    return LogRef(raw.block_number, raw.block_hash, raw.tx_hash, raw.log_index)


def decode(raw: RawLog) -> DecodedLog:
    """Decode an event of either AssetDAO version by its topic; anything else is kept with its reason."""
    name = (event_name(raw.topics[0]) if raw.topics else None) or "unknown"
    try:
        event = decode_log(raw.topics, raw.data)
    except UnknownEvent as exc:
        return DecodedLog(raw, None, name, None, str(exc), unknown_topic=exc.topic)
    except UndecodableLog as exc:
        return DecodedLog(raw, None, name, _indexed_id(raw), f"undecodable log: {exc}")
    if isinstance(event, OtherEvent):
        return DecodedLog(raw, None, event.name, None, None, ignored=True)
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
