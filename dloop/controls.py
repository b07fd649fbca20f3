"""`dloop pause [NODE]`, `dloop resume [NODE]` and `dloop replay`: the operator's controls from a shell.

Pause and resume ask the running service first (its answer comes once no paused node can sign any more);
when no service answers they write the switch to the database, where every instance reads it within a
second and a service started later finds it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
from collections.abc import Sequence

import anyio

from core.errors import ConfigError, DloopError
from core.settings import Settings
from dloop.commands import _client_settings, _json, _request, settings_from
from storage.controls import SERVICE_SCOPE, PauseState, PauseWatch
from storage.engine import create_engine, session_factory
from storage.history import decided_votes
from storage.migrations import ensure_schema_current
from voter.replay import Recorded, ReplayResult, replay
from voter.strategies import NodeConfig, node_config


def switch_command(args: argparse.Namespace, paused: bool) -> int:
    settings = settings_from(args)
    # Every deployment's nodes: `settings.nodes` is the first deployment's only.
    names = {n.name for d in settings.deployments for n in d.nodes}
    if args.node is not None and args.node not in names:
        raise ConfigError("node", f"{args.node!r} is not configured (known: {', '.join(sorted(names))})")
    verb = "pause" if paused else "resume"
    base, token = _client_settings(args)
    path = f"/nodes/{args.node}/{verb}" if args.node else f"/{verb}"
    try:
        response = _request("POST", base + path, token=token)
    except DloopError:
        state = anyio.run(_switch_in_database, settings, args.node or SERVICE_SCOPE, paused)
        print(f"no service answers at {base}: stored in the database (read by every instance within 1 s)")
        print(describe(state))
        return 0
    body = _json(response)
    if response.status_code != 200:
        print(f"dloop: {verb} refused ({response.status_code}): {body.get('reason', body)}")
        return 1
    print(body.get("message", verb))
    controls = body.get("controls", {})
    print(
        describe(PauseState(bool(controls.get("servicePaused")), frozenset(controls.get("pausedNodes", []))))
    )
    return 0


async def _switch_in_database(settings: Settings, scope: str, paused: bool) -> PauseState:
    await ensure_schema_current(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        return await PauseWatch(session_factory(engine)).set([scope], paused, by="cli")
    finally:
        await engine.dispose()


def describe(state: PauseState) -> str:
    if state.service:
        return "signing: paused for the whole service"
    if state.nodes:
        return f"signing: paused for {', '.join(sorted(state.nodes))}; the other nodes sign"
    return "signing: active for every node"


# -- replay ------------------------------------------------------------------------------------------------


def replay_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    config = node_config(args.strategy, settings.strategies)  # ConfigError naming DLOOP_NODE_STRATEGIES
    result = anyio.run(_replay, settings.database_url, config, args.node, args.since)
    print(format_replay(result, args.strategy, args.format), end="")
    return 0


async def _replay(
    database_url: str, config: NodeConfig, node: str | None, since: dt.datetime | None
) -> ReplayResult:
    await ensure_schema_current(database_url)
    engine = create_engine(database_url)
    try:
        votes = await decided_votes(session_factory(engine), node=node, since=since)
    finally:
        await engine.dispose()
    recorded = [Recorded(v.node, v.strategy, v.decision, v.reason, v.price, v.proposal) for v in votes]
    return replay(recorded, config)


FIELDS = ("proposal", "node", "strategy", "voted", "replayed", "replayed_reason", "voted_reason")


def _rows(result: ReplayResult) -> list[dict[str, object]]:
    return [
        {
            "proposal": d.proposal_id,
            "node": d.node,
            "strategy": d.strategy,
            "voted": d.voted,
            "replayed": d.replayed,
            "replayed_reason": d.replayed_reason,
            "voted_reason": d.voted_reason or "",
        }
        for d in result.differences
    ]


def format_replay(result: ReplayResult, strategy: str, form: str) -> str:
    rows = _rows(result)
    if form == "json":
        body = {"strategy": strategy, "decided": result.decided, "differ": len(rows), "differences": rows}
        return json.dumps(body, indent=2) + "\n"
    if form == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    return _table(rows, strategy, result.decided)


def _table(rows: Sequence[dict[str, object]], strategy: str, decided: int) -> str:
    header = f"replayed {decided} decisions with {strategy}: {len(rows)} differ\n"
    if not rows:
        return header
    shown = ("proposal", "node", "strategy", "voted", "replayed", "replayed_reason")
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in shown[:-1]}
    lines = ["  ".join(k.ljust(widths[k]) for k in shown[:-1]) + "  replayed_reason"]
    for r in rows:
        lines.append("  ".join(str(r[k]).ljust(widths[k]) for k in shown[:-1]) + f"  {r['replayed_reason']}")
    return header + "\n".join(lines) + "\n"
