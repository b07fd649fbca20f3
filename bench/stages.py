"""Where the service's latency goes, from its own JSON log: per proposal, the moments the listener recorded
it (`proposal_recorded`) and each node's vote was broadcast (`vote_sent`), against the benchmark's observer
clock (wall time of the latency's origin and of the VoteCast announcements). Pure parsing; a log without
these events yields no stages (the figures then only miss their breakdown).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.report import distribution


@dataclass
class ServiceMoments:
    """Wall-clock seconds (epoch) of what the service logged about one proposal."""

    recorded: float | None = None
    sent: list[float] = field(default_factory=list)


def service_moments(lines: Iterable[str]) -> dict[int, ServiceMoments]:
    moments: dict[int, ServiceMoments] = {}
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
            event = record.get("event")
            if event not in ("proposal_recorded", "vote_sent"):
                continue
            when = dt.datetime.fromisoformat(record["ts"]).timestamp()
            proposal = int(record["proposal"])
        except (ValueError, KeyError, TypeError):
            continue
        entry = moments.setdefault(proposal, ServiceMoments())
        if event == "proposal_recorded":
            entry.recorded = when if entry.recorded is None else min(entry.recorded, when)
        else:
            entry.sent.append(when)
    return moments


@dataclass(frozen=True)
class ObservedProposal:
    """Wall-clock seconds of the latency clock's origin (the observer's ProposalCreated announcement or, under
    automine, anvil's answer to the create when that came first) and of the five VoteCast announcements."""

    created: float
    votes: Sequence[float]


def stage_breakdown(
    observed: Mapping[int, ObservedProposal], moments: Mapping[int, ServiceMoments]
) -> dict[str, dict[str, float | int | None]]:
    """Distributions (ms) of: origin -> recorded, recorded -> first send, first -> last send, last send ->
    mined.

    The service logs with millisecond resolution, so stages under ~2 ms read as 0-1 ms.
    """
    stages: dict[str, list[float]] = {
        "created_to_recorded_ms": [],
        "recorded_to_first_send_ms": [],
        "first_to_last_send_ms": [],
        "last_send_to_last_vote_mined_ms": [],
    }
    for proposal_id, seen in observed.items():
        entry = moments.get(proposal_id)
        if entry is None or entry.recorded is None or not entry.sent or not seen.votes:
            continue
        first, last = min(entry.sent), max(entry.sent)
        stages["created_to_recorded_ms"].append((entry.recorded - seen.created) * 1000)
        stages["recorded_to_first_send_ms"].append((first - entry.recorded) * 1000)
        stages["first_to_last_send_ms"].append((last - first) * 1000)
        stages["last_send_to_last_vote_mined_ms"].append((max(seen.votes) - last) * 1000)
    return {name: distribution(values) for name, values in stages.items()}
