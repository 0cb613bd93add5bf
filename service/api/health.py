"""Probes: /healthz (liveness, no dependencies) and /readyz (can we serve runs?)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.deps import ResourcesDep
from service.errors import problem
from service.persistence.checkpointer import check_ready

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> Response:
    """Liveness: the event loop answers. Never checks the database, so a database outage
    does not get healthy processes restarted."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request, res: ResourcesDep) -> Response:
    """Readiness: the checkpointer answers a real query in time, and we are not shutting down."""
    if res.lifecycle.draining:
        return problem(request, 503, "not_ready", "Not ready", "shutting down",
                       reason="shutting_down")
    reason = await check_ready(res.persistence, READY_TIMEOUT_S)
    if reason is not None:
        return problem(request, 503, "not_ready", "Not ready", reason, reason="storage")
    return JSONResponse({"status": "ready", "storage": res.persistence.kind})
