"""Response bodies of the HTTP API: msgspec Structs, camelCase on the wire; they also feed the OpenAPI schema.

uint256 values (amounts, tallies, balances in wei) are decimal strings: they do not fit a JSON number that
JavaScript reads exactly.
"""

from __future__ import annotations

import datetime as dt

import msgspec


class Api(msgspec.Struct, rename="camel", omit_defaults=False):
    """Base of every response object."""


class ErrorResponse(Api):
    error: str
    reason: str
    status: int
    success: bool = False


class NodeVoteBrief(Api):
    node: str
    state: str
    decision: str | None
    confidence: float | None
    reason: str | None
    tx_hash: str | None


class ActiveProposal(Api):
    id: int
    proposer: str
    description: str
    proposal_type: int
    proposal_type_name: str
    asset_address: str
    asset_symbol: str | None
    amount: str
    amount_units: str | None
    votes_for: str
    votes_against: str
    end_time: int
    end_time_utc: dt.datetime
    state: int  # the contract's integer status: 1 = Active
    status: str
    executed: bool
    chain_id: int
    deployment: str
    votes: list[NodeVoteBrief]


class ActiveProposalsResponse(Api):
    """Served with one proposal per line (see web.encoding) so `grep -c '"state":1'` counts proposals."""

    success: bool
    count: int
    timestamp: dt.datetime
    proposals: list[ActiveProposal]


class TransactionOut(Api):
    tx_hash: str
    nonce: int
    max_fee_per_gas: str
    max_priority_fee_per_gas: str
    gas_limit: int
    created_at: dt.datetime
    outcome: str | None


class VoteOut(Api):
    id: int
    proposal_id: int
    node: str
    node_address: str
    state: str
    decision: str | None
    confidence: float | None
    reason: str | None
    # The asset's price the decision used (the oracle's unit per whole token) and the proposal's value at it,
    # exact decimal text; null when no oracle answered (the size rule was in token units) or not decided yet.
    price: str | None
    value: str | None
    tx_hash: str | None
    nonce: int | None
    attempts: int
    last_error: str | None
    queued_at: dt.datetime
    decided_at: dt.datetime | None
    sent_at: dt.datetime | None
    confirmed_at: dt.datetime | None
    confirmed_block: int | None
    gas_used: int | None
    chain_id: int
    deployment: str  # the deployment (chain and contract) the proposal belongs to
    transactions: list[TransactionOut]


class ProposalOut(Api):
    id: int
    proposer: str
    description: str
    proposal_type: int
    proposal_type_name: str
    asset_address: str
    asset_symbol: str | None
    asset_decimals: int | None
    amount: str
    amount_units: str | None
    votes_for: str
    votes_against: str
    created_at: dt.datetime
    end_time: int
    end_time_utc: dt.datetime
    state: int
    status: str
    executed: bool
    first_seen_at: dt.datetime
    source: str
    block_number: int | None
    tx_hash: str | None
    read_error: str | None
    chain_id: int
    deployment: str
    votes: list[VoteOut]


class ProposalResponse(Api):
    success: bool
    proposal: ProposalOut
    timestamp: dt.datetime


class VotesResponse(Api):
    success: bool
    votes: list[VoteOut]
    total: int
    limit: int
    offset: int
    timestamp: dt.datetime


class NodeOut(Api):
    name: str
    address: str
    strategy: str
    status: str  # active / unfunded / error
    eth_balance: str | None
    eth_balance_wei: str | None
    dloop_weight: str | None
    dloop_weight_wei: str | None
    next_nonce: int | None
    votes_cast: int
    votes_pending: int
    votes_failed: int
    votes_by_state: dict[str, int]
    last_vote_at: dt.datetime | None
    error: str | None
    paused: bool = False  # signing paused for this node (by its own switch or the whole service's)
    paused_reason: str | None = None


class NodesResponse(Api):
    success: bool
    nodes: list[NodeOut]
    count: int
    timestamp: dt.datetime
    service_paused: bool = False
    dry_run: bool = False


class ControlsOut(Api):
    """The operator controls: whether signing is paused for the service and per node, and dry run."""

    service_paused: bool
    paused_nodes: list[str]
    dry_run: bool
    changed_at: dt.datetime | None


class PauseResponse(Api):
    success: bool
    message: str
    controls: ControlsOut
    timestamp: dt.datetime


class RoundOut(Api):
    id: int
    kind: str
    state: str
    phase: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    proposals_scanned: int
    new_proposals: int
    missing_votes: int
    resolved_transactions: int
    votes_sent: int
    votes_confirmed: int
    error: str | None


class RoundResponse(Api):
    success: bool
    round: RoundOut
    timestamp: dt.datetime


class TriggerResponse(Api):
    success: bool
    message: str
    round_id: int
    joined: bool
    timestamp: dt.datetime


class HealthCheck(Api):
    ok: bool
    detail: str


class LaneOut(Api):
    node: str
    address: str
    owned: bool  # this instance signs for the node now
    owner: str | None  # the instance holding the lane's lease (None: nobody has taken it yet)
    token: int | None  # the lease's fencing token
    expires_at: dt.datetime | None
    deployment: str | None = None  # lanes are per (chain, node): a node in several deployments has several
    chain_id: int | None = None


class LanesOut(Api):
    """Node lanes when several instances share the database: which this one signs for, who has the others."""

    instance: str  # this instance's id (host, pid, random)
    owned: list[str]  # nodes this instance signs for
    standby: bool  # owns none: another instance signs for every node (healthy: it takes over if that dies)
    lanes: list[LaneOut]
    # "leases": lanes leased in the database (PostgreSQL, several instances may share it); "run-lock": SQLite,
    # one instance by its run lock signs for every node (no token, no expiry)
    mode: str = "leases"
    # the instance evaluating and notifying alerts (the alerts lease's holder as last seen; null: not known)
    alerts_owner: str | None = None


class HealthResponse(Api):
    status: str  # healthy / degraded (voting from reconcile passes only: the listener is blind) / unhealthy
    healthy: bool
    timestamp: dt.datetime
    checks: dict[str, HealthCheck]
    lanes: LanesOut | None = None


class ListenerOut(Api):
    running: bool
    connected: bool
    subscribed: bool
    head_block: int | None
    head_age_seconds: float | None
    reconnects: int
    last_error: str | None
    contract_version: str  # production / upstream / production+upstream / unknown
    blind_reason: str | None  # why the listener does not see proposals, when it does not
    missed_proposals: int  # proposals the live listener never saw (found by a reconcile pass)
    unknown_events: dict[str, int]  # topic0 -> logs of no known AssetDAO version
    details: dict[str, object]


class VoterOut(Api):
    running: bool
    in_flight: int
    last_error: str | None
    details: dict[str, object]


class QueueOut(Api):
    depth: int  # votes still to be sent or mined (pending + queued + sent)
    by_state: dict[str, int]


class NodeStatusOut(Api):
    name: str
    address: str
    strategy: str
    status: str
    votes_cast: int
    votes_pending: int
    votes_failed: int
    last_vote_at: dt.datetime | None
    paused: bool = False


class SystemOut(Api):
    is_running: bool
    total_nodes: int
    active_nodes: int
    node_statuses: list[NodeStatusOut]


class ProposalsOut(Api):
    known: int
    active: int
    highest_id: int


class OverviewResponse(Api):
    message: str
    status: str  # running / degraded
    timestamp: dt.datetime
    system: SystemOut
    listener: ListenerOut
    voter: VoterOut
    queue: QueueOut
    proposals: ProposalsOut
    last_round: RoundOut | None
    uptime_seconds: float
    controls: ControlsOut | None = None
    lanes: LanesOut | None = None


# -- alerts and analytics ------------------------------------------------------------------------------------


class AlertOut(Api):
    id: int | None
    fingerprint: str  # rule + subject
    alert: str  # the rule, e.g. MissedVoteRisk
    severity: str  # critical / warning
    subject: str
    summary: str
    state: str  # firing / resolved
    first_seen: dt.datetime
    last_seen: dt.datetime
    resolved_at: dt.datetime | None
    last_notified: dt.datetime | None


class ReceiverOut(Api):
    receiver: str  # scheme and host only: the URL holds the receiver's token
    sent: int
    failed: int
    dropped: int
    queued: int
    last_error: str | None


class EvaluatorOut(Api):
    interval_seconds: float
    last_evaluated_at: dt.datetime | None
    last_error: str | None
    receivers: list[ReceiverOut]


class AlertsResponse(Api):
    success: bool
    alerts: list[AlertOut]
    count: int
    firing: int  # alerts firing now (whatever the filter)
    firing_by_severity: dict[str, int]
    evaluator: EvaluatorOut
    timestamp: dt.datetime


class PerformanceOut(Api):
    name: str
    votes_owed: int
    votes_cast: int
    votes_failed: int
    participation: float | None  # votes cast / votes owed
    time_to_vote_p50_seconds: float | None  # proposal created (chain time) -> vote mined
    time_to_vote_p95_seconds: float | None
    gas_used: int
    eth_spent: str  # ETH, exact decimal text
    eth_spent_wei: str
    compared_with_majority: int
    agreed_with_majority: int
    majority_agreement: float | None


class PairAgreementOut(Api):
    node_a: str
    node_b: str
    compared: int
    agreed: int
    rate: float | None


class ApprovalOut(Api):
    key: str
    proposals: int
    decided: int
    approved: int
    executed: int
    rate: float | None


class DayOut(Api):
    day: str  # YYYY-MM-DD (UTC)
    proposals: int
    decided: int
    approved: int
    votes_owed: int
    votes_cast: int
    participation: float | None
    eth_spent_wei: str


class AnalyticsResponse(Api):
    success: bool
    since: dt.datetime | None
    until: dt.datetime | None
    proposals: int
    decided: int  # outcome recorded (votingEnds passed)
    approved: int
    approval_rate: float | None
    nodes: list[PerformanceOut]
    strategies: list[PerformanceOut]
    pairs: list[PairAgreementOut]
    by_proposal_type: list[ApprovalOut]
    by_asset: list[ApprovalOut]
    days: list[DayOut]
    timestamp: dt.datetime
