"""Reorgs while votes are in flight: `anvil_reorg` of depth 1, 2 and 3 replaces the newest blocks with empty
ones just after the first votes of a wave are mined (the rest still in the mempool or being sent). anvil drops
the replaced blocks' transactions; the listener must see the reorg from the block hashes and put every vote
whose transaction left the chain back in the queue. Afterwards every vote is on the canonical chain exactly
once: per node, transactions == VoteCast events, no (proposal, node) with two VoteCast, none missing.

The proposals of a wave are buried a few blocks deep before the reorg, so only votes are replaced. The second
test reaches back to the proposals' own blocks while their votes are in flight: the creates come back in
other blocks (new block hashes), or not at all until a later createProposal reuses the ids with other content.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dloop.anvil import AnvilProcess
from dloop.devnet import DevnetInfo, deploy_devnet
from dloop.settings import Settings
from tests.support.chaos import (
    audit_votes,
    db_rows,
    failed_vote_errors,
    head_number,
    mine,
    poll_until,
    proposal_count,
    raw_transactions_of_blocks,
    report,
    reverted_vote_transactions,
    settled,
    sized,
    vote_blocks,
    vote_cast_count,
    vote_rows_of,
)
from tests.support.service import create_proposals, devnet_settings, migrate, running_service
from tests.support.voter import vote_events

NODES = 5
PER_WAVE = sized(3, 10)
DEPTHS = sized([1, 2, 3], [1, 2, 3, 1, 2, 3, 3, 2, 1])


# Open, automine only: in a clean-clone run after the missing-height fix (bug M) the listener saw 2 of 3
# reorgs and, afterwards, anvil reported a node's nonce as 6 while 9 of its VoteCast logs were on chain (no
# vote missed or doubled per proposal, every row confirmed). Whether anvil's state after `anvil_reorg`
# under automine is inconsistent or a reorg was really missed is not known. Not strict: see
# docs/reliability.md, "A reorg missed on an automine chain under load".
AUTOMINE_REORG_OPEN = pytest.mark.xfail(
    strict=False,
    reason="open: after anvil_reorg under automine the listener may see fewer reorgs than were made and a "
    "node's nonce can be below its VoteCast count (seen 1 clean-clone run after the bug M fix)",
)


@contextmanager
def migrated_devnet(
    tmp_path: Path, *, block_time: float | None = None, head_timeout: float = 5.0
) -> Iterator[tuple[AnvilProcess, DevnetInfo, Path, Settings]]:
    """A fresh anvil with the devnet deployed, and migrated settings for a service on it (no reconcile pass
    during a test: the listener alone must handle the reorgs)."""
    with AnvilProcess(block_time=block_time) as anvil:
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        db = tmp_path / "dloop.db"
        settings = devnet_settings(
            anvil.ws_url,
            devnet,
            db,
            http_port=0,
            lease_seconds=2.0,
            reconcile_interval=3600.0,
            head_timeout=head_timeout,
            rpc_timeout=5.0,
        )
        migrate(settings)
        yield anvil, devnet, db, settings


@pytest.mark.parametrize(
    "block_time",
    [pytest.param(None, marks=AUTOMINE_REORG_OPEN), 1.0],
    ids=["automine", "blocktime1"],
)
def test_reorgs_of_depth_1_to_3_while_votes_are_in_flight_leave_every_vote_once_on_chain(
    block_time: float | None, tmp_path: Path
) -> None:
    with migrated_devnet(tmp_path, block_time=block_time) as (anvil, devnet, db, settings):
        ids: list[int] = []
        replaced_votes = 0
        recoveries: list[float] = []
        with running_service(settings) as svc:
            for wave, depth in enumerate(DEPTHS):
                new = create_proposals(anvil, devnet, PER_WAVE, first_index=wave * PER_WAVE)
                ids.extend(new)
                mine(anvil, 3)  # bury the proposals: the reorg below replaces votes only
                bottom = head_number(anvil) - depth + 1

                def first_votes_mined(wave_ids: frozenset[int] = frozenset(new), floor: int = bottom) -> bool:
                    return any(
                        pid in wave_ids and block >= floor
                        for pid, _voter, block in vote_blocks(anvil, devnet)
                    )

                poll_until(first_votes_mined, timeout=30, what=f"wave {wave}: first votes in the top blocks")
                head = head_number(anvil)
                replaced_votes += sum(1 for *_x, block in vote_blocks(anvil, devnet) if block > head - depth)
                reorged_at = time.monotonic()
                anvil.rpc("anvil_reorg", [depth, []])
                poll_until(
                    lambda: (
                        settled(db, len(ids) * NODES)
                        and len(vote_events(anvil.http_url, devnet.contract_address)) == len(ids) * NODES
                    ),
                    timeout=sized(15, 90),
                    what=f"wave {wave} (reorg depth {depth}) voted again",
                    interval=0.1,
                )
                recoveries.append(time.monotonic() - reorged_at)
            reorgs_seen = svc.service.listener.status.reorgs_seen
        audit = audit_votes(anvil, devnet, db, ids)

    mode = "automine" if block_time is None else f"--block-time {block_time:g}"
    report(
        f"reorg ({mode}): {len(DEPTHS)} reorgs of depth {DEPTHS} replacing {replaced_votes} mined votes; "
        f"listener saw {reorgs_seen}; {audit.summary()}; back to all votes on chain "
        f"{min(recoveries):.1f}-{max(recoveries):.1f} s after each reorg"
    )
    assert audit.clean, audit
    # A requeued vote whose old transaction the lane rebroadcast (and got mined) before the re-send ends
    # `already_voted` rather than `confirmed`: on chain once either way.
    assert set(audit.states) <= {"confirmed", "already_voted"}, audit.states
    assert sum(audit.states.values()) == len(ids) * NODES, audit.states
    assert replaced_votes >= len(DEPTHS), "the reorgs replaced no votes: the scenario did not happen"


PROPOSALS_REORGED = sized(2, 6)


@pytest.mark.parametrize(
    ("recreated", "reuse_at_once"),
    [
        (True, False),
        (False, False),
        pytest.param(
            False,
            True,
            marks=pytest.mark.xfail(
                strict=False,
                reason="open: ids reused while stale votes are in flight; in about 1 run of 5 (3 cases run "
                "together) a node has not voted again within 15 s (see docs/reliability.md)",
            ),
        ),
    ],
    ids=["create_reincluded", "create_dropped", "create_dropped_ids_reused_at_once"],
)
def test_a_reorg_of_the_proposals_own_blocks_while_their_votes_are_in_flight(
    recreated: bool, reuse_at_once: bool, tmp_path: Path
) -> None:
    """`anvil_reorg` down to (and including) the blocks that created the proposals, just after their first
    votes are mined. Re-included: the creates land again in later blocks with other hashes and every node
    votes exactly once on each. Dropped: the proposals do not exist on the new chain; the service must not
    vote on them or crash, its rows wait (parked); a later createProposal reuses the ids with other content,
    and every node votes exactly once on those."""
    with migrated_devnet(tmp_path) as (anvil, devnet, db, settings):
        with running_service(settings) as svc:
            bottom = head_number(anvil) + 1
            ids = create_proposals(anvil, devnet, PROPOSALS_REORGED)
            top_create = head_number(anvil)
            creates = raw_transactions_of_blocks(anvil, bottom, top_create)
            assert len(creates) == len(ids)
            wanted = frozenset(ids)
            poll_until(
                lambda: any(pid in wanted for pid, _v, _b in vote_blocks(anvil, devnet)),
                timeout=30,
                what="the first votes of the proposals mined",
            )
            # Mining paused while the depth is worked out: a vote mined between reading the head and the
            # reorg would leave the reorg one block short of the creates (seen under load).
            anvil.rpc("evm_setAutomine", [False])
            try:
                head = head_number(anvil)
                depth = head - bottom + 1
                replaced_votes = sum(1 for pid, _v, _b in vote_blocks(anvil, devnet) if pid in wanted)
                reorged_at = time.monotonic()
                # Offset 1: the creates come back one block higher than before, so with other block hashes.
                anvil.rpc("anvil_reorg", [depth, [[raw, 1] for raw in creates] if recreated else []])
            finally:
                anvil.rpc("evm_setAutomine", [True])
            anvil.rpc("evm_mine", [])  # what was sent while mining was paused
            if not recreated:
                assert proposal_count(anvil, devnet) == 0, "the reorg did not take the proposals away"
                poll_until(
                    lambda: svc.service.listener.status.reorgs_seen >= 1,
                    timeout=15,
                    what="the listener to see the reorg",
                )

                if reuse_at_once:
                    # The ids come back while votes for the vanished proposals may still be in flight: a
                    # stale one mined now reverts with ProposalNotFound, and the vote is owed again.
                    assert create_proposals(anvil, devnet, len(ids), first_index=100) == ids
                states: Counter[str] = Counter()

                def parked() -> bool:
                    # Every row waits for its proposal (pending), or its vote was mined on the new chain
                    # before the listener saw the reorg and reverted (ProposalNotFound): none sent or queued,
                    # and no lane still tracks a transaction (see the report: a stale one settling after the
                    # re-creation fails the re-sent row).
                    states.clear()
                    states.update(sum((vote_rows_of(db, pid) for pid in ids), Counter[str]()))
                    idle = all(node.in_flight == 0 for node in svc.service.voter.status.nodes)
                    rows_wait = set(states) <= {"pending", "failed"}
                    return idle and rows_wait and sum(states.values()) == len(ids) * NODES

                try:
                    if not reuse_at_once:
                        poll_until(parked, timeout=15, what="the rows of the vanished proposals to wait")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: {states}, {db_rows(db)}") from None
                if not reuse_at_once:
                    assert failed_vote_errors(db) <= {"reverted on chain: ProposalNotFound"}
                    assert vote_cast_count(anvil, devnet) == 0
                    # The ids come back with other content (another plan index).
                    again = create_proposals(anvil, devnet, len(ids), first_index=100)
                    assert again == ids
            poll_until(
                lambda: (
                    settled(db, len(ids) * NODES)
                    and len(vote_events(anvil.http_url, devnet.contract_address)) == len(ids) * NODES
                ),
                timeout=sized(15, 60),
                what="every node voted on the proposals again",
                interval=0.1,
            )
            recovery = time.monotonic() - reorged_at
            reorgs_seen = svc.service.listener.status.reorgs_seen
        audit = audit_votes(anvil, devnet, db, ids)
        reverted = reverted_vote_transactions(anvil, db)

    flavour = (
        "re-included one block higher" if recreated else "dropped, then created again with other content"
    )
    report(
        f"reorg of the proposals' own blocks (automine, depth {depth}, {len(ids)} creates {flavour}): "
        f"{replaced_votes} mined votes replaced; listener saw {reorgs_seen}; {audit.summary()}; "
        f"{sum(reverted.values())} votes reverted on the proposals' absence; "
        f"all votes on chain {recovery:.1f} s after the reorg"
    )
    assert not audit.missed and not audit.doubled, audit
    # A node's extra transactions are exactly its votes that reverted while the proposals were gone.
    assert {a: txs - votes for a, (txs, votes) in audit.nonce_mismatch.items()} == dict(reverted), audit
    assert set(audit.states) <= {"confirmed", "already_voted"}, audit.states
    assert sum(audit.states.values()) == len(ids) * NODES, audit.states
    assert replaced_votes >= 1


def test_a_silent_rollback_of_an_idle_automine_chain_is_found_by_the_idle_probe(tmp_path: Path) -> None:
    """An idle automine chain brings no next head to expose a reorg whose own heads the listener never got
    (the open "missed reorg" item of docs/reliability.md). `anvil_rollback` of blocks without transactions
    rewinds without any notification (with transactions, anvil mines them again at once: heads arrive). The
    watchdog's idle probe must compare the tip with the heads it saw and hand the reorg to the catch-up."""
    with migrated_devnet(tmp_path, head_timeout=0.5) as (anvil, devnet, db, settings):
        with running_service(settings) as svc:
            ids = create_proposals(anvil, devnet, 1)
            poll_until(
                lambda: settled(db, NODES) and vote_cast_count(anvil, devnet) == NODES,
                timeout=15,
                what="the votes",
            )
            mine(anvil, 3)
            top = head_number(anvil)
            poll_until(
                lambda: svc.service.listener.status.cursor_block == top - 1,
                timeout=10,
                what="the listener to see the last head",
            )
            assert svc.service.listener.status.reorgs_seen == 0
            rewound_at = time.monotonic()
            anvil.rpc("anvil_rollback", [2])  # the two newest (empty) blocks: no head announces it
            assert head_number(anvil) == top - 2
            poll_until(
                lambda: svc.service.listener.status.reorgs_seen >= 1,
                timeout=10,
                what="the listener to find the silent rollback",
            )
            found = time.monotonic() - rewound_at
            mine(anvil, 3)  # the chain goes on from the rewound tip
            poll_until(
                lambda: svc.service.listener.status.cursor_block == top,
                timeout=10,
                what="the listener to follow the new blocks",
            )
            status = svc.service.listener.status
        audit = audit_votes(anvil, devnet, db, ids)
    report(
        f"silent rollback of 2 empty blocks on an idle automine chain: found {found:.1f} s after "
        f"(head timeout 0.5 s), {status.reorgs_seen} reorg, {status.reconnects} listener reconnect; "
        f"{audit.summary()}"
    )
    assert audit.clean, audit
    assert status.reorgs_seen == 1
