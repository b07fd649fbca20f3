"""Settings: every invalid value gives one readable line naming the setting, never a secret."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from eth_account import Account
from eth_typing import HexStr

from core.errors import ConfigError
from core.settings import EventLoop, PrivateKey, load_settings, parse_address, read_env_file
from dloop.commands import run_async, running_loop_name

KEYS = [
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
]
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def base_env(**extra: str) -> dict[str, str]:
    env = {"DLOOP_RPC_WS_URL": "ws://127.0.0.1:8545", "DLOOP_CONTRACT_ADDRESS": CONTRACT}
    env.update({f"AI_NODE_{i}_PRIVATE_KEY": key for i, key in enumerate(KEYS, 1)})
    env.update(extra)
    return env


def test_defaults_and_five_nodes() -> None:
    settings = load_settings(base_env())
    assert [n.name for n in settings.nodes] == [f"ai-gov-0{i}" for i in range(1, 6)]
    assert [n.strategy for n in settings.nodes] == [
        "conservative",
        "aggressive",
        "conservative",
        "aggressive",
        "conservative",
    ]
    assert settings.http_host == "127.0.0.1" and settings.http_port == 5001
    assert settings.database_url == "sqlite+aiosqlite:///dloop.db"
    assert settings.log_chunk_blocks == 2000 and settings.head_timeout == 30.0
    assert settings.nodes[1].key.reveal() == "0x" + KEYS[1]  # 0x added when missing


def test_keys_never_in_repr() -> None:
    settings = load_settings(base_env(DLOOP_API_TOKEN="s3cret-token"))
    text = repr(settings) + str(settings.nodes)
    for key in KEYS:
        assert key.removeprefix("0x") not in text
    assert "s3cret-token" not in text
    assert repr(PrivateKey(KEYS[0])) == "PrivateKey(<hidden>)"


def test_node_keys_from_comma_list() -> None:
    env = {
        "DLOOP_RPC_WS_URL": "ws://h:1",
        "DLOOP_CONTRACT_ADDRESS": CONTRACT,
        "DLOOP_NODE_KEYS": ",".join(KEYS[:3]),
    }
    assert len(load_settings(env).nodes) == 3


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        ("DLOOP_CONTRACT_ADDRESS", CONTRACT + "1", "40 hex digits"),  # the 41-digit address from production
        ("DLOOP_CONTRACT_ADDRESS", CONTRACT[:-1], "40 hex digits"),
        ("DLOOP_CONTRACT_ADDRESS", "assetdao.eth", "40 hex digits"),
        ("DLOOP_CONTRACT_ADDRESS", CONTRACT[:5] + CONTRACT[5:].swapcase(), "checksum"),
        ("DLOOP_RPC_WS_URL", "http://127.0.0.1:8545", "ws://"),
        ("DLOOP_RPC_WS_URL", "ws://", "host"),
        ("DLOOP_RPC_WS_URL", "ws://127.0.0.1:99999", "port"),
        ("AI_NODE_3_PRIVATE_KEY", "0x1234", "not a private key"),
        ("AI_NODE_1_PRIVATE_KEY", "zz" * 32, "not a private key"),
        ("DLOOP_HTTP_PORT", "eighty", "whole number"),
        ("DLOOP_HTTP_PORT", "70000", "at most 65535"),
        ("DLOOP_BATCH_SIZE", "0", "at least 1"),
        ("DLOOP_HEAD_TIMEOUT", "nan", "at least"),
        ("DLOOP_MAX_FEE_GWEI", "inf", "finite"),
        ("DLOOP_HEAD_TIMEOUT", "Infinity", "finite"),
        ("DLOOP_DATABASE_URL", "not a url", "database URL"),
        ("DLOOP_DATABASE_URL", "mysql+aiomysql://db/dloop", "postgresql+asyncpg://"),
        ("DLOOP_DATABASE_URL", "postgresql+psycopg2://db/dloop", "got postgresql+psycopg2://"),
        ("DLOOP_NODE_NAMES", "a,b", "2 names for 5"),
        ("DLOOP_NODE_STRATEGIES", "conservative", "1 strategies for 5"),
        ("DLOOP_LOG_LEVEL", "LOUD", "DEBUG"),
        ("DLOOP_LOG_FORMAT", "xml", "json or console"),
        ("DLOOP_EVENT_LOOP", "trio", "auto, uvloop, asyncio"),
        ("DLOOP_DRY_RUN", "perhaps", "must be 1 or 0"),
        ("DLOOP_CONSERVATIVE_MAX_VALUE", "lots", "must be a number"),
        ("DLOOP_AGGRESSIVE_MAX_VALUE", "-5", "at least 0"),
        ("DLOOP_AGGRESSIVE_MAX_VALUE", "inf", "finite"),
    ],
)
def test_invalid_value_names_the_setting(setting: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(base_env(**{setting: value}))
    assert info.value.setting == setting
    assert fragment in str(info.value)
    assert str(info.value).startswith(setting)
    if "PRIVATE_KEY" in setting:
        assert value not in str(info.value)


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("sqlite+aiosqlite:///dloop.db", "sqlite+aiosqlite:///dloop.db"),
        ("sqlite:///dloop.db", "sqlite+aiosqlite:///dloop.db"),
        ("postgresql+asyncpg://dloop:pw@db:5432/dloop", "postgresql+asyncpg://dloop:pw@db:5432/dloop"),
        ("postgresql://dloop@db/dloop", "postgresql+asyncpg://dloop@db/dloop"),
        ("postgres://dloop@db/dloop", "postgresql+asyncpg://dloop@db/dloop"),
    ],
)
def test_database_urls_of_sqlite_and_postgresql_get_their_async_driver(value: str, url: str) -> None:
    assert load_settings(base_env(DLOOP_DATABASE_URL=value)).database_url == url


def test_missing_required_settings() -> None:
    for name in ("DLOOP_RPC_WS_URL", "DLOOP_CONTRACT_ADDRESS"):
        env = base_env()
        del env[name]
        with pytest.raises(ConfigError, match=name):
            load_settings(env)
    no_keys = {k: v for k, v in base_env().items() if "PRIVATE_KEY" not in k}
    with pytest.raises(ConfigError, match="no node keys"):
        load_settings(no_keys)


def test_duplicate_key_rejected() -> None:
    with pytest.raises(ConfigError, match="same private key"):
        load_settings(base_env(AI_NODE_2_PRIVATE_KEY=KEYS[0]))


def test_lowercase_and_checksummed_addresses_accepted() -> None:
    assert parse_address("X", CONTRACT.lower()) == CONTRACT
    assert parse_address("X", CONTRACT) == CONTRACT


def test_env_file_and_environment_precedence(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    lines = [f"export AI_NODE_{i}_PRIVATE_KEY={k}" for i, k in enumerate(KEYS, 1)]
    lines += [
        "# comment",
        f'DLOOP_CONTRACT_ADDRESS="{CONTRACT}"',
        "DLOOP_RPC_WS_URL=ws://file:1",
        "DLOOP_HTTP_PORT=6000",
    ]
    env_file.write_text("\n".join(lines) + "\n")
    settings = load_settings({"DLOOP_HTTP_PORT": "7000"}, env_file)
    assert settings.http_port == 7000 and settings.rpc_ws_url == "ws://file:1" and len(settings.nodes) == 5
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, tmp_path / "missing.env")


def test_keystore_directory(tmp_path: Path) -> None:
    keystores = tmp_path / "keys"
    keystores.mkdir()
    for i, key in enumerate(KEYS[:2]):
        (keystores / f"node{i}.json").write_text(json.dumps(Account.encrypt(HexStr(key), "pw", iterations=2)))
    (tmp_path / "pw").write_text("pw\n")
    env = {
        "DLOOP_RPC_WS_URL": "ws://h:1",
        "DLOOP_CONTRACT_ADDRESS": CONTRACT,
        "DLOOP_KEYSTORE_DIR": str(keystores),
        "DLOOP_KEYSTORE_PASSWORD_FILE": str(tmp_path / "pw"),
    }
    settings = load_settings(env)
    assert [n.key.reveal() for n in settings.nodes] == [KEYS[0], "0x" + KEYS[1]]
    (tmp_path / "pw").write_text("wrong\n")
    with pytest.raises(ConfigError, match="DLOOP_KEYSTORE_DIR"):
        load_settings(env)


def test_strategy_lists_and_thresholds() -> None:
    settings = load_settings(base_env(DLOOP_STABLECOINS="usdc, dai", DLOOP_CONSERVATIVE_MAX_AMOUNT="2000"))
    assert settings.strategies.stablecoins == ("USDC", "DAI")
    assert settings.strategies.conservative_max_amount == 2000


@pytest.mark.slow  # runs a Python subprocess
def test_logs_mask_hex_secrets() -> None:
    # A key that slipped into a log line by accident is masked; tx hashes in hash fields are kept.
    code = (
        "import logging; from core.logs import configure_logging, log_event;"
        "configure_logging();"
        f"log_event(logging.getLogger('t'), 'oops', detail='key {KEYS[0]}', tx_hash='{KEYS[1]}')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = json.loads(result.stderr.strip())
    assert KEYS[0] not in result.stderr and "<redacted-32-bytes>" in line["detail"]
    assert line["tx_hash"] == KEYS[1] and line["event"] == "oops"


def test_env_file_parsed_as_users_expect(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# production settings\n"
        "DLOOP_API_TOKEN=s3cret # prod token\n"
        'DLOOP_STABLECOINS="USDC,DAI" # the stablecoins\n'
        "export DLOOP_HTTP_PORT=6000\n"
        "DLOOP_GROWTH_ASSETS='WBTC,PAXG' \n"
        'DLOOP_NODE_NAMES="a,\nb,\nc,\nd,\ne"\n'
        "DLOOP_HTTP_HOST=  \n"
        "DLOOP_START_BLOCK=\n"
        "DLOOP_MAX_FEE_GWEI\n"
        "DLOOP_RPC_WS_URL=ws://h:1#not-a-comment\n"
        "HOME_DIR=$HOME/x\n"
    )
    values = read_env_file(env_file)
    assert values["DLOOP_API_TOKEN"] == "s3cret"
    assert values["DLOOP_STABLECOINS"] == "USDC,DAI" and values["DLOOP_GROWTH_ASSETS"] == "WBTC,PAXG"
    assert values["DLOOP_HTTP_PORT"] == "6000"
    assert values["DLOOP_NODE_NAMES"] == "a,\nb,\nc,\nd,\ne"
    assert values["DLOOP_RPC_WS_URL"] == "ws://h:1#not-a-comment"  # `#` starts a comment after a space only
    assert values["HOME_DIR"] == "$HOME/x"  # no interpolation: that would read the environment
    for unset in ("DLOOP_HTTP_HOST", "DLOOP_START_BLOCK", "DLOOP_MAX_FEE_GWEI"):
        assert unset not in values

    env = {k: v for k, v in base_env().items() if k != "DLOOP_RPC_WS_URL"}
    settings = load_settings({**env, "DLOOP_HTTP_PORT": "7000", "DLOOP_API_TOKEN": ""}, env_file)
    assert settings.api_token == "s3cret"  # an empty variable in the environment is unset
    assert settings.http_port == 7000  # the environment wins
    assert settings.strategies.stablecoins == ("USDC", "DAI")
    assert [n.name for n in settings.nodes] == ["a", "b", "c", "d", "e"]
    assert settings.http_host == "127.0.0.1" and settings.start_block is None


def test_env_file_with_a_broken_line_stops_with_its_line_number(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"DLOOP_HTTP_PORT=1\nAI_NODE_1_PRIVATE_KEY='{KEYS[0]}\nDLOOP_BATCH_SIZE=2\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, env_file)
    assert info.value.setting == "env file" and "line 2" in str(info.value)
    assert KEYS[0].removeprefix("0x") not in str(info.value)


def test_log_format_setting_and_the_secrets_logs_must_mask() -> None:
    assert load_settings(base_env()).log_format == "json"
    settings = load_settings(base_env(DLOOP_LOG_FORMAT="Console", DLOOP_API_TOKEN="tok-123456"))
    assert settings.log_format == "console"
    assert set(settings.secrets()) == {*("0x" + k.removeprefix("0x") for k in KEYS), "tok-123456"}


def test_event_loop_setting_takes_uvloop_when_installed_and_refuses_it_when_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(base_env()).event_loop == "uvloop"  # a dependency of the package (Linux)
    assert load_settings(base_env(DLOOP_EVENT_LOOP="uvloop")).event_loop == "uvloop"
    assert load_settings(base_env(DLOOP_EVENT_LOOP="AsyncIO")).event_loop == "asyncio"
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else find_spec(name, *a)
    )
    assert load_settings(base_env()).event_loop == "asyncio"  # auto, without uvloop (Windows)
    with pytest.raises(ConfigError) as info:
        load_settings(base_env(DLOOP_EVENT_LOOP="uvloop"))
    assert str(info.value).startswith("DLOOP_EVENT_LOOP") and "not installed" in str(info.value)


def test_event_loop_setting_on_windows_is_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")  # where anyio would look for winloop instead
    assert load_settings(base_env()).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="does not run on Windows"):
        load_settings(base_env(DLOOP_EVENT_LOOP="uvloop"))


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_run_async_runs_on_the_event_loop_the_settings_name(event_loop: EventLoop) -> None:
    seen: list[str] = []

    async def record() -> None:
        seen.append(running_loop_name())

    run_async(record, event_loop=event_loop)
    assert seen == [event_loop]


def _settings_read_by_core() -> set[str]:
    """Every variable core/settings.py reads (AI_NODE_{i}_PRIVATE_KEY expanded)."""
    source = (Path(__file__).resolve().parents[1] / "core" / "settings.py").read_text()
    names = set(re.findall(r'"(DLOOP_[A-Z0-9_]+)"', source))
    assert "AI_NODE_{i}_PRIVATE_KEY" in source
    names.update(f"AI_NODE_{i}_PRIVATE_KEY" for i in range(1, 6))
    return names


def test_env_example_lists_every_setting_with_its_default() -> None:
    example = Path(__file__).resolve().parents[1] / ".env.example"
    text = example.read_text()
    listed = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    read = _settings_read_by_core()
    assert len(read) > 30
    assert read <= listed, sorted(read - listed)
    # No real key: the key lines are commented-out placeholders.
    assert not re.search(r"[0-9a-fA-F]{64}", text)
    # The values it sets are the defaults: with the required settings added, the same Settings.
    assert load_settings(base_env(), example) == load_settings(base_env())


def test_the_blind_listener_settings_have_defaults_and_reject_nonsense() -> None:
    base = base_env()
    settings = load_settings(base)
    assert settings.reconcile_fallback_interval == 15.0 and settings.allow_unknown_events is False
    settings = load_settings(
        {**base, "DLOOP_ALLOW_UNKNOWN_EVENTS": "yes", "DLOOP_RECONCILE_FALLBACK_INTERVAL": "2.5"}
    )
    assert settings.allow_unknown_events is True and settings.reconcile_fallback_interval == 2.5
    with pytest.raises(ConfigError, match="DLOOP_ALLOW_UNKNOWN_EVENTS: must be 1 or 0"):
        load_settings({**base, "DLOOP_ALLOW_UNKNOWN_EVENTS": "maybe"})


def test_operator_control_and_value_settings() -> None:
    settings = load_settings(base_env())
    assert settings.dry_run is False
    assert settings.strategies.conservative_max_value == Decimal(1000)
    assert settings.strategies.aggressive_max_value == Decimal(5000)
    settings = load_settings(
        {
            **base_env(),
            "DLOOP_DRY_RUN": "1",
            "DLOOP_CONSERVATIVE_MAX_VALUE": "2,500.50",
            "DLOOP_AGGRESSIVE_MAX_VALUE": "10_000",
        }
    )
    assert settings.dry_run is True
    assert settings.strategies.conservative_max_value == Decimal("2500.50")
    assert settings.strategies.aggressive_max_value == Decimal(10000)
