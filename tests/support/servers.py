"""Real HTTP servers for tests: uvicorn in a thread, or `graphgate serve` as a process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import uvicorn

from service.app import create_app
from service.lifecycle import Lifecycle
from service.settings import Settings
from tests.support.ports import free_port


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class ThreadServer:
    """uvicorn on a free loopback port, serving create_app(settings) from a thread."""

    def __init__(self, settings: Settings) -> None:
        self.lifecycle = Lifecycle()
        self.app = create_app(settings, lifecycle=self.lifecycle)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # As `graphgate serve` does: the app resolves X-Forwarded-For itself.
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="on",
                                log_config=None, timeout_graceful_shutdown=3,
                                proxy_headers=False, server_header=False)
        self.server = uvicorn.Server(config)
        sockets = [config.bind_socket()]
        self.metrics_url = None
        if settings.metrics.enabled and settings.metrics.port is not None:
            # As `graphgate serve` does: one app on the main and the metrics listener.
            sockets.append(_listen(settings.metrics.port))
            self.metrics_url = f"http://127.0.0.1:{settings.metrics.port}"
        self.thread = threading.Thread(target=self.server.run, args=(sockets,), daemon=True)

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server failed to start (see log)")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start within 30 s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class ProcessServer:
    """`python -m service serve` in a subprocess, configured only through its environment."""

    def __init__(self, env: Mapping[str, str], *args: str, cwd: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "service", "serve", "--port", str(self.port), *args]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHGATE_")}
        # Auth and limits off unless a test turns them on: tests of other features should
        # not need credentials; tests/security drives the full stack.
        self.env = {**clean, "GRAPHGATE_ENV": "development", "GRAPHGATE_AUTH__ENABLED": "false",
                    "GRAPHGATE_RATE_LIMIT__ENABLED": "false", **env}
        self.cwd = cwd
        fd, self.log_path = tempfile.mkstemp(prefix="graphgate-server-", suffix=".log")
        os.close(fd)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> ProcessServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server did not answer within {timeout_s} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")
