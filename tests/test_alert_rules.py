"""The alert rules, the fire/resolve engine and the notification bodies: pure, no I/O."""

from __future__ import annotations

import datetime as dt
import json
import re

from monitor.engine import Alert, Notice, NoticeKind, step
from monitor.notify import body, notice_masker, receiver_label, trial_notice
from monitor.rules import (
    Facts,
    ListenerHealth,
    NodeFunds,
    RpcSample,
    Rule,
    RuleSettings,
    RunningRound,
    UnvotedVote,
    error_rate,
    evaluate,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
RULES = RuleSettings(deadline_hours=6, min_votes=20, head_timeout=30, rpc_error_rate=0.2, round_deadline=90)
KEY = "0x" + "ab12" * 16
TOKEN = "api-token-123456"
HOOK = "https://hooks.slack.com/services/T000/B000/secretsecret"


def rules_of(facts: Facts) -> set[tuple[str, str]]:
    return {(c.rule, c.subject) for c in evaluate(facts, RULES).conditions}


def vote(state: str, ends_in_hours: float, queued_for: float = 600.0, pid: int = 7) -> UnvotedVote:
    ends = NOW + dt.timedelta(hours=ends_in_hours)
    return UnvotedVote(pid, "ai-gov-02", state, ends, queued_for, "strategy x raised ValueError('boom')")


def test_missed_vote_risk_needs_an_unvoted_vote_near_its_deadline() -> None:
    assert rules_of(Facts(NOW, unvoted=[vote("queued", 5)])) == {
        (Rule.MISSED_VOTE_RISK, "proposal 7 / ai-gov-02")
    }
    assert rules_of(Facts(NOW, unvoted=[vote("queued", 7)])) == set()  # beyond the deadline window
    assert rules_of(Facts(NOW, unvoted=[vote("queued", 5, queued_for=5)])) == set()  # being voted now
    assert rules_of(Facts(NOW, unvoted=[vote("queued", -1)])) == set()  # voting ended


def test_a_failed_vote_is_both_a_failure_and_a_risk_until_voting_ends() -> None:
    facts = Facts(NOW, unvoted=[vote("failed", 1, queued_for=1)])
    conditions = evaluate(facts, RULES).conditions
    assert {c.rule for c in conditions} == {Rule.MISSED_VOTE_RISK, Rule.VOTE_FAILED}
    failed = next(c for c in conditions if c.rule == Rule.VOTE_FAILED)
    assert "boom" in failed.summary and failed.severity == "warning"
    assert rules_of(Facts(NOW, unvoted=[vote("failed", -0.1)])) == set()


def test_balances_weights_and_unknown_funds() -> None:
    funds = [
        NodeFunds("ai-gov-01", eth_wei=19 * 1000, dloop_wei=5, vote_cost_wei=1000),
        NodeFunds("ai-gov-02", eth_wei=20 * 1000, dloop_wei=0, vote_cost_wei=1000),
        NodeFunds("ai-gov-03", eth_wei=None, dloop_wei=None, vote_cost_wei=1000),
    ]
    evaluation = evaluate(Facts(NOW, funds=funds), RULES)
    assert {(c.rule, c.subject) for c in evaluation.conditions} == {
        (Rule.NODE_LOW_BALANCE, "ai-gov-01"),
        (Rule.NODE_NO_WEIGHT, "ai-gov-02"),
    }
    assert evaluation.unknown == {"NodeLowBalance:ai-gov-03", "NodeNoWeight:ai-gov-03"}
    assert evaluate(Facts(NOW, funds=None), RULES).unknown == {Rule.NODE_LOW_BALANCE, Rule.NODE_NO_WEIGHT}


def test_listener_down_blind_rpc_errors_and_stuck_rounds() -> None:
    def health(**kw: object) -> ListenerHealth:
        base: dict[str, object] = {
            "enabled": True,
            "connected": True,
            "silent_for": 1.0,
            "disconnected_for": 0.0,
        }
        return ListenerHealth(**{**base, **kw})  # type: ignore[arg-type]

    assert rules_of(Facts(NOW, listener=health())) == set()
    assert rules_of(Facts(NOW, listener=health(silent_for=61))) == {(Rule.LISTENER_DOWN, "listener")}
    assert rules_of(Facts(NOW, listener=health(silent_for=59))) == set()
    down = health(connected=False, disconnected_for=61)
    assert rules_of(Facts(NOW, listener=down)) == {(Rule.LISTENER_DOWN, "listener")}
    assert rules_of(Facts(NOW, listener=health(enabled=False, silent_for=999))) == set()
    assert rules_of(Facts(NOW, listener=health(blind_reason="missed 3"))) == {
        (Rule.LISTENER_BLIND, "listener")
    }

    samples = [RpcSample(0, 0, 0), RpcSample(100, 30, 100), RpcSample(400, 60, 200)]
    assert error_rate(samples) == (0.3, 100)  # the window starts at t=100 (300 s before the newest)
    assert rules_of(Facts(NOW, rpc_samples=samples)) == {(Rule.RPC_ERRORS, "rpc")}
    assert rules_of(Facts(NOW, rpc_samples=[RpcSample(0, 0, 0), RpcSample(10, 5, 10)])) == set()  # too few

    rounds = [RunningRound(4, 151), RunningRound(5, 149)]
    assert rules_of(Facts(NOW, rounds=rounds)) == {(Rule.ROUND_STUCK, "round 4")}


def test_the_engine_fires_once_repeats_criticals_and_resolves() -> None:
    repeat = dt.timedelta(minutes=60)
    risk = evaluate(Facts(NOW, unvoted=[vote("queued", 5)]), RULES)
    first = step({}, risk, NOW, repeat=repeat)
    assert [n.kind for n in first.notices] == [NoticeKind.FIRING]
    later = NOW + dt.timedelta(minutes=10)
    second = step(first.firing, risk, later, repeat=repeat)
    assert second.notices == () and second.firing["MissedVoteRisk:proposal 7 / ai-gov-02"].last_seen == later
    third = step(second.firing, risk, NOW + dt.timedelta(minutes=61), repeat=repeat)
    assert [n.kind for n in third.notices] == [NoticeKind.REPEAT]
    gone = step(third.firing, evaluate(Facts(NOW), RULES), NOW + dt.timedelta(minutes=62), repeat=repeat)
    assert [n.kind for n in gone.notices] == [NoticeKind.RESOLVED] and gone.firing == {}
    assert gone.changed[0].resolved_at == NOW + dt.timedelta(minutes=62)


def test_an_alert_not_judged_stays_firing() -> None:
    low = evaluate(Facts(NOW, funds=[NodeFunds("ai-gov-01", 0, 1, 1000)]), RULES)
    fired = step({}, low, NOW, repeat=dt.timedelta(hours=1))
    unread = evaluate(Facts(NOW, funds=None), RULES)
    kept = step(fired.firing, unread, NOW + dt.timedelta(minutes=1), repeat=dt.timedelta(hours=1))
    assert kept.notices == () and set(kept.firing) == {"NodeLowBalance:ai-gov-01"}


def test_notification_bodies_hold_no_secret_in_any_format() -> None:
    masker = notice_masker([KEY, TOKEN, HOOK])
    alert = Alert(
        fingerprint="VoteFailed:proposal 7 / ai-gov-02",
        rule="VoteFailed",
        subject="proposal 7 / ai-gov-02",
        severity="warning",
        # A summary that (wrongly) quotes secrets: a key, its first 16 hex digits, the token, the webhook.
        summary=f"failed: {KEY} {KEY[2:18]} {TOKEN} {HOOK}",
        first_seen=NOW,
        last_seen=NOW,
    )
    for fmt in ("generic", "slack", "discord"):
        for kind in (NoticeKind.FIRING, NoticeKind.RESOLVED):
            text = json.dumps(body(Notice(kind, alert), fmt, masker))
            for secret in (KEY[2:], KEY[2:18], TOKEN, "secretsecret"):
                assert secret.lower() not in text.lower(), (fmt, secret)
            assert "VoteFailed" in text
    generic = body(trial_notice(NOW), "generic", masker)
    assert generic["status"] == "firing" and generic["kind"] == "test"
    assert set(body(trial_notice(NOW), "slack", masker)) == {"text"}
    discord = body(trial_notice(NOW), "discord", masker)
    assert set(discord) == {"content", "allowed_mentions", "flags"} and discord["allowed_mentions"] == {
        "parse": []
    }


def test_chat_bodies_escape_attacker_text_in_a_summary() -> None:
    """A VoteFailed summary quotes a strategy's error, which may quote a proposal's asset symbol."""
    hostile = Alert(
        fingerprint="VoteFailed:proposal 9 / ai-gov-01",
        rule="VoteFailed",
        subject="proposal 9 / ai-gov-01",
        severity="warning",
        summary="KeyError('<!channel> <http://evil.example|click> @everyone [x](http://evil.example) **b**')",
        first_seen=NOW,
        last_seen=NOW,
    )
    masker = notice_masker([])
    slack = body(Notice(NoticeKind.FIRING, hostile), "slack", masker)["text"]
    assert "<!channel>" not in slack and "<http" not in slack and "&lt;!channel&gt;" in slack
    discord = body(Notice(NoticeKind.FIRING, hostile), "discord", masker)["content"]
    for markup in ("@everyone", "](", "**", "<@"):  # none left unescaped (not behind a backslash)
        assert not re.search(r"(?<!\\)" + re.escape(markup[0]) + re.escape(markup[1:]), discord), markup
    assert "\\@everyone" in discord and "\\[x\\]\\(http" in discord
    assert receiver_label(HOOK) == "https://hooks.slack.com/..."
