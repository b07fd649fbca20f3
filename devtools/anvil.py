"""Run a local anvil chain: find the pinned binary, start it on a port, wait until it answers, stop it.

Used by `dloop devnet`, the test fixtures and the benchmarks. Nothing here reads the environment: the caller
passes the `DLOOP_ANVIL_BIN` override in as `explicit`.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from core.errors import DloopError


def _checkout_root() -> Path | None:
    """The repository this package runs from, or None when it is installed (site-packages holds no
    pyproject.toml beside it): the npm-pinned anvil is looked for only in a checkout."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "devtools").is_dir() else None


REPO_ROOT = _checkout_root()
ANVIL_BIN_SETTING = "DLOOP_ANVIL_BIN"
ANVIL_CHAIN_ID = 31337


@dataclass(frozen=True)
class AnvilAccount:
    """One of anvil's pre-funded accounts (public test key: never use it on a real network)."""

    address: str
    private_key: str


# Accounts 0..9 of the mnemonic "test test test test test test test test test test test junk".
ANVIL_KEYS: tuple[AnvilAccount, ...] = (
    AnvilAccount(
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    ),
    AnvilAccount(
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    ),
    AnvilAccount(
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    ),
    AnvilAccount(
        "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
        "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    ),
    AnvilAccount(
        "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
        "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    ),
    AnvilAccount(
        "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
        "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    ),
    AnvilAccount(
        "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
        "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    ),
    AnvilAccount(
        "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
        "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    ),
    AnvilAccount(
        "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
        "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    ),
    AnvilAccount(
        "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
        "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
    ),
)

_NPM_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_NPM_OS = {"linux": "linux", "darwin": "darwin"}


def _npm_binary(repo_root: Path) -> Path | None:
    os_name = _NPM_OS.get(sys.platform)
    arch = _NPM_ARCH.get(platform.machine().lower())
    if os_name is None or arch is None:
        return None
    return repo_root / "node_modules" / "@foundry-rs" / f"anvil-{os_name}-{arch}" / "bin" / "anvil"


def find_anvil_binary(explicit: str | Path | None = None, *, repo_root: Path | None = REPO_ROOT) -> Path:
    """The anvil to run: `explicit` (DLOOP_ANVIL_BIN), else the npm-pinned binary of the checkout (when
    running from one), else `anvil` on PATH."""
    if explicit:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        on_path = shutil.which(str(explicit))
        if on_path is not None:
            return Path(on_path)
        raise DloopError(f"{ANVIL_BIN_SETTING}: {explicit} is not an executable file")
    pinned = _npm_binary(repo_root) if repo_root is not None else None
    if pinned is not None and pinned.is_file() and os.access(pinned, os.X_OK):
        return pinned
    on_path = shutil.which("anvil")
    if on_path is not None:
        return Path(on_path)
    if repo_root is not None:
        raise DloopError(
            f"anvil not found: run `make setup` (installs the pinned binary under node_modules/@foundry-rs) "
            f"or set {ANVIL_BIN_SETTING} to an anvil executable"
        )
    raise DloopError(f"anvil not found on PATH: install Foundry's anvil or set {ANVIL_BIN_SETTING} to it")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def json_rpc(url: str, method: str, params: list[Any] | None = None, *, timeout: float = 5.0) -> Any:
    """One JSON-RPC call over HTTP; returns `result` or raises DloopError with the node's error."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise DloopError(f"{method} failed: {reply['error']}")
    return reply["result"]


class AnvilProcess:
    """A local anvil node on 127.0.0.1, started and stopped by us.

    `port=0` picks a free port. Automine unless `block_time` (seconds, fractions allowed) is set; with
    `state_file` the chain is loaded from and dumped to that file. Usable as a sync or async context manager
    (starting takes ~60 ms, so the async form just starts synchronously).
    """

    _START_ATTEMPTS = 3

    def __init__(
        self,
        *,
        binary: str | Path | None = None,
        port: int = 0,
        block_time: float | None = None,
        state_file: Path | None = None,
        extra_args: tuple[str, ...] = (),
        log_file: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.binary = find_anvil_binary(binary)
        self.requested_port = port
        self.block_time = block_time
        self.state_file = state_file
        self.extra_args = extra_args
        self.log_file = log_file
        self.startup_timeout = startup_timeout
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise DloopError("anvil is not started")
        return self._port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self, port: int) -> list[str]:
        # Without --prune-history anvil writes every state it evicts from memory to ~/.foundry/anvil/tmp as
        # a full JSON dump (MBs each, never removed after a kill): a long devnet or benchmark slowed down
        # and filled the disk. Recent states are all the service reads (reorgs reach a few blocks back).
        args = [str(self.binary), "--host", "127.0.0.1", "--port", str(port), "--prune-history", "256"]
        if self.block_time is not None:
            args += ["--block-time", f"{self.block_time:g}"]
        if self.state_file is not None:
            args += ["--state", str(self.state_file)]
        return [*args, *self.extra_args]

    def start(self) -> Self:
        """Start anvil and return once it answers `eth_chainId`."""
        if self.running:
            return self
        # Another node on the port would answer our readiness probe while our anvil fails to bind.
        if self.requested_port and port_is_open(self.requested_port):
            raise DloopError(f"127.0.0.1:{self.requested_port} is already in use (another anvil or devnet?)")
        # A free port picked by us may be taken before anvil binds it: retry with another one.
        attempts = 1 if self.requested_port else self._START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self.requested_port or free_port()
            self._spawn(port)
            if self._wait_ready(port):
                self._port = port
                _running.add(self)
                return self
            exit_code = self._reap()
            if attempt == attempts:
                where = f"; see {self.log_file}" if self.log_file else ""
                reason = f"exited with code {exit_code}" if exit_code is not None else "did not answer"
                raise DloopError(f"anvil on 127.0.0.1:{port} {reason}{where}")
        raise AssertionError("unreachable")

    def _spawn(self, port: int) -> None:
        if self.log_file is not None:
            self._log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            self.command(port),
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            # Own process group: a terminal Ctrl-C reaches only us, and we stop anvil in order (state dump).
            start_new_session=True,
        )

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            with contextlib.suppress(OSError, DloopError, ValueError, http.client.HTTPException):
                json_rpc(url, "eth_chainId", timeout=0.5)
                return self._process.poll() is None  # the answer came from our process, not a squatter
            time.sleep(0.01)
        return False

    def _reap(self, timeout: float = 5.0) -> int | None:
        """Stop the process (SIGTERM, then SIGKILL) and return its exit code."""
        process, self._process = self._process, None
        exit_code: int | None = None
        if process is not None:
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                    process.wait()
            exit_code = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return exit_code

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (anvil dumps `state_file` then), SIGKILL after `timeout` seconds."""
        self._reap(timeout)
        _running.discard(self)

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """A JSON-RPC call to this node, e.g. `rpc("evm_snapshot")`, `rpc("evm_increaseTime", [3600])`."""
        return json_rpc(self.http_url, method, params)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port else "not started"
        return f"AnvilProcess({where}, pid={self.pid})"


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


# Nodes still running at interpreter exit are stopped: they live in their own process group and would
# otherwise outlive us.
_running: set[AnvilProcess] = set()


@atexit.register
def _stop_all() -> None:
    for node in list(_running):
        node.stop(timeout=2.0)
