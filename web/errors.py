"""Every error leaves as JSON `{"success": false, "error", "reason", "status"}`, never as an HTML page."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from core.errors import ChainError, DloopError, StorageError
from core.logs import log_event
from web.schemas import ErrorResponse

logger = logging.getLogger(__name__)


def error_response(
    status: int, reason: str, headers: dict[str, str] | None = None
) -> Response[ErrorResponse]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return Response(
        ErrorResponse(error=phrase, reason=reason, status=status),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _validation_reason(exc: ValidationException) -> str:
    parts = []
    if isinstance(exc.extra, list):
        for item in exc.extra:
            if isinstance(item, dict):
                key = item.get("key")
                message = item.get("message", "")
                parts.append(f"{key}: {message}" if key else str(message))
    return "; ".join(parts) or str(exc.detail)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorResponse]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        reason = _validation_reason(exc)
    elif status == 404 and exc.detail in ("", "Not Found"):
        reason = f"no such resource: {request.method} {request.url.path}"
    elif status == 405:
        reason = f"{request.method} is not allowed on {request.url.path}"
    else:
        reason = str(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(status, reason, headers)


def handle_service_error(request: Request[Any, Any, Any], exc: DloopError) -> Response[ErrorResponse]:
    # The database or the chain being unreachable is a temporary condition of the service, not a bug.
    what = (
        "database" if isinstance(exc, StorageError) else "chain" if isinstance(exc, ChainError) else "service"
    )
    log_event(logger, "http_dependency_error", level=logging.WARNING, path=request.url.path, error=str(exc))
    return error_response(503, f"{what} unavailable: {exc}")


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    log_event(
        logger,
        "http_internal_error",
        level=logging.ERROR,
        path=request.url.path,
        error=f"{type(exc).__name__}: {exc}",
    )
    return error_response(500, "internal error; see the service log")
