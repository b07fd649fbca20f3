"""Reorgs while votes are in flight: `anvil_reorg` of depth 1, 2 and 3 replaces the newest blocks with empty
ones just after the first votes of a wave are mined (the rest still in the mempool or being sent). anvil drops
the replaced blocks' transactions; the listener must see the reorg from the block hashes and put every vote
whose transaction left the chain back in the queue. Afterwards every vote is on the canonical chain exactly
once: per node, transactions == VoteCast events, no (proposal, node) with two VoteCast, none missing.

The proposals of a wave are buried a few blocks deep before the reorg, so only votes are replaced (a reorg of
the proposal itself is the listener's own test, tests/test_listener.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dloop.anvil import AnvilProcess
from dloop.devnet import deploy_devnet
from tests.support.chaos import (
    audit_votes,
    head_number,
    mine,
    poll_until,
    report,
    settled,
    sized,
    vote_blocks,
)
from tests.support.service import create_proposals, devnet_settings, migrate, running_service
from tests.support.voter import vote_events

NODES = 5
PER_WAVE = sized(3, 10)
DEPTHS = sized([1, 2, 3], [1, 2, 3, 1, 2, 3, 3, 2, 1])


# Open bug, seen once in a full clean-clone run under load and not reproduced alone or with the CPU busy:
# the listener detected 2 of the 3 reorgs on an idle automine chain, so the votes of the last one stayed
# `confirmed` while off the chain. Not strict, so a pass or a failure both keep CI honest but green.
IDLE_AUTOMINE_REORG_MISSED = pytest.mark.xfail(
    strict=False,
    reason="open bug: on an idle automine chain under load the listener can miss one anvil_reorg "
    "(no later head arrives to expose it); the reconcile pass repairs it, but this test runs none",
)


@pytest.mark.parametrize(
    "block_time",
    [pytest.param(None, marks=IDLE_AUTOMINE_REORG_MISSED), 1.0],
    ids=["automine", "blocktime1"],
)
def test_reorgs_of_depth_1_to_3_while_votes_are_in_flight_leave_every_vote_once_on_chain(
    block_time: float | None, tmp_path: Path
) -> None:
    with AnvilProcess(block_time=block_time) as anvil:
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        settings = devnet_settings(
            anvil.ws_url,
            devnet,
            tmp_path / "dloop.db",
            http_port=0,
            lease_seconds=2.0,
            reconcile_interval=3600.0,
            head_timeout=5.0,
            rpc_timeout=5.0,
        )
        migrate(settings)
        db = tmp_path / "dloop.db"
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
