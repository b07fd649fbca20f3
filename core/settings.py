"""One `Settings` object, built once by the CLI from the environment, an optional `.env` file and an optional
deployments file (TOML: `DLOOP_CONFIG=path`, or `dloop.toml` in the working directory).

Every problem is a `ConfigError` naming the setting (for the deployments file: the file, the deployment and
the field); secret values never appear in a message.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import math
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from eth_utils import is_checksum_address, to_checksum_address

from core.errors import ConfigError
from core.logs import LOG_FORMATS

NODE_COUNT = 5
DEFAULT_NODE_NAMES = tuple(f"ai-gov-{i:02d}" for i in range(1, NODE_COUNT + 1))
DEFAULT_NODE_STRATEGIES = ("conservative", "aggressive", "conservative", "aggressive", "conservative")
_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
WEBHOOK_FORMATS = ("generic", "slack", "discord")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
EventLoop = Literal["uvloop", "asyncio"]  # what "auto" resolves to when the settings are loaded


class PrivateKey:
    """A node's signing key. Its repr and str never show the value."""

    __slots__ = ("_hex",)

    def __init__(self, hex_key: str) -> None:
        self._hex = hex_key if hex_key.startswith("0x") else "0x" + hex_key

    def reveal(self) -> str:
        """The 0x-prefixed hex, for signing only."""
        return self._hex

    def __repr__(self) -> str:
        return "PrivateKey(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and other._hex.lower() == self._hex.lower()

    def __hash__(self) -> int:
        return hash(self._hex.lower())


@dataclass(frozen=True)
class NodeSettings:
    name: str
    key: PrivateKey
    strategy: str


@dataclass(frozen=True)
class StrategySettings:
    """Thresholds of the built-in strategies: in value (the price oracle's unit) when the oracle answers,
    else in token units."""

    conservative_max_amount: int = 1_000
    aggressive_max_amount: int = 5_000
    conservative_max_value: Decimal = Decimal(1_000)
    aggressive_max_value: Decimal = Decimal(5_000)
    stablecoins: tuple[str, ...] = ("USDC", "EURT")
    growth_assets: tuple[str, ...] = ("WBTC", "PAXG")
    conservative_divestment_support: float = 0.5
    aggressive_divestment_support: float = 0.6
    aggressive_investment_support: float = 0.7


# The databases the service runs on, by SQLAlchemy dialect: the async driver it uses, and where it comes from.
DATABASE_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
DATABASE_EXAMPLES = "sqlite+aiosqlite:///dloop.db or postgresql+asyncpg://user:password@host/dloop"


def parse_database_url(name: str, raw: str) -> str:
    """A database URL the service can use: SQLite through aiosqlite or PostgreSQL through asyncpg (the
    `postgres` extra). `sqlite:///...` and `postgresql://...` (or `postgres://`) get their async driver."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = raw.strip()
    if text.startswith("postgres://"):
        text = "postgresql://" + text.removeprefix("postgres://")
    try:
        url = make_url(text)
    except ArgumentError:
        raise ConfigError(name, f"is not a database URL such as {DATABASE_EXAMPLES}") from None
    dialect, _, driver = url.drivername.partition("+")
    wanted = DATABASE_DRIVERS.get(dialect)
    if wanted is None or driver not in ("", wanted):
        raise ConfigError(name, f"must use {DATABASE_EXAMPLES} (got {url.drivername}://)")
    if not driver:
        url = url.set(drivername=f"{dialect}+{wanted}")
        text = url.render_as_string(hide_password=False)
    if importlib.util.find_spec(wanted) is None:
        extra = " (pip install 'dloop-governance[postgres]')" if dialect == "postgresql" else ""
        raise ConfigError(name, f"needs the {wanted} driver, which is not installed{extra}")
    return text


DEFAULT_DEPLOYMENT = "default"
CONFIG_FILE_NAME = "dloop.toml"


@dataclass(frozen=True)
class DeploymentSettings:
    """One contract on one chain, with the nodes that vote on it: what differs between deployments."""

    name: str
    rpc_ws_url: str
    contract_address: str
    nodes: tuple[NodeSettings, ...]
    strategies: StrategySettings = StrategySettings()
    start_block: int | None = None
    confirmations: int = 0
    allow_unknown_events: bool = False
    max_fee_gwei: float = 500.0


# The Settings fields a deployment overrides (same names on both classes).
_PER_DEPLOYMENT = tuple(f.name for f in dataclasses.fields(DeploymentSettings) if f.name != "name")


@dataclass(frozen=True)
class Settings:
    """The service's settings. The top-level per-chain fields (rpc_ws_url, contract_address, nodes, ...)
    describe the first deployment; `deployments` lists them all (one named `default`, from those same fields,
    when no deployments file is used). Code that serves one deployment gets `for_deployment(d)`."""

    rpc_ws_url: str
    contract_address: str
    nodes: tuple[NodeSettings, ...]
    database_url: str = "sqlite+aiosqlite:///dloop.db"
    http_host: str = "127.0.0.1"
    http_port: int = 5001
    api_token: str | None = field(default=None, repr=False)
    # listener
    start_block: int | None = None
    backfill_blocks: int = 10_000
    log_chunk_blocks: int = 2_000
    head_timeout: float = 30.0
    confirmations: int = 0
    # voter
    batch_size: int = 100
    max_fee_gwei: float = 500.0
    replace_after_blocks: int = 3
    round_deadline: float = 90.0
    max_in_flight: int = 128
    gas_margin: float = 1.25
    lease_seconds: float = 120.0
    # Several `dloop run` on one PostgreSQL: a node lane whose owner died is taken over within this long.
    lane_takeover_seconds: float = 10.0
    # reconciler
    reconcile_interval: float = 300.0
    # while the listener is blind (it missed a proposal, or the contract's events are of no known version)
    reconcile_fallback_interval: float = 15.0
    allow_unknown_events: bool = False  # start on a contract with no known ProposalCreated: reconcile only
    rpc_batch_size: int = 50
    rpc_timeout: float = 20.0
    dry_run: bool = False  # decide and record, never sign (rows end `dry_run`)
    strategies: StrategySettings = StrategySettings()
    log_level: str = "INFO"
    log_format: str = "json"  # "json" (one object per line) or "console" (readable, for a terminal)
    # `dloop run`'s event loop: "uvloop" (less CPU per vote) or "asyncio"; never "auto" here
    event_loop: EventLoop = "asyncio"
    # alerts (monitor/): rules evaluated every alert_interval seconds, notifications to the webhooks
    alert_interval: float = 15.0
    alert_deadline_hours: float = 6.0  # MissedVoteRisk: votingEnds within this many hours
    alert_min_votes: int = 20  # NodeLowBalance: ETH for fewer votes than this at current fees
    alert_rpc_error_rate: float = 0.2  # RpcErrors: errors / requests over 5 minutes above this (0..1)
    # Incoming-webhook URLs carry their own token (Slack, Discord): secrets, never logged or shown.
    alert_webhook_urls: tuple[str, ...] = field(default=(), repr=False)
    alert_webhook_format: str = "generic"  # generic JSON, slack or discord
    alert_repeat_minutes: float = 60.0  # a still-firing critical alert is notified again this often
    # Every deployment followed; empty when built directly: then the top-level fields are `default`.
    deployments: tuple[DeploymentSettings, ...] = ()
    config_file: str | None = None  # the deployments file read, for messages

    def __post_init__(self) -> None:
        # Without a file the top-level fields are the one deployment, also after dataclasses.replace() of
        # one of them (tests point rpc_ws_url at a proxy that way).
        if self.config_file is None or not self.deployments:
            values = {name: getattr(self, name) for name in _PER_DEPLOYMENT}
            default = DeploymentSettings(name=DEFAULT_DEPLOYMENT, **values)
            object.__setattr__(self, "deployments", (default,))

    def for_deployment(self, deployment: DeploymentSettings) -> Settings:
        """These settings with the per-chain fields of one deployment: what its listener, voter and
        reconciler read."""
        values = {name: getattr(deployment, name) for name in _PER_DEPLOYMENT}
        return dataclasses.replace(self, deployments=(deployment,), **values)

    def deployment_named(self, name: str) -> DeploymentSettings | None:
        return next((d for d in self.deployments if d.name == name), None)

    def secrets(self) -> tuple[str, ...]:
        """What no log line or notification may hold: the node keys, the API token and the webhook URLs."""
        token = (self.api_token,) if self.api_token else ()
        keys = dict.fromkeys(node.key.reveal() for d in self.deployments for node in d.nodes)
        return (*keys, *token, *self.alert_webhook_urls)


def read_env_file(path: Path) -> dict[str, str]:
    """The settings of a `.env` file, parsed by python-dotenv as users expect: `export KEY=value`, quotes,
    inline comments (`KEY=value # note` is `value`), multi-line quoted values. `$VAR` is kept as written (no
    interpolation: that would read the environment). A line that is not KEY=value stops start-up."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("env file", f"{path} cannot be read ({exc})") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            raise ConfigError("env file", f"{path}, line {line}: not a KEY=value line (is a quote unclosed?)")
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    # `KEY` alone (no `=`) and `KEY=` are unset, as an empty variable in the environment is.
    return {key: value for key, value in values.items() if value}


def load_settings(
    environ: Mapping[str, str], env_file: Path | None = None, *, workdir: Path | None = None
) -> Settings:
    """Build and validate settings; the process environment wins over the env file. The deployments file is
    DLOOP_CONFIG when set, else `dloop.toml` in `workdir` (the CLI passes the working directory) when there;
    without one, the environment describes one deployment named `default`."""
    source: dict[str, str] = {}
    if env_file is not None:
        if not env_file.is_file():
            raise ConfigError("env file", f"{env_file} does not exist")
        source.update(read_env_file(env_file))
    source.update({k: v for k, v in environ.items() if v != ""})
    parser = _Parser(source)
    config = config_file_of(source, workdir)
    if config is None:
        return parser.settings()
    return parser.settings_with_file(config)


def config_file_of(env: Mapping[str, str], workdir: Path | None) -> Path | None:
    if "DLOOP_CONFIG" in env:
        path = Path(env["DLOOP_CONFIG"])
        if workdir is not None and not path.is_absolute():
            path = workdir / path
        if not path.is_file():
            raise ConfigError("DLOOP_CONFIG", f"{path} does not exist")
        return path
    if workdir is not None and (workdir / CONFIG_FILE_NAME).is_file():
        return workdir / CONFIG_FILE_NAME
    return None


class _Parser:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def settings(self) -> Settings:
        return Settings(
            rpc_ws_url=self.ws_url("DLOOP_RPC_WS_URL"),
            contract_address=self.address("DLOOP_CONTRACT_ADDRESS"),
            nodes=self.nodes(),
            **self.service_wide(),
        )

    def settings_with_file(self, path: Path) -> Settings:
        """The deployments come from the file; everything else (database, HTTP, timings, alerts, and the
        defaults of the per-deployment knobs) from the environment as without it."""
        defaults = {
            "strategies": self.strategy_settings(),
            "start_block": self.optional_integer("DLOOP_START_BLOCK"),
            "confirmations": self.integer("DLOOP_CONFIRMATIONS", 0, minimum=0),
            "allow_unknown_events": self.flag("DLOOP_ALLOW_UNKNOWN_EVENTS", False),
            "max_fee_gwei": self.number("DLOOP_MAX_FEE_GWEI", 500.0, minimum=0.000000001),
        }
        file = _DeploymentsFile(path, self.env, defaults)
        deployments = file.deployments()
        self.refuse_replaced(path, file.key_envs)
        first = deployments[0]
        service_wide = self.service_wide()
        service_wide.update({name: getattr(first, name) for name in _PER_DEPLOYMENT if name != "nodes"})
        return Settings(nodes=first.nodes, deployments=deployments, config_file=str(path), **service_wide)

    def refuse_replaced(self, path: Path, key_envs: set[str]) -> None:
        """With a deployments file, the chain, contract and node variables would be ignored: refused, so
        that no one believes a setting (or a key) is in use when the file says otherwise. A key variable the
        file names with key_env is in use."""
        for name in _REPLACED_BY_FILE:
            if name in self.env and name not in key_envs:
                raise ConfigError(
                    name, f"is set, but the deployments file {path} replaces it: remove one of the two"
                )

    def service_wide(self) -> dict[str, Any]:
        d = Settings.__dataclass_fields__
        return dict(
            database_url=self.database_url(),
            http_host=self.env.get("DLOOP_HTTP_HOST", d["http_host"].default),
            http_port=self.integer("DLOOP_HTTP_PORT", 5001, minimum=0, maximum=65535),
            api_token=self.env.get("DLOOP_API_TOKEN"),
            start_block=self.optional_integer("DLOOP_START_BLOCK"),
            backfill_blocks=self.integer("DLOOP_BACKFILL_BLOCKS", 10_000, minimum=0),
            log_chunk_blocks=self.integer("DLOOP_LOG_CHUNK_BLOCKS", 2_000, minimum=1),
            head_timeout=self.number("DLOOP_HEAD_TIMEOUT", 30.0, minimum=0.1),
            confirmations=self.integer("DLOOP_CONFIRMATIONS", 0, minimum=0),
            batch_size=self.integer("DLOOP_BATCH_SIZE", 100, minimum=1),
            max_fee_gwei=self.number("DLOOP_MAX_FEE_GWEI", 500.0, minimum=0.000000001),
            replace_after_blocks=self.integer("DLOOP_REPLACE_AFTER_BLOCKS", 3, minimum=1),
            round_deadline=self.number("DLOOP_ROUND_DEADLINE", 90.0, minimum=1.0),
            max_in_flight=self.integer("DLOOP_MAX_IN_FLIGHT", 128, minimum=1),
            gas_margin=self.number("DLOOP_GAS_MARGIN", 1.25, minimum=1.0),
            lease_seconds=self.number("DLOOP_LEASE_SECONDS", 120.0, minimum=1.0),
            lane_takeover_seconds=self.number("DLOOP_LANE_TAKEOVER_SECONDS", 10.0, minimum=1.0),
            reconcile_interval=self.number("DLOOP_RECONCILE_INTERVAL", 300.0, minimum=1.0),
            reconcile_fallback_interval=self.number("DLOOP_RECONCILE_FALLBACK_INTERVAL", 15.0, minimum=1.0),
            allow_unknown_events=self.flag("DLOOP_ALLOW_UNKNOWN_EVENTS", False),
            rpc_batch_size=self.integer("DLOOP_RPC_BATCH_SIZE", 50, minimum=1),
            rpc_timeout=self.number("DLOOP_RPC_TIMEOUT", 20.0, minimum=0.1),
            dry_run=self.flag("DLOOP_DRY_RUN", False),
            strategies=self.strategy_settings(),
            log_level=self.log_level(),
            log_format=self.log_format(),
            event_loop=self.event_loop(),
            alert_interval=self.number("DLOOP_ALERT_INTERVAL", 15.0, minimum=0.1),
            alert_deadline_hours=self.number("DLOOP_ALERT_DEADLINE_HOURS", 6.0, minimum=0.0),
            alert_min_votes=self.integer("DLOOP_ALERT_MIN_VOTES", 20, minimum=0),
            alert_rpc_error_rate=self.percent("DLOOP_ALERT_RPC_ERROR_RATE", 20.0) / 100,
            alert_webhook_urls=self.webhook_urls("DLOOP_ALERT_WEBHOOK_URLS"),
            alert_webhook_format=self.choice("DLOOP_ALERT_WEBHOOK_FORMAT", "generic", WEBHOOK_FORMATS),
            alert_repeat_minutes=self.number("DLOOP_ALERT_REPEAT_MINUTES", 60.0, minimum=0.1),
        )

    # -- scalars ---------------------------------------------------------------------------------------
    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self.env.get(name)
        if raw is None:
            return default
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(name, f"must be at most {maximum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.env.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")

    def decimal(self, name: str, default: Decimal) -> Decimal:
        """A non-negative exact decimal (`_` and `,` as thousands separators are accepted)."""
        raw = self.env.get(name)
        if raw is None:
            return default
        try:
            value = Decimal(raw.strip().replace("_", "").replace(",", ""))
        except InvalidOperation:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
        if not value.is_finite() or value < 0:
            raise ConfigError(name, f"must be a finite number of at least 0, got {raw!r}")
        return value

    def optional_integer(self, name: str) -> int | None:
        return None if name not in self.env else self.integer(name, 0, minimum=0)

    def number(self, name: str, default: float, *, minimum: float) -> float:
        raw = self.env.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
        if not value >= minimum:  # also rejects NaN
            raise ConfigError(name, f"must be at least {minimum:g}, got {raw}")
        if not math.isfinite(value):
            raise ConfigError(name, f"must be a finite number, got {raw}")
        return value

    def percent(self, name: str, default: float) -> float:
        value = self.number(name, default, minimum=0.0)
        if value > 100:
            raise ConfigError(name, f"must be a percentage from 0 to 100, got {self.env.get(name)}")
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.env.get(name, default).strip().lower()
        if value not in allowed:
            raise ConfigError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def webhook_urls(self, name: str) -> tuple[str, ...]:
        """http(s) URLs, comma-separated. A URL is never echoed back: it holds the receiver's token."""
        raw = self.env.get(name)
        if raw is None:
            return ()
        urls = tuple(part.strip() for part in raw.split(",") if part.strip())
        for number, url in enumerate(urls, 1):
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ConfigError(name, f"entry {number} is not an http:// or https:// URL with a host")
        return urls

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.env.get(name)
        if raw is None:
            return default
        items = tuple(part.strip() for part in raw.split(",") if part.strip())
        if not items:
            raise ConfigError(name, "must list at least one value, separated by commas")
        return items

    def log_level(self) -> str:
        level = self.env.get("DLOOP_LOG_LEVEL", "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("DLOOP_LOG_LEVEL", f"must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        return level

    def event_loop(self) -> EventLoop:
        """uvloop when installed (auto) or asked for, else asyncio; asking for a missing uvloop is refused."""
        name = "DLOOP_EVENT_LOOP"
        value = self.choice(name, "auto", EVENT_LOOPS)
        if value == "asyncio":
            return "asyncio"
        # On Windows anyio would look for winloop, not uvloop (which has no Windows build).
        installed = sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None
        if value == "uvloop" and not installed:
            if sys.platform == "win32":
                raise ConfigError(name, "is uvloop, which does not run on Windows (set asyncio)")
            raise ConfigError(name, "is uvloop, which is not installed (pip install uvloop, or set asyncio)")
        return "uvloop" if installed else "asyncio"

    def log_format(self) -> str:
        value = self.env.get("DLOOP_LOG_FORMAT", "json").strip().lower()
        if value not in LOG_FORMATS:
            raise ConfigError("DLOOP_LOG_FORMAT", f"must be json or console, got {value!r}")
        return value

    # -- structured values -----------------------------------------------------------------------------
    def ws_url(self, name: str) -> str:
        raw = self.env.get(name)
        if raw is None:
            raise ConfigError(name, "is required (a WebSocket RPC URL such as ws://127.0.0.1:8545)")
        parts = urlsplit(raw)
        if parts.scheme not in {"ws", "wss"}:
            raise ConfigError(name, f"must start with ws:// or wss://, got scheme {parts.scheme or 'none'!r}")
        try:
            port_ok = parts.hostname is not None and (parts.port is None or parts.port > 0)
        except ValueError:
            port_ok = False
        if not port_ok:
            raise ConfigError(name, "must name a host and a valid port, e.g. ws://127.0.0.1:8545")
        return raw

    def address(self, name: str) -> str:
        raw = self.env.get(name)
        if raw is None:
            raise ConfigError(name, "is required (the AssetDAO contract address, 0x + 40 hex digits)")
        return parse_address(name, raw)

    def database_url(self) -> str:
        return parse_database_url(
            "DLOOP_DATABASE_URL", self.env.get("DLOOP_DATABASE_URL", "sqlite+aiosqlite:///dloop.db")
        )

    def nodes(self) -> tuple[NodeSettings, ...]:
        keys = self.node_keys()
        names = self.names("DLOOP_NODE_NAMES", DEFAULT_NODE_NAMES[: len(keys)])
        if len(names) != len(keys):
            raise ConfigError("DLOOP_NODE_NAMES", f"lists {len(names)} names for {len(keys)} node keys")
        if len(set(names)) != len(names):
            raise ConfigError("DLOOP_NODE_NAMES", "names must be unique")
        default_strategies = tuple(DEFAULT_NODE_STRATEGIES[i % NODE_COUNT] for i in range(len(keys)))
        strategies = self.names("DLOOP_NODE_STRATEGIES", default_strategies)
        if len(strategies) != len(keys):
            raise ConfigError(
                "DLOOP_NODE_STRATEGIES", f"lists {len(strategies)} strategies for {len(keys)} nodes"
            )
        if len(set(keys)) != len(keys):
            raise ConfigError("node keys", "the same private key is configured for two nodes")
        return tuple(NodeSettings(n, k, s) for n, k, s in zip(names, keys, strategies, strict=True))

    def node_keys(self) -> list[PrivateKey]:
        if "DLOOP_KEYSTORE_DIR" in self.env:
            return self.keystore_keys()
        if "DLOOP_NODE_KEYS" in self.env:
            parts = [p.strip() for p in self.env["DLOOP_NODE_KEYS"].split(",") if p.strip()]
            if not parts:
                raise ConfigError("DLOOP_NODE_KEYS", "lists no keys")
            return [parse_private_key(f"DLOOP_NODE_KEYS (entry {i})", p) for i, p in enumerate(parts, 1)]
        found = [
            parse_private_key(f"AI_NODE_{i}_PRIVATE_KEY", self.env[f"AI_NODE_{i}_PRIVATE_KEY"])
            for i in range(1, NODE_COUNT + 1)
            if f"AI_NODE_{i}_PRIVATE_KEY" in self.env
        ]
        if not found:
            raise ConfigError(
                "AI_NODE_1_PRIVATE_KEY",
                "no node keys configured (set AI_NODE_1_PRIVATE_KEY..AI_NODE_5_PRIVATE_KEY, "
                "DLOOP_NODE_KEYS, or DLOOP_KEYSTORE_DIR)",
            )
        return found

    def keystore_keys(self) -> list[PrivateKey]:
        from core.keystore import load_keystore_dir

        password_file = self.env.get("DLOOP_KEYSTORE_PASSWORD_FILE")
        if password_file is None:
            raise ConfigError("DLOOP_KEYSTORE_PASSWORD_FILE", "is required with DLOOP_KEYSTORE_DIR")
        return [
            PrivateKey(k)
            for k in load_keystore_dir(Path(self.env["DLOOP_KEYSTORE_DIR"]), Path(password_file))
        ]

    def strategy_settings(self) -> StrategySettings:
        d = StrategySettings()
        return StrategySettings(
            conservative_max_amount=self.integer(
                "DLOOP_CONSERVATIVE_MAX_AMOUNT", d.conservative_max_amount, minimum=0
            ),
            aggressive_max_amount=self.integer(
                "DLOOP_AGGRESSIVE_MAX_AMOUNT", d.aggressive_max_amount, minimum=0
            ),
            conservative_max_value=self.decimal("DLOOP_CONSERVATIVE_MAX_VALUE", d.conservative_max_value),
            aggressive_max_value=self.decimal("DLOOP_AGGRESSIVE_MAX_VALUE", d.aggressive_max_value),
            stablecoins=tuple(s.upper() for s in self.names("DLOOP_STABLECOINS", d.stablecoins)),
            growth_assets=tuple(s.upper() for s in self.names("DLOOP_GROWTH_ASSETS", d.growth_assets)),
        )


def parse_address(setting: str, raw: str) -> str:
    """A 0x + 40-hex address; mixed case must carry a valid EIP-55 checksum."""
    value = raw.strip()
    if not _ADDRESS.match(value):
        digits = len(value) - 2 if value.startswith("0x") else len(value)
        raise ConfigError(setting, f"must be 0x followed by 40 hex digits (got {digits} characters after 0x)")
    body = value[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(value):
        raise ConfigError(setting, "has an invalid EIP-55 checksum (a typo?)")
    return str(to_checksum_address(value))


def parse_private_key(setting: str, raw: str) -> PrivateKey:
    value = raw.strip()
    if not _HEX_KEY.match(value):
        raise ConfigError(setting, "is not a private key (expected 64 hex digits, with or without 0x)")
    if int(value.removeprefix("0x"), 16) == 0:
        raise ConfigError(setting, "is not a valid private key (zero)")
    return PrivateKey(value)


# -- the deployments file ----------------------------------------------------------------------------------

_DEPLOYMENT_FIELDS = {
    "name",
    "rpc_ws_url",
    "contract_address",
    "nodes",
    "strategies",
    "start_block",
    "confirmations",
    "allow_unknown_events",
    "max_fee_gwei",
}
_NODE_FIELDS = {"name", "strategy", "key_env", "keystore", "password_file"}
_INLINE_KEY_FIELDS = {"key", "private_key", "privatekey", "secret"}
_STRATEGY_FIELDS = {
    "conservative_max_amount": "int",
    "aggressive_max_amount": "int",
    "conservative_max_value": "decimal",
    "aggressive_max_value": "decimal",
    "stablecoins": "names",
    "growth_assets": "names",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Long runs of hex digits: a key (or most of one), never a variable's name.
_KEY_LIKE = re.compile(r"^(0x)?[0-9a-fA-F]{32,}$")


# The environment's description of the one deployment, which a deployments file replaces.
_REPLACED_BY_FILE = (
    "DLOOP_RPC_WS_URL",
    "DLOOP_CONTRACT_ADDRESS",
    *(f"AI_NODE_{i}_PRIVATE_KEY" for i in range(1, NODE_COUNT + 1)),
    "DLOOP_NODE_KEYS",
    "DLOOP_KEYSTORE_DIR",
    "DLOOP_KEYSTORE_PASSWORD_FILE",
    "DLOOP_NODE_NAMES",
    "DLOOP_NODE_STRATEGIES",
)


class _DeploymentsFile:
    """`[[deployments]]` tables of a TOML file. Keys are never in the file: a node names the environment
    variable holding its key (`key_env`), or a keystore file and a password file."""

    def __init__(self, path: Path, env: Mapping[str, str], defaults: dict[str, Any]) -> None:
        self.path = path
        self.env = env
        self.defaults = defaults
        self.key_envs: set[str] = set()  # the variables the nodes' key_env name

    def error(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}" if where else str(self.path), problem)

    def deployments(self) -> tuple[DeploymentSettings, ...]:
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error("", f"cannot be read ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise self.error("", f"is not valid TOML ({exc})") from None
        unknown = sorted(set(data) - {"deployments"})
        if unknown:
            raise self.error(unknown[0], "unknown key (the file holds [[deployments]] tables only)")
        tables = data.get("deployments")
        if not isinstance(tables, list) or not tables:
            raise self.error("deployments", "declares no deployment (add a [[deployments]] table)")
        result: list[DeploymentSettings] = []
        for number, table in enumerate(tables, 1):
            if not isinstance(table, dict):
                raise self.error(f"deployments[{number}]", "must be a table")
            deployment = self.deployment(number, table)
            if any(d.name == deployment.name for d in result):
                raise self.error(f"deployment {deployment.name!r}", "name: used by two deployments")
            result.append(deployment)
        self.check_shared_nodes(result)
        return tuple(result)

    def check_shared_nodes(self, deployments: list[DeploymentSettings]) -> None:
        """A key may vote in several deployments (one node row per address, one nonce lane per chain), under
        one name: the dashboard, the pause switches and the vote history name a node, not a key."""
        names: dict[PrivateKey, str] = {}
        keys: dict[str, PrivateKey] = {}
        for deployment in deployments:
            where = f"deployment {deployment.name!r}"
            for number, node in enumerate(deployment.nodes, 1):
                if names.setdefault(node.key, node.name) != node.name:
                    raise self.error(
                        where,
                        f"nodes[{number}].name: the same key is node {names[node.key]!r} in another "
                        "deployment (a key keeps one name everywhere)",
                    )
                if keys.setdefault(node.name, node.key) != node.key:
                    raise self.error(
                        where, f"nodes[{number}].name: {node.name!r} names another key in another deployment"
                    )

    def deployment(self, number: int, table: dict[str, Any]) -> DeploymentSettings:
        raw_name = table.get("name")
        if not isinstance(raw_name, str) or not _NAME.match(raw_name):
            raise self.error(
                f"deployments[{number}]",
                "name: required, letters, digits, '-', '_' or '.' (at most 64 characters)",
            )
        where = f"deployment {raw_name!r}"
        unknown = sorted(set(table) - _DEPLOYMENT_FIELDS)
        if unknown:
            raise self.error(
                where, f"{unknown[0]}: unknown field (known: {', '.join(sorted(_DEPLOYMENT_FIELDS))})"
            )
        try:
            rpc_ws_url = _Parser({"rpc_ws_url": self.text(where, table, "rpc_ws_url")}).ws_url("rpc_ws_url")
            contract = parse_address("contract_address", self.text(where, table, "contract_address"))
        except ConfigError as exc:
            raise self.error(where, str(exc)) from None
        d = self.defaults
        return DeploymentSettings(
            name=raw_name,
            rpc_ws_url=rpc_ws_url,
            contract_address=contract,
            nodes=self.nodes(where, table.get("nodes")),
            strategies=self.strategies(where, table.get("strategies"), d["strategies"]),
            start_block=self.integer(where, table, "start_block", d["start_block"], optional=True),
            confirmations=self.integer(where, table, "confirmations", d["confirmations"]),
            allow_unknown_events=self.boolean(
                where, table, "allow_unknown_events", d["allow_unknown_events"]
            ),
            max_fee_gwei=self.positive(where, table, "max_fee_gwei", d["max_fee_gwei"]),
        )

    # -- fields --------------------------------------------------------------------------------------------
    def text(self, where: str, table: dict[str, Any], name: str) -> str:
        value = table.get(name)
        if value is None:
            raise self.error(where, f"{name}: is required")
        if not isinstance(value, str):
            raise self.error(where, f"{name}: must be a string, got {type(value).__name__}")
        return value

    def integer(
        self,
        where: str,
        table: dict[str, Any],
        name: str,
        default: int | None,
        *,
        optional: bool = False,
        label: str | None = None,
    ) -> Any:
        value = table.get(name, default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(where, f"{label or name}: must be a whole number of at least 0, got {value!r}")
        return value

    def boolean(self, where: str, table: dict[str, Any], name: str, default: bool) -> bool:
        value = table.get(name, default)
        if not isinstance(value, bool):
            raise self.error(where, f"{name}: must be true or false, got {value!r}")
        return value

    def positive(self, where: str, table: dict[str, Any], name: str, default: float) -> float:
        value = table.get(name, default)
        # TOML has inf and nan: neither is a fee cap.
        finite = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not finite or not value > 0:
            raise self.error(where, f"{name}: must be a finite number above 0, got {value!r}")
        return float(value)

    def strategies(self, where: str, raw: Any, default: StrategySettings) -> StrategySettings:
        if raw is None:
            return default
        if not isinstance(raw, dict):
            raise self.error(where, "strategies: must be a table ([deployments.strategies])")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            kind = _STRATEGY_FIELDS.get(name)
            field_name = f"strategies.{name}"
            if kind is None:
                raise self.error(where, f"{field_name}: unknown field (known: {', '.join(_STRATEGY_FIELDS)})")
            if kind == "int":
                values[name] = self.integer(where, raw, name, None, label=field_name)
            elif kind == "decimal":
                if isinstance(value, bool) or not isinstance(value, int | float | str):
                    raise self.error(where, f"{field_name}: must be a number, got {value!r}")
                try:
                    values[name] = _Parser({field_name: str(value)}).decimal(field_name, Decimal(0))
                except ConfigError as exc:
                    raise self.error(where, str(exc)) from None
            else:
                if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                    raise self.error(where, f"{field_name}: must be a non-empty list of symbols")
                values[name] = tuple(v.strip().upper() for v in value)
        return dataclasses.replace(default, **values)

    def nodes(self, where: str, raw: Any) -> tuple[NodeSettings, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.error(where, "nodes: at least one node is required ([[deployments.nodes]])")
        nodes: list[NodeSettings] = []
        for number, table in enumerate(raw, 1):
            at = f"nodes[{number}]"
            if not isinstance(table, dict):
                raise self.error(where, f"{at}: must be a table")
            inline = sorted(set(table) & _INLINE_KEY_FIELDS)
            if inline:
                raise self.error(
                    where,
                    f"{at}.{inline[0]}: keys are never written in the file; name an environment variable "
                    "with key_env, or a keystore with keystore and password_file",
                )
            unknown = sorted(set(table) - _NODE_FIELDS)
            if unknown:
                raise self.error(
                    where, f"{at}.{unknown[0]}: unknown field (known: {', '.join(sorted(_NODE_FIELDS))})"
                )
            default_name = DEFAULT_NODE_NAMES[number - 1] if number <= NODE_COUNT else None
            name = table.get("name", default_name)
            if not isinstance(name, str) or not _NAME.match(name):
                raise self.error(where, f"{at}.name: required, letters, digits, '-', '_' or '.'")
            strategy = table.get("strategy", DEFAULT_NODE_STRATEGIES[(number - 1) % NODE_COUNT])
            if not isinstance(strategy, str) or not strategy.strip():
                raise self.error(where, f"{at}.strategy: must be a strategy name or package.module:function")
            nodes.append(NodeSettings(name, self.node_key(where, at, table), strategy.strip()))
        if len({n.name for n in nodes}) != len(nodes):
            raise self.error(where, "nodes: node names must be unique within a deployment")
        if len({n.key for n in nodes}) != len(nodes):
            raise self.error(where, "nodes: the same key is configured for two nodes")
        return tuple(nodes)

    def node_key(self, where: str, at: str, table: dict[str, Any]) -> PrivateKey:
        key_env, keystore = table.get("key_env"), table.get("keystore")
        if (key_env is None) == (keystore is None):
            raise self.error(where, f"{at}: give either key_env or keystore (with password_file)")
        if key_env is not None:
            if not isinstance(key_env, str) or not key_env:
                raise self.error(where, f"{at}.key_env: must name an environment variable")
            # The value is echoed only when it is a variable's name: a key pasted here must not reach a log.
            if _KEY_LIKE.match(key_env.strip()):
                raise self.error(
                    where, f"{at}.key_env: looks like a private key: name an environment variable instead"
                )
            if not _ENV_NAME.match(key_env):
                raise self.error(
                    where, f"{at}.key_env: must be an environment variable's name (letters, digits and _)"
                )
            if key_env not in self.env:
                raise self.error(where, f"{at}.key_env: the environment variable {key_env} is not set")
            self.key_envs.add(key_env)
            try:
                return parse_private_key(key_env, self.env[key_env])
            except ConfigError as exc:
                raise self.error(where, f"{at}.key_env: {exc}") from None
        password_file = table.get("password_file")
        if not isinstance(keystore, str) or not isinstance(password_file, str):
            raise self.error(where, f"{at}: keystore and password_file must both be file paths")
        return PrivateKey(self.decrypt(where, at, self.relative(keystore), self.relative(password_file)))

    def relative(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.path.parent / path

    def decrypt(self, where: str, at: str, keystore: Path, password_file: Path) -> str:
        import json

        from core.keystore import decrypt

        try:
            password = password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise self.error(where, f"{at}.password_file: cannot be read ({exc.strerror})") from None
        try:
            keyfile = json.loads(keystore.read_text())
        except OSError as exc:
            raise self.error(where, f"{at}.keystore: cannot be read ({exc.strerror})") from None
        except ValueError:
            raise self.error(where, f"{at}.keystore: is not a JSON keystore") from None
        try:
            return decrypt(keyfile, password)
        except (ValueError, KeyError, TypeError):
            raise self.error(where, f"{at}.keystore: could not be decrypted with the password file") from None
