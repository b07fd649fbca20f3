"""Failover: two `dloop run` processes on one PostgreSQL during a burst of proposals; whichever owns the node
lanes is SIGKILLed and restarted, again and again. The other takes its lanes over (resolving the `sent` rows
from the chain first) and votes on. Afterwards: no vote missed, none doubled (per node, transactions ==
VoteCast events, and no proposal with two VoteCast from one node), and the takeover time of each kill: from
the SIGKILL to the other instance's `lane_acquired` (its lease taken) and `lane_ready` (able to sign).

Small in `make test` (a 49-proposal round, 3 kills, automine); `make chaos` makes 20 kills with automine and
with `--block-time 1`. DLOOP_LANE_TAKEOVER_SECONDS is 2 here (10 by default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.anvil import AnvilProcess
from devtools.devnet import deploy_devnet
from tests.support.chaos import (
    DloopRun,
    audit_votes,
    chaos_random,
    max_text,
    median_text,
    report,
    run_dloop,
    service_env,
    settled,
    sized,
)
from tests.support.service import create_proposals
from tests.support.waiting import poll_until

pytestmark = pytest.mark.slow  # starts anvil, PostgreSQL and `dloop run` processes it kills

NODES = 5
TAKEOVER_SECONDS = 2.0


@dataclass(frozen=True)
class FailoverPlan:
    name: str
    block_time: float | None
    proposals: int
    kills: int

    @property
    def mining(self) -> str:
        return "automine" if self.block_time is None else f"--block-time {self.block_time:g}"


PLANS = sized(
    [FailoverPlan("automine-49", None, 49, 3)],
    [FailoverPlan("automine-49", None, 49, 20), FailoverPlan("blocktime1-49", 1, 49, 20)],
)


def owned(run: DloopRun) -> set[str]:
    """The nodes `run` signs for, by its /health (empty when it does not answer)."""
    try:
        lanes = run.get("/health", timeout=2).json().get("lanes")
    except Exception:  # a run starting up, or just killed
        return set()
    return set(lanes["owned"]) if lanes else set()


def sees_all_lanes(run: DloopRun) -> bool:
    """`run`'s ownership loop has read every lane's owner (it can take them over when needed)."""
    try:
        lanes = run.get("/health", timeout=2).json().get("lanes")
    except Exception:
        return False
    return bool(lanes) and all(lane["owner"] for lane in lanes["lanes"])


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("plan", PLANS, ids=[p.name for p in PLANS])
def test_sigkill_the_lane_owner_again_and_again_the_other_takes_over_and_nothing_is_missed_or_doubled(
    plan: FailoverPlan, tmp_path: Path, database_url: str
) -> None:
    rng = chaos_random(f"failover-{plan.name}")
    db = database_url
    migrated = run_dloop(["migrate", "--database-url", db], {}, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    with AnvilProcess(block_time=plan.block_time) as anvil:
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        runs = [
            DloopRun(
                service_env(anvil.ws_url, devnet, db, DLOOP_LANE_TAKEOVER_SECONDS=f"{TAKEOVER_SECONDS:g}"),
                tmp_path,
                tmp_path / f"run{i}.log",
            )
            for i in range(2)
        ]
        try:
            for run in runs:
                run.start()
            for run in runs:
                run.wait_live()
            poll_until(lambda: all(sees_all_lanes(r) for r in runs), timeout=30, what="both to see the lanes")
            started = time.monotonic()
            ids: list[int] = []
            acquired: list[float] = []  # SIGKILL -> the other's lane_acquired for every lane the dead one had
            ready: list[float] = []  # SIGKILL -> the other's lane_ready for them (sent rows resolved)
            kills = rounds = 0
            while kills < plan.kills and rounds <= 4 * plan.kills:  # a round may settle before its kill
                if settled(db, len(ids) * NODES):
                    new_ids = create_proposals(anvil, devnet, plan.proposals)
                    assert len(new_ids) == plan.proposals
                    ids += new_ids
                    rounds += 1
                time.sleep(rng.uniform(0.0, 1.0))  # a 49-proposal round settles in about two blocks
                if settled(db, len(ids) * NODES):
                    continue  # the round is over: a kill now would not be "during the burst"
                owners = [owned(run) for run in runs]
                victim = max(range(2), key=lambda i: len(owners[i]))
                lanes_of_victim = len(owners[victim])
                if lanes_of_victim == 0:
                    continue  # a hand-over in progress: ask again
                dead, other = runs[victim], runs[1 - victim]
                before_acquired = len(other.events("lane_acquired"))
                before_ready = len(other.events("lane_ready"))
                killed_at = time.monotonic()
                dead.kill()
                kills += 1
                poll_until(
                    lambda: len(other.events("lane_acquired")) >= before_acquired + lanes_of_victim,  # noqa: B023
                    timeout=30,
                    what="the other instance to take the lanes",
                    interval=0.05,
                )
                acquired.append(time.monotonic() - killed_at)
                poll_until(
                    lambda: len(other.events("lane_ready")) >= before_ready + lanes_of_victim,  # noqa: B023
                    timeout=60,
                    what="the taken lanes to be ready to sign",
                    interval=0.05,
                )
                ready.append(time.monotonic() - killed_at)
                dead.start()
                dead.wait_ready()
                poll_until(lambda: sees_all_lanes(dead), timeout=30, what="the restarted one to stand by")  # noqa: B023

            total = len(ids) * NODES
            poll_until(lambda: settled(db, total), timeout=180, what="every vote settled", interval=0.2)
            elapsed = time.monotonic() - started
            assert all(run.alive for run in runs), [run.log_tail() for run in runs]
            codes = [run.stop() for run in runs]
        finally:
            for run in runs:
                run.kill()
        audit = audit_votes(anvil, devnet, db, ids)
        tracebacks = [t for run in runs for t in run.tracebacks()]
        lost = sum(len(run.events("lane_lost")) for run in runs)

    report(
        f"failover {plan.name} ({plan.mining}, two instances on one PostgreSQL, takeover "
        f"{TAKEOVER_SECONDS:g} s): {kills} SIGKILLs of the lane owner over {rounds} round(s) of "
        f"{plan.proposals} proposals; {audit.summary()}; "
        f"kill to lanes taken median {median_text(acquired, 2)} s max {max_text(acquired, 2)} s; "
        f"kill to lanes ready (sent rows resolved) median {median_text(ready, 2)} s "
        f"max {max_text(ready, 2)} s; "
        f"lane_lost events {lost}; all rounds done in {elapsed:.1f} s"
    )
    assert kills == plan.kills, f"{kills} of {plan.kills} kills made in {rounds} rounds"
    assert codes == [0, 0]
    assert audit.clean, audit
    assert audit.states == {"confirmed": total}, audit.states
    assert not tracebacks, tracebacks[:3]
    # Lease 2/3 T, tries every T/4: a lane is taken at most about T after its owner's last renewal.
    assert max(acquired) < TAKEOVER_SECONDS + 1.0, acquired
