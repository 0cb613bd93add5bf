"""Typed dependencies: lifespan resources and the caller reach routes only through these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import (
    InsufficientScope,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
    request_id_of,
)
from service.persistence.threads import storage_key
from service.resources import Resources
from service.security.principal import Principal, principal_of

log = structlog.get_logger("graphgate.rate_limit")


# Dependencies are `async def` although they never await: FastAPI runs plain `def`
# dependencies in the thread pool, a round trip per dependency per request (measured in
# bench/: about 400 µs of a GET's 1 ms).
async def get_resources(request: Request) -> Resources:
    resources: Resources = request.state.resources
    return resources


async def get_request_id(request: Request) -> str:
    return request_id_of(request)


ResourcesDep = Annotated[Resources, Depends(get_resources)]
RequestIdDep = Annotated[str, Depends(get_request_id)]


class _Unauthenticated(ServiceError):
    status, code, title = 401, "unauthorized", "Unauthorized"


def get_principal(request: Request) -> Principal:
    principal = principal_of(request.scope)
    if principal is None:  # only on a public path, which no route needing it is
        raise _Unauthenticated()
    return principal


# Declared for the OpenAPI document only (so /docs offers "Authorize"): the
# authentication middleware has already verified whichever credential was sent.
_API_KEY_DOC = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey")
_BEARER_DOC = HTTPBearer(auto_error=False, scheme_name="BearerJWT")


def requires(scope: str | None) -> Callable[..., Awaitable[Principal]]:
    """A dependency giving the caller, or 403 when its credentials lack `scope`
    (None: any authenticated caller)."""

    async def dependency(
        request: Request,
        _api_key: Annotated[str | None, Security(_API_KEY_DOC)] = None,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER_DOC)] = None,
    ) -> Principal:
        principal = get_principal(request)
        if scope is not None and not principal.has_scope(scope):
            raise InsufficientScope(scope)
        return principal

    dependency.__name__ = f"requires_{(scope or 'caller').replace(':', '_')}"
    return dependency


@dataclass(frozen=True)
class ThreadScope:
    """The caller's own thread space: who owns its threads, and how they are keyed."""

    owner: str
    principal: Principal

    def key(self, thread_id: str) -> str:
        """The storage key of the caller's thread `thread_id`; never another owner's."""
        return storage_key(self.owner, thread_id)


def thread_scope(principal: Principal, resources: Resources) -> ThreadScope:
    share = resources.settings.auth.share_threads_within_tenant
    return ThreadScope(principal.owner(share_within_tenant=share), principal)


async def check_run_limit(request: Request, resources: Resources) -> None:
    """The per-principal limit on starting runs (`[rate_limit] run_limits`)."""
    if not resources.settings.rate_limit.enabled:
        return
    runs = resources.rate_limits.runs
    decision = await runs.check(request, resources.settings.rate_limit.run_limits)
    if decision.verdict == "limited":
        resources.metrics.rate_limited.labels("runs").inc()
        log.info("rate_limited", limiter="runs", path=request.url.path)
        headers = await runs.headers(decision)
        headers.setdefault("retry-after", "1")
        raise RateLimited(headers=headers, limit="runs")
    if decision.verdict == "unavailable":
        resources.metrics.storage_errors.labels("rate_limit").inc()
        raise ServiceUnavailable("Rate limits cannot be checked right now; try again shortly.")
