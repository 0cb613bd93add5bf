"""A do-nothing OTLP/HTTP collector: answers 200 to every POST and drops the body.

The OTel-on row exports real spans over real HTTP to this, so the exporter's work is
in the figure and a refused connection's retry/backoff is not.

    python -m bench.otlp_sink PORT
"""

from __future__ import annotations

import asyncio
import sys

RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n"
            b"content-length: 0\r\n\r\n")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
