"""From one evaluation to the next: which alerts fire, which resolve, which are notified again. Pure.

An alert is identified by its fingerprint (rule + subject). It fires when its condition first holds (first
seen), stays firing while it holds (last seen moves), and resolves when an evaluation that could judge it no
longer finds it. A resolved alert that holds again is a new alert. A still-firing critical alert is notified
again every `repeat` seconds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from monitor.rules import Condition, Evaluation, Severity


class NoticeKind(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"
    REPEAT = "repeat"  # still firing (critical alerts, every DLOOP_ALERT_REPEAT_MINUTES)
    TEST = "test"  # `dloop alerts test`


@dataclass(frozen=True)
class Alert:
    fingerprint: str
    rule: str
    subject: str
    severity: str
    summary: str
    first_seen: dt.datetime
    last_seen: dt.datetime
    resolved_at: dt.datetime | None = None
    last_notified: dt.datetime | None = None
    id: int | None = None  # the row, once stored

    @property
    def firing(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    alert: Alert


@dataclass(frozen=True)
class Step:
    firing: dict[str, Alert]  # what fires after this evaluation, by fingerprint
    changed: tuple[Alert, ...]  # alerts to store (new, seen again, resolved, notified)
    notices: tuple[Notice, ...]


def step(
    firing: Mapping[str, Alert], evaluation: Evaluation, now: dt.datetime, *, repeat: dt.timedelta
) -> Step:
    held = {c.fingerprint: c for c in evaluation.conditions}
    after: dict[str, Alert] = {}
    changed: list[Alert] = []
    notices: list[Notice] = []
    for key, condition in held.items():
        alert = firing.get(key)
        if alert is None:
            alert = _new(condition, now)
            notices.append(Notice(NoticeKind.FIRING, alert))
        else:
            alert = dataclasses.replace(alert, last_seen=now, summary=condition.summary)
            due = alert.last_notified is None or now - alert.last_notified >= repeat
            if alert.severity == Severity.CRITICAL and due:
                alert = dataclasses.replace(alert, last_notified=now)
                notices.append(Notice(NoticeKind.REPEAT, alert))
        after[key] = alert
        changed.append(alert)
    for key, alert in firing.items():
        if key in held:
            continue
        if key in evaluation.unknown or alert.rule in evaluation.unknown:
            after[key] = alert  # not judged this time: stays as it was
            continue
        resolved = dataclasses.replace(alert, resolved_at=now)
        changed.append(resolved)
        notices.append(Notice(NoticeKind.RESOLVED, resolved))
    return Step(after, tuple(changed), tuple(notices))


def _new(condition: Condition, now: dt.datetime) -> Alert:
    return Alert(
        fingerprint=condition.fingerprint,
        rule=condition.rule,
        subject=condition.subject,
        severity=condition.severity,
        summary=condition.summary,
        first_seen=now,
        last_seen=now,
        last_notified=now,
    )
