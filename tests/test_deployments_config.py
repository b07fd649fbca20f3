"""The deployments file (TOML): a good file gives one DeploymentSettings per table; every mistake is one line
naming the file, the deployment and the field, and no key is ever read from the file itself."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from eth_account import Account
from eth_typing import HexStr

from core.errors import ConfigError
from core.settings import DEFAULT_DEPLOYMENT, load_settings

KEYS = [
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
]
CONTRACT_A = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CONTRACT_B = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
ENV = {"NODE1_KEY": KEYS[0], "NODE2_KEY": KEYS[1]}

GOOD = f"""
[[deployments]]
name = "main"
rpc_ws_url = "ws://127.0.0.1:8545"
contract_address = "{CONTRACT_A}"

[[deployments.nodes]]
name = "ai-gov-01"
key_env = "NODE1_KEY"
strategy = "conservative"

[[deployments.nodes]]
name = "ai-gov-02"
key_env = "NODE2_KEY"
strategy = "aggressive"

[[deployments]]
name = "side"
rpc_ws_url = "ws://127.0.0.1:8546"
contract_address = "{CONTRACT_B.lower()}"
confirmations = 2
start_block = 7
max_fee_gwei = 50

[deployments.strategies]
conservative_max_amount = 10
aggressive_max_value = "2500.5"
stablecoins = ["usdc"]

[[deployments.nodes]]
name = "ai-gov-01"
key_env = "NODE1_KEY"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dloop.toml"
    path.write_text(text)
    return path


def test_a_good_file_declares_every_deployment(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    settings = load_settings({**ENV, "DLOOP_CONFIRMATIONS": "1"}, workdir=tmp_path)
    main, side = settings.deployments
    assert (main.name, side.name) == ("main", "side")
    assert [n.name for n in main.nodes] == ["ai-gov-01", "ai-gov-02"]
    assert [n.strategy for n in main.nodes] == ["conservative", "aggressive"]
    assert main.nodes[0].key.reveal() == KEYS[0] and side.nodes[0].key == main.nodes[0].key
    assert side.contract_address == CONTRACT_B  # checksummed
    assert main.confirmations == 1 and side.confirmations == 2  # the environment is the default
    assert side.start_block == 7 and side.max_fee_gwei == 50.0 and main.max_fee_gwei == 500.0
    assert (
        side.strategies.conservative_max_amount == 10
        and str(side.strategies.aggressive_max_value) == "2500.5"
    )
    assert side.strategies.stablecoins == ("USDC",) and main.strategies.stablecoins == ("USDC", "EURT")
    # The top-level fields are the first deployment's; for_deployment gives a deployment's own view.
    assert settings.rpc_ws_url == main.rpc_ws_url and settings.nodes == main.nodes
    view = settings.for_deployment(side)
    assert (
        view.rpc_ws_url == "ws://127.0.0.1:8546" and view.confirmations == 2 and view.deployments == (side,)
    )
    assert view.database_url == settings.database_url
    assert set(settings.secrets()) == {KEYS[0], KEYS[1]}
    assert KEYS[0].removeprefix("0x") not in repr(settings)


def test_without_a_file_the_environment_is_the_default_deployment(tmp_path: Path) -> None:
    env = {
        "DLOOP_RPC_WS_URL": "ws://h:1",
        "DLOOP_CONTRACT_ADDRESS": CONTRACT_A,
        "AI_NODE_1_PRIVATE_KEY": KEYS[0],
    }
    settings = load_settings(env, workdir=tmp_path)
    (deployment,) = settings.deployments
    assert deployment.name == DEFAULT_DEPLOYMENT and deployment.rpc_ws_url == "ws://h:1"
    assert deployment.nodes == settings.nodes and settings.config_file is None
    assert settings.for_deployment(deployment) == settings


def test_dloop_config_names_the_file(tmp_path: Path) -> None:
    other = tmp_path / "conf" / "deploy.toml"
    other.parent.mkdir()
    other.write_text(GOOD)
    settings = load_settings({**ENV, "DLOOP_CONFIG": "conf/deploy.toml"}, workdir=tmp_path)
    assert [d.name for d in settings.deployments] == ["main", "side"] and settings.config_file == str(other)
    with pytest.raises(ConfigError, match=r"^DLOOP_CONFIG: .*missing.toml does not exist$"):
        load_settings({**ENV, "DLOOP_CONFIG": str(tmp_path / "missing.toml")}, workdir=tmp_path)


def test_keystore_nodes_are_read_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "k.json").write_text(json.dumps(Account.encrypt(HexStr(KEYS[2]), "pw", iterations=2)))
    (tmp_path / "pw").write_text("pw\n")
    text = f"""
[[deployments]]
name = "k"
rpc_ws_url = "ws://h:1"
contract_address = "{CONTRACT_A}"
nodes = [{{ name = "n1", keystore = "k.json", password_file = "pw" }}]
"""
    settings = load_settings({}, workdir=write(tmp_path, text).parent)
    assert settings.deployments[0].nodes[0].key.reveal() == KEYS[2]
    (tmp_path / "pw").write_text("wrong\n")
    with pytest.raises(ConfigError, match=r"deployment 'k': nodes\[1\]\.keystore: could not be decrypted"):
        load_settings({}, workdir=tmp_path)


def _first_deployment(**fields: str) -> str:
    lines = ['name = "a"', 'rpc_ws_url = "ws://h:1"', f'contract_address = "{CONTRACT_A}"']
    lines += [f"{k} = {v}" for k, v in fields.items()]
    return "[[deployments]]\n" + "\n".join(lines) + "\n"


NODE = '[[deployments.nodes]]\nname = "n1"\nkey_env = "NODE1_KEY"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is = not toml =", r"dloop.toml: is not valid TOML"),
        ("[other]\nx = 1\n", r"dloop.toml: other: unknown key"),
        ("", r"dloop.toml: deployments: declares no deployment"),
        (
            _first_deployment() + NODE + _first_deployment() + NODE,
            r"deployment 'a': name: used by two deployments",
        ),
        ('[[deployments]]\nrpc_ws_url = "ws://h:1"\n', r"deployments\[1\]: name: required"),
        (_first_deployment(rcp_ws_url='"x"') + NODE, r"deployment 'a': rcp_ws_url: unknown field"),
        (_first_deployment(), r"deployment 'a': nodes: at least one node is required"),
        (
            _first_deployment() + '[[deployments.nodes]]\nname = "n1"\nkey = "' + KEYS[0] + '"\n',
            r"deployment 'a': nodes\[1\]\.key: keys are never written in the file",
        ),
        (
            _first_deployment() + '[[deployments.nodes]]\nname = "n1"\nkey_env = "NOPE_KEY"\n',
            r"deployment 'a': nodes\[1\]\.key_env: the environment variable NOPE_KEY is not set",
        ),
        (
            _first_deployment() + '[[deployments.nodes]]\nname = "n1"\nkey_env = "BAD_KEY"\n',
            r"deployment 'a': nodes\[1\]\.key_env: BAD_KEY: is not a private key",
        ),
        (
            _first_deployment() + '[[deployments.nodes]]\nname = "n1"\nstrategy = "aggressive"\n',
            r"deployment 'a': nodes\[1\]: give either key_env or keystore",
        ),
        (_first_deployment() + NODE + NODE, r"deployment 'a': nodes: node names must be unique"),
        (
            _first_deployment() + NODE + '[[deployments.nodes]]\nname = "n2"\nkey_env = "NODE1_KEY"\n',
            r"deployment 'a': nodes: the same key is configured for two nodes",
        ),
        (
            _first_deployment(confirmations='"2"') + NODE,
            r"deployment 'a': confirmations: must be a whole number",
        ),
        (
            _first_deployment(confirmations="-1") + NODE,
            r"deployment 'a': confirmations: must be a whole number",
        ),
        (
            _first_deployment(allow_unknown_events="1") + NODE,
            r"deployment 'a': allow_unknown_events: must be true or false",
        ),
        (
            _first_deployment(max_fee_gwei="0") + NODE,
            r"deployment 'a': max_fee_gwei: must be a finite number above 0",
        ),
        (
            _first_deployment(max_fee_gwei="inf") + NODE,
            r"deployment 'a': max_fee_gwei: must be a finite number above 0, got inf",
        ),
        (
            _first_deployment(max_fee_gwei="nan") + NODE,
            r"deployment 'a': max_fee_gwei: must be a finite number above 0, got nan",
        ),
        (
            _first_deployment(strategies="{ conservative_max_amount = -1 }") + NODE,
            r"deployment 'a': strategies\.conservative_max_amount: must be a whole number",
        ),
        (
            _first_deployment(strategies='{ aggressive_max_amount = "5" }') + NODE,
            r"deployment 'a': strategies\.aggressive_max_amount: must be a whole number",
        ),
        (
            _first_deployment() + '[[deployments.nodes]]\nname = "n1"\nkey_env = "NODE-1"\n',
            r"deployment 'a': nodes\[1\]\.key_env: must be an environment variable's name",
        ),
        (
            _first_deployment(strategies="{ conservative_max = 1 }") + NODE,
            r"deployment 'a': strategies.conservative_max: unknown field",
        ),
        (
            _first_deployment(strategies='{ stablecoins = "USDC" }') + NODE,
            r"deployment 'a': strategies.stablecoins: must be a non-empty list",
        ),
        (
            '[[deployments]]\nname = "a"\nrpc_ws_url = "http://h:1"\ncontract_address = "'
            + CONTRACT_A
            + '"\n'
            + NODE,
            r"deployment 'a': rpc_ws_url: must start with ws:// or wss://",
        ),
        (
            '[[deployments]]\nname = "a"\nrpc_ws_url = "ws://h:1"\ncontract_address = "0x12"\n' + NODE,
            r"deployment 'a': contract_address: must be 0x followed by 40 hex digits",
        ),
        (
            _first_deployment() + NODE + _first_deployment().replace('"a"', '"b"') + NODE.replace("n1", "n2"),
            r"deployment 'b': nodes\[1\]\.name: the same key is node 'n1' in another deployment",
        ),
        (
            _first_deployment()
            + NODE
            + _first_deployment().replace('"a"', '"b"')
            + NODE.replace("NODE1", "NODE2"),
            r"deployment 'b': nodes\[1\]\.name: 'n1' names another key in another deployment",
        ),
        (
            '[[deployments]]\nname = "a"\nrpc_ws_url = "ws://h:1"\n' + NODE,
            r"deployment 'a': contract_address: is required",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_file_deployment_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings({**ENV, "BAD_KEY": "0x1234"}, workdir=tmp_path)
    line = str(caught.value)
    assert "\n" not in line and line.startswith(str(tmp_path / "dloop.toml"))
    assert KEYS[0].removeprefix("0x") not in line


def test_the_example_file_is_valid_up_to_its_placeholder_keystore(tmp_path: Path) -> None:
    """dloop.toml.example parses (every field it shows is known); it stops only at the keystore it names."""
    example = Path(__file__).resolve().parents[1] / "dloop.toml.example"
    (tmp_path / "dloop.toml").write_text(example.read_text())
    with pytest.raises(ConfigError, match=r"deployment 'mainnet': nodes\[2\]\.password_file: cannot be read"):
        load_settings({"AI_NODE_1_PRIVATE_KEY": KEYS[0]}, workdir=tmp_path)
    uncommented = "\n".join(
        line.removeprefix("# ")
        if line.startswith(("# start_block", "# confirmations", "# max_fee"))
        else line
        for line in example.read_text().splitlines()
    )
    keystore = uncommented.replace(
        'keystore = "keystores/ai-gov-02.json"\npassword_file = "keystores/password"', 'key_env = "NODE2_KEY"'
    )
    (tmp_path / "dloop.toml").write_text(keystore)
    settings = load_settings({"AI_NODE_1_PRIVATE_KEY": KEYS[0], "NODE2_KEY": KEYS[1]}, workdir=tmp_path)
    mainnet, testnet = settings.deployments
    assert mainnet.start_block == 19000000 and mainnet.confirmations == 2 and mainnet.max_fee_gwei == 200
    assert testnet.nodes[0].key == mainnet.nodes[0].key and testnet.nodes[0].strategy == "aggressive"


def test_two_deployments_on_one_chain_need_other_contracts_and_other_keys(tmp_path: Path) -> None:
    """Checked at start-up, once the chain ids are known: a key has one nonce lane per chain."""
    from dloop.preflight import check_apart

    write(tmp_path, GOOD)
    main, side = load_settings(ENV, workdir=tmp_path).deployments
    check_apart(side, 31338, [(main, 31337)])  # the same key on another chain: fine
    with pytest.raises(
        ConfigError, match=r"ai-gov-01 also vote\(s\) in deployment 'main' on the same chain 1"
    ):
        check_apart(side, 1, [(main, 1)])
    same_contract = dataclasses.replace(side, contract_address=main.contract_address, nodes=())
    with pytest.raises(ConfigError, match=r"deployment 'main' already follows 0x5FbDB2315678"):
        check_apart(same_contract, 1, [(main, 1)])
    check_apart(dataclasses.replace(side, nodes=()), 1, [(main, 1)])  # other contract, other keys: fine


def test_without_a_file_a_replaced_field_is_the_default_deployments(tmp_path: Path) -> None:
    env = {
        "DLOOP_RPC_WS_URL": "ws://h:1",
        "DLOOP_CONTRACT_ADDRESS": CONTRACT_A,
        "AI_NODE_1_PRIVATE_KEY": KEYS[0],
    }
    settings = dataclasses.replace(
        load_settings(env, workdir=tmp_path), rpc_ws_url="ws://proxy:2", confirmations=3
    )
    (deployment,) = settings.deployments
    assert deployment.rpc_ws_url == "ws://proxy:2" and deployment.confirmations == 3
    assert settings.for_deployment(deployment).rpc_ws_url == "ws://proxy:2"


@pytest.mark.parametrize("pasted", [KEYS[0], KEYS[0].removeprefix("0x"), KEYS[0].upper().replace("0X", "0x")])
def test_a_key_pasted_into_key_env_is_refused_without_printing_it(tmp_path: Path, pasted: str) -> None:
    write(tmp_path, _first_deployment() + f'[[deployments.nodes]]\nname = "n1"\nkey_env = "{pasted}"\n')
    with pytest.raises(
        ConfigError, match=r"nodes\[1\]\.key_env: looks like a private key: name an"
    ) as caught:
        load_settings({**ENV, pasted: KEYS[0]}, workdir=tmp_path)
    line = str(caught.value).lower()
    assert KEYS[0].removeprefix("0x")[:16] not in line and KEYS[0].removeprefix("0x")[-16:] not in line


@pytest.mark.slow  # a `dloop` process
def test_a_key_pasted_into_key_env_stays_out_of_the_cli_output(tmp_path: Path) -> None:
    import subprocess

    from tests.support.chaos import DLOOP, clean_env

    write(tmp_path, _first_deployment() + f'[[deployments.nodes]]\nname = "n1"\nkey_env = "{KEYS[0]}"\n')
    env = clean_env({"DLOOP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'dloop.db'}"})
    done = subprocess.run(
        [*DLOOP, "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"dloop: error: {tmp_path / 'dloop.toml'}: deployment 'a': nodes[1].key_env: "
        "looks like a private key: name an environment variable instead"
    ]
    secret = KEYS[0].removeprefix("0x")
    assert secret[:16] not in done.stdout + done.stderr and secret[-16:] not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "name",
    [
        "DLOOP_RPC_WS_URL",
        "DLOOP_CONTRACT_ADDRESS",
        "AI_NODE_3_PRIVATE_KEY",
        "DLOOP_NODE_KEYS",
        "DLOOP_KEYSTORE_DIR",
        "DLOOP_NODE_NAMES",
        "DLOOP_NODE_STRATEGIES",
    ],
)
def test_the_environments_deployment_next_to_a_file_is_refused(tmp_path: Path, name: str) -> None:
    """Else it would be ignored without a word: the operator would believe it in use."""
    path = write(tmp_path, GOOD)
    values = {
        "DLOOP_RPC_WS_URL": "ws://h:1",
        "DLOOP_CONTRACT_ADDRESS": CONTRACT_A,
        "DLOOP_NODE_KEYS": KEYS[2],
    }
    with pytest.raises(ConfigError) as caught:
        load_settings({**ENV, name: values.get(name, KEYS[2] if "KEY" in name else "x")}, workdir=tmp_path)
    assert str(caught.value) == (
        f"{name}: is set, but the deployments file {path} replaces it: remove one of the two"
    )
    assert KEYS[2].removeprefix("0x") not in str(caught.value)


def test_a_key_variable_the_file_names_is_not_a_mix(tmp_path: Path) -> None:
    """The documented layout: the file's key_env names the AI_NODE_n_PRIVATE_KEY variables."""
    write(tmp_path, GOOD.replace("NODE1_KEY", "AI_NODE_1_PRIVATE_KEY"))
    settings = load_settings({"AI_NODE_1_PRIVATE_KEY": KEYS[0], "NODE2_KEY": KEYS[1]}, workdir=tmp_path)
    assert [n.name for n in settings.deployments[0].nodes] == ["ai-gov-01", "ai-gov-02"]
