"""Prometheus text exposition (format 0.0.4), written by hand: a few gauges, counters and histograms."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS: tuple[float, ...] = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)


@dataclass(frozen=True)
class MetricsSnapshot:
    vote_counts: Mapping[tuple[str, str], int]  # (node, state) -> rows
    queue_by_state: Mapping[str, int]
    head_block: int | None
    head_lag_seconds: float | None
    reconnects: int
    sent_latencies: Sequence[float]
    mined_latencies: Sequence[float]
    rpc_errors: Mapping[str, int]
    proposals_known: int
    proposals_active: int
    listener_up: bool
    voter_up: bool
    unknown_events: Mapping[str, int] = field(default_factory=dict)  # topic0 -> logs of no known version
    listener_missed: int = 0
    listener_blind: bool = False
    contract_version: str = "unknown"
    rpc_requests: int = 0  # chain requests sent (each batch item counts), the denominator of an error rate
    alerts_firing: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (alert, severity) -> firing
    service_paused: bool = False
    paused_nodes: Sequence[str] = ()  # nodes paused by their own switch
    nodes: Sequence[str] = ()  # every configured node, for a 0/1 sample each
    dry_run: bool = False
    deployments: Sequence[DeploymentMetrics] = ()  # per deployment, when the service follows several
    lanes: Sequence[LaneMetrics] = ()  # every node lane of every deployment, when lane ownership is on


@dataclass(frozen=True)
class DeploymentMetrics:
    name: str
    chain_id: int | None  # None while its chain has not been reached
    up: bool
    connected: bool = False
    head_block: int | None = None
    head_lag_seconds: float | None = None
    votes_by_state: Mapping[str, int] = field(default_factory=dict)
    rpc_errors: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LaneMetrics:
    deployment: str
    node: str
    owned: bool  # this instance signs for the node on the deployment's chain
    owner: str | None  # the lease owner (None: no lease row yet)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        self.lines.append(f"{name}{_labels(labels or {})} {_number(value)}")

    def histogram(self, name: str, help_text: str, values: Iterable[float], buckets: Sequence[float]) -> None:
        self.family(name, "histogram", help_text)
        observed = sorted(values)
        for bound in buckets:
            self.sample(
                f"{name}_bucket", sum(1 for v in observed if v <= bound), {"le": _number(float(bound))}
            )
        self.sample(f"{name}_bucket", len(observed), {"le": "+Inf"})
        self.sample(f"{name}_sum", round(sum(observed), 6))
        self.sample(f"{name}_count", len(observed))


def render(snapshot: MetricsSnapshot) -> str:
    out = _Writer()
    out.family("dloop_votes", "gauge", "Vote rows by node and state.")
    for (node, state), count in sorted(snapshot.vote_counts.items()):
        out.sample("dloop_votes", count, {"node": node, "state": state})
    out.family("dloop_queue_depth", "gauge", "Votes waiting to be sent or mined, by state.")
    for state, count in sorted(snapshot.queue_by_state.items()):
        out.sample("dloop_queue_depth", count, {"state": state})
    out.family("dloop_proposals", "gauge", "Known proposals, and those open for voting.")
    out.sample("dloop_proposals", snapshot.proposals_known, {"scope": "known"})
    out.sample("dloop_proposals", snapshot.proposals_active, {"scope": "active"})
    out.family("dloop_head_block", "gauge", "Latest block head received by the listener.")
    if snapshot.head_block is not None:
        out.sample("dloop_head_block", snapshot.head_block)
    out.family("dloop_head_lag_seconds", "gauge", "Seconds since the latest block head arrived.")
    if snapshot.head_lag_seconds is not None:
        out.sample("dloop_head_lag_seconds", round(snapshot.head_lag_seconds, 3))
    out.family("dloop_listener_reconnects_total", "counter", "WebSocket reconnections of the listener.")
    out.sample("dloop_listener_reconnects_total", snapshot.reconnects)
    out.family("dloop_component_up", "gauge", "Whether a component of the service is running.")
    out.sample("dloop_component_up", int(snapshot.listener_up), {"component": "listener"})
    out.sample("dloop_component_up", int(snapshot.voter_up), {"component": "voter"})
    out.histogram(
        "dloop_vote_sent_seconds",
        "Seconds from the proposal event being recorded to the vote transaction being sent.",
        snapshot.sent_latencies,
        LATENCY_BUCKETS,
    )
    out.histogram(
        "dloop_vote_mined_seconds",
        "Seconds from the proposal event being recorded to the vote transaction being mined.",
        snapshot.mined_latencies,
        LATENCY_BUCKETS,
    )
    out.family("dloop_contract_info", "gauge", "The AssetDAO version whose events the contract emits.")
    out.sample("dloop_contract_info", 1, {"version": snapshot.contract_version})
    out.family(
        "dloop_listener_blind",
        "gauge",
        "1 while the listener does not see proposals (votes come from reconcile).",
    )
    out.sample("dloop_listener_blind", int(snapshot.listener_blind))
    out.family(
        "dloop_listener_missed_total",
        "counter",
        "Proposals the live listener never saw, found by a reconcile pass.",
    )
    out.sample("dloop_listener_missed_total", snapshot.listener_missed)
    out.family(
        "dloop_unknown_events_total", "counter", "Contract logs whose topic is of no known AssetDAO version."
    )
    for topic, count in sorted(snapshot.unknown_events.items()):
        out.sample("dloop_unknown_events_total", count, {"topic": topic})
    out.family("dloop_alerts_firing", "gauge", "Alerts firing now, by alert rule and severity.")
    for (alert, severity), count in sorted(snapshot.alerts_firing.items()):
        out.sample("dloop_alerts_firing", count, {"alert": alert, "severity": severity})
    out.family("dloop_signing_paused", "gauge", "1 while signing is paused (scope: service, or a node).")
    out.sample("dloop_signing_paused", int(snapshot.service_paused), {"scope": "service"})
    for node in sorted({*snapshot.nodes, *snapshot.paused_nodes}):
        paused = snapshot.service_paused or node in snapshot.paused_nodes
        out.sample("dloop_signing_paused", int(paused), {"scope": "node", "node": node})
    out.family("dloop_dry_run", "gauge", "1 when DLOOP_DRY_RUN is set: decisions are recorded, never signed.")
    out.sample("dloop_dry_run", int(snapshot.dry_run))
    if snapshot.lanes:
        # A lane is (chain, node): a node voting in several deployments has one per deployment.
        out.family("dloop_lane_owned", "gauge", "1 while this instance signs for the node (owns its lane).")
        for lane in snapshot.lanes:
            out.sample(
                "dloop_lane_owned", int(lane.owned), {"deployment": lane.deployment, "node": lane.node}
            )
        out.family("dloop_lane_owner_info", "gauge", "The instance holding each node lane's lease (1).")
        for lane in snapshot.lanes:
            if lane.owner is not None:
                labels = {"deployment": lane.deployment, "node": lane.node, "owner": lane.owner}
                out.sample("dloop_lane_owner_info", 1, labels)
    out.family("dloop_rpc_errors_total", "counter", "Chain RPC errors by kind.")
    for kind, count in sorted(snapshot.rpc_errors.items()):
        out.sample("dloop_rpc_errors_total", count, {"kind": kind})
    out.family("dloop_rpc_requests_total", "counter", "Chain RPC requests sent (each batch item counts).")
    out.sample("dloop_rpc_requests_total", snapshot.rpc_requests)
    _render_deployments(out, snapshot.deployments)
    return "\n".join(out.lines) + "\n"


def _render_deployments(out: _Writer, deployments: Sequence[DeploymentMetrics]) -> None:
    """The per-deployment series; the families above describe the first deployment's listener and every
    deployment's votes, as they always have."""
    if not deployments:
        return
    out.family("dloop_deployment_up", "gauge", "1 while a deployment runs (0: waiting for its chain).")
    for d in deployments:
        labels = {"deployment": d.name, "chain_id": "" if d.chain_id is None else str(d.chain_id)}
        out.sample("dloop_deployment_up", int(d.up), labels)
    out.family(
        "dloop_deployment_connected", "gauge", "1 while a deployment's listener follows its chain live."
    )
    for d in deployments:
        out.sample("dloop_deployment_connected", int(d.connected), {"deployment": d.name})
    out.family("dloop_deployment_head_block", "gauge", "Latest block head of a deployment's chain.")
    for d in deployments:
        if d.head_block is not None:
            out.sample("dloop_deployment_head_block", d.head_block, {"deployment": d.name})
    out.family("dloop_deployment_head_lag_seconds", "gauge", "Seconds since a deployment's latest head.")
    for d in deployments:
        if d.head_lag_seconds is not None:
            out.sample(
                "dloop_deployment_head_lag_seconds", round(d.head_lag_seconds, 3), {"deployment": d.name}
            )
    out.family("dloop_deployment_votes", "gauge", "Vote rows of a deployment by state.")
    for d in deployments:
        for state, count in sorted(d.votes_by_state.items()):
            out.sample("dloop_deployment_votes", count, {"deployment": d.name, "state": state})
    out.family("dloop_deployment_rpc_errors_total", "counter", "Chain RPC errors of a deployment by kind.")
    for d in deployments:
        for kind, count in sorted(d.rpc_errors.items()):
            out.sample("dloop_deployment_rpc_errors_total", count, {"deployment": d.name, "kind": kind})
