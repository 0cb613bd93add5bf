"""JSON responses for the API routes, rendered with the streaming serializer (orjson with
fallbacks for LangChain messages and other graph values)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from service.streaming.serialize import dumps


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json")
