"""Crashes: `dloop run` (a real process) SIGKILLed at random moments while it votes a burst of proposals, and
restarted each time. Afterwards: no vote missed, none doubled (per node, transactions == VoteCast events, and
no proposal with two VoteCast from one node), and the time each restart took to vote again.

Small in `make test` (a 49-proposal round, a few kills per mining mode); `make chaos` makes 20 kills per
scenario, with 49-proposal rounds and 200-proposal bursts, and a longer lease to show what the lease costs
after a crash. A round that is fully voted before its kills are made is followed by another round.
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
    service_env,
    settled,
    sized,
    vote_cast_count,
)
from tests.support.database import migrate
from tests.support.service import create_proposals
from tests.support.waiting import poll_until

pytestmark = pytest.mark.slow  # starts anvil and `dloop run` processes it kills

NODES = 5


@dataclass(frozen=True)
class CrashPlan:
    name: str
    block_time: float | None
    proposals: int
    kills: int
    lease_seconds: float = 2.0

    @property
    def mining(self) -> str:
        return "automine" if self.block_time is None else f"--block-time {self.block_time:g}"


PLANS = sized(
    [
        CrashPlan("automine-49", None, 49, 3),
        CrashPlan("blocktime1-49", 1, 49, 2),
    ],
    [
        CrashPlan("automine-49", None, 49, 20),
        CrashPlan("blocktime1-49", 1, 49, 20),
        CrashPlan("automine-200", None, 200, 20),
        CrashPlan("blocktime1-200", 1, 200, 20),
        CrashPlan("automine-49-lease10", None, 49, 5, lease_seconds=10.0),
    ],
)


@pytest.mark.parametrize("plan", PLANS, ids=[p.name for p in PLANS])
def test_sigkill_at_random_moments_then_restart_votes_everything_exactly_once(
    plan: CrashPlan, tmp_path: Path
) -> None:
    rng = chaos_random(f"crash-{plan.name}")
    total = plan.proposals * NODES
    with AnvilProcess(block_time=plan.block_time) as anvil:
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        env = service_env(
            anvil.ws_url, devnet, tmp_path / "dloop.db", DLOOP_LEASE_SECONDS=f"{plan.lease_seconds:g}"
        )
        db = tmp_path / "dloop.db"
        migrate(db)
        with DloopRun(env, tmp_path, tmp_path / "run.log") as svc:
            svc.wait_live()
            started = time.monotonic()
            ids: list[int] = []
            ready_times: list[float] = []  # restart -> HTTP answering
            resume_times: list[float] = []  # kill -> the next vote mined
            kills_mid_round = kills_at_start = rounds = 0
            # A round can end before all its kills: then the next round starts, until every kill was made
            # while votes were owed (bounded, so a service that settles instantly cannot loop forever).
            while svc.kills < plan.kills and rounds <= 4 * plan.kills:  # a round may settle before its kill
                if settled(db, len(ids) * NODES):
                    new_ids = create_proposals(anvil, devnet, plan.proposals)
                    assert len(new_ids) == plan.proposals
                    ids += new_ids
                    rounds += 1
                total = len(ids) * NODES
                at_start = rng.random() < 0.2
                if at_start:  # killed while starting up: backfill, lease recovery, nonce sync...
                    time.sleep(rng.uniform(0.3, 1.5))
                else:
                    time.sleep(rng.uniform(0.0, 1.0))
                if settled(db, total):
                    continue  # the round is over: a kill now would not be "during the round"
                votes_at_kill = vote_cast_count(anvil, devnet)
                killed_at = time.monotonic()
                svc.kill()
                kills_at_start += at_start
                kills_mid_round += not at_start
                svc.start()
                ready_times.append(svc.wait_ready())
                if votes_at_kill < total:
                    poll_until(
                        lambda: vote_cast_count(anvil, devnet) > votes_at_kill,  # noqa: B023
                        timeout=60,
                        what="voting to resume after the restart",
                        interval=0.1,
                    )
                    resume_times.append(time.monotonic() - killed_at)

            total = len(ids) * NODES
            poll_until(lambda: settled(db, total), timeout=120, what="every vote settled", interval=0.2)
            elapsed = time.monotonic() - started
            assert svc.alive, svc.log_tail()
            assert svc.stop() == 0, svc.log_tail()
        audit = audit_votes(anvil, devnet, db, ids)
        tracebacks = svc.tracebacks()

    report(
        f"crash {plan.name} ({plan.mining}, lease {plan.lease_seconds:g} s): {svc.kills} SIGKILLs "
        f"({kills_mid_round} mid-round, {kills_at_start} during start-up) over {rounds} round(s) of "
        f"{plan.proposals} proposals; {audit.summary()}; "
        f"restart to HTTP ready median {median_text(ready_times)} s max {max_text(ready_times)} s; "
        f"kill to next vote mined median {median_text(resume_times)} s max {max_text(resume_times)} s; "
        f"all rounds done in {elapsed:.1f} s"
    )
    assert svc.kills == plan.kills, f"{svc.kills} of {plan.kills} kills made in {rounds} rounds"
    assert audit.clean, audit
    assert audit.states == {"confirmed": total}, audit.states
    assert not tracebacks, tracebacks[:3]
