"""`graphgate serve --workers 2`: gunicorn with uvicorn workers, on a real socket."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from service.gunicorn_conf import WORKER_CLASS, gunicorn_options
from service.settings import Settings
from tests.support.servers import ProcessServer
from tests.support.sse import events, slow_run

REPO = Path(__file__).resolve().parents[1]


def children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def test_gunicorn_options_follow_settings() -> None:
    """The gunicorn config is derived from Settings, with the safety-relevant choices set."""
    settings = Settings(env="development", server={"workers": 3, "keep_alive_s": 80,
                                                   "graceful_timeout_s": 40, "port": 9000})
    options = gunicorn_options(settings)
    assert options["workers"] == 3
    assert options["worker_class"] == WORKER_CLASS
    assert options["keepalive"] == 80
    assert options["graceful_timeout"] == 40
    assert options["bind"] == ["127.0.0.1:9000"]
    assert options["control_socket_disable"] is True
    assert Settings(env="development").server.keep_alive_s > 60  # beyond nginx's default


@pytest.mark.slow
def test_two_workers_serve_and_share_thread_leases(tmp_path: Path) -> None:
    """Two gunicorn workers stream, refuse a busy thread whichever worker answers, and stop
    cleanly on SIGTERM without creating a control socket."""
    env = {"HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "GRAPHGATE_GRAPHS": "demo=service.graphs.demo:make_demo_graph,"
                               "slow=tests.support.graphs:slow",
           "GRAPHGATE_DEMO__TOKEN_DELAY_MS": "0",
           "GRAPHGATE_SERVER__GRACEFUL_TIMEOUT_S": "5"}
    server = ProcessServer(env, "--workers", "2", cwd=tmp_path).start()
    try:
        assert server.proc is not None
        # start() returns on the first answer; the second worker may still be booting.
        deadline = time.monotonic() + 30
        while len(children(server.proc.pid)) < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.1)
        assert len(children(server.proc.pid)) == 2
        with httpx.stream("POST", server.url + "/v1/chat/stream",
                          json={"message": "hi", "thread_id": "w"}, timeout=30) as response:
            assert response.status_code == 200
            frames = events(response)
        assert frames[-1].event == "end"
        with slow_run(server.url, "busy"):
            # New connections each time, so both workers get asked.
            statuses = [httpx.post(server.url + "/v1/chat", timeout=10,
                                   json={"message": "x", "thread_id": "busy"}).status_code
                        for _ in range(8)]
        assert statuses == [409] * 8
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.output()
    assert not (tmp_path / ".gunicorn").exists()
    assert "Booting worker" in server.output()


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", "127.0.0.1:8000"), ("::", "[::]:8000"), ("[::1]", "[::1]:8000"),
    ("localhost", "localhost:8000"),
])
def test_bind_address_brackets_ipv6(host: str, expected: str) -> None:
    """IPv6 literals are bracketed so gunicorn can parse the bind address."""
    from gunicorn.util import parse_address

    from service.gunicorn_conf import bind_address

    assert bind_address(host, 8000) == expected
    parse_address(expected)  # raises on a malformed address


def test_zero_workers_means_one_per_cpu() -> None:
    import os

    from service.gunicorn_conf import gunicorn_options

    cpus = len(os.sched_getaffinity(0))
    options = gunicorn_options(Settings(env="development", server={"workers": 0}))
    assert options["workers"] == cpus >= 1
    assert Settings(env="development", server={"workers": 4}).server.worker_count == 4
