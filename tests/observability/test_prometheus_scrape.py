"""End to end: a real Prometheus scrapes a real two-worker gunicorn serving graphgate.

After a scripted set of requests and streams, spread over both workers on new
connections, the Prometheus HTTP API reports the totals of both workers.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.support.prometheus import (
    PrometheusServer,
    by_label,
    file_pids,
    has_value,
    labels_equal,
    scalar,
    total,
    wait_until_answering,
    worker_series,
)
from tests.support.servers import ProcessServer
from tests.support.sse import iter_frames

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REQUESTS = "graphgate_http_requests_total"


@pytest.fixture(autouse=True)
def _no_inherited_multiproc_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


def test_prometheus_scrapes_totals_summed_across_workers(tmp_path: Path) -> None:
    """12 chats, 4 completed streams, 1 disconnected stream and 5 unknown paths, served by
    two workers, reach Prometheus as those totals."""
    started = time.monotonic()
    multiproc_dir = tmp_path / "metrics"
    env = {
        "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
        "GRAPHGATE_METRICS__MULTIPROCESS_DIR": str(multiproc_dir),
        # Streams of 20 tokens 30 ms apart: time to hang up mid-stream after the first
        # token even on a loaded machine. (Plain /v1/chat does not stream: no delay.)
        "GRAPHGATE_DEMO__TOKEN_DELAY_MS": "30", "GRAPHGATE_DEMO__REPLY_TOKENS": "20",
        "GRAPHGATE_SERVER__GRACEFUL_TIMEOUT_S": "5",
    }
    server = ProcessServer(env, "--workers", "2", cwd=tmp_path)
    prometheus: PrometheusServer | None = None
    try:
        server.start()
        deadline = time.monotonic() + 30
        while len(file_pids(multiproc_dir)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(file_pids(multiproc_dir)) == 2, server.output()
        # Both workers serving, so the script below is spread over the two.
        wait_until_answering(server.url, multiproc_dir, file_pids(multiproc_dir))
        # Started before the script, so its ~6 s wait for a first scrape overlaps it.
        prometheus = PrometheusServer(f"127.0.0.1:{server.port}", job="graphgate").start()

        with httpx.Client(timeout=30,
                          limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for n in range(12):
                response = client.post(server.url + "/v1/chat",
                                       json={"message": f"hello {n}"})
                assert response.status_code == 200, response.text
            for n in range(4):
                with client.stream("POST", server.url + "/v1/chat/stream",
                                   json={"message": f"stream {n}"}) as stream:
                    assert stream.status_code == 200
                    events = [frame.event for frame in iter_frames(stream) if frame.event]
                assert events[-1] == "end", events
            with client.stream("POST", server.url + "/v1/chat/stream",
                               json={"message": "bye"}) as stream:
                assert stream.status_code == 200
                next(frame for frame in iter_frames(stream) if frame.event == "messages")
                # Hang up at once, after the first token.
            for n in range(5):
                assert client.get(server.url + f"/nothing/here/{n}").status_code == 404

        # Both workers counted part of the script, so what Prometheus sees is a sum. (Read
        # from each worker's own files; polled, as a worker counts a request just after
        # answering it.)
        def scripted(pid: int) -> float:
            series = worker_series(multiproc_dir, pid)
            return sum(total(series, REQUESTS, route=route)
                       for route in ("/v1/chat", "/v1/chat/stream", "unmatched"))

        deadline = time.monotonic() + 10
        while True:
            mine = {pid: scripted(pid) for pid in file_pids(multiproc_dir)}
            if sum(mine.values()) == 12 + 5 + 5 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sum(mine.values()) == 12 + 5 + 5, mine
        assert len(mine) == 2 and all(count > 0 for count in mine.values()), mine

        prometheus.wait_for('up{job="graphgate"}', has_value(1))
        prometheus.wait_for('sum(graphgate_http_requests_total{route="/v1/chat"})',
                            has_value(12))
        prometheus.wait_for("sum by (outcome) (graphgate_streams_total)",
                            labels_equal("outcome", {"completed": 4,
                                                     "client_disconnected": 1}))
        prometheus.wait_for('sum(graphgate_http_requests_total{route="unmatched"})',
                            has_value(5))
        # Nothing left open once the streams are over, on either worker.
        prometheus.wait_for("sum(graphgate_streams_open)", has_value(0))

        # One scrape (not a series per worker) with all of it.
        assert scalar(prometheus.query('count(up{job="graphgate"})')) == 1
        statuses = by_label(prometheus.query(
            'sum by (status_class) (graphgate_http_requests_total{route="/v1/chat"})'),
            "status_class")
        assert statuses == {"2xx": 12}
        prometheus.wait_for('sum(graphgate_http_requests_total{route="/v1/chat/stream"})',
                            has_value(5))
    finally:
        if prometheus is not None:
            prometheus.stop()
        code = server.stop(signal.SIGTERM) if server.proc is not None else None
    assert code == 0, server.output()
    assert time.monotonic() - started < 60
