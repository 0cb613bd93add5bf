"""The benchmark run: sections of rows measured A B A B, medians with spread, targets.

Every section starts its servers, warms each one, then measures the rows in turn, round
after round (A B C A B C ...), so slow drift on a shared machine hits every row alike.
Each figure is the median of the rounds, with its min-max spread; ratios to a reference
row are the median of per-round ratios (each round's rows ran back to back).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bench import proc
from bench.client import LoadResult, Target, get_load, hold_streams, stream_load
from bench.infra import REPO, Nginx, Postgres, Redis, Unavailable, free_port, stop_process
from bench.servers import Credentials, Server, find_langgraph, graphgate_env

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    rounds: int = 3
    tokens: int = 50
    stream_s: float = 1.0
    concurrencies: tuple[int, ...] = (1, 10, 50)
    variant_concurrencies: tuple[int, ...] = (50,)
    official_min_streams: int = 6  # its ~1 s queue latency needs a floor at c=1
    get_s: float = 1.0  # wrk takes whole seconds; under 1 s the Python client runs
    get_connections: int = 50
    principals: int = 200
    capacity_rounds: int = 3
    capacity_round: int = 500  # per round, every server
    capacity: int = 5000  # once, graphgate only: the target's figure
    capacity_official: int = 200
    hold_s: float = 3.0
    protection_gets: int = 500
    protection_streams: int = 30
    nginx_tokens: int = 20
    nginx_delay_ms: float = 5.0
    nginx_streams: int = 10
    storage_s: float = 2.0
    storage_concurrency: int = 20
    workers_s: float = 1.5
    warmup_s: float = 0.3


FULL = Sizes()
SMOKE = Sizes(tokens=5, stream_s=0.2, concurrencies=(1, 10), variant_concurrencies=(10,),
              official_min_streams=2, get_s=0.2, get_connections=10, principals=20,
              capacity_rounds=1, capacity_round=20, capacity=20, capacity_official=10,
              hold_s=0.2, protection_gets=20, protection_streams=2, nginx_tokens=5,
              nginx_streams=2, storage_s=0.2, storage_concurrency=4, workers_s=0.2,
              warmup_s=0.1)
SECTIONS = ("streams", "protections", "capacity", "nginx", "storage", "workers")
# A stream with this pause before its one token stays open until the client leaves.
HOLD_DELAY_MS = 600_000


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run the client on uvloop when present: it leaves more CPU to the servers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class Figure:
    section: str
    row: str
    metric: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        clean = [v for v in self.values if not math.isnan(v)]
        return statistics.median(clean) if clean else math.nan

    @property
    def spread(self) -> tuple[float, float]:
        clean = [v for v in self.values if not math.isnan(v)]
        return (min(clean), max(clean)) if clean else (math.nan, math.nan)


@dataclass
class Goal:
    name: str
    measured: float
    goal: str
    met: bool | None  # None: not measured
    unit: str = "x"


class Results:
    def __init__(self) -> None:
        self.figures: dict[tuple[str, str, str], Figure] = {}
        self.targets: list[Goal] = []
        self.notes: list[str] = []

    def add(self, section: str, row: str, metric: str, unit: str, value: float) -> None:
        key = (section, row, metric)
        if key not in self.figures:
            self.figures[key] = Figure(section, row, metric, unit)
        self.figures[key].values.append(float(value))

    def get(self, section: str, row: str, metric: str) -> Figure | None:
        return self.figures.get((section, row, metric))

    def paired(self, section: str, metric: str, row: str, ref: str,
               op: Callable[[float, float], float]) -> float:
        """Median over rounds of op(row, ref), pairing each round's two values."""
        a, b = self.get(section, row, metric), self.get(section, ref, metric)
        if a is None or b is None:
            return math.nan
        pairs = [op(x, y) for x, y in zip(a.values, b.values, strict=False)
                 if not (math.isnan(x) or math.isnan(y)) and y != 0]
        return statistics.median(pairs) if pairs else math.nan

    def target(self, name: str, measured: float, goal: str, ok: Callable[[float], bool],
               unit: str = "x") -> None:
        met = None if math.isnan(measured) else ok(measured)
        self.targets.append(Goal(name, measured, goal, met, unit))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", file=sys.stderr, flush=True)


@dataclass
class Context:
    sizes: Sizes
    workdir: Path
    creds: Credentials
    results: Results
    stack: ExitStack
    langgraph: str | None
    wrk: str | None
    redis: Redis | None = None
    deadline: float = math.inf

    def server(self, name: str, kind: str, *, tokens: int | None = None,
               delay_ms: float = 0.0, **kwargs: Any) -> Server:
        server = Server(name, kind, self.workdir,  # type: ignore[arg-type]
                        tokens=self.sizes.tokens if tokens is None else tokens,
                        delay_ms=delay_ms, langgraph=self.langgraph, **kwargs)
        return server

    @contextmanager
    def running(self, servers: Sequence[Server]) -> Iterator[None]:
        """Boot `servers` in parallel, wait for each, stop them all on the way out."""
        try:
            log(f"  starting {', '.join(s.name for s in servers)}")
            for server in servers:
                server.launch()
            for server in servers:
                server.wait_ready()
            yield
        finally:
            for server in servers:
                server.stop()

    def gg_env(self, **kwargs: Any) -> dict[str, str]:
        return graphgate_env(self.creds, self.workdir, **kwargs)


_STARTED = time.monotonic()


def log(text: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {text}", file=sys.stderr, flush=True)


# -- measurements --------------------------------------------------------------------------


def measure_streams(ctx: Context, section: str, row: str, server: Server, target: Target,
                    concurrency: int, duration_s: float, *, min_streams: int = 0,
                    label: str = "") -> LoadResult:
    cpu = server.cpu_seconds()
    result = run_async(stream_load(target, concurrency, duration_s, min_streams=min_streams))
    cpu = server.cpu_seconds() - cpu
    ok = result.ok
    tag = label or f"c={concurrency}"
    r = ctx.results
    r.add(section, row, f"{tag} streams/s", "/s", len(ok) / result.elapsed_s)
    r.add(section, row, f"{tag} events/s", "/s", sum(s.events for s in ok) / result.elapsed_s)
    r.add(section, row, f"{tag} TTFE p50", "ms",
          percentile([s.ttfe_s * 1e3 for s in ok if s.ttfe_s is not None], 50))
    r.add(section, row, f"{tag} TTFE p99", "ms",
          percentile([s.ttfe_s * 1e3 for s in ok if s.ttfe_s is not None], 99))
    r.add(section, row, f"{tag} stream p50", "ms", percentile([s.total_s * 1e3 for s in ok], 50))
    r.add(section, row, f"{tag} stream p99", "ms", percentile([s.total_s * 1e3 for s in ok], 99))
    r.add(section, row, f"{tag} server CPU/stream", "ms", cpu * 1e3 / max(len(ok), 1))
    r.add(section, row, f"{tag} events/stream", "",
          statistics.median([s.events for s in ok]) if ok else math.nan)
    r.add(section, row, f"{tag} errors", "", result.errors)
    if result.errors:
        kinds = sorted({s.error or "?" for s in result.streams if not s.ok})
        r.note(f"{section}/{row} {tag}: {result.errors} failed streams ({', '.join(kinds)})")
    short = [s for s in ok if s.tokens < ctx.sizes.tokens]
    if short:
        r.note(f"{section}/{row} {tag}: {len(short)} streams had fewer tokens than sent")
    return result


WRK_SCRIPT = """\
local creds = {%s}
local origin = %s
local counter = 0
request = function()
  counter = counter + 1
  local headers = {}
  if origin ~= "" then headers["Origin"] = origin end
  if #creds > 0 then
    local c = creds[(counter %% #creds) + 1]
    headers[c[1]] = c[2]
  end
  return wrk.format("GET", "%s", headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"status\\":%%d,\\"connect\\":%%d," ..
    "\\"read\\":%%d,\\"write\\":%%d,\\"timeout\\":%%d,\\"p50_us\\":%%d,\\"p99_us\\":%%d}\\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def measure_get(ctx: Context, section: str, row: str, server: Server, target: Target) -> None:
    """Requests/s of an authenticated trivial GET, with wrk (or the Python client)."""
    sizes, r = ctx.sizes, ctx.results
    cpu = server.cpu_seconds()
    if ctx.wrk and sizes.get_s >= 1:
        creds = ", ".join(f"{{{_lua_string(k)}, {_lua_string(v)}}}" for k, v in target.credentials)
        origin = dict(target.extra_headers).get("origin", "")
        script = ctx.workdir / f"wrk-{target.name.replace(' ', '_')}.lua"
        script.write_text(WRK_SCRIPT % (creds, _lua_string(origin), target.path))
        out = subprocess.run(
            [ctx.wrk, "-t1", f"-c{sizes.get_connections}", f"-d{int(sizes.get_s)}s", "--timeout",
             "5s", "-s", str(script), f"http://127.0.0.1:{target.port}"],
            capture_output=True, text=True, timeout=sizes.get_s + 30)
        line = next((x for x in out.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
        if line is None:
            r.note(f"{section}/{row}: wrk printed no summary: {out.stdout[-300:]} {out.stderr}")
            return
        data = json.loads(line.removeprefix("BENCHJSON "))
        errors = sum(data[k] for k in ("status", "connect", "read", "write", "timeout"))
        seconds = data["duration_us"] / 1e6
        ok = data["requests"] - errors
        r.add(section, row, "GET p50", "ms", data["p50_us"] / 1e3)
        r.add(section, row, "GET p99", "ms", data["p99_us"] / 1e3)
    else:
        ok, errors, seconds = run_async(get_load(target, sizes.get_connections, sizes.get_s))
    cpu = server.cpu_seconds() - cpu
    r.add(section, row, "GET req/s", "/s", ok / seconds)
    r.add(section, row, "GET server CPU/req", "us", cpu * 1e6 / max(ok, 1))
    r.add(section, row, "GET errors", "", errors)
    if errors:
        r.note(f"{section}/{row}: {errors} GET requests failed or were not 2xx")


def warm(server: Server, target: Target, seconds: float) -> None:
    run_async(stream_load(target, 4, seconds, min_streams=4))


# -- sections ------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    server: Server
    target: Target
    concurrencies: tuple[int, ...] = ()
    min_streams: int = 0


def _otlp_sink(ctx: Context) -> str:
    """Start the do-nothing collector (once per run); its traces endpoint."""
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx.stack.callback(stop_process, sink)
    return f"http://127.0.0.1:{port}/v1/traces"


def _variants(ctx: Context) -> dict[str, Server]:
    """graphgate as shipped, and the rows that each change one thing."""
    servers = {"graphgate": ctx.server("graphgate", "graphgate", env=ctx.gg_env())}
    if ctx.redis is not None:
        servers["graphgate redis"] = ctx.server(
            "graphgate-redis", "graphgate", env=ctx.gg_env(rate_limit_uri=ctx.redis.url))
    servers["graphgate otel"] = ctx.server(
        "graphgate-otel", "graphgate", env=ctx.gg_env(otlp_endpoint=_otlp_sink(ctx)))
    servers["graphgate off"] = ctx.server("graphgate-off", "graphgate",
                                          env=ctx.gg_env(protections=False))
    return servers


def section_streams(ctx: Context) -> None:
    """On one set of servers: first GET requests/s, then TTFE, stream time, streams/s
    and events/s at each concurrency (50-token graph).

    GET first, because each stream leaves a thread behind and graphgate's `memory:`
    thread registry scans every thread on `GET /v1/threads`: measured after the streams,
    the GET figure would depend on how many streams ran before it.
    GET rows: graphgate's trivial authenticated route (`GET /info`: a static body behind
    auth, rate limit, metrics, access log and the rest) with API keys and JWTs, an
    authenticated list (`GET /v1/threads`: the same plus a registry query) and the public
    `/healthz`; the bare app's `/hello`; the official server's `/ok`.
    """
    sizes, creds = ctx.sizes, ctx.creds
    keys, jwts = creds.headers("api_key"), creds.headers("jwt")
    bare = ctx.server("bare", "bare")
    gg = _variants(ctx)
    main = gg["graphgate"]
    gets = [Row("bare", bare, bare.get_target()),
            Row("graphgate", main, main.get_target(keys)),
            Row("graphgate jwt", main, main.get_target(jwts)),
            Row("graphgate /v1/threads", main, main.get_target(keys, path="/v1/threads")),
            Row("graphgate /healthz", main, main.get_target(path="/healthz"))]
    streams = [Row("bare", bare, bare.stream_target(), sizes.concurrencies),
               Row("graphgate", main, main.stream_target(keys), sizes.concurrencies),
               Row("graphgate jwt", main, main.stream_target(jwts),
                   sizes.variant_concurrencies)]
    for label, server in gg.items():
        if label != "graphgate":
            use = () if label == "graphgate off" else keys
            gets.append(Row(label, server, server.get_target(use)))
            streams.append(Row(label, server, server.stream_target(use),
                               sizes.variant_concurrencies))
    servers = [bare, *gg.values()]
    if ctx.langgraph:
        official = ctx.server("official", "official")
        servers.append(official)
        gets.append(Row("official", official, official.get_target()))
        streams.append(Row("official", official, official.stream_target(),
                           sizes.concurrencies, min_streams=sizes.official_min_streams))
    with ctx.running(servers):
        for round_no in range(sizes.rounds):
            log(f"  get round {round_no + 1}/{sizes.rounds}")
            for row in gets:
                measure_get(ctx, "get", row.label, row.server, row.target)
        for row in streams:
            warm(row.server, row.target, sizes.warmup_s)
        for round_no in range(sizes.rounds):
            log(f"  streams round {round_no + 1}/{sizes.rounds}")
            for row in streams:
                for concurrency in row.concurrencies:
                    measure_streams(ctx, "streams", row.label, row.server, row.target,
                                    concurrency, sizes.stream_s,
                                    min_streams=row.min_streams * max(1, concurrency // 10))


def section_protections(ctx: Context) -> None:
    """Each protection's CPU cost per request and per event, in-process (no sockets)."""
    from bench.protections import Counts, run_round

    counts = Counts(gets=ctx.sizes.protection_gets, streams=ctx.sizes.protection_streams)
    if counts.gets > 100:
        run_round(ctx.creds, Counts(gets=20, streams=2))  # imports, first-call caches
    for round_no in range(ctx.sizes.rounds):
        log(f"  protections round {round_no + 1}/{ctx.sizes.rounds}")
        for label, figures in run_round(ctx.creds, counts).items():
            for metric, value in figures.items():
                ctx.results.add("protections", label, f"{metric} CPU", "us", value)


async def _capacity_once(server: Server, target: Target, count: int,
                         hold_s: float) -> dict[str, float]:
    warmup = await hold_streams(target, 10)
    warmup.close()
    await asyncio.sleep(1.0)
    rss_before = server.rss_bytes()
    held = await hold_streams(target, count, parallel=100, timeout_s=240)
    await asyncio.sleep(0.5)  # let the last runs reach their pause
    rss_held = server.rss_bytes()
    cpu = server.cpu_seconds()
    await asyncio.sleep(hold_s)
    cpu_idle = (server.cpu_seconds() - cpu) / hold_s
    # Still open after the hold: a connection the server dropped reads as EOF.
    alive = sum(1 for c in held.connections if not c.reader.at_eof())
    held.close()
    opened = max(held.opened, 0)
    return {"opened": opened, "alive": alive, "errors": len(held.errors),
            "ramp_s": held.ramp_s, "rss_before_mb": rss_before / 2**20,
            "rss_held_mb": rss_held / 2**20,
            "rss_per_stream_kb": (rss_held - rss_before) / 1024 / max(opened, 1),
            "idle_cpu_pct": cpu_idle * 100}


def _hold(ctx: Context, label: str, kind: str, count: int) -> None:
    keys = ctx.creds.headers("api_key")
    env = ctx.gg_env() if kind == "graphgate" else {}
    server = ctx.server(f"{label}-hold", kind, tokens=1, delay_ms=HOLD_DELAY_MS, env=env,
                        official_jobs=count if kind == "official" else None)
    target = server.stream_target(keys if kind == "graphgate" else ())
    with ctx.running([server]):
        got = run_async(_capacity_once(server, target, count, ctx.sizes.hold_s))
    row = f"{label} K={count}"
    for metric, unit in (("opened", ""), ("alive", ""), ("errors", ""),
                         ("rss_per_stream_kb", "KB"), ("rss_before_mb", "MB"),
                         ("rss_held_mb", "MB"), ("idle_cpu_pct", "%"), ("ramp_s", "s")):
        ctx.results.add("capacity", row, metric.replace("_", " "), unit, got[metric])
    if got["errors"]:
        ctx.results.note(f"capacity/{row}: {got['errors']:.0f} streams failed to open")


def section_capacity(ctx: Context) -> None:
    """Hold K streams open on one worker (a graph paused before its one token): server
    RSS per open stream, CPU while holding them, errors. A fresh server for every run:
    K per round on every server, then the target's K once on graphgate (its ramp alone
    takes about a minute on this machine)."""
    sizes = ctx.sizes
    wanted = 2 * max(sizes.capacity, sizes.capacity_round) + 1000
    limit = proc.raise_fd_limit(wanted)
    if limit < wanted:
        ctx.results.note(f"open-file limit is {limit}, below the {wanted} the capacity "
                         "rows need")
    kinds = [("bare", "bare", sizes.capacity_round),
             ("graphgate", "graphgate", sizes.capacity_round)]
    if ctx.langgraph:
        kinds.append(("official", "official", sizes.capacity_official))
    for round_no in range(sizes.capacity_rounds):
        log(f"  capacity round {round_no + 1}/{sizes.capacity_rounds}")
        for label, kind, count in kinds:
            _hold(ctx, label, kind, count)
    if sizes.capacity != sizes.capacity_round:
        log(f"  capacity: graphgate with {sizes.capacity} streams")
        _hold(ctx, "graphgate", "graphgate", sizes.capacity)


def section_nginx(ctx: Context) -> None:
    """Per-event delay through the shipped nginx site (TLS, SSE location) vs direct."""
    sizes, r = ctx.sizes, ctx.results
    keys = ctx.creds.headers("api_key")
    gg = ctx.server("graphgate-paced", "graphgate", tokens=sizes.nginx_tokens,
                    delay_ms=sizes.nginx_delay_ms, env=ctx.gg_env())
    with ctx.running([gg]):
        try:
            nginx = Nginx(gg.port)
        except Unavailable as exc:
            r.note(f"nginx row skipped: {exc}")
            return
        ctx.stack.callback(nginx.close)
        targets = {
            "direct": gg.stream_target(keys),
            "nginx": gg.stream_target(keys, port=nginx.https_port,
                                      ssl_context=nginx.ssl_context(),
                                      host_header="graphgate.example.com"),
        }
        for target in targets.values():
            run_async(stream_load(target, 1, 0, min_streams=2))
        for round_no in range(sizes.rounds):
            log(f"  nginx round {round_no + 1}/{sizes.rounds}")
            for label, target in targets.items():
                result = run_async(stream_load(target, 1, 0, min_streams=sizes.nginx_streams,
                                               stamps=True, max_streams=sizes.nginx_streams))
                delays = [d / 1e6 for s in result.ok for d in s.delays_ns]
                r.add("nginx", label, "event delay p50", "ms", percentile(delays, 50))
                r.add("nginx", label, "event delay p99", "ms", percentile(delays, 99))
                r.add("nginx", label, "TTFE p50", "ms",
                      percentile([s.ttfe_s * 1e3 for s in result.ok if s.ttfe_s], 50))
                coalesced = sum(s.coalesced for s in result.ok)
                r.add("nginx", label, "coalesced events", "", coalesced)
                r.add("nginx", label, "coalesced share", "%", 100 * coalesced / max(len(delays), 1))
                r.add("nginx", label, "stamped events", "", len(delays))
                r.add("nginx", label, "errors", "", result.errors)
        nginx.close()


def section_storage(ctx: Context) -> None:
    """Turns/s at concurrency 20 (each client continues its own thread) per checkpointer.

    A second Postgres row runs with `[postgres] check_connections = false`: what the
    pool's per-checkout health check (on by default) costs.
    """
    sizes, r = ctx.sizes, ctx.results
    keys = ctx.creds.headers("api_key")
    stores: list[tuple[str, str, dict[str, str]]] = [
        ("memory", "memory:", {}), ("sqlite", f"sqlite:///{ctx.workdir}/bench.sqlite", {})]
    try:
        postgres = Postgres()
        ctx.stack.callback(postgres.close)
        stores.append(("postgres", postgres.url, {}))
        stores.append(("postgres unchecked", postgres.url,
                       {"GRAPHGATE_POSTGRES__CHECK_CONNECTIONS": "false"}))
    except Unavailable as exc:
        r.note(f"postgres rows skipped: {exc}")
    servers = {label: ctx.server(f"graphgate-{label.replace(' ', '-')}", "graphgate",
                                 env={**ctx.gg_env(database_url=url), **extra})
               for label, url, extra in stores}
    with ctx.running(list(servers.values())):
        for server in servers.values():
            warm(server, server.stream_target(keys), sizes.warmup_s)
        for round_no in range(sizes.rounds):
            log(f"  storage round {round_no + 1}/{sizes.rounds}")
            for label, server in servers.items():
                # Each row's threads are its own (two rows share one Postgres).
                body = b'{"message": "hi", "thread_id": "%s-r%d-{client}"}' % (
                    label.replace(" ", "-").encode(), round_no)
                measure_streams(ctx, "storage", label, server,
                                server.stream_target(keys, body=body),
                                sizes.storage_concurrency, sizes.storage_s,
                                label=f"c={sizes.storage_concurrency} turns")


def section_workers(ctx: Context) -> None:
    """`graphgate serve --workers 1` (uvicorn) against `--workers 2` (gunicorn)."""
    sizes, r = ctx.sizes, ctx.results
    keys = ctx.creds.headers("api_key")
    uri = ctx.redis.url if ctx.redis is not None else "memory://"
    if ctx.redis is None:
        r.note("workers rows use per-process memory rate limits (no redis-server)")
    servers = {f"{n} worker{'s' if n > 1 else ''}": ctx.server(
        f"graphgate-w{n}", "graphgate", workers=n, env=ctx.gg_env(rate_limit_uri=uri))
        for n in (1, 2)}
    top = max(sizes.concurrencies)
    with ctx.running(list(servers.values())):
        for server in servers.values():
            warm(server, server.stream_target(keys), sizes.warmup_s)
        for round_no in range(sizes.rounds):
            log(f"  workers round {round_no + 1}/{sizes.rounds}")
            for label, server in servers.items():
                measure_streams(ctx, "workers", label, server, server.stream_target(keys), top,
                                sizes.workers_s)
                measure_get(ctx, "workers", label, server, server.get_target(keys))


# -- targets, table, JSON ------------------------------------------------------------------


def evaluate(results: Results, sizes: Sizes) -> None:
    top = max(sizes.concurrencies)

    def ratio(a: float, b: float) -> float:
        return a / b

    def delta(a: float, b: float) -> float:
        return a - b

    results.target(f"streams/s c={top}: graphgate / bare",
                   results.paired("streams", f"c={top} streams/s", "graphgate", "bare", ratio),
                   ">= 0.95x", lambda v: v >= 0.95)
    results.target("TTFE p50 c=1: graphgate - bare",
                   results.paired("streams", "c=1 TTFE p50", "graphgate", "bare", delta),
                   "<= 1 ms", lambda v: v <= 1.0, unit="ms")
    for row in ("graphgate", "graphgate jwt", "graphgate redis"):
        results.target(f"GET req/s: {row} / bare",
                       results.paired("get", "GET req/s", row, "bare", ratio),
                       ">= 0.6x", lambda v: v >= 0.6)
    results.target("GET req/s: graphgate /v1/threads (list) / bare",
                   results.paired("get", "GET req/s", "graphgate /v1/threads", "bare", ratio),
                   "(reported)", lambda v: True)
    results.target("GET req/s: graphgate /healthz (public) / bare",
                   results.paired("get", "GET req/s", "graphgate /healthz", "bare", ratio),
                   "(reported)", lambda v: True)
    big = f"graphgate K={sizes.capacity}"
    per = results.get("capacity", big, "rss per stream kb")
    errors = results.get("capacity", big, "errors")
    alive = results.get("capacity", big, "alive")
    bad = (errors is None or max(errors.values) > 0 or alive is None
           or min(alive.values) < sizes.capacity)
    results.target(f"open streams: graphgate KB RSS/stream at {sizes.capacity}, 0 errors",
                   per.median if per else math.nan, "<= 100 KB",
                   lambda v: v <= 100 and not bad, unit="KB")
    round_k = f"K={sizes.capacity_round}"
    results.target(f"open streams at {round_k}: graphgate - bare, KB RSS/stream",
                   results.paired("capacity", "rss per stream kb", f"graphgate {round_k}",
                                  f"bare {round_k}", delta), "(reported)", lambda v: True,
                   unit="KB")
    results.target("nginx: added event delay p50",
                   results.paired("nginx", "event delay p50", "nginx", "direct", delta),
                   "<= 1 ms", lambda v: v <= 1.0, unit="ms")
    # A proxy that buffers delivers most events in a burst; a loaded client can also read
    # two frames at once now and then, directly too. Batching: over 1% of events.
    coalesced = results.get("nginx", "nginx", "coalesced share")
    results.target("nginx: events arriving in a burst with the one before",
                   max(coalesced.values) if coalesced else math.nan, "<= 1% (no batching)",
                   lambda v: v <= 1.0, unit="%")
    metric = f"c={sizes.storage_concurrency} turns streams/s"
    results.target(f"turns/s c={sizes.storage_concurrency}: postgres / memory",
                   results.paired("storage", metric, "postgres", "memory", ratio),
                   ">= 0.5x", lambda v: v >= 0.5)
    results.target(f"turns/s c={sizes.storage_concurrency}: postgres, pool check off / memory",
                   results.paired("storage", metric, "postgres unchecked", "memory", ratio),
                   "(reported)", lambda v: True)
    results.target(f"turns/s c={sizes.storage_concurrency}: sqlite / memory",
                   results.paired("storage", metric, "sqlite", "memory", ratio),
                   "(reported)", lambda v: True)
    results.target(f"streams/s c={top}: graphgate / official",
                   results.paired("streams", f"c={top} streams/s", "graphgate", "official",
                                  ratio), ">= 5x", lambda v: v >= 5)
    lower = [results.paired("streams", f"c={c} TTFE p99", "graphgate", "official", ratio)
             for c in sizes.concurrencies]
    lower = [v for v in lower if not math.isnan(v)]
    results.target("TTFE p99: graphgate / official (worst concurrency)",
                   max(lower) if lower else math.nan, "< 1x", lambda v: v < 1)
    results.target(f"workers: 2 / 1, streams/s c={top}",
                   results.paired("workers", f"c={top} streams/s", "2 workers", "1 worker",
                                  ratio), "(reported)", lambda v: True)
    results.target("workers: 2 / 1, GET req/s",
                   results.paired("workers", "GET req/s", "2 workers", "1 worker", ratio),
                   "(reported)", lambda v: True)


def _fmt(value: float, unit: str = "") -> str:
    if math.isnan(value):
        return "-"
    if unit in ("", "/s", "%") and abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def table(results: Results) -> str:
    lines = [f"{'section':9} {'row':22} {'figure':26} {'median':>10} {'spread (min-max)':>20}"
             f" {'unit':>4}", "-" * 96]
    for f in results.figures.values():
        low, high = f.spread
        spread = f"{_fmt(low, f.unit)}-{_fmt(high, f.unit)}"
        lines.append(f"{f.section:9} {f.row:22} {f.metric:26} {_fmt(f.median, f.unit):>10} "
                     f"{spread:>20} {f.unit:>4}")
    lines += ["-" * 96, f"{'target':58} {'measured':>12} {'goal':>16} {'met':>6}"]
    for t in results.targets:
        verdict = "-" if t.met is None else ("yes" if t.met else "NO")
        measured = "-" if math.isnan(t.measured) else f"{t.measured:.3g}{t.unit}"
        lines.append(f"{t.name:58} {measured:>12} {t.goal:>16} {verdict:>6}")
    return "\n".join(lines)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "absent"


def versions(langgraph: str | None, wrk: str | None) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("graphgate", "langgraph", "langchain-core", "fastapi", "starlette", "uvicorn",
                 "gunicorn", "uvloop", "httptools", "orjson", "slowapi", "limits",
                 "structlog", "prometheus-client", "opentelemetry-sdk", "psycopg"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    if langgraph:
        python = str(Path(langgraph).parent / "python")
        found["langgraph-api (official)"] = _version(
            [python, "-c", "import importlib.metadata as m; print(m.version('langgraph-api'))"])
    found["nginx"] = _version(["nginx", "-v"])
    found["redis-server"] = _version(["redis-server", "--version"])
    found["wrk"] = _version([wrk, "--version"]) if wrk else "absent"
    return found


def run(sizes: Sizes, sections: Sequence[str], *, langgraph: str | None = None,
        official: bool = True, workdir: Path | None = None, max_seconds: float = math.inf,
        smoke: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    own_workdir = workdir is None
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="graphgate-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results = Results()
    lg = find_langgraph(langgraph) if official else None
    wrk = shutil.which("wrk")
    if not official:
        results.note("official row not run (--no-official; the smoke leaves it out)")
    elif lg is None:
        results.note("official row skipped: langgraph-cli[inmem] is not installed "
                     "(pip install 'langgraph-cli[inmem]' into .venv or var/bench-official)")
    if wrk is None or sizes.get_s < 1:
        results.note("GET rows use the Python client (wrk is absent or the run is too "
                     "short for it): a lower ceiling than wrk's")
    load = os.getloadavg()
    failed: list[str] = []
    with ExitStack() as stack:
        ctx = Context(sizes, workdir, Credentials(workdir / "creds", sizes.principals), results,
                      stack, lg, wrk, deadline=started + max_seconds)
        try:
            ctx.redis = Redis()
            stack.callback(ctx.redis.close)
        except Unavailable as exc:
            results.note(f"redis rows skipped: {exc}")
        for name in sections:
            if time.monotonic() > ctx.deadline:
                results.note(f"section {name} skipped: over the {max_seconds:.0f} s budget")
                continue
            log(f"{name} ...")
            section_started = time.monotonic()
            try:
                SECTION_FUNCS[name](ctx)
            except Exception as exc:  # one broken section must not lose the others
                results.note(f"section {name} failed: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[-1][:300] if str(exc) else ''}")
                failed.append(name)
            log(f"{name} done in {time.monotonic() - section_started:.0f} s")
    if own_workdir and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    elif failed:
        results.note(f"server logs, keys and databases are kept in {workdir}")
    evaluate(results, sizes)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "smoke": smoke, "sizes": asdict(sizes), "sections": list(sections),
        "failed_sections": failed,
        "cpus": os.cpu_count(), "loadavg_before": load, "loadavg_after": os.getloadavg(),
        "seconds": round(time.monotonic() - started, 1), "versions": versions(lg, wrk),
    }
    return {
        "meta": meta,
        "figures": [{"section": f.section, "row": f.row, "metric": f.metric, "unit": f.unit,
                     "median": f.median, "min": f.spread[0], "max": f.spread[1],
                     "values": f.values} for f in results.figures.values()],
        "targets": [asdict(t) for t in results.targets],
        "notes": results.notes,
        "table": table(results),
    }


SECTION_FUNCS: dict[str, Callable[[Context], None]] = {
    "streams": section_streams, "protections": section_protections,
    "capacity": section_capacity, "nginx": section_nginx, "storage": section_storage,
    "workers": section_workers,
}
