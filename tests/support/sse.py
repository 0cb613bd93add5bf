"""A small SSE reader for tests: parses frames as the spec says, keeps comments too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class SSEFrame:
    event: str | None
    data: Any
    id: str | None
    comment: str | None = None


def iter_frames(response: httpx.Response) -> Iterator[SSEFrame]:
    event: str | None = None
    data_lines: list[str] = []
    event_id: str | None = None
    for line in response.iter_lines():
        if line == "":
            if event is not None or data_lines:
                raw = "\n".join(data_lines)
                yield SSEFrame(event, json.loads(raw) if raw else None, event_id)
            event, data_lines, event_id = None, [], None
            continue
        if line.startswith(":"):
            yield SSEFrame(None, None, None, comment=line[1:].strip())
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data_lines.append(value)
        elif field == "id":
            event_id = value


def events(response: httpx.Response) -> list[SSEFrame]:
    """Every event frame (comments dropped) until the stream closes."""
    return [frame for frame in iter_frames(response) if frame.comment is None]


def wait_for_stage(frames: Iterator[SSEFrame], stage: str) -> SSEFrame:
    """Read on until the graph reports `stage` through a custom event.

    Keep `frames` referenced while the stream should stay open: a dropped generator
    closes the response, which the server (rightly) sees as a disconnect.
    """
    return next(f for f in frames if f.event == "custom" and f.data["stage"] == stage)


@contextmanager
def slow_run(url: str, thread_id: str, graph: str = "slow") -> Iterator[Iterator[SSEFrame]]:
    """Hold `thread_id` with a run of the test graph `slow`, open until the block ends.

    Yields once its second node has started (so the run is mid-flight and leased), with
    the rest of the stream's frames.
    """
    with httpx.stream("POST", url + "/v1/chat/stream",
                      json={"input": {}, "graph": graph, "thread_id": thread_id,
                            "stream_mode": "custom"}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        frames = iter_frames(response)
        wait_for_stage(frames, "b-started")
        yield frames
