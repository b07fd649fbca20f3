"""Notifications to incoming webhooks (Slack, Discord, or generic JSON), off the voting path.

`Notifier.submit` never waits: it puts the notice on each receiver's bounded queue (a full queue drops the
notice, counted and logged). One task per receiver POSTs its queue in order with httpx, retried with the one
backoff policy (core/retry.py); a slow or dead receiver holds up only its own queue. Every string of a body is
masked (node keys, their first 16 hex digits, the API token, the webhook URLs, any 32-byte hex), and a
receiver is named in logs and answers by its host only: the URL holds its token.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from core.logs import Masker, log_event
from core.retry import call_retrying
from monitor.engine import Alert, Notice, NoticeKind

logger = logging.getLogger("dloop.alerts")

QUEUE_SIZE = 200  # notices waiting per receiver
POST_TIMEOUT = 10.0  # seconds per attempt
DISCORD_SUPPRESS_EMBEDS = 1 << 2  # no link previews of URLs in the text
DISCORD_LIMIT = 2000  # characters of a Discord message
_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
SERVICE = "dloop-governance"


class DeliveryFailed(Exception):
    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def is_retried(exc: BaseException) -> bool:
    return isinstance(exc, DeliveryFailed) and exc.retry


def receiver_label(url: str) -> str:
    """A receiver as people may see it: scheme and host, never the path or query (they hold the token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/..."


def notice_masker(secrets: Iterable[str]) -> Masker:
    """The secrets, plus the first 16 hex digits of every key (with and without 0x)."""
    values = list(secrets)
    prefixes = [v.removeprefix("0x")[:16] for v in values if _KEY.match(v)]
    return Masker([*values, *prefixes, *("0x" + p for p in prefixes)])


# -- bodies (pure) -----------------------------------------------------------------------------------------


def headline(notice: Notice) -> str:
    alert = notice.alert
    if notice.kind == NoticeKind.TEST:
        return f"[TEST] {SERVICE}: a test notification (`dloop alerts test`); alerts reach this receiver"
    if notice.kind == NoticeKind.RESOLVED:
        return f"[RESOLVED] {alert.rule} {alert.subject}: {alert.summary}"
    still = " (still firing)" if notice.kind == NoticeKind.REPEAT else ""
    return f"[FIRING {alert.severity}] {alert.rule} {alert.subject}: {alert.summary}{still}"


def generic_body(notice: Notice) -> dict[str, Any]:
    alert = notice.alert
    return {
        "service": SERVICE,
        "status": "resolved" if notice.kind == NoticeKind.RESOLVED else "firing",
        "kind": str(notice.kind),
        "alert": alert.rule,
        "severity": alert.severity,
        "subject": alert.subject,
        "summary": alert.summary,
        "fingerprint": alert.fingerprint,
        "firstSeen": alert.first_seen.isoformat(),
        "lastSeen": alert.last_seen.isoformat(),
        "resolvedAt": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "text": headline(notice),
    }


def slack_text(text: str) -> str:
    """Slack's escaping of message text: an alert's summary may quote a proposal's asset or a strategy's
    error, attacker-controlled text that must not become `<!channel>` or a `<link|label>`."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_DISCORD_MARKDOWN = re.compile(r"([\\*_~`|>#\[\]()@<])")


def discord_text(text: str) -> str:
    """Every markdown, mention and link character backslash-escaped (the body also allows no mention)."""
    return _DISCORD_MARKDOWN.sub(r"\\\1", text)


def body(notice: Notice, fmt: str, masker: Masker) -> Any:
    """The JSON body for a receiver of format `fmt` (generic, slack, discord), every string masked. Slack
    and Discord render markup: their text is escaped, and Discord is told to ping nobody and embed nothing."""
    line = masker.text(headline(notice))  # masked before escaping changes how a secret is spelled
    if fmt == "slack":
        raw: Any = {"text": slack_text(line)}
    elif fmt == "discord":
        raw = {
            "content": discord_text(line)[:DISCORD_LIMIT],
            "allowed_mentions": {"parse": []},
            "flags": DISCORD_SUPPRESS_EMBEDS,
        }
    else:
        raw = generic_body(notice)
    return masker.value(raw)


def trial_notice(now: Any) -> Notice:
    alert = Alert(
        fingerprint="Test:receiver",
        rule="Test",
        subject="receiver",
        severity="warning",
        summary="a test notification from `dloop alerts test`",
        first_seen=now,
        last_seen=now,
    )
    return Notice(NoticeKind.TEST, alert)


# -- delivery ------------------------------------------------------------------------------------------------


@dataclass
class ReceiverStatus:
    label: str
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    queued: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class Answer:
    """What a receiver answered to one POST (for `dloop alerts test`)."""

    label: str
    status: int | None
    detail: str


async def post_once(client: httpx.AsyncClient, url: str, payload: Any) -> httpx.Response:
    """One POST; a 5xx or 429 answer, a timeout or a failed connection may be tried again, a 4xx not."""
    try:
        response = await client.post(url, json=payload)
    except httpx.TimeoutException as exc:
        raise DeliveryFailed(f"timed out ({type(exc).__name__})", retry=True) from None
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}", retry=True) from None
    if response.status_code >= 500 or response.status_code == 429:
        raise DeliveryFailed(f"answered {response.status_code}", retry=True)
    if response.status_code >= 400:
        raise DeliveryFailed(f"answered {response.status_code}", retry=False)
    return response


@dataclass
class Notifier:
    urls: Sequence[str]
    fmt: str = "generic"
    masker: Masker = field(default_factory=Masker)
    timeout: float = POST_TIMEOUT
    statuses: list[ReceiverStatus] = field(init=False)

    def __post_init__(self) -> None:
        self.statuses = [ReceiverStatus(receiver_label(url)) for url in self.urls]
        self._queues: list[tuple[MemoryObjectSendStream[Notice], MemoryObjectReceiveStream[Notice]]] = [
            anyio.create_memory_object_stream[Notice](QUEUE_SIZE) for _ in self.urls
        ]

    def submit(self, notices: Iterable[Notice]) -> None:
        """Queue each notice for every receiver; never waits."""
        for notice in notices:
            for (send, _receive), status in zip(self._queues, self.statuses, strict=True):
                try:
                    send.send_nowait(notice)
                    status.queued += 1
                except anyio.WouldBlock:
                    status.dropped += 1
                    log_event(
                        logger,
                        "alert_notification_dropped",
                        level=logging.WARNING,
                        receiver=status.label,
                        alert=notice.alert.fingerprint,
                        reason="queue full",
                    )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client, anyio.create_task_group() as tg:
            for url, (_send, receive), status in zip(self.urls, self._queues, self.statuses, strict=True):
                tg.start_soon(self._deliver_all, client, url, receive, status)
            task_status.started()

    async def _deliver_all(
        self,
        client: httpx.AsyncClient,
        url: str,
        receive: MemoryObjectReceiveStream[Notice],
        status: ReceiverStatus,
    ) -> None:
        async for notice in receive:
            status.queued -= 1
            payload = body(notice, self.fmt, self.masker)
            try:
                await call_retrying(is_retried, post_once, client, url, payload)
            except DeliveryFailed as exc:
                status.failed += 1
                status.last_error = str(exc)
                log_event(
                    logger,
                    "alert_notification_failed",
                    level=logging.WARNING,
                    receiver=status.label,
                    alert=notice.alert.fingerprint,
                    kind=str(notice.kind),
                    error=str(exc),
                )
            else:
                status.sent += 1
                log_event(
                    logger,
                    "alert_notified",
                    receiver=status.label,
                    alert=notice.alert.fingerprint,
                    kind=str(notice.kind),
                )

    async def test(self, notice: Notice) -> list[Answer]:
        """One POST of `notice` to every receiver, at the same time; what each answered."""
        answers: list[Answer | None] = [None] * len(self.urls)

        async def one(i: int, url: str, client: httpx.AsyncClient) -> None:
            label = receiver_label(url)
            try:
                response = await post_once(client, url, body(notice, self.fmt, self.masker))
            except DeliveryFailed as exc:
                answers[i] = Answer(label, None, str(exc))
                return
            text = self.masker.text(response.text.strip())[:200]
            answers[i] = Answer(label, response.status_code, text or response.reason_phrase)

        async with httpx.AsyncClient(timeout=self.timeout) as client, anyio.create_task_group() as tg:
            for i, url in enumerate(self.urls):
                tg.start_soon(one, i, url, client)
        return [a for a in answers if a is not None]

    def view(self) -> list[Mapping[str, object]]:
        return [
            {
                "receiver": s.label,
                "sent": s.sent,
                "failed": s.failed,
                "dropped": s.dropped,
                "queued": s.queued,
                "lastError": s.last_error,
            }
            for s in self.statuses
        ]
