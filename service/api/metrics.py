"""`GET /metrics`: the Prometheus exposition, summed across workers under gunicorn.

Outside API-key/JWT auth and rate limits (scrapers must never be locked out); guarded
instead by `[metrics] token` (a bearer token Prometheus sends from a file) and/or served
only on `[metrics] port`, an internal listener.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import ResourcesDep
from service.errors import ServiceError
from service.observability.prometheus import exposition

router = APIRouter(include_in_schema=False)


class _MetricsUnauthorized(ServiceError):
    status, code, title = 401, "unauthorized", "Unauthorized"
    detail = "This endpoint needs the metrics bearer token."


class _NotHere(ServiceError):
    status, code, title = 404, "not_found", "Not Found"


def on_metrics_port(request: Request, port: int | None) -> bool:
    server = request.scope.get("server")
    return port is not None and server is not None and server[1] == port


@router.get("/metrics")
async def metrics(request: Request, res: ResourcesDep) -> Response:
    settings = res.settings.metrics
    if settings.port is not None and not on_metrics_port(request, settings.port):
        raise _NotHere()  # only the internal listener serves it
    if settings.token is not None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        expected = settings.token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), expected):
            raise _MetricsUnauthorized(
                headers={"WWW-Authenticate": 'Bearer realm="graphgate-metrics"'})
    body, content_type = exposition(res.metrics.registry)
    return Response(body, media_type=content_type)
