"""What each protection costs per request and per event, in-process, side by side.

Drives the real app (create_app, lifespan, every middleware) and the bare app by direct
ASGI calls, as bench/observability_overhead.py does for metrics and logs: no sockets,
no client, so a shared machine's noise mostly cancels and what remains is graphgate's
own CPU. Configurations start from everything off and add one protection at a time,
then all of them; each is rebuilt every round and rounds alternate A B C A B C.

Per configuration: microseconds per authenticated `GET /info` (a static body; bare:
`GET /hello`), per authenticated `GET /v1/threads` (a registry query too) and per public
`GET /healthz`, and for `POST /v1/chat/stream` the time of a
10-token stream and the marginal cost of one more event (from 10- and 100-token runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from bench.servers import ORIGIN, STREAM_LIMIT, Credentials

GRAPHS = {"short": "bench.graph:ten_tokens", "long": "bench.graph:hundred_tokens"}
SHORT, LONG = 10, 100
AUTH_GET = "GET /info (bare: /hello)"
LIST_GET = "GET /v1/threads"
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _base() -> dict[str, Any]:
    return {
        "env": "development", "database_url": "memory:", "graphs": GRAPHS,
        "auth": {"enabled": False}, "rate_limit": {"enabled": False},
        "metrics": {"enabled": False}, "logging": {"access_log": False, "format": "json"},
        "http": {"security_headers": False},
    }


def configurations(creds: Credentials) -> dict[str, dict[str, Any]]:
    """Label -> Settings keyword arguments; "none" first, "all" last."""
    auth = {"enabled": True, "api_keys_file": creds.keys_file}
    limits = {"enabled": True, "default_limits": STREAM_LIMIT, "run_limits": STREAM_LIMIT,
              "anonymous_limits": STREAM_LIMIT, "max_concurrent_streams": 64}
    layers: dict[str, dict[str, Any]] = {
        "none": {},
        "+auth (api key)": {"auth": auth},
        "+rate limit (memory)": {"rate_limit": limits},
        "+metrics": {"metrics": {"enabled": True}},
        "+access log": {"logging": {"access_log": True, "format": "json"}},
        "+cors": {"cors": {"allow_origins": [ORIGIN]}},
        "+security headers": {"http": {"security_headers": True}},
        "+allowed hosts": {"http": {"security_headers": False, "allowed_hosts": ["bench"]}},
    }
    everything: dict[str, Any] = {}
    for extra in layers.values():
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(everything.get(key), dict):
                everything[key] = {**everything[key], **value}
            else:
                everything[key] = value
    everything["http"] = {"security_headers": True, "allowed_hosts": ["bench"]}
    out = {label: {**_base(), **extra} for label, extra in layers.items()}
    out["all"] = {**_base(), **everything, "env": "production"}
    return out


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]],
           state: dict[str, Any]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000), "state": dict(state)}


async def call(app: ASGIApp, state: dict[str, Any], method: str, path: str,
               headers: list[tuple[bytes, bytes]], body: bytes = b"") -> tuple[int, int]:
    """One request; (status, body messages). After the body, `receive` waits for ever,
    as a connected client's would (the SSE response watches it for a disconnect)."""
    bodies = 0
    status = 0
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, bodies
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            bodies += 1

    await app(_scope(method, path, headers, state), receive, send)
    return status, bodies


async def per_call(app: ASGIApp, state: dict[str, Any], count: int, method: str, path: str,
                   headers: list[tuple[bytes, bytes]], body: bytes = b"") -> float:
    """CPU microseconds per call, over `count` calls (after one untimed call).

    Process CPU time, not wall time: on a machine shared with other work, time spent
    descheduled is not ours; worker threads (FastAPI runs sync dependencies in a
    thread pool) are counted.
    """
    status, _ = await call(app, state, method, path, headers, body)
    if status != 200:
        raise RuntimeError(f"{method} {path} answered {status}")
    started = time.process_time()
    for _ in range(count):
        await call(app, state, method, path, headers, body)
    return (time.process_time() - started) / count * 1e6


@dataclass(frozen=True)
class Counts:
    gets: int = 1000
    streams: int = 40


@contextlib.contextmanager
def _quiet_logs(settings: Any, sink: TextIO) -> Iterator[None]:
    from service.observability.logging import configure_logging

    configure_logging(settings, stream=sink)
    yield


async def measure_graphgate(kwargs: dict[str, Any], creds: Credentials, counts: Counts,
                            sink: TextIO) -> dict[str, float]:
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(**kwargs)
    headers = [(b"host", b"bench"), (b"origin", ORIGIN.encode())]
    if settings.auth.enabled:
        headers.append((b"x-api-key", creds.api_keys[0].encode()))
    json_headers = [*headers, (b"content-type", b"application/json")]
    with _quiet_logs(settings, sink):
        app = create_app(settings)
        async with app.router.lifespan_context(app) as lifespan_state:
            state = dict(lifespan_state or {})
            got = {
                AUTH_GET: await per_call(app, state, counts.gets, "GET", "/info", headers),
                LIST_GET: await per_call(app, state, counts.gets, "GET", "/v1/threads",
                                         headers),
                "GET /healthz": await per_call(app, state, counts.gets, "GET", "/healthz",
                                               headers),
            }
            short = await per_call(app, state, counts.streams, "POST", "/v1/chat/stream",
                                   json_headers, b'{"message": "hi", "graph": "short"}')
            long = await per_call(app, state, counts.streams, "POST", "/v1/chat/stream",
                                  json_headers, b'{"message": "hi", "graph": "long"}')
    got["stream (10 tokens)"] = short
    got["per extra event"] = (long - short) / (LONG - SHORT)
    return got


async def measure_bare(counts: Counts) -> dict[str, float]:
    from bench.bare_app import make_app

    headers = [(b"host", b"bench")]
    json_headers = [*headers, (b"content-type", b"application/json")]
    short_app, long_app = make_app(SHORT), make_app(LONG)
    got = {AUTH_GET: await per_call(short_app, {}, counts.gets, "GET", "/hello", headers)}
    short = await per_call(short_app, {}, counts.streams, "POST", "/chat/stream", json_headers,
                           b'{"message": "hi"}')
    long = await per_call(long_app, {}, counts.streams, "POST", "/chat/stream", json_headers,
                          b'{"message": "hi"}')
    got["stream (10 tokens)"] = short
    got["per extra event"] = (long - short) / (LONG - SHORT)
    return got


async def measure_round(creds: Credentials, counts: Counts,
                        sink: TextIO) -> dict[str, dict[str, float]]:
    """One round: the bare app, then every configuration (each built afresh)."""
    out = {"bare app": await measure_bare(counts)}
    for label, kwargs in configurations(creds).items():
        out[label] = await measure_graphgate(kwargs, creds, counts, sink)
    return out


def run_round(creds: Credentials, counts: Counts) -> dict[str, dict[str, float]]:
    with open(os.devnull, "w") as sink:
        return asyncio.run(measure_round(creds, counts, sink))
