"""`dloop run/migrate/status/trigger` as a user runs them: real processes, signals, one-line errors."""

from __future__ import annotations

import functools
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import anyio
import httpx
import pytest
from web3 import Web3

from devtools.anvil import AnvilProcess, free_port
from devtools.devnet import asset_dao, deploy_devnet
from dloop import cli
from tests.support.chain import Chain
from tests.support.chaos import DLOOP, DloopRun, audit_votes, clean_env, service_env, settled
from tests.support.chaos import run_dloop as dloop
from tests.support.proxy import TcpProxy
from tests.support.service import create_proposals, devnet_environ
from tests.support.waiting import poll_until


class ServiceProcess:
    """`dloop run` in the background, its JSON log in a file."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._log_file = log.open("a")
        self.process = subprocess.Popen(
            [*DLOOP, "run"], env=clean_env(env), cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{env['DLOOP_HTTP_PORT']}"

    def wait_ready(self) -> None:
        def up() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        poll_until(up, timeout=30, what="dloop run to answer")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


# The `chain` fixture: a private anvil for the module, interval mining so votes stay in flight a while.
pytestmark = pytest.mark.devnet(block_time=0.5)


@pytest.fixture
def env(chain: Chain, tmp_path: Path) -> dict[str, str]:
    anvil, devnet = chain
    return devnet_environ(
        anvil.ws_url,
        devnet,
        tmp_path / "dloop.db",
        DLOOP_HTTP_PORT=str(free_port()),
        # Default lease: a stopped process hands its leases back, so a restart need not wait for them.
        DLOOP_RECONCILE_INTERVAL="3600",
    )


# -- configuration problems: one line, the setting named, no traceback ---------------------------------------


def test_configuration_problems_fail_with_one_line_naming_the_setting(
    env: dict[str, str], tmp_path: Path
) -> None:
    migrated = {**env, "DLOOP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"}
    assert dloop(["migrate"], migrated, tmp_path).returncode == 0
    cases = {
        "truncated address": (
            {**env, "DLOOP_CONTRACT_ADDRESS": env["DLOOP_CONTRACT_ADDRESS"][:-1]},
            "DLOOP_CONTRACT_ADDRESS",
        ),
        "no RPC URL": ({k: v for k, v in env.items() if k != "DLOOP_RPC_WS_URL"}, "DLOOP_RPC_WS_URL"),
        "unreachable node": (
            {**env, "DLOOP_RPC_WS_URL": f"ws://127.0.0.1:{free_port()}"},
            "DLOOP_RPC_WS_URL",
        ),
        "no contract code": (
            {**migrated, "DLOOP_CONTRACT_ADDRESS": "0x" + "ab" * 20},
            "DLOOP_CONTRACT_ADDRESS",
        ),
        "schema not migrated": (env, "database schema"),
        "port in use": (migrated, "DLOOP_HTTP_PORT"),
    }
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", int(env["DLOOP_HTTP_PORT"])))
        busy.listen()
        # Concurrently: each process spends ~2 s importing web3 and friends.
        running = {
            name: subprocess.Popen(
                [*DLOOP, "run"],
                env=clean_env(case_env),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, (case_env, _setting) in cases.items()
        }
        results = {name: process.communicate(timeout=60) for name, process in running.items()}
    for name, (_env, setting) in cases.items():
        _stdout, stderr = results[name]
        assert running[name].returncode == 2, (name, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"dloop: error: {setting}"), (name, stderr)
        assert "Traceback" not in stderr
    assert "no contract code" in results["no contract code"][1]
    assert "run `dloop migrate`" in results["schema not migrated"][1]


def test_a_database_from_a_chain_started_afresh_stops_start_up_with_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A devnet started again from scratch has the same chain id and, deployed the same way, the same
    contract address: only its genesis block tells it apart. The old database's proposals and votes
    describe the other chain, so `dloop run` refuses it, naming the database setting, and writes nothing."""
    assert dloop(["migrate"], env, tmp_path).returncode == 0
    first = ServiceProcess(env, tmp_path, tmp_path / "first.log")
    first.wait_ready()
    assert first.stop() == 0
    db = tmp_path / "dloop.db"
    with sqlite3.connect(db) as conn:
        (chain_id, genesis), *others = conn.execute("SELECT chain_id, genesis_hash FROM chains").fetchall()
    assert chain_id == 31337 and not others

    with AnvilProcess(port=0) as fresh:
        again = deploy_devnet(fresh.http_url, proposals=0)
        assert again.contract_address == env["DLOOP_CONTRACT_ADDRESS"]
        fresh_genesis = fresh.rpc("eth_getBlockByNumber", ["0x0", False])["hash"]
        result = dloop(["run"], {**env, "DLOOP_RPC_WS_URL": fresh.ws_url}, tmp_path)
    assert fresh_genesis != genesis
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "dloop: error: DLOOP_DATABASE_URL: the database holds the history of another chain 31337"
    ), result.stderr
    assert genesis[:12] in lines[0] and fresh_genesis[:12] in lines[0]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT genesis_hash FROM chains").fetchall() == [(genesis,)]

    # The chain it followed is still welcome.
    second = ServiceProcess(env, tmp_path, tmp_path / "second.log")
    second.wait_ready()
    assert second.stop() == 0


@pytest.mark.both_databases
def test_two_services_started_at_once_on_one_fresh_database_both_run_and_vote_once(
    chain: Chain, tmp_path: Path, database_url: str
) -> None:
    """On a PostgreSQL database (`dloop migrate` on it first, as a user would) both run: they insert the
    node rows at the same moment (the loser of that race used to die with an IntegrityError traceback), each
    node's lane is owned by one of them, which alone sends that node's votes, and each vote is sent once.
    On an SQLite file the second is refused with one line, and the first votes for all."""
    anvil, devnet = chain
    db = database_url
    migrated = dloop(["migrate", "--database-url", db], {}, tmp_path)
    assert migrated.returncode == 0 and "database schema is up to date" in migrated.stdout, migrated.stderr
    runs = [
        DloopRun(service_env(anvil.ws_url, devnet, db), tmp_path, tmp_path / f"run{i}.log").start()
        for i in range(2)
    ]
    try:
        if db.startswith("sqlite"):
            poll_until(lambda: not all(r.alive for r in runs), timeout=45, what="the second run's refusal")
            refused = next(r for r in runs if not r.alive)
            runs.remove(refused)
            assert refused.exit_code == 2, refused.log_tail()
            errors = [line for line in refused.log_tail().splitlines() if "error" in line.lower()]
            assert len(errors) == 1 and errors[0].startswith(
                "dloop: error: DLOOP_DATABASE_URL: another `dloop run` (pid "
            ), errors
            assert "is using the SQLite file" in errors[0], errors
            assert "use PostgreSQL to run several instances" in errors[0]
            again = dloop(["migrate", "--database-url", db], {}, tmp_path)  # not blocked by the running one
            assert again.returncode == 0 and "up to date" in again.stdout, again.stderr
        for run in runs:
            run.wait_live(timeout=45)
        ids = create_proposals(anvil, devnet, 3, first_index=200)
        # Every proposal of the module's chain gets its rows (the other database's run created some before).
        poll_until(lambda: settled(db, max(ids) * 5), timeout=30, what="the votes of both services")
        owners = {e["node"]: run.log.name for run in runs for e in run.events("lane_ready")}
        senders = {(e["node"], run.log.name) for run in runs for e in run.events("vote_sent")}
        taken = sorted(e["node"] for run in runs for e in run.events("lane_ready"))
        # Each says what it signs for and who has the rest; a standby is healthy.
        healths = [run.get("/health") for run in runs]
        signs = [set(h.json()["lanes"]["owned"]) for h in healths]
        holders = [{lane["node"]: lane["owner"] for lane in h.json()["lanes"]["lanes"]} for h in healths]
        evaluators = [h.json()["lanes"]["alertsOwner"] for h in healths]
        instances = [h.json()["lanes"]["instance"] for h in healths]
    finally:
        codes = [run.stop() for run in runs]
        tracebacks = [run.tracebacks() for run in runs]
    assert codes == [0] * len(runs) and tracebacks == [[]] * len(runs), (codes, tracebacks)
    audit = audit_votes(anvil, devnet, db, ids)
    assert not audit.missed and not audit.doubled and audit.states == {"confirmed": 15}, audit
    sent_by = {run.log.name: len(run.events("vote_sent")) for run in runs}
    assert sum(sent_by.values()) == 15, sent_by  # each vote sent by one of them, once
    if db.startswith("sqlite"):
        # One instance by its run lock: no lane leases, it signs for every node.
        assert not taken and [h.json()["lanes"]["mode"] for h in healths] == ["run-lock"], taken
        owners = {node: runs[0].log.name for node in signs[0]}
        taken = sorted(owners)
    assert taken == sorted(owners) and len(owners) == 5, taken  # every lane taken once, by one instance
    assert senders == set(owners.items()), (senders, owners)  # a node's votes, by its lane's owner only
    assert [h.status_code for h in healths] == [200] * len(runs), [h.text for h in healths]
    assert set().union(*signs) == set(owners) and sum(map(len, signs)) == 5, signs
    assert all(held == holders[0] for held in holders), holders  # both name the same owner per lane
    # One alert evaluator, named alike by both (on SQLite the only instance).
    assert len(set(evaluators)) == 1 and evaluators[0] in instances, (evaluators, instances)


# -- a running service ---------------------------------------------------------------------------------------


def test_run_status_trigger_and_a_clean_sigterm(
    chain: Chain,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    anvil, devnet = chain
    assert dloop(["migrate"], env, tmp_path).returncode == 0
    service = ServiceProcess(env, tmp_path, tmp_path / "run.log")
    try:
        service.wait_ready()
        create_proposals(anvil, devnet, 2, first_index=100)
        # The client commands run in this process (plain HTTP clients): same settings, same CLI entry point.
        monkeypatch.chdir(tmp_path)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert cli.main(["trigger", "--wait", "--timeout", "60"]) == 0
        triggered = capsys.readouterr().out
        assert "voting round" in triggered and " done: " in triggered, triggered
        assert cli.main(["status"]) in (0, 1)  # 1 only when /health is unhealthy
        status = capsys.readouterr().out
        assert "ai-gov-01" in status and "queue:" in status and "last round: round" in status, status
        code = service.stop(signal.SIGTERM)
    finally:
        service.kill()
    assert code == 0, service.log.read_text()[-3000:]
    log = service.log.read_text()
    assert '"event": "shutdown_requested"' in log and '"event": "service_stopped"' in log
    assert '"event": "startup_objects_frozen"' in log  # core.memory's tuning runs in `dloop run`
    assert '"event_loop": "uvloop"' in log  # DLOOP_EVENT_LOOP's default (auto)
    assert "Traceback" not in log


@pytest.mark.anyio
async def test_trigger_wait_asks_again_until_the_started_service_has_reached_its_chain(
    chain: Chain, env: dict[str, str], tmp_path: Path
) -> None:
    """Between start-up's chain check and the deployment's first connection the service answers the trigger
    503 (no round loop yet). Here the node refuses connections after that check, until the client has been
    refused: `dloop trigger --wait` asks again, then starts the round and waits for it."""
    anvil, _devnet = chain
    async with TcpProxy(anvil.port) as proxy:
        proxied = dict(env, DLOOP_RPC_WS_URL=proxy.ws_url)
        assert (await anyio.to_thread.run_sync(dloop, ["migrate"], proxied, tmp_path)).returncode == 0
        before = proxy.connections_opened
        service = ServiceProcess(proxied, tmp_path, tmp_path / "run.log")
        try:
            await proxy.wait_until(lambda: proxy.connections_opened > before, timeout=30)  # the check
            proxy.refuse_new = True
            await anyio.to_thread.run_sync(service.wait_ready)
            command = [*DLOOP, "trigger", "--wait", "--timeout", "90", "--url", service.url]
            async with await anyio.open_process(
                command, env=clean_env({}), cwd=tmp_path, stderr=subprocess.STDOUT
            ) as client:
                # Released once the service has answered the client 503 (its log says so).
                refused = functools.partial(
                    poll_until,
                    lambda: '"path": "/trigger-voting"' in service.log.read_text(),
                    timeout=30,
                    what="the trigger to be answered 503",
                )
                await anyio.to_thread.run_sync(refused)
                assert client.returncode is None
                proxy.refuse_new = False
                assert client.stdout is not None
                with anyio.fail_after(90):
                    out = b"".join([chunk async for chunk in client.stdout]).decode()
                    await client.wait()
            assert client.returncode == 0, out
            assert out.count("the service is not ready (chain unavailable") == 1, out
            assert "voting round" in out and " done: " in out, out
            assert await anyio.to_thread.run_sync(service.stop) == 0
        finally:
            service.kill()


def test_trigger_wait_refuses_a_timeout_that_is_not_above_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trigger", "--wait", "--timeout", "0", "--url", "http://127.0.0.1:9"]) == 2
    assert "dloop: error: --timeout must be above 0 seconds, not 0" in capsys.readouterr().err


def _states(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT state, count(*) FROM votes GROUP BY state").fetchall())


def test_sigterm_during_a_burst_then_restart_loses_nothing_and_doubles_nothing(
    chain: Chain, env: dict[str, str], tmp_path: Path
) -> None:
    anvil, devnet = chain
    db = Path(env["DLOOP_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///"))
    assert dloop(["migrate"], env, tmp_path).returncode == 0
    first = ServiceProcess(env, tmp_path, tmp_path / "first.log")
    try:
        first.wait_ready()
        w3 = Web3(Web3.HTTPProvider(anvil.http_url))
        before = int(asset_dao(w3, devnet.contract_address).functions.getProposalCount().call())
        burst = create_proposals(anvil, devnet, 12, first_index=200)
        poll_until(lambda: _states(db).get("sent", 0) > 0, timeout=30, what="the first votes sent")
        code = first.stop(signal.SIGTERM)
    finally:
        first.kill()
    assert code == 0, first.log.read_text()[-3000:]
    stopped = _states(db)
    assert stopped.get("queued", 0) + stopped.get("sent", 0) > 0, stopped  # stopped mid-burst

    # The restart runs on plain asyncio, the loop DLOOP_EVENT_LOOP keeps for those who want it.
    second = ServiceProcess({**env, "DLOOP_EVENT_LOOP": "asyncio"}, tmp_path, tmp_path / "second.log")
    try:
        second.wait_ready()
        expected = (before + len(burst)) * 5

        def settled() -> bool:
            states = _states(db)
            return sum(states.values()) == expected and not any(
                states.get(s) for s in ("pending", "queued", "sent")
            )

        poll_until(settled, timeout=60, what="every vote settled after the restart")
        assert second.stop(signal.SIGTERM) == 0
    finally:
        second.kill()
    assert '"event_loop": "asyncio"' in second.log.read_text()

    # On chain: every node voted exactly once on every proposal of the burst.
    dao = asset_dao(w3, devnet.contract_address)
    events = dao.events.VoteCast.get_logs(from_block=0)
    per_vote: dict[tuple[int, str], int] = {}
    for event in events:
        key = (int(event["args"]["proposalId"]), str(event["args"]["voter"]))
        per_vote[key] = per_vote.get(key, 0) + 1
    assert all(count == 1 for count in per_vote.values()), {k: c for k, c in per_vote.items() if c > 1}
    for proposal_id in burst:
        for address in devnet.node_addresses:
            assert per_vote.get((proposal_id, address)) == 1, (proposal_id, address)
    with sqlite3.connect(db) as connection:
        confirmed = connection.execute(
            "SELECT count(*) FROM votes v JOIN proposals p ON p.id = v.proposal_ref "
            "WHERE v.state = 'confirmed' AND p.proposal_id >= ?",
            (burst[0],),
        ).fetchone()[0]
    assert confirmed == len(burst) * 5
