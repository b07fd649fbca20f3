"""Is the listener blind? Pure decisions on frozen values: when a reconcile pass records a proposal first,
the live listener should have recorded its ProposalCreated log itself; if it has not by the time it has
processed the next block, it missed it.

The old bot's failure was a service that looked healthy while it saw no proposal. A listener that follows the
wrong events (a contract version the service does not know), a node that drops log notifications, or a bug,
all show here: the proposals the reconcile pass finds first that the listener never logged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class ListenerProgress:
    """What the listener says of itself right now."""

    live: bool  # subscribed and caught up
    epoch: int  # changes each time it goes live again (a reconnect): a new epoch backfills the gap
    head_block: int | None  # newest head processed
    proposals_recorded: int  # proposals it recorded first from their ProposalCreated log, since start


@dataclass(frozen=True)
class Sighting:
    """Proposals a reconcile pass recorded first, reading the chain at `read_block`, while the listener was
    live in `epoch`."""

    proposal_ids: tuple[int, ...]
    read_block: int
    epoch: int


@dataclass(frozen=True)
class BlindWatch:
    pending: tuple[Sighting, ...] = ()
    missed_total: int = 0  # proposals the live listener never logged
    blind_reason: str | None = None  # set from a miss until the listener again records a proposal itself
    recorded_at_detection: int = 0

    @property
    def blind(self) -> bool:
        return self.blind_reason is not None


def after_scan(
    watch: BlindWatch, new_ids: Collection[int], read_block: int, listener: ListenerProgress
) -> BlindWatch:
    """Remember what a pass recorded first, to be judged once the listener is past `read_block`. Nothing to
    judge when the listener was not live: its backfill will log them (or the pass raced a reconnect)."""
    if not new_ids or not listener.live:
        return watch
    sighting = Sighting(tuple(sorted(new_ids)), read_block, listener.epoch)
    return dataclasses.replace(watch, pending=(*watch.pending, sighting))


def due(watch: BlindWatch, listener: ListenerProgress) -> tuple[int, ...]:
    """The proposal ids whose ProposalCreated log the listener must have logged by now (it has processed a
    block after the one the pass read, in the same live epoch): the caller looks them up."""
    return tuple(pid for s in watch.pending if _judgeable(s, listener) for pid in s.proposal_ids)


def judge(watch: BlindWatch, listener: ListenerProgress, logged: Collection[int]) -> BlindWatch:
    """Settle the due sightings against `logged` (the due ids whose ProposalCreated log the listener
    recorded); drop the sightings of an ended epoch; end blindness once the listener records a proposal
    itself after the miss."""
    pending: list[Sighting] = []
    missed: list[int] = []
    for sighting in watch.pending:
        if not listener.live or sighting.epoch != listener.epoch:
            continue  # reconnected since: the backfill covered those blocks
        if not _judgeable(sighting, listener):
            pending.append(sighting)
            continue
        missed += [pid for pid in sighting.proposal_ids if pid not in logged]
    watch = dataclasses.replace(watch, pending=tuple(pending))
    if missed:
        shown = ", ".join(str(pid) for pid in missed[:10]) + (" ..." if len(missed) > 10 else "")
        return dataclasses.replace(
            watch,
            missed_total=watch.missed_total + len(missed),
            blind_reason=f"the listener, live, never saw proposal(s) {shown}: the reconcile pass found them",
            recorded_at_detection=listener.proposals_recorded,
        )
    if watch.blind and listener.proposals_recorded > watch.recorded_at_detection:
        return dataclasses.replace(watch, blind_reason=None)
    return watch


def _judgeable(sighting: Sighting, listener: ListenerProgress) -> bool:
    return (
        listener.live
        and sighting.epoch == listener.epoch
        and listener.head_block is not None
        and listener.head_block > sighting.read_block
    )
