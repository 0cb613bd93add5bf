"""The load generator: raw asyncio HTTP/1.1 over keep-alive sockets, no client library.

A library client (httpx) costs more CPU per event than the servers under test on this
2-core machine; this one parses the chunked transfer encoding and SSE frames itself and
records, per stream, when the request went out, when the first token event arrived and
when the response ended. Optionally it reads each token's server-side stamp (see
bench/graph.py) to measure one-way delay per event, and counts token events that
arrived in the same read as the one before (batching by a proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

STAMP = re.compile(rb'"content": ?"(\d+) ')
STREAM_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Target:
    """Where and how to send one kind of request; `credentials` rotate per connection."""

    name: str
    port: int
    method: str
    path: str
    body: bytes = b""
    token_prefix: bytes = b"event: messages"  # how a token frame starts
    credentials: Sequence[tuple[str, str]] = ()  # (header, value), one per principal
    extra_headers: Sequence[tuple[str, str]] = ()
    host_header: str = ""
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None

    def request(self, index: int) -> bytes:
        host = self.host_header or f"127.0.0.1:{self.port}"
        lines = [f"{self.method} {self.path} HTTP/1.1", f"host: {host}"]
        lines += [f"{k}: {v}" for k, v in self.extra_headers]
        if self.credentials:
            name, value = self.credentials[index % len(self.credentials)]
            lines.append(f"{name}: {value}")
        # `{client}` in a body becomes the client's index (one thread per client).
        body = self.body.replace(b"{client}", str(index).encode())
        if body or self.method == "POST":
            lines += ["content-type: application/json", f"content-length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class StreamResult:
    ok: bool
    status: int = 0
    ttfe_s: float | None = None
    total_s: float = 0.0
    events: int = 0
    tokens: int = 0
    delays_ns: list[int] = field(default_factory=list)
    coalesced: int = 0
    error: str | None = None


class ProtocolError(Exception):
    pass


class Connection:
    def __init__(self, target: Target, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.target = target
        self.reader = reader
        self.writer = writer
        self.reusable = True

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", target.port, ssl=target.ssl_context,
            server_hostname=target.server_hostname if target.ssl_context else None,
            limit=1 << 20)
        return cls(target, reader, writer)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def _head(self) -> tuple[int, bool, int]:
        """Status, chunked?, content length (-1 when chunked or absent)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP response: {head[:40]!r}")
        status = int(head[9:12])
        chunked, length = False, -1
        for line in head.lower().split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            value = value.strip()
            if name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"content-length":
                length = int(value)
            elif name == b"connection" and value == b"close":
                self.reusable = False
        return status, chunked, length

    async def _chunks(self, chunked: bool, length: int) -> tuple[list[bytes], bool]:
        """The body pieces that are here now (one socket read's worth), and whether the
        body is over."""
        if not chunked:
            if length <= 0:
                return [], True
            return [await self.reader.readexactly(length)], True
        out: list[bytes] = []
        while True:
            line = await self.reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers from these servers
                return out, True
            out.append((await self.reader.readexactly(size + 2))[:-2])
            # Chunks already buffered arrived in the same read as this one (what the
            # batching figure counts); StreamReader has no public way to ask.
            if not self.reader._buffer:  # type: ignore[attr-defined]
                return out, False

    async def stream(self, request: bytes, *, stamps: bool = False) -> StreamResult:
        result = StreamResult(ok=False)
        prefix = self.target.token_prefix
        started = time.perf_counter()
        self.writer.write(request)
        status, chunked, length = await self._head()
        result.status = status
        buf = b""
        sep = b"\n\n"
        ended = False
        while not ended:
            pieces, ended = await self._chunks(chunked, length)
            arrived = time.perf_counter()
            arrived_ns = time.monotonic_ns() if stamps else 0
            data = b"".join(pieces)
            if not buf and result.events == 0 and b"\r\n\r\n" in data:
                sep = b"\r\n\r\n"  # sse-starlette (langgraph dev) ends lines with CRLF
            buf += data
            stamped_here = 0
            while (cut := buf.find(sep)) >= 0:
                frame, buf = buf[:cut], buf[cut + len(sep):]
                if not frame or frame.startswith(b":"):
                    continue  # heartbeat comment
                result.events += 1
                if frame.startswith(prefix):
                    result.tokens += 1
                    if result.ttfe_s is None:
                        result.ttfe_s = arrived - started
                    if stamps and (found := STAMP.search(frame)):
                        result.delays_ns.append(arrived_ns - int(found.group(1)))
                        stamped_here += 1
            # Stamped tokens are made `delay` apart: several in one read were held back
            # and sent together somewhere on the way (the final empty delta and `end`
            # follow the last token at once, so only stamped tokens count).
            if stamped_here > 1:
                result.coalesced += stamped_here - 1
        result.total_s = time.perf_counter() - started
        result.ok = status == 200
        if not result.ok:
            result.error = f"http_{status}"
        return result

    async def open_stream(self, request: bytes) -> int:
        """Send a stream request and return once the response head arrived (capacity)."""
        self.writer.write(request)
        status, _, _ = await self._head()
        return status

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        status, chunked, length = await self._head()
        ended = False
        while not ended:
            _, ended = await self._chunks(chunked, length)
        return status


@dataclass
class LoadResult:
    concurrency: int
    elapsed_s: float
    streams: list[StreamResult]

    @property
    def ok(self) -> list[StreamResult]:
        return [s for s in self.streams if s.ok]

    @property
    def errors(self) -> int:
        return len(self.streams) - len(self.ok)


async def stream_load(target: Target, concurrency: int, duration_s: float, *,
                      min_streams: int = 0, stamps: bool = False,
                      max_streams: int | None = None) -> LoadResult:
    """`concurrency` closed-loop clients, each streaming back to back on one keep-alive
    connection until `duration_s` has passed and `min_streams` have completed in all."""
    results: list[StreamResult] = []
    started = time.perf_counter()
    deadline = started + duration_s
    finished_at = started
    begun = 0  # streams a client has committed to (so max_streams is exact)

    def more() -> bool:
        nonlocal begun
        if max_streams is not None and begun >= max_streams:
            return False
        if time.perf_counter() < deadline or begun < min_streams:
            begun += 1
            return True
        return False

    async def client(index: int) -> None:
        nonlocal finished_at
        request = target.request(index)
        conn: Connection | None = None
        while more():
            try:
                if conn is None:
                    conn = await Connection.open(target)
                async with asyncio.timeout(STREAM_TIMEOUT_S):
                    result = await conn.stream(request, stamps=stamps)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ProtocolError, TimeoutError, ValueError) as exc:
                result = StreamResult(ok=False, error=type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.01)
            else:
                if not conn.reusable:
                    conn.close()
                    conn = None
            results.append(result)
            finished_at = max(finished_at, time.perf_counter())
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return LoadResult(concurrency, max(finished_at - started, 1e-9), results)


@dataclass
class Held:
    connections: list[Connection]
    opened: int
    errors: list[str]
    ramp_s: float

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


async def hold_streams(target: Target, count: int, *, parallel: int = 100,
                       timeout_s: float = 120.0) -> Held:
    """Open `count` streams and keep them open (response head received, status 200)."""
    gate = asyncio.Semaphore(parallel)
    connections: list[Connection] = []
    errors: list[str] = []
    started = time.perf_counter()

    async def one(index: int) -> None:
        async with gate:
            try:
                conn = await Connection.open(target)
            except OSError as exc:
                errors.append(type(exc).__name__)
                return
            connections.append(conn)
            try:
                status = await conn.open_stream(target.request(index))
            except (OSError, asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:
                errors.append(type(exc).__name__)
                return
            if status != 200:
                errors.append(f"http_{status}")

    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(one(i) for i in range(count)))
    except TimeoutError:
        errors.append("ramp_timeout")
    opened = count - len(errors)
    return Held(connections, opened, errors, time.perf_counter() - started)


async def get_load(target: Target, concurrency: int, duration_s: float) -> tuple[int, int, float]:
    """Python fallback when wrk is absent: (ok responses, errors, elapsed seconds)."""
    ok = errors = 0
    started = time.perf_counter()
    deadline = started + duration_s

    async def client(index: int) -> None:
        nonlocal ok, errors
        request = target.request(index)
        conn: Connection | None = None
        while time.perf_counter() < deadline:
            try:
                if conn is None:
                    conn = await Connection.open(target)
                status = await conn.get(request)
            except (OSError, asyncio.IncompleteReadError, ProtocolError, ValueError):
                errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if status == 200:
                ok += 1
            else:
                errors += 1
            if not conn.reusable:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return ok, errors, time.perf_counter() - started
