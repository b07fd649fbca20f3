"""Start-up checks against the node and the database, before anything is written: the node answers on
DLOOP_RPC_WS_URL, the contract has code with the functions the service calls and a ProposalCreated event of a
known AssetDAO version, and the database has not followed another chain of the same id. Each problem is a
ConfigError naming the setting to fix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from chain.client import ChainClient
from chain.connection import open_ws, safe_url
from chain.events import REQUIRED_FUNCTIONS, ContractVersion, detect_version, proposal_created_topics
from core.errors import ChainError, ConfigError, RateLimited, TransientChainError
from core.logs import log_event
from core.settings import DeploymentSettings, Settings
from storage.chain_state import remember_genesis
from storage.engine import SessionFactory

logger = logging.getLogger("dloop.service")

PREFLIGHT_TIMEOUT = 15.0


# EIP-1967: where a proxy keeps its implementation's address. The selectors and event topics are in the
# implementation's code, not in the proxy's.
IMPLEMENTATION_SLOT = 0x360894A13BA1A3210667C828492DB98DCA3E2076CC3735A920A3CA505D382BBC


@dataclass(frozen=True)
class ChainIdentity:
    chain_id: int
    genesis_hash: str
    contract: ContractVersion


async def preflight_chain(settings: Settings) -> ChainIdentity:
    """Reach the node, check the contract has code; returns the chain's id and genesis block hash. Problems
    name the setting."""
    where = safe_url(settings.rpc_ws_url)
    try:
        with anyio.fail_after(PREFLIGHT_TIMEOUT):
            identity, code = await _read_chain_identity(settings)
    except TimeoutError:
        raise ConfigError(
            "DLOOP_RPC_WS_URL", f"{where} did not answer within {PREFLIGHT_TIMEOUT:g} s"
        ) from None
    except TransientChainError as exc:
        reason = _first_line(exc).replace(settings.rpc_ws_url, where)
        reason = reason.removeprefix(f"cannot connect to {where}: ")
        raise ConfigError("DLOOP_RPC_WS_URL", f"cannot connect to {where} ({reason})") from None
    except ChainError as exc:
        reason = _first_line(exc).replace(settings.rpc_ws_url, where)
        raise ConfigError("DLOOP_RPC_WS_URL", f"{where} failed a basic request: {reason}") from None
    if code in ("0x", "", "0x0"):
        raise ConfigError(
            "DLOOP_CONTRACT_ADDRESS",
            f"no contract code at {settings.contract_address} on chain {identity.chain_id} ({where})",
        )
    check_contract(settings, identity.contract)
    return identity


def check_contract(settings: Settings, version: ContractVersion) -> None:
    """Stop unless the contract has every function the service calls and can emit a known ProposalCreated
    (else the listener would be blind); DLOOP_ALLOW_UNKNOWN_EVENTS=1 accepts the latter, reconcile only."""
    address = settings.contract_address
    if version.missing_functions:
        signatures = ", ".join(version.missing_functions)
        raise ConfigError(
            "DLOOP_CONTRACT_ADDRESS",
            f"the contract at {address} lacks functions the service calls ({signatures} of "
            f"{', '.join(REQUIRED_FUNCTIONS)}): is it an AssetDAO?",
        )
    if not version.knows_proposals and not settings.allow_unknown_events:
        known = ", ".join(f"{v} {t[:10]}..." for t, v in proposal_created_topics().items())
        raise ConfigError(
            "DLOOP_CONTRACT_ADDRESS",
            f"the contract at {address} emits no known ProposalCreated event (looked for {known}): the "
            "listener would see no proposal; set DLOOP_ALLOW_UNKNOWN_EVENTS=1 to vote from reconcile "
            "passes only, every DLOOP_RECONCILE_FALLBACK_INTERVAL",
        )


async def _read_chain_identity(settings: Settings) -> tuple[ChainIdentity, str]:
    """(chain id and genesis hash, contract code); a rate-limited provider is asked again until
    PREFLIGHT_TIMEOUT."""
    timeout = min(settings.rpc_timeout, 10.0)
    delay = 0.2
    while True:
        try:
            async with open_ws(settings.rpc_ws_url, request_timeout=timeout) as w3:
                client = ChainClient(w3, settings.contract_address, timeout=timeout)
                chain_id = await client.chain_id()
                genesis = await client.block(0)
                code = await client.code_at(settings.contract_address)
                version = await _contract_version(client, settings.contract_address, code)
                return ChainIdentity(chain_id, genesis.hash, version), code
        except RateLimited as exc:
            log_event(logger, "preflight_rate_limited", level=logging.WARNING, error=str(exc), delay=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 3.0)


async def _contract_version(client: ChainClient, address: str, code: str) -> ContractVersion:
    """The version the contract's code shows; for an EIP-1967 proxy, its implementation's."""
    version = detect_version(code)
    if not version.missing_functions or code in ("0x", ""):
        return version
    implementation = (await client.storage_word(address, IMPLEMENTATION_SLOT))[-20:]
    if not any(implementation):
        return version
    return detect_version(await client.code_at("0x" + implementation.hex()))


async def check_same_chain(sessions: SessionFactory, identity: ChainIdentity) -> None:
    """A database keeps the history of the chains it followed. A chain with the id of one of them but another
    genesis block (a devnet started afresh) is another chain: its proposal ids would meet the old rows."""
    known = await remember_genesis(sessions, identity.chain_id, identity.genesis_hash)
    if known != identity.genesis_hash.lower():
        raise ConfigError(
            "DLOOP_DATABASE_URL",
            f"the database holds the history of another chain {identity.chain_id} (genesis block "
            f"{known[:12]}..., the node's is {identity.genesis_hash.lower()[:12]}...; started afresh?): "
            "use a new database file, or point DLOOP_RPC_WS_URL at the chain it followed",
        )


def check_apart(
    deployment: DeploymentSettings, chain_id: int, others: Sequence[tuple[DeploymentSettings, int]]
) -> None:
    """Two deployments on one chain must follow two contracts with no key in common: a key has one nonce
    lane per chain, and two voters sharing it would race for its nonces."""
    keys = {node.key for node in deployment.nodes}
    for other, other_chain in others:
        if other_chain != chain_id:
            continue
        if other.contract_address.lower() == deployment.contract_address.lower():
            raise ConfigError(
                "DLOOP_CONTRACT_ADDRESS",
                f"deployment {other.name!r} already follows {deployment.contract_address} on chain "
                f"{chain_id}",
            )
        shared = sorted(node.name for node in other.nodes if node.key in keys)
        if shared:
            raise ConfigError(
                "nodes",
                f"{', '.join(shared)} also vote(s) in deployment {other.name!r} on the same chain "
                f"{chain_id}: a key may vote in several deployments on different chains only",
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
