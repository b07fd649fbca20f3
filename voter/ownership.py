"""Lane ownership: which node lanes this `dloop run` instance may sign for, when several share one database.

A loop renews this instance's lane leases (storage/lanes.py) and takes over the lanes whose owner stopped
renewing. A lane is used only under the fence (owner, token) it was attached with: a lane lost (renewal
refused, our lease lapsed on our own clock, or a record refused by the database's fence check) stops signing
at once; a lane taken is attached again from the chain (`sent` rows resolved, nonce synced) before it signs.

Timing, with T = DLOOP_LANE_TAKEOVER_SECONDS: a lease lasts 2T/3 and every instance tries every T/4, so
the owner renews twice per lease (one failed renewal costs nothing) and a standby takes a dead owner's lane
at most 2T/3 + T/4 < T after its last renewal.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc

from core.errors import StorageError
from core.logs import log_event
from storage import lanes
from storage.engine import SessionFactory
from storage.lanes import LaneClaim, LaneFence
from storage.models import utcnow

log = logging.getLogger("dloop.voter")


@dataclass(frozen=True)
class LaneView:
    """One lane as this instance last saw it (for GET /, /health and /metrics)."""

    address: str
    owned: bool  # this instance signs for it now
    owner: str | None  # whoever holds the lease row (None: no row yet)
    token: int | None
    expires_at: dt.datetime | None
    acquired_at: dt.datetime | None


class LaneOwnership:
    """This instance's leases on the lanes of `addresses` (node accounts) on one chain."""

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        chain_id: int,
        addresses: Sequence[str],
        owner: str,
        takeover_seconds: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.chain_id = chain_id
        self.addresses = tuple(a.lower() for a in addresses)
        self.owner = owner
        self.lease_seconds = takeover_seconds * 2 / 3
        self.interval = takeover_seconds / 4
        self.on_change = on_change
        self._claims: dict[str, LaneClaim] = {}
        self._fences: dict[str, LaneFence] = {}  # lanes held (until lost or their lease lapses)
        self._expires: dict[str, dt.datetime] = {}  # when each held lease ends, as last renewed

    # -- what the voter asks ---------------------------------------------------------------------------
    def fence(self, address: str) -> LaneFence | None:
        """The fence to sign `address`'s transactions under, or None: not ours (or our lease has lapsed by
        our clock, e.g. the database was unreachable at the renewals: stop before another may start)."""
        key = address.lower()
        fence = self._fences.get(key)
        if fence is None:
            return None
        if utcnow() >= self._expires[key]:
            self.lost(key, "our lease lapsed before it could be renewed")
            return None
        return fence

    def lost(self, address: str, why: str) -> None:
        """Stop signing for `address` now (the voter detaches the lane at its next round)."""
        key = address.lower()
        fence = self._fences.pop(key, None)
        self._expires.pop(key, None)
        if fence is not None:
            log_event(log, "lane_lost", level=logging.WARNING, address=key, token=fence.token, reason=why)
            self._changed()

    def views(self) -> list[LaneView]:
        views = []
        for address in self.addresses:
            claim = self._claims.get(address)
            row = claim.after if claim is not None else None
            views.append(
                LaneView(
                    address=address,
                    owned=self.fence(address) is not None,
                    owner=row.owner if row is not None else None,
                    token=row.token if row is not None else None,
                    expires_at=row.expires_at if row is not None else None,
                    acquired_at=row.acquired_at if row is not None else None,
                )
            )
        return views

    # -- the loop --------------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew and take lanes every `interval`; reports started after the first try. On the way out the
        leases are ended, so another instance takes the lanes at once instead of after they expire."""
        started = False
        try:
            while True:
                began = anyio.current_time()
                due = began + self.interval  # a steady beat, however long a tick took
                try:
                    await self.tick()
                except StorageError as exc:  # the held fences stay until their leases lapse (fence())
                    log_event(log, "lane_renew_failed", level=logging.WARNING, error=str(exc))
                took = anyio.current_time() - began
                if took > self.interval:  # leases are at risk: the database or this process is that slow
                    log_event(log, "lane_renew_slow", level=logging.WARNING, seconds=round(took, 3))
                if not started:
                    task_status.started()
                    started = True
                await anyio.sleep(max(0.0, due - anyio.current_time()))
        finally:
            self._fences.clear()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    count = await lanes.release(
                        self.sessions, chain_id=self.chain_id, owner=self.owner, addresses=self.addresses
                    )
                    log_event(log, "lanes_released", owner=self.owner, lanes=count)
                except StorageError as exc:
                    log_event(log, "lanes_release_failed", level=logging.WARNING, error=str(exc))

    async def tick(self) -> None:
        """One acquire-or-renew of every lane; logs what was taken and lost."""
        claims = await lanes.acquire(
            self.sessions,
            chain_id=self.chain_id,
            addresses=self.addresses,
            owner=self.owner,
            seconds=self.lease_seconds,
        )
        changed = False
        for address, claim in claims.items():
            self._claims[address] = claim
            held = self._fences.get(address)
            if not claim.held:
                if held is not None:
                    self.lost(address, f"taken over by {claim.after.owner} (token {claim.after.token})")
                continue
            if held is not None and held != claim.fence:  # lapsed and taken again: a new lane for us
                self.lost(address, "our lease lapsed before it was renewed")
            if address not in self._fences:
                changed = True
                self._log_acquired(claim)
            self._fences[address] = claim.fence
            self._expires[address] = claim.after.expires_at
        if changed:
            self._changed()

    def _log_acquired(self, claim: LaneClaim) -> None:
        before = claim.before
        previous = before.owner if before is not None and before.owner != self.owner else None
        # How long nobody could sign: from the previous lease's end to our take (0 if it ended as we took).
        ownerless = (
            max(0.0, (claim.after.acquired_at - before.expires_at).total_seconds())
            if before is not None
            else None
        )
        log_event(
            log,
            "lane_acquired",
            address=claim.after.address,
            token=claim.after.token,
            previous_owner=previous,
            ownerless_seconds=round(ownerless, 3) if ownerless is not None else None,
            owner=self.owner,
        )

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
