"""What metrics and access logging cost per request, measured side by side in one run.

Drives the real app (create_app, lifespan and all middleware) by direct ASGI calls, so
network and client noise stay out of the difference: the same requests against the same
app built twice, once with `[metrics] enabled` and `[logging] access_log` on and once
with both off, alternating A B A B, each figure the median of the rounds.

    .venv/bin/python bench/observability_overhead.py [--requests 3000] [--rounds 5]

Logs go to /dev/null (a log pipeline's cost is not ours); JSON formatting is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import time
from typing import Any, TextIO

from service.app import create_app
from service.observability.logging import configure_logging
from service.settings import Settings

PATHS = ("/healthz", "/v1/threads", "/v1/threads/missing/state")


def settings(observed: bool) -> Settings:
    return Settings(env="development", database_url="memory:", auth={"enabled": False},
                    rate_limit={"enabled": False}, metrics={"enabled": observed},
                    logging={"access_log": observed, "format": "json"})


async def drive(app: Any, state: dict[str, Any], path: str, count: int) -> float:
    """Seconds per request for `count` GETs of `path`."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    started = time.perf_counter()
    for _ in range(count):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": [(b"host", b"bench")],
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
                 "state": dict(state)}
        await app(scope, receive, send)
    return (time.perf_counter() - started) / count


async def main(requests: int, rounds: int, sink: TextIO) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {p: {"on": [], "off": []} for p in PATHS}
    for observed in (True, False):  # warm both once (imports, caches)
        configure_logging(settings(observed), stream=io.StringIO())
    for _ in range(rounds):
        for label, observed in (("on", True), ("off", False)):
            cfg = settings(observed)
            configure_logging(cfg, stream=sink)
            app = create_app(cfg)
            async with app.router.lifespan_context(app) as lifespan_state:
                state = dict(lifespan_state or {})
                for path in PATHS:
                    await drive(app, state, path, requests // 10)  # warm-up
                    results[path][label].append(await drive(app, state, path, requests))
    report: dict[str, Any] = {"requests_per_round": requests, "rounds": rounds, "paths": {}}
    for path, by in results.items():
        on, off = statistics.median(by["on"]), statistics.median(by["off"])
        report["paths"][path] = {
            "with_us": round(on * 1e6, 1), "without_us": round(off * 1e6, 1),
            "overhead_us": round((on - off) * 1e6, 1), "ratio": round(on / off, 3),
            "spread_us": [round(min(by["on"]) * 1e6, 1), round(max(by["on"]) * 1e6, 1)],
        }
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with open(os.devnull, "w") as devnull:
        report = asyncio.run(main(args.requests, args.rounds, devnull))
    print(f"{'path':32} {'with':>10} {'without':>10} {'overhead':>10} {'ratio':>7}")
    for path, row in report["paths"].items():
        print(f"{path:32} {row['with_us']:>8.1f}us {row['without_us']:>8.1f}us "
              f"{row['overhead_us']:>8.1f}us {row['ratio']:>7.3f}")
    print(json.dumps(report))
