"""The operator dashboard: `GET /dashboard` (and `GET /` for a browser), its sections for live refreshes,
`GET /events` (Server-Sent Events) and the static files it loads. Thin: the data comes from web.dashboard,
the layout from web/templates (Jinja, autoescaped), the behaviour from web/static/dashboard.js."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jinja2
from litestar import MediaType, Request, get
from litestar.handlers import HTTPRouteHandler
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import ServerSentEvent, Template
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from web.caches import WebCaches
from web.dashboard import PAGE_HEADERS, build_dashboard
from web.dashboard_view import prefers_html
from web.live import LiveFeed
from web.ports import WebContext

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

PAGE = "dashboard.html"
SECTIONS = "dashboard_sections.html"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    # Autoescape on for every template, whatever its name: proposal descriptions are attacker-controlled.
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def static_files() -> Router:
    return create_static_files_router(
        path="/static", directories=[STATIC], name="dashboard-static", include_in_schema=False
    )


async def render(context: WebContext, caches: WebCaches, template: str) -> Template:
    model = await build_dashboard(context, caches, dt.datetime.now(dt.UTC))
    return Template(
        template_name=template, context={"d": model}, headers=PAGE_HEADERS, media_type=MediaType.HTML
    )


async def overview_page(request: Request[Any, Any, Any]) -> Template | None:
    """`GET /` before its JSON handler: the dashboard when the client prefers HTML (a browser), else nothing
    (the JSON overview, unchanged for curl and scripts)."""
    if not prefers_html(request.headers.get("accept")):
        return None
    state = request.app.state
    return await render(state.context, state.caches, PAGE)


def dashboard_routes(context: WebContext, caches: WebCaches, live: LiveFeed) -> list[HTTPRouteHandler]:
    @get("/dashboard", summary="The operator dashboard (HTML, live over /events)", include_in_schema=False)
    async def dashboard() -> Template:
        return await render(context, caches, PAGE)

    @get("/dashboard/sections", include_in_schema=False)
    async def sections() -> Template:
        return await render(context, caches, SECTIONS)

    @get(
        "/events",
        summary="Live events for the dashboard (Server-Sent Events; not in the schema: it never ends)",
        include_in_schema=False,
    )
    async def events() -> ServerSentEvent:
        return ServerSentEvent(live.stream(), headers={**PAGE_HEADERS, "X-Accel-Buffering": "no"})

    return [dashboard, sections, events]
