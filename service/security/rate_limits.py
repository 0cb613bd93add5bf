"""Per-principal request limits on slowapi's `Limiter` (which runs on `limits`).

Two limiters share one storage: `requests` (every non-probe request, one budget per
principal across all routes) and `runs` (routes that start a graph run). Buckets are
keyed by the verified principal (`key:<id>`, `jwt:<tenant>:<sub>`), never a credential,
and anonymous callers by client IP (already resolved through `[server] trusted_proxies`).

slowapi's decorators need a module-level limiter and its ASGI middleware re-sends the
response start on every chunk of an event stream, so graphgate drives `Limiter` from its
own pure-ASGI middleware the way slowapi's middleware does (`_check_request_limit`), with
slowapi pinned in pyproject.toml. The limit for a request comes from a context variable
set just before the synchronous check, which lets a key's own `rate_limit` replace the
default without slowapi knowing about principals.
"""

from __future__ import annotations

import contextvars
import inspect
from dataclasses import dataclass
from typing import Literal

import anyio.to_thread
import structlog
from prometheus_client import Gauge
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded
from slowapi.wrappers import LimitGroup
from starlette.datastructures import MutableHeaders
from starlette.requests import Request

from service.observability.metrics import Metrics
from service.security.limit_storage import SWEEP_INTERVAL_S, SweptMemoryStorage, storage_uri
from service.security.principal import principal_of
from service.settings import RateLimitSettings

log = structlog.get_logger("graphgate.rate_limit")

_current_limit: contextvars.ContextVar[str] = contextvars.ContextVar("graphgate_limit")

Verdict = Literal["allowed", "limited", "unavailable"]


def bucket_key(request: Request) -> str:
    """The rate-limit bucket: the principal's identity, or the client IP if anonymous."""
    principal = principal_of(request.scope)
    if principal is not None and principal.method != "anonymous":
        return principal.identity
    client = request.scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}"


def _limit_for_request() -> str:
    return _current_limit.get()


# slowapi inspects the limit provider's and the key function's signatures on every
# request; functions carrying their own `__signature__` answer that at once instead of
# re-deriving it (a quarter of the limiter's CPU per request, measured with cProfile).
for _function in (_limit_for_request, bucket_key):
    setattr(_function, "__signature__", inspect.signature(_function))  # noqa: B010


@dataclass
class Decision:
    verdict: Verdict
    # slowapi's (limit, bucket) pair behind the X-RateLimit-* headers, when known.
    window: object = None


class PrincipalLimiter:
    """One slowapi `Limiter` whose limit is chosen per request."""

    def __init__(self, settings: RateLimitSettings, *, name: str,
                 on_storage_error: Literal["memory", "open", "closed"],
                 backend_up: Gauge | None = None) -> None:
        uri = settings.storage_uri.get_secret_value()
        options: dict[str, float] = {}
        if settings.shared:
            # A black-holed Redis would otherwise hang the check forever.
            options = {"socket_timeout": settings.storage_timeout_s,
                       "socket_connect_timeout": settings.storage_timeout_s}
        self.name = name
        self.on_storage_error = on_storage_error
        self.backend_up = backend_up
        # Shared storage does network I/O in a synchronous client: keep it off the loop.
        self.blocking = settings.shared
        self.limiter = Limiter(
            key_func=bucket_key,
            application_limits=[_limit_for_request],
            in_memory_fallback=[_limit_for_request] if on_storage_error == "memory" else [],
            headers_enabled=True,
            strategy=settings.strategy,
            storage_uri=storage_uri(uri),
            storage_options=options,  # type: ignore[arg-type]
            key_prefix=name,
            key_style="url",
        )
        # slowapi also reads RATELIMIT_* variables from the environment and ./.env; the
        # settings, not a stray variable, decide whether limits apply and errors surface.
        self.limiter.enabled = True
        self.limiter._swallow_errors = False
        if on_storage_error == "memory":
            # slowapi scopes fallback limits by URL path, which would give every path (and
            # every made-up thread id) its own budget while Redis is down; keep the one
            # per-principal budget, as with Redis.
            self.limiter._in_memory_fallback = [
                LimitGroup(_limit_for_request, bucket_key, "global", False, None, None, None,
                           1, False)
            ]

    async def check(self, request: Request, limit: str) -> Decision:
        if self.blocking:
            return await anyio.to_thread.run_sync(self._check, request, limit)
        return self._check(request, limit)

    def _check(self, request: Request, limit: str) -> Decision:
        token = _current_limit.set(limit)
        try:
            self.limiter._check_request_limit(request, None, True)
        except RateLimitExceeded:
            self._report(up=not self.limiter._storage_dead)
            return Decision("limited", getattr(request.state, "view_rate_limit", None))
        except Exception as exc:  # the storage's own errors: redis, sockets, timeouts
            log.warning("ratelimit_backend_down", limiter=self.name, exc_type=type(exc).__name__,
                        policy=self.on_storage_error)
            self._report(up=False)
            verdict: Verdict = "allowed" if self.on_storage_error == "open" else "unavailable"
            return Decision(verdict)
        finally:
            _current_limit.reset(token)
        # With the memory fallback, slowapi answers from memory while the storage is down.
        self._report(up=not self.limiter._storage_dead)
        return Decision("allowed", getattr(request.state, "view_rate_limit", None))

    @property
    def swept_storage(self) -> SweptMemoryStorage | None:
        """The in-memory storage graphgate cleans up itself, if that is what this uses."""
        storage = self.limiter._storage
        return storage if isinstance(storage, SweptMemoryStorage) else None

    def _report(self, *, up: bool) -> None:
        if self.backend_up is not None:
            self.backend_up.set(1 if up else 0)

    async def check_with_headers(self, request: Request,
                                 limit: str) -> tuple[Decision, dict[str, str]]:
        """`check` and `headers` together: one thread hop, not two, with shared storage."""
        if self.blocking:
            return await anyio.to_thread.run_sync(self._check_with_headers, request, limit)
        return self._check_with_headers(request, limit)

    def _check_with_headers(self, request: Request,
                            limit: str) -> tuple[Decision, dict[str, str]]:
        decision = self._check(request, limit)
        return decision, ({} if decision.window is None else self._headers(decision))

    async def headers(self, decision: Decision) -> dict[str, str]:
        """X-RateLimit-* (and Retry-After when limited) for a decision, if the storage answers."""
        if decision.window is None:
            return {}
        if self.blocking:
            return await anyio.to_thread.run_sync(self._headers, decision)
        return self._headers(decision)

    def _headers(self, decision: Decision) -> dict[str, str]:
        headers = MutableHeaders()
        try:
            self.limiter._inject_asgi_headers(headers, decision.window)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("ratelimit_headers_failed", limiter=self.name, exc_type=type(exc).__name__)
            return {}
        result = dict(headers.items())
        if "x-ratelimit-reset" in result:
            # limits reports a float epoch; clients expect whole epoch seconds.
            result["x-ratelimit-reset"] = str(int(float(result["x-ratelimit-reset"])))
        if decision.verdict != "limited":
            # slowapi always adds Retry-After; on a successful response it would mislead.
            result.pop("retry-after", None)
        return result


class RateLimits:
    """The request and run limiters for one app, built in the lifespan."""

    def __init__(self, settings: RateLimitSettings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        up = metrics.rate_limit_backend_up if metrics is not None else None
        if up is not None:
            up.set(1)  # until a call says otherwise
        self.requests = PrincipalLimiter(settings, name="requests", backend_up=up,
                                         on_storage_error=settings.on_storage_error)
        self.runs = PrincipalLimiter(settings, name="runs", backend_up=up,
                                     on_storage_error=settings.runs_on_storage_error)

    async def sweep_periodically(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        """Drop expired in-memory entries now and then (see limit_storage); runs for the
        app's life, on the loop, where the hits are made."""
        storages = [s for s in (self.requests.swept_storage, self.runs.swept_storage)
                    if s is not None]
        if not storages:
            return
        while True:
            await anyio.sleep(interval_s)
            for storage in storages:
                storage.sweep()

    def request_limit(self, request: Request) -> str:
        principal = principal_of(request.scope)
        if principal is None or principal.method == "anonymous":
            return self.settings.anonymous_limits
        return principal.rate_limit or self.settings.default_limits
