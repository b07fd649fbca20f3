"""What every benchmark shares: a fresh devnet, pre-signed transactions, an observer of the contract's logs,
the service under test as a real process, and reading a process's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from bench.report import DEFAULT_RESULTS_DIR, REPO_ROOT, SIZES
from bench.rpc import WsRpc
from chain.codec import dao_functions
from chain.events import event_topics
from devtools.anvil import AnvilProcess, free_port, json_rpc
from devtools.devnet import ZERO_ADDRESS, DevnetInfo, deploy_devnet, env_file_values, proposal_plan
from storage.migrations import upgrade

PYTHON = sys.executable
PROPOSAL_CREATED = next(t for t, name in event_topics().items() if name == "ProposalCreated")
VOTE_CAST = next(t for t, name in event_topics().items() if name == "VoteCast")
VOTE_GAS = 200_000
PRIORITY_FEE = 1_000_000_000
NODE_COUNT = 5


# -- command line -------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type for counts such as `--pairs`: 0 is refused, not mistaken for "the size's preset"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="default",
        help="preset counts: tiny (smoke test), medium (~10 min on a shared 2-core machine), default",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="where JSON goes")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the temporary directory (service logs, db)"
    )
    return parser


@contextlib.contextmanager
def workdir(name: str, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"dloop-bench-{name}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"workdir kept: {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# -- chain --------------------------------------------------------------------------------------------------


@dataclass
class Devnet:
    anvil: AnvilProcess
    info: DevnetInfo

    @property
    def ws_url(self) -> str:
        return self.anvil.ws_url

    @property
    def http_url(self) -> str:
        return self.anvil.http_url

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        return json_rpc(self.anvil.http_url, method, params, timeout=60)


@contextlib.contextmanager
def devnet(block_time: float | None = None) -> Iterator[Devnet]:
    """A fresh anvil with the devnet deployed and no proposals; stopped afterwards."""
    with AnvilProcess(block_time=block_time) as anvil:
        yield Devnet(anvil, deploy_devnet(anvil.http_url, proposals=0))


class Signer:
    """Signs one account's transactions with locally counted nonces and fees fixed in advance."""

    def __init__(self, chain: Devnet, private_key: str) -> None:
        self.account: LocalAccount = Account.from_key(private_key)
        self.chain_id = chain.info.chain_id
        self.nonce = int(chain.rpc("eth_getTransactionCount", [self.account.address, "pending"]), 16)
        base_fee = int(chain.rpc("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
        # Base fees only fall on an idle devnet; 4x leaves room for a few full blocks.
        self.max_fee = 4 * base_fee + PRIORITY_FEE

    @property
    def address(self) -> str:
        return str(self.account.address)

    def sign(self, to: str, data: str, gas: int) -> bytes:
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": self.nonce,
            "gas": gas,
            "maxFeePerGas": self.max_fee,
            "maxPriorityFeePerGas": PRIORITY_FEE,
            "value": 0,
            "to": to,
            "data": data,
            "type": 2,
        }
        self.nonce += 1
        return bytes(self.account.sign_transaction(tx).raw_transaction)


def proposal_count(chain: Devnet) -> int:
    fn = dao_functions()["getProposalCount"]
    raw = chain.rpc("eth_call", [{"to": chain.info.contract_address, "data": fn.encode()}, "latest"])
    return int(raw, 16)


@dataclass(frozen=True)
class SignedProposals:
    """createProposal transactions signed in advance; they create ids first_id .. first_id + len - 1."""

    first_id: int
    raw: tuple[bytes, ...]

    @property
    def ids(self) -> range:
        return range(self.first_id, self.first_id + len(self.raw))


def sign_proposals(chain: Devnet, count: int, *, first_index: int | None = None) -> SignedProposals:
    """`count` devnet proposals (the realistic catalogue) from the proposer, signed now, sent later."""
    info = chain.info
    existing = proposal_count(chain)
    plan = proposal_plan(count, first_index=existing if first_index is None else first_index)
    create = dao_functions()["createProposal"]
    calls = [
        create.encode(
            int(p.proposal_type),
            info.token_addresses[p.asset_symbol] if p.asset_symbol else ZERO_ADDRESS,
            p.amount_units,
            p.description,
        )
        for p in plan
    ]
    signer = Signer(chain, info.proposer_key)
    longest = max(calls, key=len) if calls else "0x"
    estimate = int(
        chain.rpc(
            "eth_estimateGas", [{"from": signer.address, "to": info.contract_address, "data": longest}]
        ),
        16,
    )
    gas = estimate * 3 // 2
    return SignedProposals(existing + 1, tuple(signer.sign(info.contract_address, c, gas) for c in calls))


def sign_votes(chain: Devnet, proposal_ids: Sequence[int]) -> list[bytes]:
    """A vote (for) of each of the five nodes on each proposal, node-major per proposal, signed now."""
    signers = [Signer(chain, key) for key in chain.info.node_keys]
    vote = dao_functions()["vote"]
    contract = chain.info.contract_address
    return [
        signer.sign(contract, vote.encode(pid, True), VOTE_GAS) for pid in proposal_ids for signer in signers
    ]


# -- observing the contract's logs --------------------------------------------------------------------------


@dataclass
class SeenLog:
    arrived: float  # time.perf_counter() when the notification was read
    block: int
    wall: float  # the same moment as time.time(), to compare with the service's log timestamps


@dataclass
class ChainObserver:
    """Records when each ProposalCreated and VoteCast of the contract is announced over a WS subscription.

    Both ends of every measured interval come from this one stream, so its own delay cancels out.
    """

    created: dict[int, SeenLog] = field(default_factory=dict)
    votes: dict[int, dict[str, SeenLog]] = field(default_factory=dict)
    vote_count: int = 0
    duplicate_votes: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def attach(self, rpc: WsRpc, contract: str) -> None:
        await rpc.subscribe(
            ["logs", {"address": contract, "topics": [[PROPOSAL_CREATED, VOTE_CAST]]}], self._on_log
        )

    def _on_log(self, log: dict[str, Any], arrived: float) -> None:
        if log.get("removed"):
            return
        topics = log["topics"]
        seen = SeenLog(arrived, int(log["blockNumber"], 16), time.time() - (time.perf_counter() - arrived))
        proposal_id = int(topics[1], 16)
        if topics[0] == PROPOSAL_CREATED:
            self.created.setdefault(proposal_id, seen)
        elif topics[0] == VOTE_CAST:
            voter = "0x" + topics[2][-40:]
            by_voter = self.votes.setdefault(proposal_id, {})
            if voter in by_voter:
                self.duplicate_votes += 1
            else:
                by_voter[voter] = seen
                self.vote_count += 1
        self._changed.set()

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until `done()` holds (checked at each new log); False on timeout."""
        deadline = time.perf_counter() + timeout
        while not done():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def votes_on(self, proposal_id: int) -> int:
        return len(self.votes.get(proposal_id, {}))

    def last_vote_time(self, proposal_ids: Sequence[int]) -> float | None:
        times = [s.arrived for pid in proposal_ids for s in self.votes.get(pid, {}).values()]
        return max(times) if times else None


# -- processes ----------------------------------------------------------------------------------------------


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MB (10^6 bytes)."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024 / 1e6
    return {"rss_mb": values.get("VmRSS", 0.0), "peak_rss_mb": values.get("VmHWM", 0.0)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_until_idle(
    pid: int, *, busy: float = 0.05, window: float = 1.0, timeout: float = 60.0
) -> float:
    """Wait until a process used under `busy` of a CPU over `window` seconds (at most `timeout`); returns the
    seconds waited. anvil keeps a core busy for several seconds after thousands of transactions (its own
    housekeeping): a pass measured meanwhile would be charged for it."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        await asyncio.sleep(window)
        if cpu_seconds(pid) - before < busy * window:
            break
    return time.monotonic() - started


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def clean_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The process environment without the user's own dloop settings, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DLOOP_", "AI_NODE_")) and not k.startswith("PYTEST")
    }
    env.update(extra)
    return env


class ManagedProcess:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not started"
        return self.process.pid

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        process, self.process = self.process, None
        code: int | None = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            code = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def wait_log_line(self, text: str, timeout: float) -> None:
        """Until the process has printed a line containing `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if any(text in line for line in self.log_path.read_text(errors="replace").splitlines()):
                    return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited; log:\n{self.log_tail()}")
            time.sleep(0.02)
        raise RuntimeError(
            f"{self.name} did not print {text!r} within {timeout:g} s; log:\n{self.log_tail()}"
        )

    def wait_http(self, url: str, timeout: float) -> None:
        """Until `url` answers 200; fails with the end of the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited; log:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                status, _body = http_get(url, timeout=1.0)
                if status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:g} s; log:\n{self.log_tail()}")


class ServiceProcess(ManagedProcess):
    """`dloop run` against a devnet, with its own SQLite file (migrated first) and a free HTTP port."""

    def __init__(
        self,
        chain: Devnet,
        directory: Path,
        *,
        extra_env: Mapping[str, str] | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.port = free_port()
        self.database = directory / "service.db"
        values = env_file_values(chain.info, chain.ws_url)
        values.update(
            {
                "DLOOP_DATABASE_URL": f"sqlite+aiosqlite:///{self.database}",
                "DLOOP_HTTP_HOST": "127.0.0.1",
                "DLOOP_HTTP_PORT": str(self.port),
                "DLOOP_LOG_LEVEL": log_level,
            }
        )
        values.update(extra_env or {})
        super().__init__(
            "dloop run",
            [PYTHON, "-m", "dloop.cli", "run"],
            clean_environment(values),
            directory / "service.log",
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def migrate(self) -> None:
        """What `dloop migrate` does (the same alembic upgrade), without starting another interpreter."""
        url = self.env["DLOOP_DATABASE_URL"]
        # In a thread of its own: the caller may be inside an event loop already.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: asyncio.run(upgrade(url))).result()

    def event_loop(self) -> str | None:
        """The event loop `dloop run` said it runs on (`service_starting`); None before it said so."""
        # Line by line: the answer is near the top of a log that a long run can make tens of MB long.
        with contextlib.suppress(OSError), self.log_path.open(errors="replace") as log:
            for line in log:
                if '"event": "service_starting"' in line:
                    return str(json.loads(line).get("event_loop"))
        return None

    def start_ready(self, timeout: float = 60.0) -> float:
        """Migrate, start, wait until /health answers; the seconds that took."""
        started = time.perf_counter()
        self.migrate()
        self.start()
        self.wait_http(f"{self.base_url}/health", timeout)
        return time.perf_counter() - started


class BaselineVoterProcess(ManagedProcess):
    """bench/baseline_voter.py: subscribe, sign, send; nothing else."""

    def __init__(self, chain: Devnet, directory: Path) -> None:
        super().__init__(
            "baseline voter",
            [
                PYTHON,
                str(REPO_ROOT / "bench" / "baseline_voter.py"),
                "--ws-url",
                chain.ws_url,
                "--contract",
                chain.info.contract_address,
            ],
            clean_environment({"BENCH_NODE_KEYS": ",".join(chain.info.node_keys)}),
            directory / "baseline-voter.log",
        )

    def start_ready(self, timeout: float = 60.0) -> float:
        started = time.perf_counter()
        self.start()
        self.wait_log_line("ready", timeout)
        return time.perf_counter() - started


VOTERS = ("baseline", "service")


@contextlib.contextmanager
def service(chain: Devnet, directory: Path) -> Iterator[tuple[ServiceProcess, float]]:
    """`dloop run` on `chain`, migrated, started and healthy; yields it and its start-up seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    process = ServiceProcess(chain, directory)
    try:
        startup = process.start_ready()
        yield process, startup
    finally:
        process.stop()


@contextlib.contextmanager
def voter(kind: str, chain: Devnet, directory: Path) -> Iterator[tuple[ManagedProcess, float]]:
    """The baseline voter or the service, started and ready; yields it and its start-up seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    process: BaselineVoterProcess | ServiceProcess
    process = (
        BaselineVoterProcess(chain, directory) if kind == "baseline" else ServiceProcess(chain, directory)
    )
    try:
        startup = process.start_ready()
        yield process, startup
    finally:
        process.stop()


SETUP_CHUNK = 250  # proposals sent at once while setting a benchmark up (see create_on_chain)
STALL_S = 1.0  # no proposal mined for this long while setting up: anvil's automine is stuck, mine a block


async def create_on_chain(chain: Devnet, count: int, *, timeout: float = 600.0) -> SignedProposals:
    """Create `count` proposals as fast as anvil takes them; returns once all are mined.

    Sent `SETUP_CHUNK` at a time, each chunk mined before the next: with thousands of one sender's
    transactions pending, anvil 1.7.1's automine slows to a few blocks a second (and grows to gigabytes).
    """
    proposals = sign_proposals(chain, count)
    deadline = time.monotonic() + timeout
    first = proposals.ids.start
    async with WsRpc(chain.ws_url) as rpc:
        for start in range(0, len(proposals.raw), SETUP_CHUNK):
            part = proposals.raw[start : start + SETUP_CHUNK]
            await rpc.send_raw_many(part)
            seen, since = -1, time.monotonic()
            while (mined := proposal_count(chain)) < first + start + len(part) - 1:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{count} proposals not mined within {timeout:g} s")
                if mined != seen:
                    seen, since = mined, time.monotonic()
                elif time.monotonic() - since > STALL_S:
                    # anvil's automine stall (see AnvilWatchdog): ready transactions left pending.
                    chain.rpc("evm_mine")
                    since = time.monotonic()
                await asyncio.sleep(0.05)
    return proposals


class AnvilWatchdog:
    """Unsticks anvil's automine, and counts how often it had to.

    When transactions arrive faster than it mines, anvil 1.7.1's automine leaves ready ones `pending` until
    the next transaction arrives (seen with the service's 5 x 16 in-flight votes, and once as `queued` with
    the account's next nonce). When nothing new is announced for `quiet` seconds while the pool holds only
    ready transactions, the watchdog mines a block (harmless: it mines what anvil should have). With `queued`
    ones it waits `queued_quiet` seconds (a gap can be a transaction still on its way), then drops them and
    re-sends `resend` (our own signed transactions; mined ones are refused harmlessly). Results report the
    kicks: a run with kicks measured anvil's hiccup as well as the voter. With an empty pool and no progress
    for `lost_quiet` seconds (anvil lost transactions) `resend` is sent again. `quiet` is 0.5 s (it was
    1.5 s for both): at 1,000 proposals the lanes met the stall hundreds of times, and the run measured the
    watchdog. With a block time, transactions rightly wait for the next block: bench/latency.py then passes
    a `quiet` of two blocks and a half.
    """

    def __init__(
        self,
        chain: Devnet,
        observer: ChainObserver,
        resend: Sequence[bytes] = (),
        *,
        quiet: float = 0.5,
        queued_quiet: float = 1.5,
        lost_quiet: float = 5.0,
    ) -> None:
        self.chain = chain
        self.observer = observer
        self.resend = list(resend)
        self.quiet = quiet
        self.queued_quiet = queued_quiet
        self.lost_quiet = lost_quiet
        self.kicks = 0
        self.resends = 0  # times the pool was empty without progress and ours were sent again
        self.stuck: list[dict[str, int]] = []  # the pool's transactions by sender at each kick
        self._task: asyncio.Task[None] | None = None

    def _progress(self) -> tuple[int, int]:
        return len(self.observer.created), self.observer.vote_count

    async def _watch(self) -> None:
        last, since = self._progress(), time.perf_counter()
        while True:
            await asyncio.sleep(0.1)
            now = self._progress()
            if now != last:
                last, since = now, time.perf_counter()
                continue
            if time.perf_counter() - since < self.quiet:
                continue
            status = await asyncio.to_thread(self.chain.rpc, "txpool_status")
            queued = int(status.get("queued", "0x0"), 16)
            waited = time.perf_counter() - since
            if int(status.get("pending", "0x0"), 16) + queued == 0:
                if self.resend and waited >= self.lost_quiet:
                    # Seen at 1,000 proposals: an `evm_mine` over thousands of pending transactions mined
                    # part of one sender's and the pool lost the rest. Ours can be sent again.
                    self.resends += 1
                    print(
                        f"anvil watchdog: pool empty, nothing mined for {waited:.1f} s; re-sending ours",
                        file=sys.stderr,
                        flush=True,
                    )
                    await asyncio.to_thread(self._requeue)
                    since = time.perf_counter()
                continue
            if queued and waited < self.queued_quiet:
                continue
            self.kicks += 1
            pool = await asyncio.to_thread(self.chain.rpc, "txpool_inspect")
            stuck = {
                f"{kind} {sender[:10]}": len(txs)
                for kind in ("pending", "queued")
                for sender, txs in (pool.get(kind) or {}).items()
            }
            self.stuck.append(stuck)
            print(
                f"anvil watchdog: nothing mined for {waited:.1f} s, pool {stuck}; mining a block",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.to_thread(self.chain.rpc, "evm_mine")
            if queued:
                await asyncio.to_thread(self._requeue)
            since = time.perf_counter()

    def _requeue(self) -> None:
        """Drop the stranded `queued` transactions (re-sending alone is refused as already known), then
        send ours again in order; the ones already mined are refused with "nonce too low"."""
        pool = self.chain.rpc("txpool_content")
        for txs in (pool.get("queued") or {}).values():
            for tx in txs.values():
                with contextlib.suppress(Exception):
                    self.chain.rpc("anvil_dropTransaction", [tx["hash"]])
        for raw in self.resend:
            with contextlib.suppress(Exception):
                self.chain.rpc("eth_sendRawTransaction", ["0x" + raw.hex()])

    async def __aenter__(self) -> AnvilWatchdog:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def stop_on_sigterm() -> None:
    """SIGTERM ends a benchmark like Ctrl-C: context managers stop anvil, the service and the apps it started
    (they run in sessions of their own, so a signal to our process group does not reach them)."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
