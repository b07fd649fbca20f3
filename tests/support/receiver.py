"""A webhook receiver standing in for Slack in the alert tests: a real HTTP server on a free port that records
every POST body; it may answer 500, or hang before answering."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    url: str
    bodies: list[Any] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    started: int = 0  # requests received (a hanging receiver counts them before answering)

    def texts(self) -> list[str]:
        """Each body's headline (Slack `text`)."""
        return [str(b.get("text", b.get("content", ""))) for b in self.bodies if isinstance(b, dict)]

    def has(self, status: str, alert: str, subject: str = "") -> bool:
        word = "[FIRING" if status == "firing" else "[RESOLVED]"
        return any(t.startswith(word) and f"{alert} {subject}" in t for t in self.texts())


@contextmanager
def webhook_receiver(*, status: int = 200, hang: float = 0.0) -> Iterator[Receiver]:
    lock = threading.Lock()
    receiver = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            text = self.rfile.read(length).decode("utf-8", "replace")
            with lock:
                receiver.started += 1
            if hang:
                time.sleep(hang)
            with lock:
                receiver.raw.append(text)
                try:
                    receiver.bodies.append(json.loads(text))
                except ValueError:
                    receiver.bodies.append(text)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok" if status < 300 else b"receiver error")

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T0/B0/secret-path"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
