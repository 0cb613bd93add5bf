"""The reference: a bare FastAPI + LangGraph app in the seed pattern, with no middleware.

`graph.astream(stream_mode="messages")` straight into a Starlette `StreamingResponse`,
an in-memory checkpointer and a fresh thread per request (as graphgate gets with
`database_url = "memory:"`), stdlib `json` for the frames. No auth, limits, metrics,
logs, CORS, heartbeats, disconnect watching or error frames: what graphgate is measured
against is exactly what those cost.

    uvicorn bench.bare_app:app --no-access-log
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import BaseModel

from bench.graph import builder


class ChatBody(BaseModel):
    message: str
    thread_id: str | None = None


def make_app(tokens: int | None = None) -> FastAPI:
    """The app; `tokens` overrides BENCH_TOKENS (the in-process protections bench)."""
    app = FastAPI()
    # The seed pattern's graph: built once with the app, an in-memory checkpointer.
    graph = builder(tokens).compile(checkpointer=InMemorySaver())

    @app.get("/hello")
    async def hello() -> dict[str, Any]:
        return {"ok": True}

    @app.post("/chat/stream")
    async def chat_stream(body: ChatBody) -> StreamingResponse:
        config: Any = {"configurable": {"thread_id": body.thread_id or str(uuid.uuid4())}}

        async def events() -> AsyncIterator[str]:
            chunk: Any
            metadata: Any
            async for chunk, metadata in graph.astream(
                {"messages": [{"role": "user", "content": body.message}]}, config,
                stream_mode="messages",
            ):
                payload = {"content": chunk.content, "node": metadata.get("langgraph_node")}
                yield f"data: {json.dumps(payload)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


app = make_app()
