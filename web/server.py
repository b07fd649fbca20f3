"""uvicorn serving the app inside the service task group: no second process, no signal handlers of its own."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Generator, Sequence

import anyio
import anyio.abc
import uvicorn
from litestar import Litestar

from core.errors import ConfigError
from core.logs import log_event
from web.app import stop_streams

logger = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the service and says when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # SIGINT/SIGTERM belong to the service, which stops us through should_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving: a port in use fails start-up with one line naming the setting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says it is TCP; with protocol 0 every response waited ~40 ms on Nagle and delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        setting = "DLOOP_HTTP_PORT" if exc.errno in (98, 48) else "DLOOP_HTTP_HOST"
        raise ConfigError(setting, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class HttpServer:
    def __init__(self, app: Litestar, host: str, port: int, *, shutdown_timeout: float = 3.0) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.shutdown_timeout = shutdown_timeout
        self._sockets: Sequence[socket.socket] = ()
        self.server = _EmbeddedServer(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                http="httptools",  # a declared dependency: never the slower pure-Python fallback by accident
                access_log=False,
                lifespan="on",
                proxy_headers=False,  # the client address is the socket peer (see web.auth)
                timeout_graceful_shutdown=max(1, round(shutdown_timeout)),
                server_header=False,
            )
        )

    def bind(self) -> int:
        """Bind now (before the task group starts) so a busy port is a start-up error; returns the port."""
        if not self._sockets:
            sock = bind_socket(self.host, self.requested_port)
            self._sockets = (sock,)
            self.port = int(sock.getsockname()[1])
        assert self.port is not None
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.bind()
        done = anyio.Event()
        # Shielded: on cancellation we ask uvicorn to finish its requests instead of tearing it down.
        serve_scope = anyio.CancelScope(shield=True)

        async def serve() -> None:
            with serve_scope:
                try:
                    await self.server.serve(sockets=list(self._sockets))
                finally:
                    done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            try:
                with anyio.fail_after(10):
                    await self.server.ready.wait()
                log_event(logger, "http_listening", url=self.url)
                task_status.started()
                await done.wait()
            finally:
                stop_streams(self.app)  # long-lived /events responses end now, not at the graceful timeout
                self.server.should_exit = True
                with anyio.move_on_after(self.shutdown_timeout + 1, shield=True):
                    await done.wait()
                serve_scope.cancel()
                for sock in self._sockets:
                    sock.close()
                log_event(logger, "http_stopped", url=self.url)
