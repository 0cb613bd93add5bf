"""Response hooks: hosted by one wrapper, or wrapping `send` themselves, with the same effect."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette.types import Message, Receive, Scope, Send

from service.middleware.response_hooks import (
    host_response_hooks,
    on_response_end,
    on_response_start,
)


def scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "headers": []}


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
    for part in (b"x", b"y"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def run(hosted: bool) -> tuple[list[Message], list[str], int]:
    """Three layers, outermost first, each adding a header and noting the order; the
    innermost also notes the end. Returns what the server got, the order, and how many
    times the outermost layer's `send` was called per message."""
    sent: list[Message] = []
    order: list[str] = []
    outer_calls = 0

    async def server_send(message: Message) -> None:
        sent.append(message)

    def layer(name: str) -> Any:
        def hook(message: Message) -> Message | None:
            order.append(name)
            if name == "outer":  # a replacement message, as the request id layer makes
                return {**message, "headers": [*message["headers"], (b"outer", b"1")]}
            message["headers"].append((name.encode(), b"1"))
            return None
        return hook

    async def scenario() -> None:
        nonlocal outer_calls
        s = scope()

        async def counting_send(message: Message) -> None:
            nonlocal outer_calls
            outer_calls += 1
            await server_send(message)

        send: Send = counting_send
        if hosted:
            send = host_response_hooks(s, send)
        send = on_response_start(s, send, layer("outer"))
        send = on_response_start(s, send, layer("middle"))
        send = on_response_end(s, on_response_start(s, send, layer("inner")),
                               lambda: order.append("end"))
        await app(s, receive, send)

    anyio.run(scenario)
    return sent, order, outer_calls


@pytest.mark.parametrize("hosted", [True, False])
def test_hooks_run_innermost_first_and_end_after_the_final_body(hosted: bool) -> None:
    sent, order, calls = run(hosted)
    assert order == ["inner", "middle", "outer", "end"]
    start = sent[0]
    assert start["headers"] == [(b"a", b"1"), (b"inner", b"1"), (b"middle", b"1"),
                                (b"outer", b"1")]
    assert [m.get("body") for m in sent[1:]] == [b"x", b"y", b""]
    assert calls == 4


def test_hosted_hooks_add_no_wrapper_per_message() -> None:
    """Hosted, each layer hands on the very `send` it was given: a body message passes
    one wrapper (the host's), however many layers there are."""
    s = scope()

    async def server_send(message: Message) -> None:
        return None

    hosted = host_response_hooks(s, server_send)
    assert on_response_start(s, hosted, lambda m: None) is hosted
    assert on_response_end(s, hosted, lambda: None) is hosted
    alone = scope()
    assert on_response_start(alone, server_send, lambda m: None) is not server_send
