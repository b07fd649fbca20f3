"""`dloop report`: the analytics as a readable table (the default), CSV (long format: section, key, metric,
value) or JSON (the body of `GET /analytics`)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator, Sequence

import msgspec

from monitor.analytics import Approval, Performance, Report
from web.present import analytics_out, units


def render_report(report: Report, fmt: str) -> str:
    if fmt == "json":
        body = analytics_out(report, dt.datetime.now(dt.UTC))
        return msgspec.json.format(msgspec.json.encode(body), indent=2).decode() + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("section", "key", "metric", "value"))
        writer.writerows(_long_rows(report))
        return out.getvalue()
    return _table(report)


def _value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _long_rows(report: Report) -> Iterator[tuple[str, str, str, str]]:
    yield ("window", "all", "proposals", str(report.proposals))
    yield ("window", "all", "decided", str(report.decided))
    yield ("window", "all", "approved", str(report.approved))
    for section, items in (("node", report.nodes), ("strategy", report.strategies)):
        for p in items:
            for metric in Performance.__dataclass_fields__:
                if metric != "name":
                    yield (section, p.name, metric, _value(getattr(p, metric)))
    for pair in report.pairs:
        key = f"{pair.node_a}|{pair.node_b}"
        yield ("pair", key, "compared", str(pair.compared))
        yield ("pair", key, "agreed", str(pair.agreed))
        yield ("pair", key, "rate", _value(pair.rate))
    for section, approvals in (("proposal_type", report.by_type), ("asset", report.by_asset)):
        for a in approvals:
            for metric in Approval.__dataclass_fields__:
                if metric != "key":
                    yield (section, a.key, metric, _value(getattr(a, metric)))
    for day in report.days:
        for metric in ("proposals", "decided", "approved", "votes_owed", "votes_cast", "participation"):
            yield ("day", day.day.isoformat(), metric, _value(getattr(day, metric)))
        yield ("day", day.day.isoformat(), "eth_spent_wei", str(day.eth_spent_wei))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _grid(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join
    out = [line(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append(line("-" * w for w in widths))
    out += [line(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return out


def _table(report: Report) -> str:
    window = (
        f"{report.since.isoformat() if report.since else 'the beginning'} to "
        f"{report.until.isoformat() if report.until else 'now'}"
    )
    lines = [
        f"dloop governance report: proposals created from {window}",
        f"{report.proposals} proposals, {report.decided} decided (voting ended), {report.approved} approved",
        "",
    ]
    header = ("", "owed", "cast", "particip.", "failed", "p50", "p95", "gas", "ETH", "w/ majority")
    rows: list[tuple[str, ...]]
    for title, items in (("node", report.nodes), ("strategy", report.strategies)):
        rows = [
            (
                p.name,
                str(p.votes_owed),
                str(p.votes_cast),
                _pct(p.participation),
                str(p.votes_failed),
                _secs(p.time_to_vote_p50),
                _secs(p.time_to_vote_p95),
                str(p.gas_used),
                units(p.eth_spent_wei) or "0",
                f"{_pct(p.majority_agreement)} of {p.compared_with_majority}",
            )
            for p in items
        ]
        lines += [*_grid((title, *header[1:]), rows), ""]
    if report.pairs:
        rows = [(f"{p.node_a} / {p.node_b}", f"{_pct(p.rate)} of {p.compared}") for p in report.pairs]
        lines += [*_grid(("node pair", "agreement"), rows), ""]
    for title, approvals in (("proposal type", report.by_type), ("asset", report.by_asset)):
        rows = [
            (a.key, str(a.proposals), str(a.decided), str(a.approved), _pct(a.rate), str(a.executed))
            for a in approvals
        ]
        lines += [*_grid((title, "proposals", "decided", "approved", "approval", "executed"), rows), ""]
    if report.days:
        rows = [
            (
                d.day.isoformat(),
                str(d.proposals),
                str(d.decided),
                str(d.approved),
                f"{d.votes_cast}/{d.votes_owed}",
                _pct(d.participation),
            )
            for d in report.days
        ]
        lines += _grid(("day (UTC)", "proposals", "decided", "approved", "votes", "particip."), rows)
    return "\n".join(lines).rstrip() + "\n"
