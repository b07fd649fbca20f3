"""The Litestar application: routes, JSON errors, OpenAPI at /schema, context injected at construction."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig

from core.errors import DloopError
from core.logs import log_event
from web.caches import WebCaches
from web.errors import handle_http_exception, handle_service_error, handle_unexpected
from web.live import LiveFeed
from web.pages import dashboard_routes, static_files, template_config
from web.ports import WebContext
from web.routes import ROUTES, polled_routes

logger = logging.getLogger(__name__)


def _context(state: State) -> WebContext:
    context: WebContext = state.context
    return context


def stop_streams(app: Litestar) -> None:
    """End the dashboards' event streams (at shutdown: uvicorn would otherwise wait for them to close)."""
    live = app.state.get("live")
    if isinstance(live, LiveFeed):
        live.close()


def create_app(context: WebContext) -> Litestar:
    caches = WebCaches.for_context(context)
    live = LiveFeed.for_context(context, caches)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        caches.start()
        log_event(logger, "http_app_started", nodes=len(context.nodes), contract=context.scope.contract)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(live.run)  # idle (no reads) while no dashboard is open
                try:
                    yield
                finally:
                    live.close()
                    tg.cancel_scope.cancel()
        finally:
            caches.stop()
            log_event(logger, "http_app_stopped")

    return Litestar(
        route_handlers=[
            *ROUTES,
            *polled_routes(context, caches),
            *dashboard_routes(context, caches, live),
            static_files(),
        ],
        template_config=template_config(),
        state=State({"context": context, "caches": caches, "live": live}),
        dependencies={"context": Provide(_context, sync_to_thread=False)},
        exception_handlers={
            HTTPException: handle_http_exception,
            DloopError: handle_service_error,
            Exception: handle_unexpected,
        },
        openapi_config=OpenAPIConfig(
            title="dloop governance voting service",
            version="1.0.0",
            description="Status of the five governance nodes, their votes, and a manual voting trigger.",
            path="/schema",
        ),
        lifespan=[lifespan],
        logging_config=None,
        debug=False,
    )
