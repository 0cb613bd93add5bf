"""The in-memory rate-limit storage: limits' own, cleaned up by graphgate, no threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import httpx
import pytest
from starlette.requests import Request

from service.middleware.rate_limit import RATE_LIMITS_STATE_KEY
from service.security.limit_storage import SWEEP_INTERVAL_S, SweptMemoryStorage, storage_uri
from service.security.rate_limits import PrincipalLimiter, RateLimits
from service.settings import RateLimitSettings, Settings
from tests.conftest import make_settings
from tests.support.servers import ThreadServer


def settings(**overrides: object) -> RateLimitSettings:
    return RateLimitSettings(**{"enabled": True, **overrides})  # type: ignore[arg-type]


def request(client_ip: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/v1/threads", "headers": [],
                    "query_string": b"", "client": (client_ip, 1234), "state": {}})


def timers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()]


def test_memory_uri_maps_to_the_swept_storage_and_others_are_unchanged() -> None:
    assert storage_uri("memory://") == "graphgate-memory://"
    assert storage_uri("redis://cache:6379/0") == "redis://cache:6379/0"
    limiter = PrincipalLimiter(settings(), name="requests", on_storage_error="memory")
    assert isinstance(limiter.swept_storage, SweptMemoryStorage)


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
def test_hits_start_no_threads(strategy: str) -> None:
    """limits' memory storage starts a Timer thread whenever a hit finds none running
    (every 10 ms under load); graphgate's never does, and still counts."""
    limiter = PrincipalLimiter(settings(strategy=strategy), name="requests",
                               on_storage_error="memory")
    time.sleep(0.05)  # the storage's constructor starts one timer; let it finish
    before = timers()
    verdicts = []
    for i in range(300):
        verdicts.append(limiter._check(request(f"10.0.0.{i % 3}"), "50/minute").verdict)
        if i % 100 == 0:
            time.sleep(0.02)  # past limits' 10 ms timer period
    assert timers() == before == []
    # 100 hits per address against 50/minute: exactly 50 allowed for each.
    assert verdicts.count("allowed") == 150
    assert verdicts.count("limited") == 150


def test_sweep_drops_expired_entries_which_never_counted() -> None:
    limiter = PrincipalLimiter(settings(), name="requests", on_storage_error="memory")
    storage = limiter.swept_storage
    assert storage is not None
    for i in range(5):
        assert limiter._check(request(f"10.1.0.{i}"), "1/second").verdict == "allowed"
    assert limiter._check(request("10.1.0.0"), "1/second").verdict == "limited"
    assert len(storage.events) == 5
    time.sleep(1.1)
    # Expired entries no longer count, swept or not...
    assert limiter._check(request("10.1.0.0"), "1/second").verdict == "allowed"
    time.sleep(1.1)
    # ...and a sweep drops them from memory.
    storage.sweep()
    assert storage.events == {}


def test_the_app_sweeps_periodically() -> None:
    limits = RateLimits(settings())

    async def scenario() -> None:
        storage = limits.requests.swept_storage
        assert storage is not None
        assert limits.requests._check(request("10.2.0.1"), "1/second").verdict == "allowed"
        assert storage.events
        with anyio.move_on_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(limits.sweep_periodically, 0.05)
                while storage.events:  # noqa: ASYNC110 - polling the sweeper's effect
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        assert storage.events == {}

    anyio.run(scenario)


def test_shared_storage_is_left_to_its_own_expiry() -> None:
    """Redis expires its own keys: nothing for graphgate to sweep."""
    limiter = PrincipalLimiter(settings(storage_uri="redis://127.0.0.1:1/0"),
                               name="requests", on_storage_error="memory")
    assert limiter.swept_storage is None


def test_a_running_server_sweeps_its_limit_storage(
        serve: Callable[[Settings], ThreadServer]) -> None:
    """Through a real uvicorn server: the lifespan runs the sweeper, so entries from real
    requests are dropped once they expire, without another request touching the key."""
    server = serve(make_settings("memory:", rate_limit={
        "enabled": True, "anonymous_limits": "1/second", "default_limits": "1/second"}))
    assert httpx.get(server.url + "/v1/threads").status_code == 200
    limits: RateLimits = server.server.lifespan.state[RATE_LIMITS_STATE_KEY]
    storage = limits.requests.swept_storage
    assert storage is not None and storage.events  # the request's entry
    deadline = time.monotonic() + 2 + 2 * SWEEP_INTERVAL_S
    while storage.events:
        assert time.monotonic() < deadline, "the running server never swept its limits"
        time.sleep(0.1)
