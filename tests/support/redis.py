"""A throwaway Redis server from the real binary, on a free loopback port."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.binaries import missing
from tests.support.ports import free_port

START_TIMEOUT_S = 10.0


def redis_server_bin() -> str:
    found = shutil.which("redis-server")
    if found is None:
        missing("Redis (redis-server)")
    assert found is not None
    return found


def closed_redis_url() -> str:
    """A Redis URL on a loopback port nothing listens on: connections are refused."""
    return f"redis://127.0.0.1:{free_port()}/0"


class RedisServer:
    def __init__(self) -> None:
        self.binary = redis_server_bin()
        # Its working directory: with --save '' and --appendonly no nothing should be
        # written there, but redis-server must not litter the checkout if it does.
        self.dir = Path(tempfile.mkdtemp(prefix="graphgate-redis-"))
        self.log = self.dir / "log"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, *, retry: bool = True) -> redis.Redis:
        """A new sync client on DB 0; close it (or use it as a context manager).

        retry=False fails at once instead of redis-py's default backoff-and-retry.
        """
        client = redis.Redis(host="127.0.0.1", port=self.port, db=0,
                             socket_timeout=5, socket_connect_timeout=5)
        if not retry:
            client.set_retry(Retry(NoBackoff(), 0))
        return client

    def start(self) -> None:
        """Start the server (again, after stop(): on the same port) and wait for PING."""
        if self.running:
            return
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
                 "--dir", str(self.dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self._wait_for_ping()

    def _wait_for_ping(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                self._fail("redis-server exited during startup")
            with suppress(redis.ConnectionError, redis.TimeoutError), \
                    self.client(retry=False) as client:
                if client.ping():
                    return
            time.sleep(0.05)
        self.stop()
        self._fail(f"redis-server did not answer PING within {START_TIMEOUT_S} s")

    def _fail(self, why: str) -> None:
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"{why} (port {self.port}); its log:\n{log}")

    def stop(self) -> None:
        """Stop the server; connections to `url` are refused until start()."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()
