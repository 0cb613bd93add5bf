"""The shipped nginx config (deploy/nginx), run by the real nginx in front of `graphgate serve`.

Every request goes through the TLS server block exactly as shipped; only addresses, ports,
paths and (for the heartbeat test) one timeout are substituted (tests/support/nginx.py).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.nginx import Nginx
from tests.support.servers import ProcessServer
from tests.support.sse import iter_frames, wait_for_stage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOKEN_DELAY_MS = 100
REPLY_TOKENS = 20
SLOW_GRAPHS = "demo=service.graphs.demo:make_demo_graph,slow=tests.support.graphs:slow"


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp), "PYTHONPATH": str(REPO),
            "GRAPHGATE_DATABASE_URL": f"sqlite:///{tmp}/{uuid.uuid4().hex}.sqlite", **extra}


def _json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@dataclass
class Stack:
    service: ProcessServer
    nginx: Nginx

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(verify=self.nginx.ssl_context(), timeout=30, **kwargs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A service with JSON logs and a slow demo model, behind nginx as shipped."""
    tmp = tmp_path_factory.mktemp("nginx-stack")
    service = ProcessServer(_env(tmp, GRAPHGATE_LOGGING__FORMAT="json",
                                 GRAPHGATE_DEMO__TOKEN_DELAY_MS=str(TOKEN_DELAY_MS),
                                 GRAPHGATE_DEMO__REPLY_TOKENS=str(REPLY_TOKENS)), cwd=tmp)
    nginx = Nginx(f"127.0.0.1:{service.port}")
    try:
        service.start()
        nginx.start()
        yield Stack(service, nginx)
    finally:
        nginx.cleanup()
        if service.proc is not None:
            service.stop()


def test_shipped_config_passes_nginx_t() -> None:
    nginx = Nginx("127.0.0.1:8000")  # nothing needs to listen there for -t
    try:
        result = nginx.test_config()
    finally:
        nginx.cleanup()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def _timed_stream(client: httpx.Client, url: str, thread_id: str) -> list[float]:
    """Arrival time (s since the request was sent) of each token event."""
    t0 = time.monotonic()
    arrivals = []
    with client.stream("POST", url + "/v1/chat/stream",
                       json={"message": "hello", "thread_id": thread_id}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for frame in iter_frames(response):
            if frame.event == "messages" and frame.data.get("content"):
                arrivals.append(time.monotonic() - t0)
    return arrivals


def test_stream_through_nginx_is_incremental(stack: Stack) -> None:
    with httpx.Client(timeout=30) as direct_client:
        direct = _timed_stream(direct_client, stack.service.url, "timing-direct")
    with stack.client() as client:
        proxied = _timed_stream(client, stack.nginx.url, "timing-nginx")
    print("\ndirect arrivals (s):", " ".join(f"{t:.2f}" for t in direct))
    print("nginx  arrivals (s):", " ".join(f"{t:.2f}" for t in proxied))
    assert len(proxied) == len(direct) >= REPLY_TOKENS - 1
    # The first token long before the last: not buffered until the end.
    assert proxied[0] < 0.4 * proxied[-1], proxied
    # Same rhythm as the direct path: tokens spread over the run, no burst at the end.
    spread_direct, spread_nginx = direct[-1] - direct[0], proxied[-1] - proxied[0]
    assert spread_nginx > 0.7 * spread_direct, (direct, proxied)
    gaps = [b - a for a, b in itertools.pairwise(proxied)]
    assert statistics.median(gaps) > 0.5 * TOKEN_DELAY_MS / 1000, gaps
    assert sum(gap < 0.01 for gap in gaps) <= 2, gaps


def test_request_limits_at_the_edge(stack: Stack) -> None:
    with stack.client() as client:
        big = client.post(stack.nginx.url + "/v1/chat", content=b"x" * (2 * 1024 * 1024),
                          headers={"content-type": "application/json"})
        assert big.status_code == 413
        huge_header = client.get(stack.nginx.url + "/v1/threads", headers={"X-Big": "a" * 9000})
        assert huge_header.status_code == 400
        ok = client.get(stack.nginx.url + "/v1/threads")
        assert ok.status_code == 200
        assert ok.headers["strict-transport-security"].startswith("max-age=63072000")
        assert ok.headers["server"] == "nginx"  # server_tokens off: no version
    redirect = httpx.get(stack.nginx.http_url + "/v1/threads?x=1")
    assert redirect.status_code == 301
    assert redirect.headers["location"].startswith("https://")


def test_metrics_not_public(stack: Stack) -> None:
    assert httpx.get(stack.service.url + "/metrics", timeout=10).status_code == 200
    with stack.client() as client:
        for path in ("/metrics", "/metrics?format=text", "//metrics", "/%6Detrics"):
            response = client.get(stack.nginx.url + path)
            assert response.status_code == 404, path
            assert "graphgate_" not in response.text


def test_request_id_flows_from_nginx_to_service_logs(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get(stack.nginx.url + "/v1/threads?api_key=ggk_secret_in_url",
                              headers={"X-Request-ID": "client-chosen-id"})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    # nginx's own id replaces the client's (the shipped choice, see graphgate-proxy.conf).
    assert request_id != "client-chosen-id" and len(request_id) == 32

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        nginx_lines = [line for line in stack.nginx.access_lines()
                       if line["request_id"] == request_id]
        service_lines = [line for line in _json_lines(stack.service.output())
                         if line.get("event") == "access"
                         and line.get("request_id") == request_id]
        if nginx_lines and service_lines:
            break
        time.sleep(0.05)
    [nginx_line] = nginx_lines
    [service_line] = service_lines
    assert nginx_line["uri"] == "/v1/threads" and nginx_line["status"] == 200
    assert nginx_line["upstream_status"] == "200"
    assert service_line["client_ip"] == "127.0.0.1"
    # No query string (a possible credential) in nginx's log.
    raw = (stack.nginx.prefix / "logs" / "graphgate.access.log").read_text()
    assert "ggk_secret_in_url" not in raw and "api_key" not in raw


def test_heartbeats_keep_a_silent_stream_open(tmp_path: Path) -> None:
    """proxy_read_timeout 2 s: heartbeats every 0.5 s keep a silent run's stream open for
    5 s; with a 10 s heartbeat nginx cuts the same stream after 2 s of silence."""
    short_timeout = {"proxy_read_timeout 60s;": "proxy_read_timeout 2s;"}
    beating = ProcessServer(_env(tmp_path, GRAPHGATE_GRAPHS=SLOW_GRAPHS,
                                 GRAPHGATE_STREAMING__HEARTBEAT_INTERVAL_S="0.5"), cwd=tmp_path)
    quiet = ProcessServer(_env(tmp_path, GRAPHGATE_GRAPHS=SLOW_GRAPHS,
                               GRAPHGATE_STREAMING__HEARTBEAT_INTERVAL_S="10"), cwd=tmp_path)
    nginxes = [Nginx(f"127.0.0.1:{server.port}", short_timeout) for server in (beating, quiet)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ProcessServer.start, (beating, quiet)))
        for nginx in nginxes:
            nginx.start()
        beating_nginx, quiet_nginx = nginxes
        body = {"input": {}, "graph": "slow", "stream_mode": "custom"}

        with httpx.Client(verify=beating_nginx.ssl_context(), timeout=30) as client, \
                client.stream("POST", beating_nginx.url + "/v1/chat/stream",
                              json={**body, "thread_id": "beating"}) as response:
            assert response.status_code == 200
            frames = iter_frames(response)
            wait_for_stage(frames, "b-started")
            start, heartbeats = time.monotonic(), 0
            for frame in frames:
                heartbeats += frame.comment == "heartbeat"
                assert frame.event is None, frame  # only heartbeats while the node sleeps
                if time.monotonic() - start >= 5:
                    break
            held = time.monotonic() - start
        assert held >= 5, "the stream ended early"
        assert heartbeats >= 7, heartbeats
        assert "upstream timed out" not in beating_nginx.error_log()

        with httpx.Client(verify=quiet_nginx.ssl_context(), timeout=30) as client, \
                client.stream("POST", quiet_nginx.url + "/v1/chat/stream",
                              json={**body, "thread_id": "quiet"}) as response:
            assert response.status_code == 200
            frames = iter_frames(response)
            wait_for_stage(frames, "b-started")
            start, rest, error = time.monotonic(), [], None
            try:
                rest = list(frames)
            except httpx.HTTPError as exc:  # nginx closes mid-chunk: incomplete body
                error = exc
            cut_after = time.monotonic() - start
        print(f"\nwithout heartbeats nginx cut the stream after {cut_after:.2f} s ({error!r})")
        assert 1.5 < cut_after < 4, cut_after
        assert not any(frame.event == "end" for frame in rest)
        log = ""
        deadline = time.monotonic() + 5
        while "upstream timed out" not in log and time.monotonic() < deadline:
            time.sleep(0.05)
            log = quiet_nginx.error_log()
        assert "upstream timed out" in log, log
    finally:
        for nginx in nginxes:
            nginx.cleanup()
        for server in (beating, quiet):
            if server.proc is not None:
                server.stop()


def test_forged_forwarded_for_does_not_reach_the_rate_limit_key(tmp_path: Path) -> None:
    service = ProcessServer(_env(tmp_path, GRAPHGATE_RATE_LIMIT__ENABLED="true",
                                 GRAPHGATE_RATE_LIMIT__ANONYMOUS_LIMITS="3/minute",
                                 GRAPHGATE_SERVER__TRUSTED_PROXIES="127.0.0.1"), cwd=tmp_path)
    nginx = Nginx(f"127.0.0.1:{service.port}")
    try:
        service.start()
        nginx.start()
        # Control: straight to the app (a trusted peer), a rotating XFF is a fresh bucket
        # each time, so the test below would notice if nginx passed the header on.
        direct = [httpx.get(service.url + "/v1/threads", timeout=10,
                            headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                  for i in range(4)]
        assert direct == [200, 200, 200, 200]
        with httpx.Client(verify=nginx.ssl_context(), timeout=10) as client:
            statuses = [client.get(nginx.url + "/v1/threads",
                                   headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
                        for i in range(4)]
        assert statuses == [200, 200, 200, 429]
    finally:
        nginx.cleanup()
        if service.proc is not None:
            service.stop()
