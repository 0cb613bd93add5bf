"""The canonical log lines of a real `graphgate serve`: one per request, one per stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.servers import ProcessServer
from tests.support.sse import iter_frames


def json_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.mark.slow
def test_access_and_stream_lines(tmp_path: Path) -> None:
    # Tracing on, towards a collector that is not there: spans are dropped, ids still flow.
    env = {"GRAPHGATE_LOGGING__FORMAT": "json",
           "GRAPHGATE_TELEMETRY__OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces"}
    server = ProcessServer(env, cwd=tmp_path).start()
    try:
        httpx.get(server.url + "/v1/threads/nope/state?api_key=ggk_secret_in_url")
        with httpx.stream("POST", server.url + "/v1/chat/stream", timeout=30,
                          json={"message": "hello", "thread_id": "logged"}) as response:
            frames = [f for f in iter_frames(response) if f.event]
        run_id = frames[0].data["run_id"]
    finally:
        server.stop()
    lines = json_lines(server.output())
    access = [line for line in lines if line.get("event") == "access"]
    streams = [line for line in lines if line.get("event") == "stream_finished"]
    [missing] = [line for line in access if line["route"] == "/v1/threads/{thread_id}/state"]
    assert missing["status"] == 404 and missing["method"] == "GET"
    assert missing["request_id"] and missing["duration_ms"] >= 0
    assert len(missing["trace_id"]) == 32 and len(missing["span_id"]) == 16
    [stream] = streams
    assert stream["route"] == "/v1/chat/stream" and stream["status"] == 200
    assert stream["thread_id"] == "logged" and stream["run_id"] == run_id
    assert stream["stream_outcome"] == "completed"
    assert stream["events_sent"] == len(frames)
    assert stream["principal"] == "anonymous:anonymous:anonymous"
    output = server.output()
    assert "ggk_secret_in_url" not in output and "api_key" not in output
    # No line per token.
    assert len(lines) < 30
