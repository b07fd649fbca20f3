"""HTTP under load: requests per second and p99 of /health and /active-proposals while a burst is voted,
against a bare Litestar app returning the same JSON.

Service run: a fresh devnet, `dloop run` warmed up on one proposal, then N proposals created at once (the
burst). Once /active-proposals lists all of them, the load generator (bench/loadgen.py, its own process,
keep-alive connections, bounded in time and count) hits /active-proposals, then /health, for `duration`
seconds each while the five nodes vote. After the burst is voted, the same loads again on the idle service.
Baseline: bench/bare_app.py (Litestar + uvicorn configured as the service's server) serving the JSON captured
from the service at the end, same loads, twice: each endpoint while anvil mines a pre-signed burst of the same
size (one fresh devnet, one burst per endpoint: a pre-signed burst is over in about 15 s, before a second
load would end, while the service's lasts through both), then idle. A bare load starts once its burst's
transactions are all sent and its proposals mined (the service's, once its proposals are recorded); anvil
mined 10-33 % more votes during the bare loads than during the service's, so the baseline is, if anything,
the busier. Ratio = service during the burst / bare app during its pre-signed burst, in req/s; the same
figure against the idle bare app is reported beside it, without an aim: it counts the CPU anvil takes on a
2-core machine too.

At the default size the service's phase and the bare app's run three times (pairs), and the summary takes,
for each endpoint, the pair with the median ratio (one /health ratio moved between 0.56 and 0.77 with one
code). Each load records the CPU share (CPU seconds per second) of the server, of anvil and of the load
generator: on 2 cores with anvil taking one, the three share the other, and a server voting at the same time
leaves less of it to HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import sqlite3
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.burst import warm_up
from bench.harness import (
    NODE_COUNT,
    PYTHON,
    AnvilWatchdog,
    ChainObserver,
    Devnet,
    ManagedProcess,
    base_parser,
    clean_environment,
    cpu_seconds,
    devnet,
    http_get,
    positive_int,
    service,
    sign_proposals,
    sign_votes,
    stop_on_sigterm,
    workdir,
)
from bench.report import (
    REPO_ROOT,
    Aim,
    SummaryLine,
    complete_pairs,
    format_table,
    median_pair,
    result_document,
    summary_line,
    write_result,
)
from bench.rpc import WsRpc
from devtools.anvil import free_port

NAME = "http"
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"proposals": 10, "duration": 0.3, "pairs": 1},
    "medium": {"proposals": 200, "duration": 3.0, "pairs": 1},
    "default": {"proposals": 1000, "duration": 5.0, "pairs": 3},
}
ENDPOINTS = ("/active-proposals", "/health")
AIMS = {"/health": Aim(">=", 0.8), "/active-proposals": Aim(">=", 0.5)}  # /health: #18
Load = dict[str, Any]


async def generate_load(
    url: str, duration: float, concurrency: int, watched: Mapping[str, int]
) -> dict[str, Any]:
    """One load (bench/loadgen.py); with each watched process's CPU share over it (CPU seconds per second),
    the generator's own beside them."""
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        str(REPO_ROOT / "bench" / "loadgen.py"),
        "--url",
        url,
        "--duration",
        str(duration),
        "--concurrency",
        str(concurrency),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    assert process.stdout is not None
    cues = [await process.stdout.readline()]  # "started": the load begins now
    cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    wall_before = time.perf_counter()
    cues.append(await process.stdout.readline())  # "ended"
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
    wall = time.perf_counter() - wall_before
    out, err = await process.communicate()
    if process.returncode != 0 or [c.strip() for c in cues] != [b"started", b"ended"]:
        raise RuntimeError(f"loadgen failed ({cues!r}): {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    result["cpu_share"] = {
        **{name: seconds / wall for name, seconds in cpu.items()},
        "loadgen": result.pop("loadgen_cpu_share", None),
    }
    return result


def _watched(server_pid: int, chain: Devnet) -> dict[str, int]:
    """The processes whose CPU share a load during a burst records."""
    assert chain.anvil.pid is not None, "anvil is not running"
    return {"server": server_pid, "anvil": chain.anvil.pid}


def active_in_database(database: Path) -> int:
    """Active proposals the service has recorded, read from its SQLite file (read-only; WAL lets us).

    Polling /active-proposals instead would load the service with exactly the request being measured.
    """
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
        return int(db.execute("SELECT COUNT(*) FROM proposals WHERE status = 1").fetchone()[0])


async def wait_listed(database: Path, count: int, timeout: float) -> float:
    """Until the service has recorded `count` active proposals; the seconds that took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if await asyncio.to_thread(active_in_database, database) >= count:
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the service did not record {count} proposals within {timeout:g} s")


async def service_phase(
    proposals: int, duration: float, concurrency: int, directory: Path, timeout: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    loads: list[dict[str, Any]] = []
    with devnet() as chain, service(chain, directory / "service") as (process, _startup):
        base_url = process.base_url
        watched = _watched(process.pid, chain)
        observer = ChainObserver()
        async with WsRpc(chain.ws_url) as rpc:
            await observer.attach(rpc, chain.info.contract_address)
            await warm_up(chain, rpc, observer, timeout)
            creates = sign_proposals(chain, proposals)
            expected = observer.vote_count + proposals * NODE_COUNT
            async with AnvilWatchdog(chain, observer, creates.raw) as watchdog:
                started = time.perf_counter()
                await rpc.send_raw_many(creates.raw)
                listed_after = await wait_listed(process.database, proposals + 1, timeout)
                for path in ENDPOINTS:
                    before = observer.vote_count
                    result = await generate_load(base_url + path, duration, concurrency, watched)
                    result.update(
                        server="service",
                        condition="during burst",
                        endpoint=path,
                        votes_mined_during_load=observer.vote_count - before,
                        burst_still_running=observer.vote_count < expected,
                    )
                    loads.append(result)
                voted = await observer.wait_until(lambda: observer.vote_count >= expected, timeout)
                burst_s = time.perf_counter() - started
        loads += await idle_loads("service", base_url, duration, concurrency, watched)
        bodies = {path: json.loads(http_get(base_url + path, 30.0)[1]) for path in ENDPOINTS}
        event_loop = process.event_loop()
    burst = {
        "event_loop": event_loop,
        "listed_after_s": listed_after,
        "burst_s": burst_s,
        "all_voted": voted,
        "anvil_kicks": watchdog.kicks,
        "bodies": bodies,
    }
    return loads, burst


async def idle_loads(
    server: str, base_url: str, duration: float, concurrency: int, watched: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Both endpoints with `concurrency` connections, then /health over one (what a single user sees)."""
    loads = []
    for path, connections in [*((p, concurrency) for p in ENDPOINTS), ("/health", 1)]:
        result = await generate_load(base_url + path, duration, connections, watched)
        condition = "idle" if connections == concurrency else f"idle, {connections} connection"
        result.update(server=server, condition=condition, endpoint=path)
        loads.append(result)
    return loads


async def load_during_burst(
    server: str,
    server_pid: int,
    base_url: str,
    path: str,
    chain: Devnet,
    proposals: int,
    duration: float,
    concurrency: int,
    timeout: float,
) -> dict[str, Any]:
    """`path` loaded while a pre-signed burst (creates, then the 5N votes) is mined on `chain`: from the
    moment every transaction is sent and the proposals are mined, for `duration` seconds."""
    observer = ChainObserver()
    async with WsRpc(chain.ws_url) as rpc:
        await observer.attach(rpc, chain.info.contract_address)
        creates = sign_proposals(chain, proposals)
        votes = sign_votes(chain, list(creates.ids))
        expected = observer.vote_count + len(votes)
        async with AnvilWatchdog(chain, observer, [*creates.raw, *votes]) as watchdog:
            await rpc.send_raw_many(creates.raw)
            await rpc.send_raw_many(votes)
            mined = await observer.wait_until(lambda: len(observer.created) >= proposals, timeout)
            if not mined:
                raise RuntimeError(f"the pre-signed burst's proposals were not mined within {timeout:g} s")
            before, kicks_before = observer.vote_count, watchdog.kicks
            watched = _watched(server_pid, chain)
            result = await generate_load(base_url + path, duration, concurrency, watched)
            result.update(
                server=server,
                condition="during burst",
                endpoint=path,
                votes_mined_during_load=observer.vote_count - before,
                burst_still_running=observer.vote_count < expected,
                # A kick means anvil sat idle for 0.5 s: one inside the load would flatter the baseline.
                anvil_kicks_during_load=watchdog.kicks - kicks_before,
            )
            result["all_voted"] = await observer.wait_until(lambda: observer.vote_count >= expected, timeout)
        result["anvil_kicks"] = watchdog.kicks
    return result


async def bare_phase(
    bodies: dict[str, Any], proposals: int, duration: float, concurrency: int, directory: Path, timeout: float
) -> list[dict[str, Any]]:
    files = {}
    for path, body in bodies.items():
        files[path] = directory / f"{path.strip('/')}.json"
        files[path].write_text(json.dumps(body))
    port = free_port()
    app = ManagedProcess(
        "bare app",
        [
            PYTHON,
            str(REPO_ROOT / "bench" / "bare_app.py"),
            "--port",
            str(port),
            "--health",
            str(files["/health"]),
            "--active-proposals",
            str(files["/active-proposals"]),
        ],
        clean_environment({}),
        directory / "bare-app.log",
    )
    base_url = f"http://127.0.0.1:{port}"
    loads = []
    try:
        app.start()
        app.wait_log_line("ready", 30)
        with devnet() as chain:
            for path in ENDPOINTS:  # a burst each: one is over before a second load would end
                loads.append(
                    await load_during_burst(
                        "bare app",
                        app.pid,
                        base_url,
                        path,
                        chain,
                        proposals,
                        duration,
                        concurrency,
                        timeout,
                    )
                )
        loads += await idle_loads("bare app", base_url, duration, concurrency, {"server": app.pid})
    finally:
        app.stop()
    return loads


def _pairs_of(loads: Sequence[Load], path: str) -> list[tuple[Load, Load]]:
    """(service, bare app) loads of `path` during their bursts, pair by pair, both with answers."""
    during = [
        {**x, "voter": x["server"]}  # complete_pairs' key: "service", or else the baseline
        for x in loads
        if x["endpoint"] == path and x["condition"] == "during burst"
    ]
    return complete_pairs(during, lambda x: bool(x["ok"]) and bool(x["req_per_s"]))


def _req_ratio(service: Load, bare: Load) -> float:
    return float(service["req_per_s"]) / float(bare["req_per_s"])


def summarise(loads: Sequence[Load]) -> list[SummaryLine]:
    """Per endpoint, the pair whose during-burst req/s ratio is the median (of an even count, the less
    flattering middle); its idle bare app and p99s beside it."""

    def idle_bare(path: str, pair: int) -> Load | None:
        wanted = ("bare app", "idle", path, pair)
        return next(
            (x for x in loads if (x["server"], x["condition"], x["endpoint"], x.get("pair", 1)) == wanted),
            None,
        )

    def figure(x: Load | None, key: str) -> float | None:
        if x is None:
            return None
        return float(x["req_per_s"] if key == "req/s" else x["latency_ms"]["p99"])

    lines = []
    for path in ENDPOINTS:
        pairs = _pairs_of(loads, path)
        middle = median_pair(pairs, _req_ratio, AIMS[path])
        service, bare = middle if middle is not None else (None, None)
        bare_idle = idle_bare(path, service.get("pair", 1)) if service is not None else None
        ratios = ", ".join(f"{_req_ratio(*p):.2f}" for p in pairs)
        of_pairs = f", median of {len(pairs)} pairs ({ratios})" if len(pairs) > 1 else ""
        # Named for their baseline: before session 18 the bare app was measured idle only.
        under_load = "(bare app under a pre-signed burst)"
        metric = f"{path} req/s during burst"
        lines.append(
            summary_line(
                NAME,
                f"{metric} {under_load}{of_pairs}",
                "req/s",
                figure(service, "req/s"),
                figure(bare, "req/s"),
                aim=AIMS[path],
            )
        )
        lines.append(
            summary_line(
                NAME,
                f"{metric} (idle bare app)",
                "req/s",
                figure(service, "req/s"),
                figure(bare_idle, "req/s"),
            )
        )
        lines.append(
            summary_line(
                NAME,
                f"{path} p99 during burst {under_load}",
                "ms",
                figure(service, "p99"),
                figure(bare, "p99"),
            )
        )
    return lines


def table(loads: Sequence[Load]) -> str:
    def share(x: Load, name: str) -> float | None:
        value = (x.get("cpu_share") or {}).get(name)
        return float(value) if value is not None else None

    rows = [
        [
            x.get("pair", 1),
            x["endpoint"],
            x["server"],
            x["condition"],
            x["concurrency"],
            x["ok"],
            sum(x["errors"].values()) + x["requests"] - x["ok"],
            x["req_per_s"],
            x["latency_ms"]["p50"],
            x["latency_ms"]["p99"],
            share(x, "server"),
            share(x, "anvil"),
            share(x, "loadgen"),
        ]
        for x in loads
    ]
    return format_table(
        [
            "pair",
            "endpoint",
            "server",
            "condition",
            "conns",
            "ok",
            "failed",
            "req/s",
            "p50 ms",
            "p99 ms",
            "server CPU",
            "anvil CPU",
            "loadgen CPU",
        ],
        rows,
    )


async def measure(
    proposals: int, duration: float, concurrency: int, directory: Path, timeout: float, pairs: int
) -> tuple[list[Load], list[dict[str, Any]]]:
    """`pairs` times: the service's phase, then the bare app's, each load numbered by its pair."""
    loads: list[Load] = []
    bursts = []
    for pair in range(1, pairs + 1):
        print(f"{NAME}: pair {pair}/{pairs} ...", file=sys.stderr, flush=True)
        here = directory / f"pair-{pair}"
        here.mkdir()
        pair_loads, burst = await service_phase(proposals, duration, concurrency, here, timeout)
        pair_loads += await bare_phase(burst.pop("bodies"), proposals, duration, concurrency, here, timeout)
        loads += [{**x, "pair": pair} for x in pair_loads]
        bursts.append({**burst, "pair": pair})
    return loads, bursts


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__ or NAME)
    parser.add_argument("--proposals", type=int, help="proposals in the burst (default by --size)")
    parser.add_argument("--duration", type=float, help="seconds of load per endpoint (default by --size)")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections of the load")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the burst")
    parser.add_argument(
        "--pairs", type=positive_int, help="service-then-bare-app pairs to run (default by --size)"
    )
    args = parser.parse_args(argv)
    pairs = args.pairs or SIZES[args.size]["pairs"]
    stop_on_sigterm()
    proposals = args.proposals or SIZES[args.size]["proposals"]
    duration = args.duration or SIZES[args.size]["duration"]
    started_at, started = dt.datetime.now(dt.UTC), time.perf_counter()
    print(f"{NAME}: {proposals} proposals, {duration:g} s per load ...", file=sys.stderr, flush=True)
    with workdir(NAME, args.keep_workdir) as directory:
        loads, bursts = asyncio.run(
            measure(proposals, duration, args.concurrency, directory, args.timeout, pairs)
        )
    document = result_document(
        NAME,
        args.size,
        {"proposals": proposals, "duration_s": duration, "concurrency": args.concurrency, "pairs": pairs},
        summarise(loads),
        {"loads": loads, "bursts": bursts},
        started_at=started_at,
        duration_s=time.perf_counter() - started,
    )
    path = write_result(args.results_dir, document)
    print(table(loads))
    print(f"-> {path}")
    return document


if __name__ == "__main__":
    main()
