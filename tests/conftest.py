"""Shared fixtures: the one anyio backend, the chains (one anvil per session, private ones per module or per
test), the one temp database, and the `slow` marking that `make test-fast` selects on.

Chains: `anvil`/`devnet`/`w3` are one automining anvil for the whole session; tests that change its state use
`chain_snapshot` (directly or through `dao`) so they see the freshly deployed devnet and leave it unchanged.
`chain` is a private anvil with the devnet for the module (`@pytest.mark.devnet(proposals=.., block_time=..)`
as the module's `pytestmark` sets it up), or for each test with `devnet(fresh=True)`.

Speed: every test that uses a chain fixture is marked `slow` here; modules and tests that start anvil, a
`dloop` process or a server themselves carry `pytest.mark.slow`. `make test-fast` runs `-m "not slow"`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError
from web3.types import TxReceipt

from core.logs import configure_logging
from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo, deploy_devnet, load_artifact
from tests.support.chain import ANVIL_BIN, Chain, devnet_chain, start_anvil
from tests.support.database import Database, NodeSpec, devnet_nodes, made_up_nodes, migrated_database
from tests.support.postgres import PostgresServer, PostgresUnavailable, in_ci

__all__ = ["ANVIL_BIN", "RevertName", "Transact"]

Transact = Callable[[str, ContractFunction], TxReceipt]
RevertName = Callable[[str, ContractFunction], str]

# Fixtures that start or use an anvil: a test that needs one of them is `slow`.
CHAIN_FIXTURES = frozenset(
    {"anvil", "w3", "devnet", "chain_snapshot", "dao", "transact", "chain", "module_chain", "bare_anvil"}
)


# The databases a `both_databases` test runs on (its `db_backend` parameter).
DATABASES = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test (or module) marked `both_databases` that uses a database fixture runs once per database."""
    if "db_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_databases"):
        metafunc.parametrize("db_backend", DATABASES, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that uses a chain fixture or PostgreSQL (a server process) (the rest of `slow`
    is marked in the modules)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("db_backend") == "postgres"
        if on_postgres or CHAIN_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# -- logs --------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def json_logs() -> None:
    """DLOOP_TEST_LOGS=1 prints the service's JSON log lines (with their fields) while debugging."""
    if os.environ.get("DLOOP_TEST_LOGS"):
        configure_logging("INFO")


# -- async -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """`pytest.mark.anyio` tests run on uvloop, `dloop run`'s loop by default (DLOOP_EVENT_LOOP=auto), never
    trio; tests/test_cli_service.py runs one `dloop run` on plain asyncio."""
    return "asyncio", {"use_uvloop": True}


# -- the session anvil ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilProcess]:
    """A fresh automining anvil on a free port for the whole session."""
    with start_anvil() as node:
        yield node


@pytest.fixture(scope="session")
def w3(anvil: AnvilProcess) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.http_url))


@pytest.fixture(scope="session")
def devnet(anvil: AnvilProcess) -> DevnetInfo:
    """Tokens and AssetDAO deployed, nodes and proposer funded, no proposals (tests create their own)."""
    return deploy_devnet(anvil.http_url, proposals=0)


@pytest.fixture
def chain_snapshot(anvil: AnvilProcess, devnet: DevnetInfo) -> Iterator[None]:
    """Revert every block, balance and clock change of the test (`evm_snapshot` / `evm_revert`)."""
    snapshot_id = anvil.rpc("evm_snapshot")
    yield
    assert anvil.rpc("evm_revert", [snapshot_id]) is True


@pytest.fixture
def dao(w3: Web3, devnet: DevnetInfo, chain_snapshot: None) -> Contract:
    """The devnet AssetDAO (artifact ABI), with the chain reverted after the test."""
    abi = load_artifact("AssetDAO")["abi"]
    return w3.eth.contract(address=Web3.to_checksum_address(devnet.contract_address), abi=abi)


@pytest.fixture(scope="session")
def transact(w3: Web3) -> Transact:
    """`transact(private_key, contract.functions.f(...))`: sign, send, wait; fails the test if it reverts."""

    def send(private_key: str, call: ContractFunction) -> TxReceipt:
        account = Account.from_key(private_key)
        tx = call.build_transaction(
            {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)}
        )
        tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)
        assert receipt["status"] == 1, f"transaction {tx_hash.hex()} reverted"
        return receipt

    return send


@pytest.fixture(scope="session")
def revert_name() -> RevertName:
    """`revert_name(private_key, contract.functions.f(...))`: the custom error name `f` reverts with."""
    errors = _custom_errors(load_artifact("AssetDAO")["abi"])

    def call(private_key: str, function: ContractFunction) -> str:
        sender = Account.from_key(private_key).address
        with pytest.raises(ContractCustomError) as raised:
            function.call({"from": sender})
        data = raised.value.data
        assert isinstance(data, str), data
        return errors.get(data[:10], f"unknown error {data}")

    return call


def _custom_errors(abi: list[dict[str, Any]]) -> dict[str, str]:
    """Selector ("0x" + 8 hex digits) -> name of every custom error in `abi`."""
    selectors = {}
    for entry in abi:
        if entry["type"] == "error":
            signature = f"{entry['name']}({','.join(arg['type'] for arg in entry['inputs'])})"
            selectors["0x" + Web3.keccak(text=signature).hex().removeprefix("0x")[:8]] = entry["name"]
    return selectors


# -- private chains ------------------------------------------------------------------------------------------


@pytest.fixture
def bare_anvil() -> Iterator[AnvilProcess]:
    """A new anvil for the test with nothing deployed (block 0)."""
    with start_anvil() as node:
        yield node


def _devnet_options(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    marker = node.get_closest_marker("devnet")
    return dict(marker.kwargs) if marker is not None else {}


@pytest.fixture(scope="module")
def module_chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    """A private anvil with the devnet, shared by the module's tests (for tests that run `dloop` or a service
    against it, or need interval mining: `pytestmark = pytest.mark.devnet(proposals=2, block_time=0.5)`)."""
    options = _devnet_options(request.node)
    options.pop("fresh", None)
    with devnet_chain(**options) as chain:
        yield chain


@pytest.fixture
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    """The module's private chain, or a new one for each test when the module is marked `devnet(fresh=True)`
    (tests that reorg or rewrite the chain). Unpacks as `anvil, devnet = chain`. Parametrised indirectly, its
    parameter is the event set of the contract (`@pytest.mark.parametrize("chain", EVENT_VERSIONS,
    indirect=True)`): always a new chain."""
    options = _devnet_options(request.node)
    if hasattr(request, "param"):
        options.pop("fresh", None)
        with devnet_chain(**options, events=request.param) as chain:
            yield chain
    elif options.pop("fresh", False):
        with devnet_chain(**options) as chain:
            yield chain
    else:
        yield request.getfixturevalue("module_chain")


# -- the database ------------------------------------------------------------------------------------------


@pytest.fixture
def db_nodes(request: pytest.FixtureRequest) -> list[NodeSpec]:
    """The node records of `db`: the devnet's five nodes when the test has a private `chain`, else five
    made-up ones. A module overrides this fixture to record other nodes."""
    if "chain" in request.fixturenames:
        return devnet_nodes(request.getfixturevalue("chain").info)
    return made_up_nodes()


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    """The database of the test: `sqlite`, or each of DATABASES for a test marked `both_databases`."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the session (or DLOOP_TEST_POSTGRES_URL's server): see
    tests/support/postgres.py. Without one the tests that need it are skipped, or fail under CI=true."""
    try:
        server = PostgresServer.from_environment()
    except PostgresUnavailable as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL is needed under CI=true: {exc}")
        pytest.skip(f"no PostgreSQL for the tests: {exc}")
    try:
        yield server
    finally:
        server.stop()


def _database_url(
    request: pytest.FixtureRequest, backend: str, tmp_path: Any, migrated: bool
) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'dloop.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.database(migrated=migrated) as url:
        yield url


@pytest.fixture
def database_url(request: pytest.FixtureRequest, db_backend: str, tmp_path: Any) -> Iterator[str]:
    """The URL of a new, empty database of the test's `db_backend`: an SQLite file in the test's temp
    directory (not created yet), or a PostgreSQL database dropped after the test."""
    yield from _database_url(request, db_backend, tmp_path, migrated=False)


@pytest.fixture
async def db(
    request: pytest.FixtureRequest, db_backend: str, tmp_path: Any, db_nodes: list[NodeSpec]
) -> AsyncIterator[Database]:
    """A real database of the test's `db_backend` (an SQLite file in the test's temp directory, or a new
    PostgreSQL database), migrated, with `db_nodes` recorded (for `pytest.mark.anyio` tests; a module's own
    `db` may request this one and add rows)."""
    for url in _database_url(request, db_backend, tmp_path, migrated=True):
        async with migrated_database(url, db_nodes) as database:
            yield database
