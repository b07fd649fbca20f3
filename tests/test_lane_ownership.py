"""Lane ownership (voter/ownership.py) on a real database, without a chain: two instances' loops take, renew,
lose and take over lanes; and how /health and /metrics show who signs for which node (pure)."""

from __future__ import annotations

import datetime as dt
import logging

import anyio
import pytest

from chain.accounts import node_accounts
from core.settings import NodeSettings, PrivateKey, Settings, StrategySettings
from storage import lanes
from storage.lanes import NO_LANES
from storage.models import utcnow
from storage.queue import SignedTx
from tests.support.database import Database
from voter.fee_oracle import FeeOracle
from voter.jobs import Counters, Tracked
from voter.lane_state import Held, LaneState
from voter.ownership import LaneOwnership
from voter.sender import LaneSender
from voter.strategies import node_config
from voter.watcher import ReceiptWatcher
from web.metrics import LaneMetrics, MetricsSnapshot, render
from web.ports import LaneInfo, VoterView
from web.present import lanes_check, lanes_out

ADDRESSES = ["0x" + f"{i:02x}" * 20 for i in (1, 2)]


def ownership(db: Database, owner: str, changes: list[str], takeover: float = 1.5) -> LaneOwnership:
    return LaneOwnership(
        db.sessions,
        chain_id=1,
        addresses=ADDRESSES,
        owner=owner,
        takeover_seconds=takeover,
        on_change=lambda: changes.append(owner),
    )


@pytest.mark.anyio
@pytest.mark.both_databases
async def test_a_standby_takes_a_silent_owners_lanes_and_the_old_owner_stops_signing(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[str] = []
    a, b = ownership(db, "a", changes), ownership(db, "b", changes)
    await a.tick()
    await b.tick()
    assert all(a.fence(x) is not None and b.fence(x) is None for x in ADDRESSES)
    assert changes == ["a"]  # b's first tick took nothing: no change to act on
    assert {v.owner for v in b.views()} == {"a"} and not any(v.owned for v in b.views())
    # a goes silent (killed, cut off): its lease (2/3 of the takeover time) runs out on both clocks.
    caplog.set_level(logging.INFO, logger="dloop.voter")
    await anyio.sleep(a.lease_seconds + 0.05)
    assert a.fence(ADDRESSES[0]) is None  # by its own clock a stops before anyone may start
    await b.tick()
    assert all(b.fence(x) is not None for x in ADDRESSES) and changes[-1] == "b"
    acquired = [r for r in caplog.records if r.getMessage() == "lane_acquired"]
    fields = acquired[-1].dloop_fields  # type: ignore[attr-defined]
    assert fields["previous_owner"] == "a" and fields["token"] == 2 and fields["ownerless_seconds"] >= 0
    # a comes back: its renewal finds the lanes b's, and it does not take them.
    await a.tick()
    assert all(a.fence(x) is None for x in ADDRESSES)
    assert {(r.owner, r.token) for r in await lanes.owners(db.sessions, chain_id=1)} == {("b", 2)}


@pytest.mark.anyio
@pytest.mark.both_databases
async def test_a_clean_stop_hands_the_lanes_over_at_once(db: Database) -> None:
    changes: list[str] = []
    a, b = ownership(db, "a", changes, takeover=60), ownership(db, "b", changes, takeover=60)
    async with anyio.create_task_group() as tg:
        await tg.start(a.run)
        assert a.fence(ADDRESSES[0]) is not None
        tg.cancel_scope.cancel()  # a stops: its loop ends its leases on the way out
    await b.tick()  # long before the 40 s lease would have expired
    assert all(b.fence(x) is not None for x in ADDRESSES)


def test_health_and_metrics_name_the_owner_of_each_lane() -> None:
    now = utcnow()
    later = now + dt.timedelta(seconds=5)
    voter = VoterView(
        running=True,
        instance="voter-b",
        lanes=[
            LaneInfo("ai-gov-01", ADDRESSES[0], False, "voter-a", 3, later),
            LaneInfo("ai-gov-02", ADDRESSES[1], False, "voter-a", 1, now - dt.timedelta(seconds=1)),
        ],
    )
    check = lanes_check(voter, now)
    assert check is not None and check.ok  # a standby is healthy
    assert check.detail == (
        "standby: signs for no node; voter-a signs for ai-gov-01; "
        "no live owner (being taken over) for ai-gov-02"
    )
    body = lanes_out(voter)
    assert body is not None and body.standby and body.owned == [] and body.lanes[0].owner == "voter-a"
    assert lanes_out(VoterView(running=True)) is None and lanes_check(VoterView(running=True), now) is None


def test_on_sqlite_the_run_lock_owns_every_lane_without_leases() -> None:
    voter = VoterView(
        running=True,
        instance="voter-a",
        lanes=[
            LaneInfo("ai-gov-01", ADDRESSES[0], True, "voter-a", None, None, leased=False),
            LaneInfo("ai-gov-02", ADDRESSES[1], True, "voter-a", None, None, leased=False),
        ],
    )
    check = lanes_check(voter, utcnow())
    assert check is not None and check.ok
    assert (
        check.detail
        == "this instance signs for ai-gov-01, ai-gov-02 (SQLite: the only instance, by its run lock)"
    )
    body = lanes_out(voter)
    assert body is not None and body.mode == "run-lock" and body.owned == ["ai-gov-01", "ai-gov-02"]
    assert not body.standby and all(lane.owner == "voter-a" and lane.token is None for lane in body.lanes)
    leased = lanes_out(
        VoterView(running=True, instance="b", lanes=[LaneInfo("n", ADDRESSES[0], True, "b", 1, None)])
    )
    assert leased is not None and leased.mode == "leases"


def test_a_node_in_two_deployments_has_a_lane_in_each_named_apart() -> None:
    now = utcnow()
    later = now + dt.timedelta(seconds=5)
    voter = VoterView(
        running=True,
        instance="voter-b",
        lanes=[
            LaneInfo("ai-gov-01", ADDRESSES[0], True, "voter-b", 1, later, deployment="alpha", chain_id=1),
            LaneInfo("ai-gov-01", ADDRESSES[0], False, "voter-a", 2, later, deployment="beta", chain_id=2),
            LaneInfo("ai-gov-02", ADDRESSES[1], True, "voter-b", 1, later, deployment="beta", chain_id=2),
        ],
    )
    check = lanes_check(voter, now)
    assert check is not None and check.detail == (
        "this instance signs for ai-gov-01 (alpha), ai-gov-02; voter-a signs for ai-gov-01 (beta)"
    )
    body = lanes_out(voter)
    assert body is not None and body.owned == ["ai-gov-01 (alpha)", "ai-gov-02"]
    assert [(lane.deployment, lane.chain_id) for lane in body.lanes] == [
        ("alpha", 1),
        ("beta", 2),
        ("beta", 2),
    ]
    text = render(
        MetricsSnapshot(
            vote_counts={}, queue_by_state={}, head_block=None, head_lag_seconds=None, reconnects=0,
            sent_latencies=[], mined_latencies=[], rpc_errors={}, proposals_known=0, proposals_active=0,
            listener_up=True, voter_up=True,
            lanes=[
                LaneMetrics("default", "ai-gov-01", True, "voter-b"),
                LaneMetrics("default", "ai-gov-02", False, None),
            ],
        )
    )  # fmt: skip
    assert 'dloop_lane_owned{deployment="default",node="ai-gov-01"} 1' in text
    assert 'dloop_lane_owned{deployment="default",node="ai-gov-02"} 0' in text
    assert 'dloop_lane_owner_info{deployment="default",node="ai-gov-01",owner="voter-b"} 1' in text
    assert 'node="ai-gov-02",owner=' not in text


@pytest.mark.anyio
async def test_a_lane_signs_under_the_fence_it_checked_stops_when_lost_and_is_released_under_its_lock(
    db: Database,
) -> None:
    """The fence a signature is recorded under is the one checked (never None, which storage used to take
    for "no lanes"); a lost lane is not owned the moment it is lost; release() waits for the lane's lock."""
    settings = Settings(
        rpc_ws_url="ws://127.0.0.1:1",
        contract_address="0x" + "ee" * 20,
        nodes=(NodeSettings("ai-gov-01", PrivateKey("0x" + "11" * 32), "conservative"),),
    )
    [account] = node_accounts(settings.nodes)
    changes: list[str] = []
    owned = LaneOwnership(
        db.sessions, chain_id=1, addresses=[account.address], owner="a", takeover_seconds=30,
        on_change=lambda: changes.append("a"),
    )  # fmt: skip
    state = LaneState(
        account=account, node=db.nodes[0], config=node_config("conservative", StrategySettings()),
        settings=settings, sessions=db.sessions, owner="a", chain_id=1, fees=FeeOracle(10**12),
        totals=Counters(), ownership=owned,
    )  # fmt: skip
    assert isinstance(await state.signing_fence(), Held)  # not attached yet
    await owned.tick()
    fence = owned.fence(account.address)
    assert fence is not None
    state.fence = fence
    assert state.owned and await state.signing_fence() == fence
    # release() waits for whoever holds the lock (a signature, its record and its broadcast).
    async with anyio.create_task_group() as tg:
        await state.lock.acquire()
        tg.start_soon(state.release)
        await anyio.sleep(0.05)
        assert state.fence == fence
        state.lock.release()
    assert state.fence is None and not state.owned
    held = await state.signing_fence()
    assert isinstance(held, Held) and "another instance" in held.reason
    # Lost (a refused record, a renewal that found the lane taken): not owned from that moment on.
    state.fence = fence
    assert state.owned
    owned.lost(account.address, "taken over in this test")
    assert not state.owned and state.current_fence() is None
    # Without lane ownership a lane records under the explicit NO_LANES, never under None.
    alone = LaneState(
        account=account, node=db.nodes[0], config=node_config("conservative", StrategySettings()),
        settings=settings, sessions=db.sessions, owner="a", chain_id=1, fees=FeeOracle(10**12),
        totals=Counters(),
    )  # fmt: skip
    assert await alone.signing_fence() is NO_LANES


@pytest.mark.anyio
async def test_a_lost_lanes_due_transactions_are_not_judged_from_the_shared_nonce_read(db: Database) -> None:
    """The watcher checks its due transactions with one nonce read shared by all of them (perf, #18); a lane
    lost meanwhile judges none of them (#17): no "nonce used elsewhere" verdict, no receipt poll, the
    transaction left tracked for `forget_lost` (no connection here: any chain read would raise)."""
    settings = Settings(
        rpc_ws_url="ws://127.0.0.1:1",
        contract_address="0x" + "ee" * 20,
        nodes=(NodeSettings("ai-gov-01", PrivateKey("0x" + "11" * 32), "conservative"),),
    )
    [account] = node_accounts(settings.nodes)
    owned = LaneOwnership(
        db.sessions, chain_id=1, addresses=[account.address], owner="a", takeover_seconds=30
    )
    state = LaneState(
        account=account, node=db.nodes[0], config=node_config("conservative", StrategySettings()),
        settings=settings, sessions=db.sessions, owner="a", chain_id=1, fees=FeeOracle(10**12),
        totals=Counters(), ownership=owned,
    )  # fmt: skip
    await owned.tick()
    state.fence = owned.fence(account.address)
    assert state.owned
    signed = SignedTx("0x" + "91" * 32, 0, 2 * 10**9, 10**9, 100_000, b"\x02\x04")
    tracked = Tracked(
        vote_id=1, proposal_id=1, nonce=0, hashes=[signed.tx_hash], latest=signed, data="0x", sent_block=1
    )
    state.tracked[tracked.vote_id] = tracked
    owned.lost(account.address, "taken over in this test")
    watcher = ReceiptWatcher(state, LaneSender(state))
    await watcher.poll_receipts()
    await watcher.check(tracked, 10, mined=3)  # the nonce looks used by someone else
    assert state.tracked == {1: tracked} and tracked.nonce_used_since is None
    assert state.totals.requeued == 0 and state.last_error is None
