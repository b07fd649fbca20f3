"""Who may start a voting round, or pause and resume signing.

With `DLOOP_API_TOKEN` set: `Authorization: Bearer <token>`, compared in constant time (401 otherwise).
Without it: loopback clients only (403 otherwise). A request carrying proxy headers (`Forwarded`,
`X-Forwarded-For`, `X-Real-IP`) is treated as not loopback: a reverse proxy on the same host relays other
people's requests from 127.0.0.1, and without a token nothing else would tell them apart.

Always: a request a browser sent from another site is refused (403). Without a token, any web page the
operator opens could otherwise POST to 127.0.0.1:5001 (a `no-cors` fetch) and undo a pause; browsers say
where a request comes from in `Sec-Fetch-Site` and `Origin`, and a page on another origin cannot forge them.
Scripts and `curl` send neither and are judged by the rules above.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from web.ports import WebContext

PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


@dataclass(frozen=True)
class AuthDecision:
    allowed: bool
    status: int = 200  # 401 or 403 when refused
    reason: str = ""


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def cross_site(*, fetch_site: str | None, origin: str | None, host: str | None) -> bool:
    """Whether a browser sent this request from a page of another origin (or from a DNS-rebound name)."""
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return True
    if origin is not None:
        origin_host = urlsplit(origin.strip()).netloc.lower()
        return not origin_host or origin_host != (host or "").strip().lower()
    return False


def authorize_trigger(
    *,
    api_token: str | None,
    authorization: str | None,
    client_host: str | None,
    proxied: bool,
    from_other_site: bool = False,
) -> AuthDecision:
    if from_other_site:
        return AuthDecision(
            False, 403, "a request from another site's page is refused (Origin / Sec-Fetch-Site)"
        )
    if api_token:
        presented = bearer_token(authorization)
        if presented is None:
            return AuthDecision(False, 401, "this endpoint needs an 'Authorization: Bearer <token>' header")
        if not hmac.compare_digest(presented.encode(), api_token.encode()):
            return AuthDecision(False, 401, "the bearer token is not valid")
        return AuthDecision(True)
    if proxied:
        return AuthDecision(
            False,
            403,
            "no DLOOP_API_TOKEN is set: only direct loopback clients may trigger (proxy headers seen)",
        )
    if not is_loopback(client_host):
        return AuthDecision(False, 403, "no DLOOP_API_TOKEN is set: only loopback clients may trigger")
    return AuthDecision(True)


def trigger_guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    context: WebContext = connection.app.state.context
    decision = authorize_trigger(
        api_token=context.api_token,
        authorization=connection.headers.get("authorization"),
        client_host=connection.client.host if connection.client else None,
        proxied=any(name in connection.headers for name in PROXY_HEADERS),
        from_other_site=cross_site(
            fetch_site=connection.headers.get("sec-fetch-site"),
            origin=connection.headers.get("origin"),
            host=connection.headers.get("host"),
        ),
    )
    if decision.allowed:
        return
    if decision.status == 401:
        raise NotAuthorizedException(detail=decision.reason, headers={"WWW-Authenticate": "Bearer"})
    raise PermissionDeniedException(detail=decision.reason)
