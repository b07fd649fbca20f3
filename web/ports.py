"""What the HTTP layer needs from the rest of the service, as small values and callables.

The web package never imports the listener or the voter: `dloop.service` adapts their status objects into
these views and hands a `WebContext` to `create_app`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from storage.controls import PauseState, PauseWatch
from storage.engine import SessionFactory
from storage.proposals import NodeRecord
from storage.queries import ContractScope, Scope, Scopes


@dataclass(frozen=True)
class ListenerView:
    running: bool
    connected: bool
    subscribed: bool
    head_block: int | None = None
    head_received_at: dt.datetime | None = None  # wall clock when the latest head arrived
    head_timestamp: int | None = None  # chain time of that head
    reconnects: int = 0
    last_error: str | None = None
    contract_version: str = "unknown"  # which AssetDAO version's events the contract emits (chain/events.py)
    blind_reason: str | None = None  # why the listener does not see proposals (it is blind), if it does not
    missed_total: int = 0  # proposals the live listener never saw, found by a reconcile pass
    unknown_events: Mapping[str, int] = field(default_factory=dict)  # topic0 -> logs of no known version
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class LaneInfo:
    """Who signs for one node when several instances share the database: this one (`owned`) or `owner`."""

    node: str
    address: str
    owned: bool
    owner: str | None  # None: no instance has taken the lane yet
    token: int | None  # the fencing token of the lane's current lease
    expires_at: dt.datetime | None
    deployment: str = ""  # a node voting in several deployments has one lane on each one's chain
    chain_id: int | None = None
    leased: bool = True  # False: no leases (SQLite: the only instance, by its run lock)


@dataclass(frozen=True)
class VoterView:
    running: bool
    in_flight: int = 0
    last_error: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)
    instance: str = ""  # this process's owner id
    lanes: Sequence[LaneInfo] = ()  # empty: no lane ownership in play
    alerts_owner: str | None = None  # the instance holding the alerts lease as last seen (None: not known)


@dataclass(frozen=True)
class NodeChainState:
    """Live chain facts of one node account; `error` set when they could not be read."""

    address: str
    eth_balance_wei: int | None = None
    dloop_balance_wei: int | None = None
    next_nonce: int | None = None
    required_wei: int = 0  # what one vote may cost at current fees: below this the node is unfunded
    error: str | None = None


@dataclass(frozen=True)
class TriggerResult:
    round_id: int
    joined: bool
    started_at: dt.datetime


class RoundControl(Protocol):
    async def trigger(self) -> TriggerResult: ...

    def phase(self, round_id: int) -> str | None:
        """The live phase (reconciling / draining) of a round that is running in this process."""
        ...


class PauseControl(Protocol):
    """The operator's pause switches. `set_paused` returns once no paused node can sign any more."""

    async def set_paused(self, scopes: Sequence[str], paused: bool, *, by: str) -> PauseState: ...

    async def current(self) -> PauseState: ...


class StoredPauses:
    """Pause switches straight in the database, for a web app without a voter in its process: the voters
    read the change within a second."""

    def __init__(self, watch: PauseWatch) -> None:
        self.watch = watch

    async def set_paused(self, scopes: Sequence[str], paused: bool, *, by: str) -> PauseState:
        return await self.watch.set(scopes, paused, by=by)

    async def current(self) -> PauseState:
        return await self.watch.current()


@dataclass(frozen=True)
class AlertsView:
    """The alert evaluator and the notifier, live (the alerts themselves are rows: storage/alerts.py)."""

    interval: float = 15.0
    last_evaluated_at: dt.datetime | None = None
    last_error: str | None = None
    # per webhook receiver (named by host only): sent, failed, dropped, queued, lastError
    receivers: Sequence[Mapping[str, object]] = ()


@dataclass(frozen=True)
class DeploymentStatus:
    """One configured deployment: running (scope, listener, voter set) or waiting for its chain (`error`)."""

    name: str
    scope: ContractScope | None = None
    listener: ListenerView | None = None
    voter: VoterView | None = None
    rpc_errors: Mapping[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class WebContext:
    sessions: SessionFactory
    scope: ContractScope  # the first deployment's: what its per-chain views (listener, alerts) describe
    nodes: Sequence[NodeRecord]
    rounds: RoundControl
    listener: Callable[[], ListenerView]
    voter: Callable[[], VoterView]
    node_chain: Callable[[], Awaitable[Sequence[NodeChainState]]]
    rpc_errors: Callable[[], Mapping[str, int]]
    alerts: Callable[[], AlertsView] = AlertsView
    rpc_requests: Callable[[], int] = int  # chain requests sent so far (0 when not counted)
    api_token: str | None = None
    head_timeout: float = 30.0
    controls: PauseControl | None = None  # None: StoredPauses over `sessions`
    dry_run: bool = False
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    # Every running deployment by name (a live mapping: a deployment whose chain came up late joins it).
    # Empty: the one `scope`, named `default`.
    scopes: Mapping[str, ContractScope] = field(default_factory=dict)
    deployment_status: Callable[[], Sequence[DeploymentStatus]] = tuple

    def deployments(self) -> Mapping[str, ContractScope]:
        return self.scopes or {self.scope.name: self.scope}

    def everything(self) -> Scopes:
        """Every running deployment: what the API shows unless asked for one."""
        return Scopes(tuple(self.deployments().values()))

    def deployment_scope(self, name: str | None) -> Scope:
        """`?deployment=NAME`: that deployment (no rows while its chain is not reached yet), every
        deployment without one; LookupError for a name no deployment has."""
        if name is None:
            return self.everything()
        running = self.deployments().get(name)
        if running is not None:
            return running
        if any(d.name == name for d in self.deployment_status()):
            return Scopes(())
        raise LookupError(name)


def pause_control(context: WebContext) -> PauseControl:
    return context.controls if context.controls is not None else _stored(context.sessions)


_STORED: dict[int, StoredPauses] = {}


def _stored(sessions: SessionFactory) -> StoredPauses:
    key = id(sessions)
    if key not in _STORED:
        _STORED[key] = StoredPauses(PauseWatch(sessions))
    return _STORED[key]
