"""/active-proposals from a cached, pre-encoded snapshot, rebuilt only when the data may have changed.

A snapshot holds every proposal line encoded once, with its voting end. A request only filters the lines by
the chain's clock and wraps them with its own timestamp: no database round trip, no encoding. The snapshot is
rebuilt when
- this process wrote proposals, votes or nodes since it was built (storage.queries.DataVersion), but at most
  every `min_rebuild_interval` (0.2 s) so that a burst of votes does not rebuild it on every request;
- it is `max_age` (1 s) old, for writes by other processes (a second instance, an operator's shell);
- the chain's clock went back before the time the snapshot's query covered.
So an answer lags the database by at most 0.2 s for this service's own writes and 1 s for anyone else's.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio

from storage.engine import SessionFactory
from storage.queries import DataVersion, Scope, active_proposal_rows
from web.present import (
    ACTIVE_PROPOSAL_FIELDS,
    VOTE_BRIEF_FIELDS,
    active_proposal_lines,
    assemble_active_proposals,
    join_proposal_lines,
)

MIN_REBUILD_INTERVAL = 0.2
MAX_AGE = 1.0
# The snapshot also holds proposals that ended up to this long before it was built, so that a chain clock
# stepping back a little (a new head's whole-second timestamp) does not force a rebuild.
LOOKBACK = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class ActiveSnapshot:
    version: int  # DataVersion.value read before the database was
    built_at: float  # monotonic seconds
    covers_from: dt.datetime  # chain time: proposals ending at or after it are in `lines`
    ends: tuple[dt.datetime, ...]  # voting end of each line
    lines: tuple[bytes, ...]  # encoded proposals, by proposal id
    joined_all: bytes  # every line joined, for the usual case where none has ended yet
    earliest_end: dt.datetime | None

    @classmethod
    def build(
        cls,
        version: int,
        built_at: float,
        covers_from: dt.datetime,
        lines: Sequence[tuple[dt.datetime, bytes]],
    ) -> ActiveSnapshot:
        ends = tuple(end for end, _line in lines)
        encoded = tuple(line for _end, line in lines)
        joined = join_proposal_lines(encoded)
        return cls(version, built_at, covers_from, ends, encoded, joined, min(ends, default=None))

    def open_at(self, chain_now: dt.datetime) -> tuple[int, bytes]:
        """(count, joined lines) of the proposals whose voting has not ended at `chain_now`."""
        if self.earliest_end is None or chain_now <= self.earliest_end:
            return len(self.lines), self.joined_all
        still_open = [line for end, line in zip(self.ends, self.lines, strict=True) if end >= chain_now]
        return len(still_open), join_proposal_lines(still_open)


def needs_rebuild(
    snapshot: ActiveSnapshot | None,
    *,
    version: int,
    watching: bool,
    clock: float,
    chain_now: dt.datetime,
    min_rebuild_interval: float = MIN_REBUILD_INTERVAL,
    max_age: float = MAX_AGE,
) -> bool:
    if snapshot is None or not watching:  # not watching writes: nothing says the snapshot is current
        return True
    if chain_now < snapshot.covers_from:
        return True
    age = clock - snapshot.built_at
    if age >= max_age or age < 0:
        return True
    return snapshot.version != version and age >= min_rebuild_interval


class ActiveProposalsCache:
    def __init__(
        self,
        sessions: SessionFactory,
        scope: Callable[[], Scope],
        version: DataVersion,
        *,
        min_rebuild_interval: float = MIN_REBUILD_INTERVAL,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.scope = scope  # read at each rebuild: a deployment whose chain came up late joins
        self.version = version
        self.min_rebuild_interval = min_rebuild_interval
        self.max_age = max_age
        self.clock = clock
        self.snapshot: ActiveSnapshot | None = None
        self.rebuilds = 0
        self._lock = anyio.Lock()

    def _stale(self, chain_now: dt.datetime) -> bool:
        return needs_rebuild(
            self.snapshot,
            version=self.version.value,
            watching=self.version.watching,
            clock=self.clock(),
            chain_now=chain_now,
            min_rebuild_interval=self.min_rebuild_interval,
            max_age=self.max_age,
        )

    async def current(self, chain_now: dt.datetime) -> ActiveSnapshot:
        snapshot = self.snapshot
        if snapshot is not None and not self._stale(chain_now):
            return snapshot
        async with self._lock:  # one rebuild at a time; requests that waited use its result
            if self.snapshot is None or self._stale(chain_now):
                self.snapshot = await self._build(chain_now)
            return self.snapshot

    async def _build(self, chain_now: dt.datetime) -> ActiveSnapshot:
        # The version is read before the database: a write committed in between bumps it again afterwards.
        version, built_at, covers_from = self.version.value, self.clock(), chain_now - LOOKBACK
        rows = await active_proposal_rows(
            self.sessions,
            self.scope(),
            ends_at_or_after=covers_from,
            proposal_fields=ACTIVE_PROPOSAL_FIELDS,
            vote_fields=VOTE_BRIEF_FIELDS,
        )
        self.rebuilds += 1
        return ActiveSnapshot.build(version, built_at, covers_from, active_proposal_lines(rows))

    async def answer(self, timestamp: dt.datetime, chain_now: dt.datetime) -> bytes:
        count, joined = (await self.current(chain_now)).open_at(chain_now)
        return assemble_active_proposals(timestamp, count, joined)
