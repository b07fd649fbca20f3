"""The vote state machine (storage/votes.py), as a table: pure, no database, no chain."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from storage import votes
from storage.models import Vote, VoteOutcome, VoteState
from storage.votes import ALLOWED, INITIAL, IllegalTransition, allowed, sources

S = VoteState

# Every transition the service makes, by who makes it. A change here is a change of the design.
EXPECTED = {
    (S.PENDING, S.QUEUED),  # deep enough (listener heads, created log again, reconcile)
    (S.PENDING, S.CLOSED),  # closing log, reconcile: not open
    (S.PENDING, S.ALREADY_VOTED),  # reconcile: hasVoted, nothing sent
    (S.PENDING, S.CONFIRMED),  # our VoteCast log
    (S.QUEUED, S.QUEUED),  # decided again: other content under the proposal id (reorg)
    (S.QUEUED, S.PENDING),  # parked by a reorg; gas estimate says ProposalNotFound
    (S.QUEUED, S.SENT),  # signed, persisted before the broadcast
    (S.QUEUED, S.CONFIRMED),  # our VoteCast log; our earlier transaction found on chain
    (S.QUEUED, S.FAILED),  # the contract rejects the vote; the strategy raised
    (S.QUEUED, S.ALREADY_VOTED),
    (S.QUEUED, S.CLOSED),
    (S.QUEUED, S.NO_VOTE),
    (S.QUEUED, S.DRY_RUN),  # decided under DLOOP_DRY_RUN: recorded, never signed
    (S.SENT, S.QUEUED),  # the transaction will never land: sent again
    (S.SENT, S.PENDING),  # reverted with ProposalNotFound: owed once the proposal is back
    (S.SENT, S.CONFIRMED),  # receipt (voter, reconcile), our VoteCast log
    (S.SENT, S.FAILED),  # reverted, or refused for good
    (S.SENT, S.ALREADY_VOTED),  # the nonce went to a vote sent outside the service
    (S.CONFIRMED, S.CONFIRMED),  # confirmed again (listener first), or in another block after a reorg
    (S.CONFIRMED, S.SENT),  # its transaction reorged out: checked again from the chain
    (S.CONFIRMED, S.QUEUED),  # reorged out and not voted on chain
    (S.CONFIRMED, S.PENDING),  # the same while the proposal is parked
    (S.FAILED, S.CONFIRMED),  # our VoteCast log
    (S.FAILED, S.QUEUED),  # reverted with ProposalNotFound, the proposal is back
    (S.FAILED, S.PENDING),
    (S.CLOSED, S.CONFIRMED),  # our VoteCast log
    (S.CLOSED, S.QUEUED),  # the closing log left the chain
    (S.CLOSED, S.PENDING),
    (S.NO_VOTE, S.QUEUED),  # decided again after a reorg changed the content
}


def test_the_table_is_the_documented_one() -> None:
    assert set(ALLOWED) == set(VoteState)
    assert {(a, b) for a, targets in ALLOWED.items() for b in targets} == EXPECTED
    assert {S.PENDING, S.QUEUED, S.CLOSED} == INITIAL  # closed: the reconcile pass finds it ended


def test_already_voted_is_final_and_every_state_is_reachable() -> None:
    assert ALLOWED[S.ALREADY_VOTED] == frozenset()
    reached, todo = set(INITIAL), list(INITIAL)
    while todo:
        for target in ALLOWED[todo.pop()]:
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert reached == set(VoteState)


def test_only_the_voter_signing_or_a_reorg_recheck_lead_to_sent() -> None:
    """Never two votes: a row enters `sent` when the voter signs it (from queued), or when a confirmed vote's
    transaction left the chain and is checked again (no new transaction)."""
    assert set(sources(S.SENT)) == {S.QUEUED, S.CONFIRMED}
    assert not allowed(S.ALREADY_VOTED, S.SENT) and not allowed(S.NO_VOTE, S.SENT)
    assert not allowed(S.DRY_RUN, S.SENT) and ALLOWED[S.DRY_RUN] == frozenset()  # a dry run never signs


def test_sources_checks_every_state_asked_for() -> None:
    assert sources(S.CLOSED, [S.PENDING, S.QUEUED]) == (S.PENDING, S.QUEUED)
    assert sources(S.CLOSED, ["queued", "queued"]) == (S.QUEUED,)  # type: ignore[list-item]
    with pytest.raises(IllegalTransition, match="sent -> no_vote"):
        sources(S.NO_VOTE, [S.QUEUED, S.SENT])
    with pytest.raises(IllegalTransition):
        sources(S.QUEUED, [])


def test_default_outcomes_name_allowed_targets() -> None:
    assert all(allowed(S.QUEUED, state) for state in votes.UNSENT_OUTCOMES)
    assert all(allowed(S.SENT, state) for state in votes.RESOLVED_OUTCOMES)


def test_outcome_codes_fit_the_column() -> None:
    length = Vote.__table__.c.outcome.type.length  # type: ignore[attr-defined]
    assert all(len(code) <= length for code in VoteOutcome)
    assert len({str(code) for code in VoteOutcome}) == len(VoteOutcome)


@pytest.mark.anyio
async def test_an_illegal_change_is_refused_before_any_statement() -> None:
    nothing = cast(AsyncSession, object())  # never used: the check comes first
    with pytest.raises(IllegalTransition, match="cannot become sent"):  # record_sent's, with its tx
        await votes.finish_unsent(
            nothing, 1, owner="o", state=S.SENT, decision=None, confidence=None, reason="r"
        )
    with pytest.raises(IllegalTransition, match="cannot become confirmed"):
        await votes.resolve_sent(nothing, 1, state=S.CONFIRMED, reason="r", deferred_owner="d")
    with pytest.raises(IllegalTransition):
        await votes.insert_missing(nothing, 1, [1], S.SENT)
    with pytest.raises(IllegalTransition, match="already_voted -> queued"):
        await votes.apply_reconcile_fix(
            nothing, 1, from_states=[S.ALREADY_VOTED], to_state=S.QUEUED, reason="r"
        )


# -- only storage/votes.py writes a vote's state ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SOURCE = ("core", "chain", "storage", "listener", "voter", "web", "dloop", "devtools", "bench")
VOTES_MODULE = "storage/votes.py"
_RAW_VOTE_WRITE = re.compile(r"\b(update\s+votes\b.*\bset\b.*\bstate\b|insert\s+into\s+votes\b)", re.I | re.S)


def _is_vote(node: ast.expr) -> bool:
    """`Vote`, `models.Vote` or `Vote.__table__`."""
    if isinstance(node, ast.Name):
        return node.id == "Vote"
    if isinstance(node, ast.Attribute):
        return node.attr == "Vote" or (node.attr == "__table__" and _is_vote(node.value))
    return False


def _is_vote_statement(node: ast.AST) -> bool:
    """update(Vote) / insert(Vote) (any spelling of the function: `sa.update`, `sqlite.insert`...)."""
    if not isinstance(node, ast.Call) or not node.args or not _is_vote(node.args[0]):
        return False
    name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
    return name in ("update", "insert")


def _is_state_key(key: ast.expr | None) -> bool:
    return (isinstance(key, ast.Constant) and key.value == "state") or (
        isinstance(key, ast.Attribute) and key.attr == "state" and _is_vote(key.value)
    )


def _sets_state(node: ast.AST) -> bool:
    """A dict literal with a `"state"`/`Vote.state` key, or a call with a `state=` keyword or such a dict."""
    if isinstance(node, ast.Dict):
        return any(_is_state_key(key) for key in node.keys)
    if isinstance(node, ast.Call):
        return any(k.arg == "state" for k in node.keywords) or any(
            isinstance(a, ast.Dict) and _sets_state(a) for a in node.args
        )
    return False


def _bound_from_vote(node: ast.AST) -> list[str]:
    """The names `node` binds to something read through `Vote` (`vote = await s.get(Vote, 1)`,
    `for vote in (await s.scalars(select(Vote)))`)."""
    if isinstance(node, ast.Assign):
        source, targets = node.value, node.targets
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        source, targets = node.value, [node.target]
    elif isinstance(node, ast.For | ast.AsyncFor):
        source, targets = node.iter, [node.target]
    else:
        return []
    if not any(isinstance(m, ast.Name) and m.id == "Vote" for m in ast.walk(source)):
        return []
    return [t.id for t in targets if isinstance(t, ast.Name)]


def vote_state_writes(tree: ast.AST, filename: str) -> list[str]:
    """Where `tree` builds a write of the `state` column of `votes`: `.values(state=...)` (or a dict with
    "state") on update(Vote)/insert(Vote); a dict with a "state" key in a module that builds one of those
    statements (values prepared apart, executemany rows); `.state = ...` on an object read through `Vote`;
    raw SQL that updates votes' state or inserts votes."""
    found: list[str] = []
    nodes = list(ast.walk(tree))
    builds_vote_statement = any(_is_vote_statement(n) for n in nodes)
    vote_objects = {name for n in nodes for name in _bound_from_vote(n)}
    for n in nodes:
        line = getattr(n, "lineno", 0)
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr in ("values", "on_conflict_do_update")
            and any(_is_vote_statement(m) for m in ast.walk(n.func.value))
            and (_sets_state(n) or any(k.arg == "set_" and _sets_state(k.value) for k in n.keywords))
        ):
            found.append(f"{filename}:{line} .{n.func.attr}(state=...) on a votes statement")
        elif builds_vote_statement and _sets_state(n) and not isinstance(n, ast.Call):
            found.append(f"{filename}:{line} a dict with a state key in a module writing votes")
        elif isinstance(n, ast.Assign | ast.AugAssign | ast.AnnAssign) and any(
            isinstance(t, ast.Attribute)
            and t.attr == "state"
            and isinstance(t.value, ast.Name)
            and t.value.id in vote_objects
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        ):
            found.append(f"{filename}:{line} .state assigned on a Vote row")
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and _RAW_VOTE_WRITE.search(n.value):
            found.append(f"{filename}:{line} raw SQL writing votes")
    return sorted(set(found))


def test_no_module_but_storage_votes_writes_a_vote_state() -> None:
    outside = []
    for package in SOURCE:
        for path in sorted((REPO / package).rglob("*.py")):
            name = str(path.relative_to(REPO))
            if name != VOTES_MODULE:
                outside += vote_state_writes(ast.parse(path.read_text(), filename=name), name)
    assert not outside, f"vote states change only in {VOTES_MODULE} (checked against ALLOWED): {outside}"


def test_the_state_write_finder_finds_writes() -> None:
    """Not vacuous: it sees storage/votes.py's own writes, and each spelling of one elsewhere."""
    assert vote_state_writes(ast.parse((REPO / VOTES_MODULE).read_text()), VOTES_MODULE)
    spellings = [
        "async def f(s):\n    await s.execute(update(Vote).where(Vote.id == 1).values(state='closed'))",
        "async def f(s):\n    await s.execute(sa.insert(Vote).values({'state': 'queued', 'node_id': 1}))",
        "async def f(s):\n    await s.execute(update(Vote).values({Vote.state: 'closed'}))",
        "def f():\n    return {'state': 'closed'}\n"
        "async def g(s):\n    await s.execute(update(Vote).values(f()))",
        "async def f(s):\n    vote = await s.get(Vote, 1)\n    vote.state = 'closed'",
        "async def f(s):\n    await s.execute(text('UPDATE votes SET state = :s WHERE id = 1'))",
    ]
    for source in spellings:
        assert vote_state_writes(ast.parse(source), "x.py"), source
    others = [
        "async def f(s):\n    await s.execute(update(Round).values(state='failed'))",
        "async def f(s):\n    row = await s.get(Round, 1)\n    row.state = 'done'",
        "async def f(s):\n    await s.execute(update(Vote).values(last_error='x'))",
    ]
    for source in others:
        assert not vote_state_writes(ast.parse(source), "x.py"), source
