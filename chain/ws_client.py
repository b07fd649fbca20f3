"""A `ChainClient` over a fresh WebSocket connection, and the subscriptions of that connection.

Components open connections here and never see the wire (chain/rpc_socket.py): `connected_client` for a
long-lived connection whose errors end its owner's loop (the listener), `ws_chain_client` for short-lived ones
whose closing must never hide the outcome of the work done on them (a reconcile pass, the API's reads).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn

import anyio

from chain import requests as rq
from chain.client import ChainClient, RpcErrorCounts
from chain.connection import open_ws, translate_exception
from core.errors import ChainError, TransientChainError
from core.logs import log_event
from core.settings import Settings

logger = logging.getLogger("dloop.chain")


@asynccontextmanager
async def connected_client(
    url: str,
    contract: str,
    *,
    timeout: float,
    error_counts: RpcErrorCounts | None = None,
    ping_interval: float = 5.0,
    ping_timeout: float = 10.0,
) -> AsyncIterator[ChainClient]:
    """One connection and its client; closed (errors of the closing swallowed) when the block ends."""
    async with open_ws(
        url, request_timeout=timeout, ping_interval=ping_interval, ping_timeout=ping_timeout
    ) as socket:
        yield ChainClient(socket, contract, timeout=timeout, error_counts=error_counts)


@asynccontextmanager
async def ws_chain_client(
    settings: Settings, rpc_errors: RpcErrorCounts | None = None
) -> AsyncIterator[ChainClient]:
    """`connected_client` with the settings' URL and contract, for one short use: a reconcile pass never
    depends on a long-lived socket.

    An error raised while disconnecting is logged, never allowed to replace the work's own outcome. The
    closing is shielded from cancellation.
    """
    connection = connected_client(
        settings.rpc_ws_url, settings.contract_address, timeout=settings.rpc_timeout, error_counts=rpc_errors
    )
    client = await connection.__aenter__()
    try:
        yield client
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await _close_quietly(connection, exc)
        raise
    with anyio.CancelScope(shield=True):
        await _close_quietly(connection, None)


async def _close_quietly(connection: AbstractAsyncContextManager[Any], exc: BaseException | None) -> None:
    try:
        await connection.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
    except Exception as close_error:
        log_event(logger, "rpc_disconnect_error", level=logging.DEBUG, error=f"{type(close_error).__name__}")


# -- subscriptions ----------------------------------------------------------------------------------------


async def _subscribe(client: ChainClient, request: rq.Request) -> str:
    subscription = str(await client.request(*request))
    client.socket.subscribed(subscription)
    return subscription


async def subscribe_heads(client: ChainClient) -> str:
    """eth_subscribe("newHeads"); the subscription id."""
    return await _subscribe(client, rq.subscribe_heads())


async def subscribe_logs(client: ChainClient, address: str, topics: Sequence[Any] | None = None) -> str:
    """eth_subscribe("logs", {address[, topics]}); the subscription id. No topics: every log of `address`."""
    return await _subscribe(client, rq.subscribe_logs(address, topics))


async def read_subscriptions(
    client: ChainClient, on_message: Callable[[Mapping[str, Any]], None]
) -> NoReturn:
    """Hand every subscription notification of the client's connection to `on_message`, as the node sent
    it: its `params`, `{"subscription": id, "result": ...}` with hex strings. Notifications of any
    subscription come out: `on_message` picks its own. Errors leave as ChainError; the stream ending (the
    connection closed) is a TransientChainError."""
    try:
        while (message := await client.socket.next_notification()) is not None:
            params = message.get("params")
            if isinstance(params, Mapping):  # without, it names no subscription: skipped
                on_message(params)
    except ChainError:
        raise
    except Exception as exc:
        raise translate_exception(exc) from exc
    raise TransientChainError("the subscription stream ended")
