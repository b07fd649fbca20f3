"""Process-level helpers for the chaos suite: `dloop run` as a real process (start, SIGKILL, restart), the
size knob shared by `make test` and `make chaos`, and the end-to-end invariants checked after every fault.

Sizes: `DLOOP_CHAOS_SCALE=full` (set by `make chaos`) runs every scenario at the issue's full size; anything
else (the default) runs the small size that fits `make test`. `DLOOP_CHAOS_SEED` fixes the random moments.
Tests may read the environment; library code does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.exc import SQLAlchemyError
from web3 import Web3

from devtools.anvil import AnvilProcess, free_port
from devtools.devnet import DevnetInfo
from tests.support.database import sql
from tests.support.postgres import run_async
from tests.support.service import devnet_environ
from tests.support.voter import rpc, vote_cast_logs, vote_events
from tests.support.waiting import poll_until

REPO = Path(__file__).resolve().parents[2]
DLOOP = [sys.executable, "-m", "dloop.cli"]
T = TypeVar("T")


# -- sizes -------------------------------------------------------------------------------------------------


def full_scale() -> bool:
    return os.environ.get("DLOOP_CHAOS_SCALE", "").lower() == "full"


def sized(small: T, full: T) -> T:
    """The small value inside `make test`, the full one under `make chaos` (DLOOP_CHAOS_SCALE=full)."""
    return full if full_scale() else small


def chaos_random(name: str) -> random.Random:
    """A reproducible random source per scenario (DLOOP_CHAOS_SEED changes every scenario's draws)."""
    return random.Random(f"{os.environ.get('DLOOP_CHAOS_SEED', '7')}:{name}")


def median_text(values: list[float], digits: int = 1) -> str:
    """A reported figure's median, or "-" when nothing was measured."""
    return f"{statistics.median(values):.{digits}f}" if values else "-"


def max_text(values: list[float], digits: int = 1) -> str:
    return f"{max(values):.{digits}f}" if values else "-"


def report(line: str) -> None:
    """A figure for docs/reliability.md: printed (see it with -s) and appended to DLOOP_CHAOS_REPORT."""
    print(f"[chaos] {line}", flush=True)
    target = os.environ.get("DLOOP_CHAOS_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")


# -- the environment of a `dloop` process ----------------------------------------------------------------


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """What a user would set, and nothing from the developer's shell (no DLOOP_* or node keys)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLOOP_", "AI_NODE_"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def service_env(ws_url: str, devnet: DevnetInfo, db_path: DatabaseRef, **extra: str) -> dict[str, str]:
    """`devnet_environ` plus the knobs the chaos tests share: a fixed free HTTP port (restarts reuse it),
    short leases so a killed process's rows come back quickly, and no timed reconcile pass."""
    settings = {
        "DLOOP_HTTP_PORT": str(free_port()),
        "DLOOP_LEASE_SECONDS": "2",
        "DLOOP_RECONCILE_INTERVAL": "3600",
        "DLOOP_RPC_TIMEOUT": "5",
    }
    settings.update(extra)
    return devnet_environ(ws_url, devnet, db_path, **settings)


def run_dloop(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DLOOP, *args],
        env=clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- `dloop run` ---------------------------------------------------------------------------------------------


class DloopRun:
    """`dloop run` as a real process, its JSON log appended to `log` (one file across restarts)."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.log = log
        self.url = f"http://127.0.0.1:{env['DLOOP_HTTP_PORT']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0
        self.kills = 0

    def start(self) -> DloopRun:
        assert self.process is None or self.process.poll() is not None, "already running"
        with self.log.open("ab") as out:
            out.write(f'{{"event": "chaos_process_start", "start": {self.starts + 1}}}\n'.encode())
            out.flush()
            self.process = subprocess.Popen(
                [*DLOOP, "run"],
                env=clean_env(self.env),
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started_at = time.monotonic()
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get(self, path: str, timeout: float = 5.0) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=timeout)

    def overview(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get("/").json()
        return body

    def wait_ready(self, timeout: float = 45.0) -> float:
        """Until `GET /` answers; returns the seconds since the process was started."""

        def up() -> bool:
            if not self.alive:
                raise AssertionError(f"dloop run exited ({self.exit_code}):\n{self.log_tail()}")
            try:
                return self.get("/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        poll_until(up, timeout=timeout, what="dloop run to answer")
        return time.monotonic() - self.started_at

    def wait_live(self, timeout: float = 45.0) -> None:
        """Until the listener is subscribed and caught up."""
        self.wait_ready(timeout)
        poll_until(
            lambda: self.alive and self.overview()["listener"]["connected"],
            timeout=timeout,
            what="the listener to be live",
        )

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"dloop run ignored SIGTERM for {timeout} s") from None
        return int(self.process.returncode)

    def close(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON events of every run so far (lines that are not JSON are skipped)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and (name is None or event.get("event") == name):
                    found.append(event)
        return found

    def tracebacks(self) -> list[str]:
        text = self.log.read_text(errors="replace")
        return [chunk[:600] for chunk in text.split("Traceback (most recent call last)")[1:]]

    def __enter__(self) -> DloopRun:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- what the chain and the database say ---------------------------------------------------------------------


def vote_cast_count(anvil: AnvilProcess, devnet: DevnetInfo) -> int:
    return len(vote_events(anvil.http_url, devnet.contract_address))


def proposal_count(anvil: AnvilProcess, devnet: DevnetInfo) -> int:
    from chain.codec import dao_functions

    data = dao_functions()["getProposalCount"].encode()
    return int(rpc(anvil.http_url, "eth_call", [{"to": devnet.contract_address, "data": data}, "latest"]), 16)


# The database of a `dloop` process: an SQLite file (read with sqlite3, read-only, as a user's shell would)
# or a database URL (a PostgreSQL one is read through SQLAlchemy).
DatabaseRef = Path | str


class DatabaseUnreadable(Exception):
    """The database is not there yet, or busy."""


def query(db: DatabaseRef, statement: str) -> list[tuple[Any, ...]]:
    """The rows of one SELECT on `db`."""
    if isinstance(db, str) and db.startswith("sqlite"):
        db = Path(db.split(":///", 1)[1])
    if isinstance(db, Path):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
                return [tuple(row) for row in conn.execute(statement).fetchall()]
        except sqlite3.Error as exc:
            raise DatabaseUnreadable(str(exc)) from exc
    url = db
    try:
        return [tuple(row) for row in run_async(lambda: sql(url, statement))]
    except SQLAlchemyError as exc:
        raise DatabaseUnreadable(str(exc)) from exc


def db_rows(db_path: DatabaseRef) -> list[tuple[int, str, str, str | None, str | None]]:
    """(proposal id, node address, state, decision, reason) of every vote row."""
    rows = query(
        db_path,
        "SELECT p.proposal_id, n.address, v.state, v.decision, v.reason FROM votes v "
        "JOIN proposals p ON p.id = v.proposal_ref JOIN nodes n ON n.id = v.node_id",
    )
    return [(int(r[0]), str(r[1]), str(r[2]), r[3], r[4]) for r in rows]


def db_states(db_path: DatabaseRef) -> Counter[str]:
    return Counter(state for _pid, _addr, state, _d, _r in db_rows(db_path))


OPEN_STATES = ("pending", "queued", "sent")


def settled(db_path: DatabaseRef, expected_rows: int) -> bool:
    """All `expected_rows` vote rows exist and none is still on its way."""
    try:
        states = db_states(db_path)
    except DatabaseUnreadable:
        return False  # not created yet, or busy
    return sum(states.values()) == expected_rows and not any(states[s] for s in OPEN_STATES)


@dataclass
class VoteAudit:
    """The end-to-end invariant, counted rather than asserted so the figures can be reported."""

    proposals: int
    nodes: int
    votes_on_chain: int
    missed: list[tuple[int, str]] = field(default_factory=list)  # (proposal, node) with no vote but owed one
    doubled: list[tuple[int, str]] = field(default_factory=list)  # (proposal, node) with two VoteCast
    # address -> (transactions, VoteCast + nonce fillers mined): a mismatch is a transaction not explained
    nonce_mismatch: dict[str, tuple[int, int]] = field(default_factory=dict)
    states: Counter[str] = field(default_factory=Counter)
    fillers: Counter[str] = field(default_factory=Counter)  # address -> no-op gap fillers mined
    # Only when the nonces disagree: what the canonical blocks themselves hold, to tell a node whose
    # answers disagree with its own blocks from votes that really left the chain.
    chain_walk: ChainWalk | None = None

    @property
    def clean(self) -> bool:
        return not (self.missed or self.doubled or self.nonce_mismatch)

    def summary(self) -> str:
        return (
            f"{self.proposals} proposals x {self.nodes} nodes: {self.votes_on_chain} votes on chain, "
            f"missed {len(self.missed)}, doubled {len(self.doubled)}, "
            f"nonce mismatches {len(self.nonce_mismatch)}, rows {dict(sorted(self.states.items()))}"
            + (f", nonce gaps filled {sum(self.fillers.values())}" if self.fillers else "")
        )


def audit_votes(
    anvil: AnvilProcess,
    devnet: DevnetInfo,
    db_path: DatabaseRef,
    proposal_ids: Iterable[int],
    *,
    addresses: Iterable[str] | None = None,
) -> VoteAudit:
    """For each node: on-chain transaction count == its VoteCast count; no (proposal, node) with two
    VoteCast; every proposal of `proposal_ids` that the node decided to vote on (row `confirmed`, or any row
    not ended without a vote) has its vote on chain. The devnet's proposals all get a for/against decision,
    so a row in `no_vote`, `closed` or `failed` for them counts as missed too."""
    ids = sorted(set(proposal_ids))
    nodes = [Web3.to_checksum_address(a) for a in (addresses or devnet.node_addresses)]
    events = vote_events(anvil.http_url, devnet.contract_address)
    per_pair = Counter((pid, voter) for pid, voter, _ in events)
    rows = {(pid, Web3.to_checksum_address(addr)): state for pid, addr, state, _d, _r in db_rows(db_path)}
    audit = VoteAudit(len(ids), len(nodes), len(events))
    audit.states = Counter(state for (pid, _addr), state in rows.items() if pid in set(ids))
    audit.doubled = sorted(pair for pair, n in per_pair.items() if n > 1)
    for pid in ids:
        for address in nodes:
            if per_pair[(pid, address)] == 0:
                audit.missed.append((pid, address))
    per_node = Counter(voter for _pid, voter, _ in events)
    audit.fillers = mined_nonce_fillers(anvil, db_path)
    for address in nodes:
        nonce = int(rpc(anvil.http_url, "eth_getTransactionCount", [address, "latest"]), 16)
        explained = per_node[address] + audit.fillers[address]
        if nonce != explained:
            audit.nonce_mismatch[address] = (nonce, explained)
    if audit.nonce_mismatch:
        audit.chain_walk = walk_chain(anvil, devnet)
    return audit


@dataclass
class ChainWalk:
    """Block by block from genesis to the head: each sender's transactions in canonical blocks, the VoteCast
    logs whose block hash is not the canonical one at their height (eth_getLogs answering from a replaced
    block), the heights below the head the node has no block for, and those whose block does not link to
    its parent."""

    head: int
    txs_per_sender: dict[str, int]
    stale_vote_logs: list[tuple[int, int, str]]  # (block number, proposal id, voter)
    missing_heights: list[int]
    broken_links: list[int]


def walk_chain(anvil: AnvilProcess, devnet: DevnetInfo) -> ChainWalk:
    head = head_number(anvil)
    txs: Counter[str] = Counter()
    hashes: dict[int, str] = {}
    missing: list[int] = []
    broken: list[int] = []
    for number in range(head + 1):
        block = anvil.rpc("eth_getBlockByNumber", [hex(number), True])
        if block is None:
            missing.append(number)
            continue
        hashes[number] = block["hash"]
        if number and block["parentHash"] != hashes.get(number - 1):
            broken.append(number)
        for tx in block["transactions"]:
            txs[Web3.to_checksum_address(tx["from"])] += 1
    logs = vote_cast_logs(anvil.http_url, devnet.contract_address)
    stale = [
        (
            int(log["blockNumber"], 16),
            int(log["topics"][1], 16),
            Web3.to_checksum_address("0x" + log["topics"][2][-40:]),
        )
        for log in logs
        if hashes.get(int(log["blockNumber"], 16)) != log["blockHash"]
    ]
    return ChainWalk(head, dict(txs), stale, missing, broken)


# -- anvil faults --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def frozen(anvil: AnvilProcess) -> Iterator[None]:
    """SIGSTOP anvil (the process is alive, its sockets open, nothing answers), SIGCONT on exit."""
    assert anvil.pid is not None
    os.kill(anvil.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(anvil.pid, signal.SIGCONT)


@contextlib.contextmanager
def mining_paused(anvil: AnvilProcess, *, block_time: float | None = None) -> Iterator[None]:
    """No block is mined inside; what is sent meanwhile waits in the pool and is mined on exit.

    For `anvil_reorg` (anvil 1.7.1): under automine, with votes arriving while the reorg ran, the node was
    left with no block at the replaced heights, a next block whose parent is not the block below, and
    senders' nonces below their VoteCast counts (6 runs in about 106: e.g. missing heights [37, 38],
    parent link broken at 39). No chain presents that; a reorg test run into it measures anvil."""
    if block_time is None:
        anvil.rpc("evm_setAutomine", [False])
    else:
        anvil.rpc("evm_setIntervalMining", [0])
    try:
        # A block already being mined when the mode changed is finished before the caller goes on (kept
        # short: the votes sent meanwhile wait in the pool, and anvil_reorg treats those its own way).
        last = [head_number(anvil)]

        def head_still() -> bool:
            time.sleep(0.05)
            now = head_number(anvil)
            still, last[0] = now == last[0], now
            return still

        poll_until(head_still, timeout=10, what="mining to stop")
        yield
    finally:
        if block_time is None:
            anvil.rpc("evm_setAutomine", [True])
            anvil.rpc("evm_mine", [])
        else:
            anvil.rpc("evm_setIntervalMining", [max(1, round(block_time))])


def mine(anvil: AnvilProcess, blocks: int = 1) -> None:
    for _ in range(blocks):
        anvil.rpc("evm_mine")


def vote_blocks(anvil: AnvilProcess, devnet: DevnetInfo) -> list[tuple[int, str, int]]:
    """(proposal id, voter, block number) of every VoteCast on the canonical chain."""
    logs = vote_cast_logs(anvil.http_url, devnet.contract_address)
    return [
        (
            int(log["topics"][1], 16),
            Web3.to_checksum_address("0x" + log["topics"][2][-40:]),
            int(log["blockNumber"], 16),
        )
        for log in logs
    ]


def head_number(anvil: AnvilProcess) -> int:
    return int(anvil.rpc("eth_blockNumber"), 16)


def raw_transactions_of_blocks(anvil: AnvilProcess, first: int, last: int) -> list[str]:
    """The signed raw transactions of blocks first..last in chain order, to hand back to `anvil_reorg`."""
    raws = []
    for number in range(first, last + 1):
        block = anvil.rpc("eth_getBlockByNumber", [hex(number), False])
        raws += [anvil.rpc("eth_getRawTransactionByHash", [tx]) for tx in block["transactions"]]
    return raws


def vote_rows_of(db_path: DatabaseRef, proposal_id: int) -> Counter[str]:
    """The states of the vote rows of one proposal id."""
    return Counter(state for pid, _addr, state, _d, _r in db_rows(db_path) if pid == proposal_id)


def reverted_vote_transactions(anvil: AnvilProcess, db_path: DatabaseRef) -> Counter[str]:
    """Per sender: the service's vote transactions (every one it signed) mined with status 0 on the chain."""
    hashes = [str(h) for (h,) in query(db_path, "SELECT tx_hash FROM vote_transactions")]
    reverted: Counter[str] = Counter()
    for tx_hash in hashes:
        receipt = anvil.rpc("eth_getTransactionReceipt", [tx_hash])
        if receipt is not None and int(receipt["status"], 16) == 0:
            reverted[Web3.to_checksum_address(receipt["from"])] += 1
    return reverted


def mined_nonce_fillers(anvil: AnvilProcess, db_path: DatabaseRef) -> Counter[str]:
    """Per node address: the no-op transactions the service sent to fill a nonce gap that are on chain."""
    rows = query(db_path, "SELECT n.address, f.tx_hash FROM nonce_fillers f JOIN nodes n ON n.id = f.node_id")
    mined: Counter[str] = Counter()
    for address, tx_hash in rows:
        receipt = anvil.rpc("eth_getTransactionReceipt", [tx_hash])
        if receipt is not None and int(receipt["status"], 16) == 1:
            mined[Web3.to_checksum_address(address)] += 1
    return mined


def fillers_of(db_path: DatabaseRef) -> list[tuple[str, int, str]]:
    """(node address, nonce, reason) of every no-op gap filler the service recorded."""
    rows = query(
        db_path, "SELECT n.address, f.nonce, f.reason FROM nonce_fillers f JOIN nodes n ON n.id = f.node_id"
    )
    return [(str(a), int(nonce), str(reason)) for a, nonce, reason in rows]


def pool_size(anvil: AnvilProcess) -> int:
    """Transactions in anvil's pool (ready and queued)."""
    status = anvil.rpc("txpool_status")
    return int(status["pending"], 16) + int(status["queued"], 16)


def failed_vote_errors(db_path: DatabaseRef) -> set[str]:
    """The last_error of every `failed` vote row."""
    rows = query(db_path, "SELECT last_error FROM votes WHERE state = 'failed'")
    return {str(error) for (error,) in rows}
