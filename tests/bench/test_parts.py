"""The harness's own parts: the load generator's HTTP/SSE parsing and the statistics."""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bench.client import Connection, Target, stream_load
from bench.harness import Results, percentile


@asynccontextmanager
async def fake_server(pieces: Sequence[bytes], pause_s: float = 0.0) -> AsyncIterator[int]:
    """A one-response-per-request HTTP server writing `pieces` as separate writes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    if pause_s:
                        await asyncio.sleep(pause_s)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_target_rotates_credentials_and_fills_the_client_index() -> None:
    target = Target("t", 8000, "POST", "/v1/chat/stream", b'{"thread_id": "r0-{client}"}',
                    credentials=[("x-api-key", "a"), ("x-api-key", "b")],
                    extra_headers=[("origin", "https://app.example.com")])
    first, second, third = (target.request(i) for i in range(3))
    assert b"x-api-key: a\r\n" in first and b"x-api-key: b\r\n" in second
    assert b"x-api-key: a\r\n" in third
    assert first.endswith(b'\r\n\r\n{"thread_id": "r0-0"}')
    assert b"content-length: 21\r\n" in first  # the filled-in body, not the template
    assert b"origin: https://app.example.com\r\n" in first


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    results = Results()
    for a, b in ((10, 20), (30, 30), (5, 50)):
        results.add("s", "row", "m", "/s", a)
        results.add("s", "ref", "m", "/s", b)
    assert results.paired("s", "m", "row", "ref", lambda x, y: x / y) == 0.5
    assert results.get("s", "row", "m") is not None
    assert math.isnan(results.paired("s", "m", "row", "missing", lambda x, y: x / y))


def test_stream_parses_chunked_sse_split_anywhere() -> None:
    """Frames split across chunks, several frames in one chunk, CRLF separators and
    heartbeat comments: events, tokens, first-token time and stamps all come out right."""
    stamp = time.monotonic_ns()
    body = (b"event: metadata\r\ndata: {}\r\n\r\n: heartbeat\r\n\r\n"
            + b"".join(b'event: messages\r\ndata: {"content":"%d "}\r\n\r\n' % (stamp + i)
                       for i in range(3))
            + b"event: end\r\ndata: {}\r\n\r\n")
    pieces = [HEAD, chunk(body[:17]), chunk(body[17:90]), chunk(body[90:]), b"0\r\n\r\n"]

    async def go() -> None:
        async with fake_server(pieces) as port:
            conn = await Connection.open(Target("t", port, "POST", "/x", b"{}"))
            request = conn.target.request(0)
            for _ in range(2):  # keep-alive: the second response parses the same
                result = await conn.stream(request, stamps=True)
                assert result.ok and result.status == 200
                assert result.events == 5  # the comment is not an event
                assert result.tokens == 3
                assert result.ttfe_s is not None and result.ttfe_s <= result.total_s
                assert len(result.delays_ns) == 3
                assert all(d >= 0 for d in result.delays_ns)
            conn.close()

    asyncio.run(go())


def test_tokens_in_one_read_count_as_coalesced() -> None:
    token = b'event: messages\ndata: {"content": "%d "}\n\n'
    stamp = time.monotonic_ns()
    together = chunk(token % stamp + token % (stamp + 1))
    apart = [chunk(token % (stamp + 2)), chunk(token % (stamp + 3))]

    async def go() -> tuple[int, int]:
        async with fake_server([HEAD, together, b"0\r\n\r\n"]) as port:
            joined = await stream_load(Target("t", port, "POST", "/x"), 1, 0, min_streams=1,
                                       stamps=True, max_streams=1)
        async with fake_server([HEAD, *apart, b"0\r\n\r\n"], pause_s=0.05) as port:
            split = await stream_load(Target("t", port, "POST", "/x"), 1, 0, min_streams=1,
                                      stamps=True, max_streams=1)
        return joined.streams[0].coalesced, split.streams[0].coalesced

    assert asyncio.run(go()) == (1, 0)


def test_error_status_is_a_failed_stream() -> None:
    pieces = [b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\n"
              b"content-length: 2\r\n\r\n{}"]

    async def go() -> None:
        async with fake_server(pieces) as port:
            result = await stream_load(Target("t", port, "POST", "/x"), 2, 0, min_streams=4,
                                       max_streams=4)
            assert len(result.streams) == 4 and result.errors == 4
            assert {s.error for s in result.streams} == {"http_429"}

    asyncio.run(go())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_path_measures_the_bare_app(tmp_path: Path) -> None:
    """`make bench` measures GETs with wrk and a Lua script rotating credentials."""
    from contextlib import ExitStack
    from dataclasses import replace

    from bench.harness import SMOKE, Context, measure_get
    from bench.servers import Credentials, Server

    sizes = replace(SMOKE, get_s=1.0)
    with ExitStack() as stack:
        ctx = Context(sizes, tmp_path, Credentials(tmp_path / "creds", 3), Results(), stack,
                      None, shutil.which("wrk"))
        server = Server("bare", "bare", tmp_path, tokens=1, delay_ms=0).start()
        stack.callback(server.stop)
        measure_get(ctx, "get", "bare", server,
                    server.get_target([("x-api-key", k) for k in ctx.creds.api_keys]))
    fig = ctx.results.get("get", "bare", "GET req/s")
    assert fig is not None and fig.median > 0
    errors = ctx.results.get("get", "bare", "GET errors")
    assert errors is not None and errors.median == 0
    assert ctx.results.get("get", "bare", "GET p99") is not None
