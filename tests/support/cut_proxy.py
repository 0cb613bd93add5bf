"""A TCP proxy that cuts connections mid-response, as a proxy timeout or a network drop
would, so clients' reconnect logic runs against the real server."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from tests.support.ports import free_port


class CutProxy:
    """Forwards 127.0.0.1:<port> to `upstream_port`.

    `should_cut(request_head)` is asked once per connection with the request's first
    bytes; when it says yes, the connection is closed after `cut_after` bytes of the
    response have gone through.
    """

    def __init__(self, upstream_port: int, *, cut_after: int,
                 should_cut: Callable[[bytes], bool]) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.should_cut = should_cut
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CutProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        head = client.recv(65536)
        cut = bool(head) and self.should_cut(head)
        upstream.sendall(head)
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        sent = 0
        with contextlib.suppress(OSError):
            while True:
                data = upstream.recv(1024)
                if not data:
                    break
                if cut and sent + len(data) >= self.cut_after:
                    client.sendall(data[: self.cut_after - sent])
                    self.cuts += 1
                    break
                client.sendall(data)
                sent += len(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
