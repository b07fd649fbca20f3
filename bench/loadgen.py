"""A small HTTP/1.1 load generator: N keep-alive connections, each sending GETs back to back.

Bounded in count and in time, and 127.0.0.1 only. Raw asyncio streams rather than an HTTP client library so
the generator itself costs little CPU (a few tens of microseconds per request): on a 2-core machine it shares
the CPU with the server it measures. Run as its own process:
`python bench/loadgen.py --url http://127.0.0.1:PORT/health --duration 5` prints `started` and `ended` around
the load, then one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.report import distribution

MAX_DURATION = 120.0
MAX_REQUESTS = 1_000_000


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    body_bytes: int = 0
    sent: int = 0


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, connection still usable) of one response; Content-Length or chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(data[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection") != "close"


async def worker(
    host: str, port: int, request: bytes, deadline: float, budget: list[int], tally: Tally
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            started = time.perf_counter()
            tally.sent += 1
            try:
                writer.write(request)
                status, body, keep = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                tally.errors[type(exc).__name__] += 1
                writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            tally.statuses[status] += 1
            tally.body_bytes += len(body)
            if not keep:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def run_load(url: str, *, concurrency: int, duration: float, max_requests: int) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
        raise ValueError(f"load is only generated against http://127.0.0.1:PORT/..., not {url}")
    duration = min(duration, MAX_DURATION)
    max_requests = min(max_requests, MAX_REQUESTS)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{parts.port}\r\nAccept: application/json\r\n\r\n".encode()
    )
    tally = Tally()
    budget = [max_requests]
    print("started", flush=True)  # the caller's cue to read the server's CPU counters
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(worker("127.0.0.1", parts.port, request, deadline, budget, tally) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print("ended", flush=True)  # the load's end, before the result is assembled and the process exits
    done = len(tally.latencies_ms)
    ok = tally.statuses.get(200, 0)
    return {
        "url": url,
        "concurrency": concurrency,
        "duration_s": elapsed,
        "requests": done,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": dict(tally.errors),
        "req_per_s": ok / elapsed if elapsed > 0 else None,
        "latency_ms": distribution(tally.latencies_ms),
        "mean_body_bytes": tally.body_bytes / done if done else None,
        # On a 2-core machine the generator shares the CPU with the server it measures: its own share
        # (CPU seconds per second) shows when it, not the server, set the rate.
        "loadgen_cpu_share": cpu / elapsed if elapsed > 0 else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--duration", type=float, default=5.0, help=f"seconds (at most {MAX_DURATION:g})")
    parser.add_argument("--max-requests", type=int, default=200_000, help=f"at most {MAX_REQUESTS:,}")
    args = parser.parse_args()
    try:
        result = asyncio.run(
            run_load(
                args.url, concurrency=args.concurrency, duration=args.duration, max_requests=args.max_requests
            )
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
