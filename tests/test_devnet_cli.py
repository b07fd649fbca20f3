"""`dloop devnet` end to end: a real anvil, 49 proposals, the env file, and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from web3 import Web3

from core.errors import DloopError
from devtools.anvil import AnvilProcess, find_anvil_binary, free_port, port_is_open
from devtools.devnet import (
    ASSET_PRICES,
    ASSET_TOKENS,
    ZERO_ADDRESS,
    deploy_devnet,
    load_artifact,
    price_to_raw,
    proposal_plan,
)
from tests.support.chain import ANVIL_BIN

REPO_ROOT = Path(__file__).resolve().parents[1]
DAO_ABI = load_artifact("AssetDAO")["abi"]
ORACLE_ABI = load_artifact("DevPriceOracle")["abi"]
EXPECTED_KEYS = {
    "DLOOP_RPC_WS_URL",
    "DLOOP_CONTRACT_ADDRESS",
    "DLOOP_START_BLOCK",
    *(f"AI_NODE_{n}_PRIVATE_KEY" for n in range(1, 6)),
    "DLOOP_DLOOP_TOKEN_ADDRESS",
    *(f"DLOOP_ASSET_{spec.symbol}_ADDRESS" for spec in ASSET_TOKENS),
    "DLOOP_DEVNET_PROPOSER_KEY",
}


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def wait_for_file(path: Path, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"dloop devnet exited early: {process.communicate()}"
        assert time.monotonic() < deadline, "dloop devnet wrote no env file in time"
        time.sleep(0.05)


@pytest.mark.slow  # starts anvil
def test_devnet_command_deploys_proposals_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env_file = tmp_path / "devnet.env"
    command = [sys.executable, "-m", "dloop.cli", "devnet", "--port", str(port), "--proposals", "49"]
    process = subprocess.Popen(
        [*command, "--env-file", str(env_file)],
        cwd=REPO_ROOT,
        env=os.environ.copy(),  # passes DLOOP_ANVIL_BIN through when set
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_file(env_file, process, timeout=20)
        settings = read_env_file(env_file)
        assert settings.keys() >= EXPECTED_KEYS
        assert settings["DLOOP_RPC_WS_URL"] == f"ws://127.0.0.1:{port}"
        assert env_file.stat().st_mode & 0o077 == 0  # keys: owner-only

        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}"))
        dao_abi = load_artifact("AssetDAO")["abi"]
        dao = w3.eth.contract(
            address=Web3.to_checksum_address(settings["DLOOP_CONTRACT_ADDRESS"]), abi=dao_abi
        )
        assert dao.functions.getProposalCount().call() == 49
        assert w3.eth.get_code(dao.address), "no contract code at DLOOP_CONTRACT_ADDRESS"
        assert int(settings["DLOOP_START_BLOCK"]) <= w3.eth.block_number

        addresses = {spec.symbol: settings[f"DLOOP_ASSET_{spec.symbol}_ADDRESS"] for spec in ASSET_TOKENS}
        symbol_of = {address: symbol for symbol, address in addresses.items()} | {ZERO_ADDRESS: None}
        token_abi = load_artifact("DevToken")["abi"]
        decimals = {
            symbol: w3.eth.contract(address=Web3.to_checksum_address(address), abi=token_abi)
            .functions.decimals()
            .call()
            for symbol, address in addresses.items()
        }
        assert decimals == {"USDC": 6, "EURT": 6, "WBTC": 8, "PAXG": 18}

        proposals = [dao.functions.getProposal(i).call() for i in range(1, 50)]
        for planned, on_chain in zip(proposal_plan(49), proposals, strict=True):
            _, kind, asset, amount, description, *_ = on_chain
            assert (kind, symbol_of[asset], amount, description) == (
                planned.proposal_type,
                planned.asset_symbol,
                planned.amount_units,
                planned.description,
            )
        amounts = {(symbol_of[p[2]], p[3] / 10 ** decimals.get(symbol_of[p[2]] or "", 0)) for p in proposals}
        assert {("USDC", 500), ("USDC", 2500), ("USDC", 12000), ("WBTC", 0.05), ("WBTC", 1.5)} <= amounts
        assert {("PAXG", 10), ("EURT", 6000), ("EURT", 800)} <= amounts
        kinds = Counter(p[1] for p in proposals)
        assert kinds[0] > kinds[1] > 0 and kinds[2] > 0 and kinds[3] > 0

        # The AssetDAO names the devnet's price oracle, seeded with realistic prices (18 decimals).
        oracle = w3.eth.contract(address=dao.functions.priceOracle().call(), abi=ORACLE_ABI)
        prices = {
            symbol: oracle.functions.getAssetPrice(Web3.to_checksum_address(address)).call()
            for symbol, address in addresses.items()
        }
        assert prices == {symbol: price_to_raw(price) for symbol, price in ASSET_PRICES.items()}
        assert prices["WBTC"] == 61_000 * 10**18
    finally:
        stop_started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise

    assert process.returncode == 0, stderr
    assert time.monotonic() - stop_started < 5
    assert "set -a; ." in stdout and str(env_file) in stdout
    assert "(price 61,000)" in stdout and "price oracle" in stdout, stdout
    assert not port_is_open(port), "anvil still listening after dloop devnet stopped"


@pytest.mark.slow  # starts anvil
def test_deploy_works_with_interval_mining() -> None:
    with AnvilProcess(binary=ANVIL_BIN, block_time=0.2) as node:
        info = deploy_devnet(node.http_url, proposals=12)
        w3 = Web3(Web3.HTTPProvider(node.http_url))
        dao = w3.eth.contract(address=Web3.to_checksum_address(info.contract_address), abi=DAO_ABI)
        assert info.proposals_created == dao.functions.getProposalCount().call() == 12
        port = node.port
    assert not port_is_open(port)


def test_missing_anvil_names_the_setting_and_make_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DloopError, match="DLOOP_ANVIL_BIN"):
        find_anvil_binary(tmp_path / "no-anvil-here")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DloopError, match="make setup"):
        find_anvil_binary(None, repo_root=tmp_path)
