"""Run the voter in its own process until no vote is open, for the crash tests.

Usage: python -m tests.support.voter_runner '<json>' with ws_url, contract, chain_id, node_keys,
database_url, and optional batch_size, lease_seconds, kill_at [step, n] (SIGKILL itself at the n-th time the
voter reaches `step`: leased / persisted / broadcast / confirmed), timeout. Exit 0 when done, 3 on timeout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from typing import Any

import anyio
from sqlalchemy import func, select

from chain.accounts import node_accounts
from core.logs import configure_logging
from core.settings import DEFAULT_NODE_STRATEGIES, NodeSettings, PrivateKey, Settings
from core.signals import WorkSignal
from storage.engine import create_engine, session_factory
from storage.models import OPEN_VOTE_STATES, Vote
from storage.proposals import sync_nodes
from voter.service import Voter


def kill_hook(kill_at: list[Any] | None) -> Any:
    reached: Counter[str] = Counter()

    def hook(step: str) -> None:
        reached[step] += 1
        if kill_at is not None and step == kill_at[0] and reached[step] == kill_at[1]:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


async def main(config: dict[str, Any]) -> int:
    configure_logging("WARNING")
    settings = Settings(
        rpc_ws_url=config["ws_url"],
        contract_address=config["contract"],
        nodes=tuple(
            NodeSettings(f"ai-gov-{i:02d}", PrivateKey(key), DEFAULT_NODE_STRATEGIES[(i - 1) % 5])
            for i, key in enumerate(config["node_keys"], start=1)
        ),
        database_url=config["database_url"],
        batch_size=config.get("batch_size", 25),
        lease_seconds=config.get("lease_seconds", 120.0),
        rpc_timeout=10.0,
    )
    sessions = session_factory(create_engine(settings.database_url))
    accounts = node_accounts(settings.nodes)
    nodes = await sync_nodes(sessions, [(a.name, a.address, a.strategy) for a in accounts])
    voter = Voter(
        settings,
        sessions,
        accounts,
        nodes,
        WorkSignal(),
        config["chain_id"],
        poll_interval=0.3,
        receipt_poll_interval=0.05,
        step_hook=kill_hook(config.get("kill_at")),
    )

    async def open_votes() -> int:
        async with sessions() as session:
            query = select(func.count()).select_from(Vote).where(Vote.state.in_(list(OPEN_VOTE_STATES)))
            return int((await session.execute(query)).scalar_one())

    with anyio.move_on_after(config.get("timeout", 60.0)):
        async with anyio.create_task_group() as tg:
            await tg.start(voter.run)
            while True:  # the votes' state lives in the database: poll it
                if not await open_votes():
                    break
                await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
            return 0
    return 3


if __name__ == "__main__":
    sys.exit(anyio.run(main, json.loads(sys.argv[1])))
