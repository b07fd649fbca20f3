"""deploy/prometheus/alerts.yml and deploy/grafana/dloop.json name only metrics that /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from web.metrics import MetricsSnapshot, render

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
_METRIC = re.compile(r"\bdloop_[a-z0-9_]+")
_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def exported() -> set[str]:
    snapshot = MetricsSnapshot(
        vote_counts={}, queue_by_state={}, head_block=None, head_lag_seconds=None, reconnects=0,
        sent_latencies=[], mined_latencies=[], rpc_errors={}, proposals_known=0, proposals_active=0,
        listener_up=True, voter_up=True,
    )  # fmt: skip
    return set(re.findall(r"^# TYPE (\S+) ", render(snapshot), flags=re.MULTILINE))


def named(text: str) -> set[str]:
    names = set()
    for name in _METRIC.findall(text):
        for part in _HISTOGRAM_PARTS:
            if name.endswith(part) and name.removesuffix(part) in exported():
                name = name.removesuffix(part)
        names.add(name)
    return names


def test_the_prometheus_rules_name_only_exported_metrics() -> None:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    used = named(text)
    assert {"dloop_alerts_firing", "dloop_rpc_requests_total", "dloop_head_lag_seconds"} <= used
    assert used <= exported(), sorted(used - exported())
    for rule in ("MissedVoteRisk", "VoteFailed", "NodeLowBalance", "NodeNoWeight", "ListenerDown",
                 "ListenerBlind", "RpcErrors", "RoundStuck"):  # fmt: skip
        assert f"alert: {rule}" in text


def test_the_grafana_dashboard_names_only_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dloop.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    used = named(exprs)
    assert len(used) >= 8
    assert used <= exported(), sorted(used - exported())
