"""The HTTP baseline: a bare Litestar app answering /health and /active-proposals with fixed JSON documents
(captured from the service), served by uvicorn with the service's own uvicorn settings. No database, no
service: the floor of Litestar + uvicorn for the same responses on this machine.

`python bench/bare_app.py --port P --health FILE --active-proposals FILE`; prints `ready` once listening.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import uvicorn
from litestar import Litestar, MediaType, Response, get


def build_app(health: dict[str, Any], active: dict[str, Any]) -> Litestar:
    # The documents are Python objects, so each answer is serialised per request, as any app would.
    @get("/health")
    async def health_handler() -> Response[dict[str, Any]]:
        return Response(health, media_type=MediaType.JSON)

    @get("/active-proposals")
    async def active_handler() -> Response[dict[str, Any]]:
        return Response(active, media_type=MediaType.JSON)

    return Litestar([health_handler, active_handler], logging_config=None, debug=False, openapi_config=None)


class _Server(uvicorn.Server):
    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        print("ready", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--health", type=Path, required=True)
    parser.add_argument("--active-proposals", type=Path, required=True)
    args = parser.parse_args()
    app = build_app(json.loads(args.health.read_text()), json.loads(args.active_proposals.read_text()))
    config = uvicorn.Config(  # as web/server.py configures the service's server
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        http="httptools",
        loop="uvloop",  # the service's event loop by default (DLOOP_EVENT_LOOP=auto)
        access_log=False,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
    )
    _Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
