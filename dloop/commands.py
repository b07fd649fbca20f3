"""The `dloop` commands: run, migrate, status, trigger (and demo, in devtools.demo).

This is the process edge: settings are loaded here once (environment over `.env`), logging is configured
here, and every failure a user can fix leaves as a DloopError that the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from chain.accounts import node_accounts
from chain.connection import safe_url
from core.errors import ConfigError, DloopError
from core.logs import configure_logging, log_event
from core.memory import freeze_startup_objects, limit_malloc_arenas
from core.settings import DeploymentSettings, EventLoop, Settings, load_settings, parse_database_url
from dloop.preflight import ChainIdentity, check_apart, check_same_chain, preflight_chain
from storage.engine import (
    SessionFactory,
    check_database_location,
    create_engine,
    session_factory,
    sqlite_run_lock,
)
from storage.migrations import ensure_schema_current, upgrade
from storage.proposals import NodeRecord, sync_nodes
from voter.strategies import load_strategy

logger = logging.getLogger("dloop.service")


# -- settings ------------------------------------------------------------------------------------------------


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment wins over the env file: `--env-file FILE`, else `.env` when present."""
    explicit: Path | None = getattr(args, "env_file", None)
    env_file = explicit if explicit is not None else (Path(".env") if Path(".env").is_file() else None)
    return load_settings(os.environ, env_file, workdir=Path.cwd())


def database_url_of(args: argparse.Namespace) -> str:
    """`--database-url` when given (checked like DLOOP_DATABASE_URL), else the settings' URL."""
    if args.database_url:
        return parse_database_url("--database-url", args.database_url)
    return settings_from(args).database_url


def service_url(settings: Settings, override: str | None = None) -> str:
    if override:
        return override.rstrip("/")
    host = settings.http_host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


# -- migrate -------------------------------------------------------------------------------------------------


def migrate_command(args: argparse.Namespace) -> int:
    database_url = database_url_of(args)
    check_database_location(database_url)
    anyio.run(upgrade, database_url)
    print(f"database schema is up to date ({_describe_db(database_url)})")
    return 0


def _describe_db(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).render_as_string(hide_password=True)


# -- run -----------------------------------------------------------------------------------------------------


async def stop_on_signals(cancel: Callable[[], None]) -> None:
    """SIGINT or SIGTERM: cancel the service's task group (a clean stop, exit status 0)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log_event(logger, "shutdown_requested", signal=signal.Signals(signum).name)
            cancel()
            return


async def serve(
    settings: Settings,
    *,
    on_ready: Callable[[Any], None] | None = None,
    handle_signals: bool = True,
    enable_listener: bool = True,
) -> None:
    """Preflight, then the service until cancelled (or a signal when `handle_signals`).

    With several deployments, each is checked against its chain on its own: one whose chain cannot be
    reached waits (the others start, /health says so) and starts when it answers; any other problem stops
    start-up. With one deployment, an unreachable chain stops start-up as it always has."""
    check_database_location(settings.database_url)
    from voter.service import process_owner_id  # the voter's module: only for commands that run it

    instance = process_owner_id()  # one lane-lease owner for every deployment of this process
    plans = [DeploymentPlan(settings, deployment, instance) for deployment in settings.deployments]
    for plan in plans:
        for account in plan.accounts:
            load_strategy(account.strategy)  # an unknown one stops start-up before anything is written
    identities = await preflight_all(settings, plans)
    await ensure_schema_current(settings.database_url)
    # One `dloop run` per SQLite file (one lock whatever the deployments): taken once the settings proved
    # good, before anything is written.
    with sqlite_run_lock(settings.database_url):
        await _run_service(settings, plans, identities, on_ready, handle_signals, enable_listener)


async def _run_service(
    settings: Settings,
    plans: Sequence[DeploymentPlan],
    identities: dict[str, ChainIdentity | ConfigError],
    on_ready: Callable[[Any], None] | None,
    handle_signals: bool,
    enable_listener: bool,
) -> None:
    from dloop.service import Service  # imports the whole service: only for commands that run it

    engine = create_engine(settings.database_url)
    try:
        sessions = session_factory(engine)
        records = await sync_all_nodes(sessions, plans)
        deployments: list[Any] = []
        for plan in plans:
            identity = identities.get(plan.name)
            if isinstance(identity, ChainIdentity):
                deployments.append(
                    await plan.start(sessions, records, identity, deployments, enable_listener)
                )
        waiting = [
            plan.waiting(sessions, records, str(identities[plan.name]), enable_listener)
            for plan in plans
            if not isinstance(identities.get(plan.name), ChainIdentity)
        ]
        service = Service(
            settings,
            sessions,
            deployments,
            waiting=waiting,
            nodes=list(records.values()),
            enable_listener=enable_listener,
            instance=plans[0].instance,
        )
        service.http.bind()  # a busy port fails here, before anything starts
        for deployment in deployments:
            log_event(
                logger,
                "service_starting",
                deployment=deployment.name,
                chain_id=deployment.chain_id,
                rpc=safe_url(deployment.settings.rpc_ws_url),
                contract=deployment.settings.contract_address,
                contract_version=deployment.contract.name,
                nodes=[n.name for n in deployment.nodes],
                http=service.http.url,
                event_loop=running_loop_name(),
            )
        for late in waiting:
            log_event(
                logger, "deployment_waiting", level=logging.WARNING, deployment=late.name, error=late.error
            )
        try:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(stop_on_signals, tg.cancel_scope.cancel)
                await tg.start(service.run)
                if on_ready is not None:
                    on_ready(service)
        finally:
            log_event(logger, "service_stopped")
    finally:
        with anyio.CancelScope(shield=True):
            await engine.dispose()


class DeploymentPlan:
    """One deployment before it runs: its settings view, accounts, and how to start it."""

    def __init__(self, settings: Settings, deployment: DeploymentSettings, instance: str) -> None:
        self.settings = settings
        self.instance = instance
        self.deployment = deployment
        self.name = deployment.name
        self.view = settings.for_deployment(deployment)
        self.accounts = node_accounts(deployment.nodes)

    def named(self, exc: ConfigError) -> ConfigError:
        """A preflight problem, named after the deployments file's field when the deployment comes from
        one (the environment's setting otherwise)."""
        if self.settings.config_file is None:
            return exc
        field = DEPLOYMENT_FIELDS.get(exc.setting, exc.setting)
        return ConfigError(f"{self.settings.config_file}: deployment {self.name!r}: {field}", exc.problem)

    async def start(
        self,
        sessions: SessionFactory,
        records: dict[str, NodeRecord],
        identity: ChainIdentity,
        running: Sequence[Any],
        enable_listener: bool,
    ) -> Any:
        from dloop.service import Deployment

        try:
            await check_same_chain(sessions, identity)
            check_apart(
                self.deployment, identity.chain_id, [(d.settings.deployments[0], d.chain_id) for d in running]
            )
        except ConfigError as exc:
            raise self.named(exc) from None
        nodes = [dataclasses.replace(records[a.address], strategy=a.strategy) for a in self.accounts]
        return Deployment(
            self.name,
            self.view,
            sessions,
            nodes,
            self.accounts,
            identity.chain_id,
            identity.contract,
            enable_listener=enable_listener,
            instance=self.instance,
        )

    def waiting(
        self, sessions: SessionFactory, records: dict[str, NodeRecord], error: str, enable_listener: bool
    ) -> Any:
        from dloop.service import WaitingDeployment

        async def attempt(running: Sequence[Any]) -> Any:
            try:
                identity = await preflight_chain(self.view)
            except ConfigError as exc:
                if exc.setting != UNREACHABLE:
                    raise self.named(exc) from None
                return str(self.named(exc))
            return await self.start(sessions, records, identity, running, enable_listener)

        return WaitingDeployment(self.name, error, attempt)


# Preflight problems name environment settings; a deployment of the file has these fields instead.
DEPLOYMENT_FIELDS = {
    "DLOOP_RPC_WS_URL": "rpc_ws_url",
    "DLOOP_CONTRACT_ADDRESS": "contract_address",
}
UNREACHABLE = "DLOOP_RPC_WS_URL"  # the setting preflight names when the chain does not answer


async def preflight_all(
    settings: Settings, plans: Sequence[DeploymentPlan]
) -> dict[str, ChainIdentity | ConfigError]:
    """Each deployment's chain identity, checked side by side. With several deployments an unreachable chain
    is an answer (that deployment waits); every other problem, or every chain unreachable, stops start-up."""
    if len(plans) == 1:
        try:
            return {plans[0].name: await preflight_chain(plans[0].view)}
        except ConfigError as exc:
            raise plans[0].named(exc) from None
    found: dict[str, ChainIdentity | ConfigError] = {}

    async def one(plan: DeploymentPlan) -> None:
        try:
            found[plan.name] = await preflight_chain(plan.view)
        except ConfigError as exc:
            found[plan.name] = exc

    async with anyio.create_task_group() as tg:
        for plan in plans:
            tg.start_soon(one, plan)
    problems = [(plan, found[plan.name]) for plan in plans if isinstance(found[plan.name], ConfigError)]
    for plan, problem in problems:
        assert isinstance(problem, ConfigError)
        if problem.setting != UNREACHABLE:
            raise plan.named(problem)
        found[plan.name] = plan.named(problem)
    if len(problems) == len(plans):
        first = found[plans[0].name]
        assert isinstance(first, ConfigError)
        raise first
    return found


async def sync_all_nodes(sessions: SessionFactory, plans: Sequence[DeploymentPlan]) -> dict[str, NodeRecord]:
    """One node row per address, whichever deployments it votes in (settings keep its name the same)."""
    wanted: dict[str, tuple[str, str, str]] = {}
    for plan in plans:
        for account in plan.accounts:
            wanted.setdefault(account.address, (account.name, account.address, account.strategy))
    records = await sync_nodes(sessions, list(wanted.values()))
    return {r.address: r for r in records}


def run_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format, secrets=settings.secrets())
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its schema check chatter is not an event
    arenas_limited = limit_malloc_arenas()  # before the first thread (each database connection has one)

    def tune_memory(_service: object) -> None:  # once up: start-up's objects stay for the process's life
        frozen = freeze_startup_objects()
        log_event(logger, "startup_objects_frozen", objects=frozen, malloc_arenas_limited=arenas_limited)

    run_async(functools.partial(serve, settings, on_ready=tune_memory), event_loop=settings.event_loop)
    return 0


def run_async(function: Callable[..., Any], *args: Any, event_loop: EventLoop = "asyncio") -> None:
    """anyio.run on `event_loop` ("uvloop" or "asyncio"), with a service error raised inside the task group
    surfacing as itself (one line)."""
    try:
        anyio.run(function, *args, backend_options={"use_uvloop": event_loop == "uvloop"})
    except BaseExceptionGroup as group:
        first = _first_dloop_error(group)
        if first is None:
            raise
        raise first from group


def running_loop_name() -> str:
    """The running event loop's implementation, "uvloop" or "asyncio" (the one start-up logs)."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def _first_dloop_error(exc: BaseException) -> DloopError | None:
    if isinstance(exc, DloopError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_dloop_error(inner)
            if found is not None:
                return found
    return None


# -- status and trigger: clients of the running service ----------------------------------------------------

TRIGGER_RETRY_SECONDS = 1.0  # `trigger --wait` asks a not-ready service (503) again after this long


def _client_settings(args: argparse.Namespace) -> tuple[str, str | None]:
    """The service URL and API token. With `--url`, a client needs no node keys or RPC settings."""
    try:
        settings = settings_from(args)
    except ConfigError:
        if not args.url:
            raise
        return args.url.rstrip("/"), os.environ.get("DLOOP_API_TOKEN") or None
    return service_url(settings, args.url), settings.api_token


def _request(method: str, url: str, *, token: str | None = None, timeout: float = 10.0) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.request(method, url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        base = url.split("/", 3)
        raise DloopError(
            f"cannot reach the service at {'/'.join(base[:3])} ({exc}); is `dloop run` running?"
        ) from None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise DloopError(f"the service answered {response.status_code} without JSON") from None
    if not isinstance(body, dict):
        raise DloopError(f"the service answered {response.status_code} with unexpected JSON")
    return body


def trigger_command(args: argparse.Namespace) -> int:
    if args.wait and args.timeout <= 0:
        raise DloopError(f"--timeout must be above 0 seconds, not {args.timeout:g}")
    base, token = _client_settings(args)
    end = time.monotonic() + args.timeout  # with --wait: the whole command, the asking and the round
    response = _request("POST", f"{base}/trigger-voting", token=token)
    told = False
    # A 503 is a service unable to start a round for now (its round loop not started yet, its database
    # away; a proxy's own 503 while it restarts): --wait asks again. A trigger during a round joins it.
    while args.wait and response.status_code == 503 and time.monotonic() + TRIGGER_RETRY_SECONDS < end:
        if not told:
            print(
                f"dloop: the service is not ready ({_reason(response)}); asking again until the timeout",
                flush=True,
            )
            told = True
        time.sleep(TRIGGER_RETRY_SECONDS)
        response = _request("POST", f"{base}/trigger-voting", token=token)
    body = _json(response)
    if response.status_code != 202:
        print(f"dloop: trigger refused ({response.status_code}): {body.get('reason', body)}")
        return 1
    round_id = int(body["roundId"])
    verb = "joined the running" if body.get("joined") else "started"
    print(f"{verb} voting round {round_id}")
    if not args.wait:
        print(f"progress: curl -s {base}/rounds/{round_id}")
        return 0
    while time.monotonic() < end:
        result = _json(_request("GET", f"{base}/rounds/{round_id}"))["round"]
        if result["state"] != "running":
            print(_round_line(result))
            return 0 if result["state"] == "done" else 1
        time.sleep(0.5)
    print(f"round {round_id} still running after {args.timeout:g} s")
    return 1


def _reason(response: httpx.Response) -> str:
    """An error answer's reason: the service's JSON `reason`, else the start of whatever came back."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:80].strip() or f"HTTP {response.status_code}"
    return str(body.get("reason", body)) if isinstance(body, dict) else str(body)[:80]


def _round_line(r: dict[str, Any]) -> str:
    text = (
        f"round {r['id']} ({r['kind']}) {r['state']}: scanned {r['proposalsScanned']} proposals, "
        f"{r['newProposals']} new, {r['missingVotes']} missing votes, {r['resolvedTransactions']} resolved, "
        f"{r['votesSent']} sent, {r['votesConfirmed']} confirmed"
    )
    return text + (f"; error: {r['error']}" if r.get("error") else "")


def status_command(args: argparse.Namespace) -> int:
    base, _token = _client_settings(args)
    overview = _json(_request("GET", f"{base}/"))
    health_response = _request("GET", f"{base}/health")
    health = _json(health_response)
    print(format_status(base, overview, health))
    return 0 if health_response.status_code == 200 else 1


def format_status(base: str, overview: dict[str, Any], health: dict[str, Any]) -> str:
    """A human summary of `GET /` and `GET /health`."""
    lines = [f"dloop service at {base}: {overview['status']} ({health['status']})"]
    for name, check in health.get("checks", {}).items():
        lines.append(f"  {'ok ' if check['ok'] else 'BAD'} {name:<13} {check['detail']}")
    listener = overview["listener"]
    age = listener.get("headAgeSeconds")
    lines.append(
        f"listener: {'live' if listener['connected'] else 'not connected'}, head {listener.get('headBlock')}"
        + (f" ({age:.1f} s ago)" if isinstance(age, int | float) else "")
        + f", reconnects {listener['reconnects']}"
    )
    queue = overview["queue"]
    by_state = queue["byState"]
    lines.append(
        f"queue: {queue['depth']} open ("
        + ", ".join(f"{by_state.get(s, 0)} {s}" for s in ("pending", "queued", "sent"))
        + "); "
        + ", ".join(
            f"{by_state.get(s, 0)} {s}" for s in ("confirmed", "already_voted", "no_vote", "closed", "failed")
        )
    )
    proposals = overview["proposals"]
    lines.append(f"proposals: {proposals['known']} known, {proposals['active']} open for voting")
    last = overview.get("lastRound")
    lines.append("last round: " + (_round_line(last) if last else "none yet"))
    system = overview["system"]
    lines.append(f"nodes: {system['activeNodes']} of {system['totalNodes']} active")
    for node in system["nodeStatuses"]:
        lines.append(
            f"  {node['name']:<12} {node['strategy']:<13} {node['status']:<9} cast {node['votesCast']:>4}  "
            f"pending {node['votesPending']:>3}  failed {node['votesFailed']:>3}  "
            f"last vote {node['lastVoteAt'] or '-'}"
        )
    return "\n".join(lines)


# -- alerts and analytics ------------------------------------------------------------------------------------


def alerts_test_command(args: argparse.Namespace) -> int:
    """One test notification to every configured receiver, sent at once; prints what each answered."""
    import datetime as dt

    from monitor.notify import Notifier, notice_masker, trial_notice

    settings = settings_from(args)
    if not settings.alert_webhook_urls:
        raise ConfigError("DLOOP_ALERT_WEBHOOK_URLS", "is not set: there is no receiver to test")
    notifier = Notifier(
        settings.alert_webhook_urls, settings.alert_webhook_format, notice_masker(settings.secrets())
    )
    notice = trial_notice(dt.datetime.now(dt.UTC))
    answers = anyio.run(notifier.test, notice)
    failed = 0
    for number, answer in enumerate(answers, 1):
        if answer.status is not None and answer.status < 300:
            print(f"receiver {number} {answer.label}: {answer.status} {answer.detail}")
        else:
            failed += 1
            print(f"receiver {number} {answer.label}: FAILED {answer.detail}")
    print(f"{len(answers) - failed} of {len(answers)} receivers took the test notification")
    return 0 if failed == 0 else 1


def report_command(args: argparse.Namespace) -> int:
    """The analytics, read from the database directly: it works while the service is stopped, needs no API
    token, and runs the same computation (monitor/analytics.py) as `GET /analytics`."""
    import datetime as dt

    from dloop.report import render_report
    from monitor.analytics import report
    from storage.analytics import analytics_facts
    from storage.queries import ContractScope

    # One database follows one chain (see `chains`): every proposal it holds is reported.
    scope: ContractScope | None = None
    database_url = database_url_of(args)
    since, until = args.since, args.until  # parsed as UTC times by the CLI
    check_database_location(database_url)

    async def compute() -> str:
        await ensure_schema_current(database_url)
        engine = create_engine(database_url)
        try:
            facts = await analytics_facts(session_factory(engine), scope, since=since, until=until)
        finally:
            await engine.dispose()
        now = dt.datetime.now(dt.UTC)
        result = report(facts.proposals, facts.votes, now=now, since=since, until=until, nodes=facts.nodes)
        return render_report(result, args.format)

    print(anyio.run(compute), end="")
    return 0
