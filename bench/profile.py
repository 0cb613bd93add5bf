"""Where graphgate's CPU goes under load: py-spy on a real server, grouped by component.

    .venv/bin/pip install py-spy        # not a project dependency
    .venv/bin/python -m bench.profile [--seconds 10] [--out var/bench/profile]

Starts graphgate as `make bench` does (production, every protection on, memory storage,
the 50-token bench graph), then samples it with `py-spy record --gil` (only the thread
holding the GIL: on-CPU Python, not idle worker threads) while the load generator runs
(1) streams at concurrency 50 and (2) authenticated `GET /info` with wrk (or the
Python client). Each sample is charged to the innermost frame that belongs to a known
component (the access log's structlog calls count as "access log", orjson called from
the encoder as "encode"), so the shares add up to 100%. Raw stacks are kept in --out
for flame graphs (speedscope, flamegraph.pl).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import proc
from bench.client import get_load, hold_streams, stream_load
from bench.harness import HOLD_DELAY_MS, run_async
from bench.infra import REPO, Postgres
from bench.servers import Credentials, Server, graphgate_env

# (component, path fragment) in priority order: a frame matching an earlier entry wins
# over one matching a later entry at the same depth; the innermost matching frame wins.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("encode: v1 events + orjson", "service/streaming/v1_events.py"),
    ("encode: v1 events + orjson", "service/streaming/serialize.py"),
    ("SSE response (forwarder, heartbeat/send timeouts)", "service/streaming/sse.py"),
    ("run executor (leases, tasks mode, span)", "service/streaming/executor.py"),
    ("run admission (slots, run limit, registry)", "service/api/runs.py"),
    ("run admission (slots, run limit, registry)", "service/security/stream_slots.py"),
    ("storage: thread registry, leases, run records", "service/persistence/"),
    ("stream metrics", "service/observability/stream_metrics.py"),
    ("access log (structlog, redaction, JSON)", "service/middleware/access_log.py"),
    ("access log (structlog, redaction, JSON)", "service/observability/logging.py"),
    ("access log (structlog, redaction, JSON)", "service/observability/redact.py"),
    ("access log (structlog, redaction, JSON)", "structlog/"),
    ("metrics middleware (prometheus)", "service/middleware/metrics.py"),
    ("metrics middleware (prometheus)", "prometheus_client/"),
    ("rate limit (slowapi, limits)", "service/middleware/rate_limit.py"),
    ("rate limit (slowapi, limits)", "service/security/rate_limits.py"),
    ("rate limit (slowapi, limits)", "slowapi/"),
    ("rate limit (slowapi, limits)", "limits/"),
    ("auth", "service/middleware/authentication.py"),
    ("auth", "service/security/"),
    ("auth", "jose/"),
    ("request id / proxy headers / security headers / hosts / body limit",
     "service/middleware/"),
    ("request id / proxy headers / security headers / hosts / body limit",
     "uvicorn/middleware/"),
    ("CORS", "starlette/middleware/cors.py"),
    ("Postgres driver and pool (psycopg)", "psycopg"),
    ("SQLite driver (aiosqlite, sqlite3)", "aiosqlite/"),
    ("SQLite driver (aiosqlite, sqlite3)", "sqlite3/"),
    ("thread pool hops and other threads", "starlette/concurrency.py"),
    ("thread pool hops and other threads", "anyio/to_thread.py"),
    ("thread pool hops and other threads", "concurrent/futures/"),
    ("thread pool hops and other threads", "threading.py"),
    ("thread pool hops and other threads", "queue.py"),
    ("FastAPI routing, dependencies, validation", "fastapi/"),
    ("FastAPI routing, dependencies, validation", "pydantic"),
    ("Starlette routing, responses, errors", "starlette/"),
    ("route handlers (service/api)", "service/api/"),
    # py-spy names langgraph's (namespace package) files without the `langgraph/` prefix.
    ("LangGraph checkpointer", "langgraph/checkpoint/"),
    ("LangGraph checkpointer", "checkpoint/"),
    ("LangGraph checkpointer", "serde/"),
    ("LangGraph + LangChain (graph run, callbacks)", "langgraph/"),
    ("LangGraph + LangChain (graph run, callbacks)", "pregel/"),
    ("LangGraph + LangChain (graph run, callbacks)", "channels/"),
    ("LangGraph + LangChain (graph run, callbacks)", "_internal/"),
    ("LangGraph + LangChain (graph run, callbacks)", "langchain_core/"),
    ("LangGraph + LangChain (graph run, callbacks)", "bench/graph.py"),
    ("anyio task groups, cancel scopes, memory streams", "anyio/"),
    ("anyio task groups, cancel scopes, memory streams", "sniffio/"),
    ("uvicorn HTTP protocol (httptools)", "uvicorn/"),
    ("asyncio event loop", "asyncio/"),
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


def component(frame: str) -> str | None:
    match = FRAME.match(frame)
    path = match.group("file") if match else frame
    for name, fragment in COMPONENTS:
        if fragment in path:
            return name
    return None


def analyse(raw: Path, top: int = 25) -> dict[str, object]:
    """Shares by component (innermost known frame) and the top functions by self time."""
    by_component: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        short = re.sub(r"/.*?site-packages/|/root/\.pyenv/[^ ]*?/lib/python3\.\d+/|"
                       + re.escape(str(REPO)) + "/", "", frames[-1])
        by_function[short] += count
        owner = next((c for f in reversed(frames) if (c := component(f)) is not None), "other")
        by_component[owner] += count
    return {
        "samples": total,
        "components": {k: round(100 * v / max(total, 1), 1) for k, v in
                       by_component.most_common()},
        "functions": {k: round(100 * v / max(total, 1), 1) for k, v in
                      by_function.most_common(top)},
    }


async def _open_paused(app: Any, state: dict[str, Any], method: str, path: str,
                       headers: list[list[tuple[bytes, bytes]]], body: bytes, count: int,
                       ) -> list[asyncio.Task[None]]:
    """Start `count` streams by direct ASGI calls (rotating through `headers`, one set
    per principal); return once each has answered 200."""
    from bench.protections import _scope

    started = 0
    all_started = asyncio.Event()

    async def one(index: int) -> None:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # a client that stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if message["status"] != 200:
                    raise RuntimeError(f"stream refused with {message['status']}")
                started += 1
                if started == count:
                    all_started.set()

        await app(_scope(method, path, headers[index % len(headers)], state), receive, send)

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await asyncio.wait_for(all_started.wait(), 120)
    await asyncio.sleep(0.5)  # every run reaches the model's pause
    return tasks


async def memory_per_stream(count: int, creds: Credentials,
                            sink: Any) -> dict[str, object]:
    """Python allocations per open (paused) stream, in-process, by component."""
    import gc
    import tracemalloc

    from bench.bare_app import make_app
    from bench.graph import DELAY_VAR
    from bench.protections import configurations
    from service.app import create_app
    from service.observability.logging import configure_logging
    from service.settings import Settings

    os.environ[DELAY_VAR] = str(HOLD_DELAY_MS)
    out: dict[str, object] = {}
    settings = Settings(**{**configurations(creds)["all"],
                           "graphs": {"bench": "bench.graph:make_graph"}})
    common = [(b"host", b"bench"), (b"content-type", b"application/json")]
    # One key per 50 streams: under `max_concurrent_streams` (64) per principal.
    keyed = [[*common, (b"x-api-key", key.encode())] for key in creds.api_keys]
    configure_logging(settings, stream=sink)
    apps: dict[str, tuple[Any, str, list[list[tuple[bytes, bytes]]], bytes]] = {
        "bare": (make_app(1), "/chat/stream", [common], b'{"message": "hi"}'),
        "graphgate": (create_app(settings), "/v1/chat/stream", keyed, b'{"message": "hi"}'),
    }
    for label, (app, path, hdrs, body) in apps.items():
        context = (app.router.lifespan_context(app) if label == "graphgate"
                   else contextlib.nullcontext({}))
        async with context as state:
            warm = await _open_paused(app, state or {}, "POST", path, hdrs, body, 5)
            for task in warm:
                task.cancel()
            await asyncio.gather(*warm, return_exceptions=True)
            gc.collect()
            tracemalloc.start(1)
            before = tracemalloc.take_snapshot()
            tasks = await _open_paused(app, state or {}, "POST", path, hdrs, body, count)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            diff = after.compare_to(before, "filename")
            grouped: collections.Counter[str] = collections.Counter()
            for stat in diff:
                name = stat.traceback[0].filename
                grouped[component(f"x ({name}:1)") or _short(name)] += stat.size_diff
            total = sum(stat.size_diff for stat in diff)
            out[label] = {
                "kb_per_stream": round(total / count / 1024, 1),
                "by_component_kb": {k: round(v / count / 1024, 2)
                                    for k, v in grouped.most_common(20)},
            }
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return out


def _short(path: str) -> str:
    return re.sub(r".*site-packages/|.*/lib/python3\.\d+/", "", path)


def record(pid: int, out: Path, seconds: float, py_spy: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--gil", "--nonblocking", "--rate", "250",
         "--format", "raw", "--duration", str(int(seconds)), "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_idle(server: Server, creds: Credentials, args: argparse.Namespace,
                 py_spy: str, out: Path) -> dict[str, object]:
    """py-spy on `server` while K streams are held open and nothing is sent."""
    target = server.stream_target(creds.headers("api_key"))

    async def hold_and_sample() -> dict[str, float]:
        held = await hold_streams(target, args.idle, parallel=100, timeout_s=240)
        try:
            await asyncio.sleep(2.0)  # let the last runs reach their pause
            cpu = server.cpu_seconds()
            spy = record(server.pid, out / "idle.txt", args.seconds, py_spy)
            await asyncio.sleep(args.seconds + 1)
            spy.wait(60)
            return {"open": held.opened, "errors": len(held.errors),
                    "idle_cpu_pct": round((server.cpu_seconds() - cpu)
                                          / (args.seconds + 1) * 100, 1)}
        finally:
            held.close()

    figures = run_async(hold_and_sample())
    return {**figures, **analyse(out / "idle.txt")}


def profile_server(server: Server, creds: Credentials, args: argparse.Namespace,
                   py_spy: str, out: Path) -> dict[str, object]:
    """py-spy on `server` under stream load, then (unless --storage) under GET load."""
    keys = creds.headers("api_key")
    report: dict[str, object] = {}
    body = None
    if args.storage:
        # As the storage section: each client continues its own thread, turn after turn.
        body = b'{"message": "hi", "thread_id": "profile-{client}"}'
    stream = server.stream_target(keys, body=body)
    run_async(stream_load(stream, 10, 1.0))  # warm
    spy = record(server.pid, out / "streams.txt", args.seconds, py_spy)
    time.sleep(0.5)
    concurrency = 20 if args.storage else args.concurrency
    result = run_async(stream_load(stream, concurrency, args.seconds - 1))
    spy.wait(args.seconds + 30)
    report["streams"] = {"streams_per_s": round(len(result.ok) / result.elapsed_s, 1),
                         **analyse(out / "streams.txt")}
    if args.storage:
        return report
    get = server.get_target(keys)
    spy = record(server.pid, out / "get.txt", args.seconds, py_spy)
    time.sleep(0.5)
    wrk = shutil.which("wrk")
    if wrk:
        script = out / "get.lua"
        script.write_text('request = function() return wrk.format("GET", "/info", '
                          f'{{["X-API-Key"]="{creds.api_keys[0]}"}}) end\n')
        subprocess.run([wrk, "-t1", "-c50", f"-d{int(args.seconds - 1)}s", "-s",
                        str(script), f"http://127.0.0.1:{server.port}"],
                       capture_output=True, timeout=args.seconds + 30)
    else:
        run_async(get_load(get, 50, args.seconds - 1))
    spy.wait(args.seconds + 30)
    report["get"] = analyse(out / "get.txt")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "profile")
    parser.add_argument("--memory", type=int, metavar="K",
                        help="instead: Python allocations per open stream, K streams "
                        "held in-process (tracemalloc), bare app against graphgate")
    parser.add_argument("--idle", type=int, metavar="K",
                        help="instead: K streams held open on a paused graph, sampled while "
                        "nothing is sent (what idle open streams cost)")
    parser.add_argument("--storage", choices=("memory", "sqlite", "postgres"),
                        help="instead: conversation turns (each client continues its own "
                        "thread, as the storage section) on this store, streams only")
    args = parser.parse_args(argv)
    if args.memory:
        out = args.out.resolve()
        with open(os.devnull, "w") as sink:
            creds = Credentials(out / "creds", args.memory // 50 + 1)
        memory = asyncio.run(memory_per_stream(args.memory, creds, sink))
        for label, data in memory.items():
            assert isinstance(data, dict)
            print(f"\n== {label}: {data['kb_per_stream']} KB of Python allocations per stream")
            for name, kb in data["by_component_kb"].items():
                print(f"  {kb:7.2f} KB  {name}")
        print(json.dumps(memory, separators=(",", ":")))
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        parser.error("py-spy is not installed (.venv/bin/pip install py-spy)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The concurrent-stream cap is per key: enough keys for --idle's streams.
    creds = Credentials(out / "creds", max(50, (args.idle or 0) // 50 + 1))
    if args.idle:
        proc.raise_fd_limit(2 * args.idle + 1000)
        server = Server("graphgate-idle", "graphgate", out, tokens=1, delay_ms=HOLD_DELAY_MS,
                        env=graphgate_env(creds, out)).start()
        try:
            report = {"idle": profile_idle(server, creds, args, py_spy, out)}
        finally:
            server.stop()
        return print_report(report)
    with contextlib.ExitStack() as stack:
        env = graphgate_env(creds, out)
        if args.storage == "postgres":
            postgres = Postgres()
            stack.callback(postgres.close)
            env = graphgate_env(creds, out, database_url=postgres.url)
        elif args.storage == "sqlite":
            env = graphgate_env(creds, out, database_url=f"sqlite:///{out}/profile.sqlite")
        server = Server("graphgate-profiled", "graphgate", out, tokens=50, delay_ms=0,
                        env=env).start()
        stack.callback(server.stop)
        report = profile_server(server, creds, args, py_spy, out)
    return print_report(report)


def print_report(report: dict[str, object]) -> int:
    for phase, data in report.items():
        assert isinstance(data, dict)
        print(f"\n== {phase}: {data['samples']} samples (on-CPU, GIL held)")
        if "idle_cpu_pct" in data:
            print(f"  {data['open']} streams open ({data['errors']} failed to open), "
                  f"server CPU while idle {data['idle_cpu_pct']}%")
        for name, pct in data["components"].items():
            print(f"  {pct:5.1f}%  {name}")
        print("  -- top functions by self time")
        for name, pct in list(data["functions"].items())[:15]:
            print(f"  {pct:5.1f}%  {name}")
    print(json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
