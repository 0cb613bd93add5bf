"""Prometheus metrics from one real server: what is counted, how it is labelled, who may read it.

Multi-worker sums and a real Prometheus scraping are in test_multiprocess_metrics.py and
test_prometheus_scrape.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.conftest import make_settings
from tests.support.binaries import missing
from tests.support.ports import free_port
from tests.support.servers import ThreadServer
from tests.support.sse import iter_frames, slow_run

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(url: str, headers: dict[str, str] | None = None) -> Series:
    text = httpx.get(url + "/metrics", headers=headers).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(url: str, name: str, **labels: str) -> float:
    return samples(url).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def server(serve: Callable[[Settings], ThreadServer], tmp_path: Path) -> ThreadServer:
    return serve(make_settings(f"sqlite:///{tmp_path}/m.sqlite",
                               graphs={"demo": "service.graphs.demo:make_demo_graph",
                                       "slow": "tests.support.graphs:slow",
                                       "failing": "tests.support.graphs:failing"}))


def _stream(url: str, body: dict[str, object]) -> list[str]:
    with httpx.stream("POST", url + "/v1/chat/stream", json=body, timeout=30) as response:
        return [f.event for f in iter_frames(response) if f.event]


def test_requests_are_counted_by_route_template(server: ThreadServer) -> None:
    for thread in ("t-1", "t-2", "t-3"):
        assert httpx.post(server.url + "/v1/chat", json={"message": "hi", "thread_id": thread},
                          timeout=30).status_code == 200
        httpx.get(server.url + f"/v1/threads/{thread}/state")
    url = server.url
    assert value(url, "graphgate_http_requests_total", method="POST", route="/v1/chat",
                 status_class="2xx") == 3
    assert value(url, "graphgate_http_requests_total", method="GET",
                 route="/v1/threads/{thread_id}/state", status_class="2xx") == 3
    assert value(url, "graphgate_http_request_duration_seconds_count", method="POST",
                 route="/v1/chat") == 3


def test_junk_paths_and_methods_add_no_series(server: ThreadServer) -> None:
    for _ in range(200):
        httpx.get(server.url + f"/{uuid.uuid4()}/{uuid.uuid4()}")
    for method in ("BREW", "PROPFIND", "X-CUSTOM"):
        httpx.request(method, server.url + "/v1/threads")
    found = samples(server.url)
    assert value(server.url, "graphgate_http_requests_total", method="GET", route="unmatched",
                 status_class="4xx") == 200
    routes = {dict(labels)["route"] for _, labels in found if "route" in dict(labels)}
    methods = {dict(labels)["method"] for _, labels in found if "method" in dict(labels)}
    assert routes <= {"/v1/threads", "/metrics", "unmatched"}
    assert methods <= {"GET", "POST", "OTHER"}


def test_stream_metrics_and_outcomes(server: ThreadServer) -> None:
    url = server.url
    assert _stream(url, {"message": "tool please", "thread_id": "s-1"})[-1] == "end"
    assert _stream(url, {"message": "x", "graph": "failing"})[-2:] == ["error", "end"]
    with slow_run(url, "s-2"):
        assert value(url, "graphgate_streams_open", graph="slow") == 1
    # The disconnect is noticed on the server a moment after the client leaves.
    deadline = time.monotonic() + 10
    while value(url, "graphgate_streams_total", graph="slow",
                outcome="client_disconnected") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert value(url, "graphgate_streams_total", graph="demo", outcome="completed") == 1
    assert value(url, "graphgate_streams_total", graph="failing", outcome="error") == 1
    assert value(url, "graphgate_streams_open", graph="slow") == 0
    assert value(url, "graphgate_stream_first_token_seconds_count", graph="demo") == 1
    assert value(url, "graphgate_stream_first_event_seconds_count", graph="demo") == 1
    assert value(url, "graphgate_stream_events_total", event="end") == 2
    assert value(url, "graphgate_stream_events_total", event="messages") > 5
    assert value(url, "graphgate_run_duration_seconds_count", graph="demo",
                 outcome="success") == 1
    assert value(url, "graphgate_run_duration_seconds_count", graph="failing",
                 outcome="error") == 1
    assert value(url, "graphgate_run_duration_seconds_count", graph="slow",
                 outcome="cancelled") == 1
    assert value(url, "graphgate_node_duration_seconds_count", graph="demo", node="tools") == 1
    assert value(url, "graphgate_node_duration_seconds_count", graph="demo", node="agent") == 2
    assert value(url, "graphgate_checkpointer_operation_seconds_count", operation="put") > 0
    assert value(url, "graphgate_streams_total", graph="demo", outcome="error") == 0


def test_busy_threads_are_counted(server: ThreadServer) -> None:
    with slow_run(server.url, "busy"):
        refused = httpx.post(server.url + "/v1/chat", json={"message": "hi", "thread_id": "busy"})
        assert refused.status_code == 409
    assert value(server.url, "graphgate_runs_refused_total", reason="thread_busy") == 1


def test_heartbeats_are_counted(serve: Callable[[Settings], ThreadServer],
                                tmp_path: Path) -> None:
    server = serve(make_settings(f"sqlite:///{tmp_path}/h.sqlite",
                                 streaming={"heartbeat_interval_s": 0.05}))
    with slow_run(server.url, "hb"):
        time.sleep(0.3)
    assert value(server.url, "graphgate_stream_heartbeats_total") >= 2


def test_build_info(server: ThreadServer) -> None:
    found = [labels for (name, labels) in samples(server.url) if name == "graphgate_build_info"]
    assert len(found) == 1
    assert {key for key, _ in found[0]} == {"version", "python", "langgraph"}


def test_metrics_token(serve: Callable[[Settings], ThreadServer], tmp_path: Path) -> None:
    token = "mT0k3n-" + uuid.uuid4().hex
    server = serve(make_settings(f"sqlite:///{tmp_path}/t.sqlite", metrics={"token": token}))
    refused = httpx.get(server.url + "/metrics")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    wrong = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and "graphgate_build_info" in ok.text
    assert token not in ok.text


def test_metrics_port(serve: Callable[[Settings], ThreadServer], tmp_path: Path) -> None:
    port = free_port()
    server = serve(make_settings(f"sqlite:///{tmp_path}/p.sqlite", metrics={"port": port}))
    assert server.metrics_url is not None
    assert httpx.get(server.url + "/metrics").status_code == 404
    assert httpx.get(server.metrics_url + "/metrics").status_code == 200
    # The scrape port is not a back door to the API.
    assert httpx.get(server.metrics_url + "/v1/threads").status_code == 404
    assert httpx.post(server.metrics_url + "/v1/chat", json={"message": "x"}).status_code == 404
    assert httpx.get(server.metrics_url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/v1/threads").status_code == 200


def test_metrics_off(serve: Callable[[Settings], ThreadServer], tmp_path: Path) -> None:
    server = serve(make_settings(f"sqlite:///{tmp_path}/o.sqlite", metrics={"enabled": False}))
    assert httpx.get(server.url + "/metrics").status_code == 404


def test_promtool_accepts_the_exposition(server: ThreadServer) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("Prometheus (promtool)")
    assert promtool is not None
    _stream(server.url, {"message": "tool please"})
    text = httpx.get(server.url + "/metrics").text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every graphgate metric has help text and the namespace.
    names = set(re.findall(r"^# HELP (graphgate_\w+) .+$", text, flags=re.MULTILINE))
    assert len(names) >= 20
