"""Reorgs while votes are in flight: `anvil_reorg` of depth 1, 2 and 3 replaces the newest blocks with empty
ones just after the first votes of a wave are mined (the rest still in the mempool or being sent). anvil drops
the replaced blocks' transactions; the listener must see the reorg from the block hashes and put every vote
whose transaction left the chain back in the queue. Afterwards every vote is on the canonical chain exactly
once: per node, transactions == VoteCast events, no (proposal, node) with two VoteCast, none missing.
Mining is paused while `anvil_reorg` runs: votes sent meanwhile wait in the pool (a block mined during the
reorg broke anvil's own chain, see `mining_paused`).

The proposals of a wave are buried a few blocks deep before the reorg, so only votes are replaced. The second
test reaches back to the proposals' own blocks while their votes are in flight: the creates come back in
other blocks (new block hashes), or not at all until a later createProposal reuses the ids with other content.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from web3 import Web3

from core.settings import Settings
from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo, deploy_devnet
from tests.support.chaos import (
    audit_votes,
    db_rows,
    failed_vote_errors,
    fillers_of,
    head_number,
    mine,
    mining_paused,
    pool_size,
    proposal_count,
    raw_transactions_of_blocks,
    report,
    reverted_vote_transactions,
    settled,
    sized,
    vote_blocks,
    vote_cast_count,
    vote_rows_of,
    walk_chain,
)
from tests.support.database import migrate
from tests.support.service import create_proposals, devnet_settings, running_service
from tests.support.voter import vote_events
from tests.support.waiting import poll_until

pytestmark = pytest.mark.slow  # starts anvil and the service

NODES = 5
PER_WAVE = sized(3, 10)
DEPTHS = sized([1, 2, 3], [1, 2, 3, 1, 2, 3, 3, 2, 1])


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
    [None, 1.0],
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
                # The votes still being sent wait in the pool while the reorg runs (see mining_paused).
                with mining_paused(anvil, block_time=block_time):
                    head = head_number(anvil)
                    replaced_votes += sum(1 for *_x, b in vote_blocks(anvil, devnet) if b > head - depth)
                    reorged_at = time.monotonic()
                    anvil.rpc("anvil_reorg", [depth, []])
                try:
                    poll_until(
                        lambda: (
                            settled(db, len(ids) * NODES)
                            and len(vote_events(anvil.http_url, devnet.contract_address)) == len(ids) * NODES
                        ),
                        timeout=sized(15, 90),
                        what=f"wave {wave} (reorg depth {depth}) voted again",
                        interval=0.1,
                    )
                except AssertionError as exc:
                    raise AssertionError(
                        f"{exc}: reorg at head {head}; {walk_chain(anvil, devnet)}; rows {db_rows(db)}; "
                        f"pool {anvil.rpc('txpool_inspect')}"
                    ) from None
                recoveries.append(time.monotonic() - reorged_at)
            reorgs_seen = svc.service.listener.status.reorgs_seen
        audit = audit_votes(anvil, devnet, db, ids)
        walk = walk_chain(anvil, devnet)

    # The node's own chain is whole (a block at every height, each linked to the one below): else the
    # audit would measure anvil (see mining_paused).
    assert not (walk.missing_heights or walk.broken_links), walk
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
        (False, True),
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
            # Mining paused while the depth is worked out (a vote mined between reading the head and the
            # reorg would leave the reorg one block short of the creates) and while the reorg runs.
            with mining_paused(anvil):
                head = head_number(anvil)
                depth = head - bottom + 1
                replaced_votes = sum(1 for pid, _v, _b in vote_blocks(anvil, devnet) if pid in wanted)
                reorged_at = time.monotonic()
                # Offset 1: the creates come back one block higher than before, so with other block hashes.
                anvil.rpc("anvil_reorg", [depth, [[raw, 1] for raw in creates] if recreated else []])
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
                        # Up to ~10 s: a vote sent while mining was paused may wait behind a nonce gap the
                        # reorg left until the watcher fills it (stall check, then GAP_FILL_AFTER_S).
                        poll_until(parked, timeout=30, what="the rows of the vanished proposals to wait")
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


def test_a_vote_left_behind_a_nonce_gap_by_a_reorg_is_freed_by_a_filler_or_a_vote(tmp_path: Path) -> None:
    """Each node's vote on proposal 1 is mined (nonce 0); its vote on proposal 2 waits in the pool (nonce 1,
    mining paused) when `anvil_reorg` takes both proposals and the mined votes away. anvil does not put
    the reorged-out vote back in its pool, and nothing will vote on proposal 1 again while it is gone, so
    nonce 0 stays unused and the vote at nonce 1 can never be mined. The watcher fills nonce 0 with a no-op
    transfer (recorded in `nonce_fillers`), or a vote that reverts takes it first (seen once); the stuck vote
    then lands and reverts (its proposal is gone), the rows wait, and when the ids come back with other
    content every node votes once on each."""
    with migrated_devnet(tmp_path) as (anvil, devnet, db, settings):
        with running_service(settings) as svc:
            bottom = head_number(anvil) + 1
            ids = create_proposals(anvil, devnet, 1)
            poll_until(lambda: vote_cast_count(anvil, devnet) == NODES, timeout=15, what="the votes on 1")
            anvil.rpc("evm_setAutomine", [False])
            creating = threading.Thread(
                target=create_proposals, args=(anvil, devnet, 1), kwargs={"first_index": 1}
            )
            creating.start()
            poll_until(lambda: pool_size(anvil) == 1, timeout=10, what="the create of proposal 2 in the pool")
            anvil.rpc("evm_mine", [])
            creating.join(timeout=10)
            ids.append(2)
            poll_until(lambda: pool_size(anvil) == NODES, timeout=15, what="the votes on 2 in the pool")
            anvil.rpc("anvil_reorg", [head_number(anvil) - bottom + 1, []])
            anvil.rpc("evm_setAutomine", [True])
            anvil.rpc("evm_mine", [])
            assert proposal_count(anvil, devnet) == 0 and vote_cast_count(anvil, devnet) == 0
            states: Counter[str] = Counter()

            def rows_wait() -> bool:
                states.clear()
                states.update(sum((vote_rows_of(db, pid) for pid in ids), Counter[str]()))
                idle = all(node.in_flight == 0 for node in svc.service.voter.status.nodes)
                return idle and set(states) == {"pending"} and sum(states.values()) == 2 * NODES

            try:
                poll_until(
                    rows_wait, timeout=30, what="the votes behind the gap to land and the rows to wait"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {states}, pool {anvil.rpc('txpool_inspect')}") from None
            filled = fillers_of(db)
            assert create_proposals(anvil, devnet, 2, first_index=100) == ids
            poll_until(
                lambda: settled(db, 2 * NODES) and vote_cast_count(anvil, devnet) == 2 * NODES,
                timeout=20,
                what="every node voted on the re-created proposals",
            )
        audit = audit_votes(anvil, devnet, db, ids)
        reverted = reverted_vote_transactions(anvil, db)

    report(
        f"a vote behind a nonce gap a reorg left: {len(filled)} gaps filled (nonces "
        f"{sorted(nonce for _a, nonce, _r in filled)}); "
        f"{audit.summary()}; {sum(reverted.values())} votes reverted on the proposals' absence"
    )
    assert all(nonce == 0 and "left unused" in reason for _a, nonce, reason in filled), filled
    assert not audit.missed and not audit.doubled, audit
    # Beyond votes and fillers, a node's only transactions are its votes that reverted on the absence.
    unexplained = {a: txs - explained for a, (txs, explained) in audit.nonce_mismatch.items()}
    assert unexplained == dict(reverted), audit
    # Nonces 0 and 1 of each node: the stuck vote at 1 reverted, and 0 was used by the filler or by another
    # vote that reverted too (seen once, in a full-suite run whose service log was not kept).
    nodes = [Web3.to_checksum_address(a) for a in devnet.node_addresses]
    assert {a: audit.fillers[a] + reverted[a] for a in nodes} == dict.fromkeys(nodes, 2), (audit, reverted)
    assert audit.states == {"confirmed": 2 * NODES}, audit.states


def test_a_silent_rollback_of_an_idle_automine_chain_is_found_by_the_idle_probe(tmp_path: Path) -> None:
    """An idle automine chain brings no next head to expose a reorg whose own heads the listener never got
    (see docs/reliability.md, "The automine reorg case"). `anvil_rollback` of blocks without transactions
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
