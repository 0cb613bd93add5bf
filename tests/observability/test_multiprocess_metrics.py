"""Metrics under `graphgate serve --workers 2`: prometheus_client's multiprocess mode.

Every test runs a real gunicorn with two uvicorn workers (one test runs a single uvicorn
process) and reads `/metrics` over HTTP on new connections, so whichever worker answers
must report the totals of both. Which worker counted what is read from each worker's own
files in PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.support.binaries import missing
from tests.support.prometheus import (
    Series,
    file_pids,
    parse_exposition,
    total,
    wait_until_answering,
    worker_files,
    worker_series,
)
from tests.support.servers import ProcessServer
from tests.support.sse import SSEFrame, iter_frames, slow_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REQUESTS = "graphgate_http_requests_total"
STREAMS = "graphgate_streams_total"
STREAMS_OPEN = "graphgate_streams_open"
IN_FLIGHT = "graphgate_http_requests_in_flight"
EVENTS = "graphgate_stream_events_total"
CHAT = {"method": "POST", "route": "/v1/chat", "status_class": "2xx"}
HEALTHZ = {"method": "GET", "route": "/healthz", "status_class": "2xx"}

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _no_inherited_multiproc_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's PROMETHEUS_MULTIPROC_DIR would turn multiprocess mode on for the
    # single-process server, and hide a CLI that fails to set it for gunicorn.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


def server_env(tmp_path: Path, multiproc_dir: Path | None = None) -> dict[str, str]:
    env = {
        "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
        "GRAPHGATE_GRAPHS": "demo=service.graphs.demo:make_demo_graph,"
                            "slow=tests.support.graphs:slow",
        # Streams of 20 tokens 40 ms apart: time to hang up mid-stream after the first
        # token even on a loaded machine. (Plain /v1/chat does not stream: no delay.)
        "GRAPHGATE_DEMO__TOKEN_DELAY_MS": "40", "GRAPHGATE_DEMO__REPLY_TOKENS": "20",
        "GRAPHGATE_SERVER__GRACEFUL_TIMEOUT_S": "5",
    }
    if multiproc_dir is not None:
        env["GRAPHGATE_METRICS__MULTIPROCESS_DIR"] = str(multiproc_dir)
    return env


def children(pid: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next((line.split(":", 1)[1].strip() for line in status.read_text().splitlines()
                         if line.startswith("PPid:")), None)
        except OSError:
            continue
        if ppid == str(pid):
            found.add(int(status.parent.name))
    return found


def eventually(probe: Callable[[], T], check: Callable[[T], bool], what: str,
               timeout_s: float = 20) -> T:
    """Call `probe` until `check` accepts its value; fail with the last one after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s; last seen {value!r}")
        time.sleep(0.1)


def workers(server: ProcessServer, multiproc_dir: Path) -> set[int]:
    """The two worker pids, once both have created their metric files and serve."""
    assert server.proc is not None
    master = server.proc.pid

    def booted() -> set[int]:
        pids = children(master)
        return pids if len(pids) == 2 and all(
            (multiproc_dir / f"counter_{pid}.db").exists()
            and (multiproc_dir / f"gauge_livesum_{pid}.db").exists() for pid in pids) else set()

    pids = eventually(booted, bool, "two workers with metric files")
    wait_until_answering(server.url, multiproc_dir, pids)
    return pids


def fresh_connections() -> httpx.Client:
    """A client that opens a new connection for every request, so both workers get some."""
    return httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def scrape(server: ProcessServer) -> Series:
    # A new connection every time: either worker may answer.
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse_exposition(response.text)


def open_streams(series: Series) -> float:
    return total(series, STREAMS_OPEN)


def quiet_scrape(server: ProcessServer) -> Series:
    """A scrape once no request but the scrape itself is in flight.

    A worker counts a request just after sending its response, so the client may ask
    the other worker before the count is written. Once the in-flight gauge (decremented
    right before the count) says nothing else is running, one more scrape sees it all.
    """
    eventually(lambda: scrape(server),
               lambda s: total(s, IN_FLIGHT) == 1 and open_streams(s) == 0,
               "nothing in flight but the scrape")
    return scrape(server)


def stream_to_end(server: ProcessServer, **body: object) -> list[SSEFrame]:
    with httpx.stream("POST", server.url + "/v1/chat/stream", timeout=30,
                      json={"message": "hi", **body}) as response:
        assert response.status_code == 200, response.read()
        frames = [frame for frame in iter_frames(response) if frame.event]
    assert frames[-1].event == "end", frames
    return frames


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool")
    assert promtool is not None
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, (
        f"promtool check metrics exited {result.returncode}:\n"
        f"{result.stdout.decode()}{result.stderr.decode()}")


@contextlib.contextmanager
def running(server: ProcessServer) -> Iterator[ProcessServer]:
    """The server, started; stopped with SIGTERM afterwards, which must exit 0."""
    try:
        server.start()
        yield server
    except BaseException:
        if server.proc is not None:
            server.stop(signal.SIGTERM)
        raise
    code = server.stop(signal.SIGTERM)
    assert code == 0, server.output()


def test_fresh_dir_and_totals_summed_across_workers(tmp_path: Path) -> None:
    """A stale file in the configured directory is wiped at start; each worker writes its
    own files; every scrape, whichever worker answers, shows the totals of both."""
    multiproc_dir = tmp_path / "metrics"
    multiproc_dir.mkdir()
    stale = multiproc_dir / "counter_123.db"
    stale.write_bytes(b"junk from a previous run")

    with running(ProcessServer(server_env(tmp_path, multiproc_dir), "--workers", "2",
                               cwd=tmp_path)) as server:
        pids = workers(server, multiproc_dir)
        assert not stale.exists()
        # Only the workers write metrics; the master (which marks them dead) does not.
        assert file_pids(multiproc_dir) == pids

        before = total(quiet_scrape(server), REQUESTS, **HEALTHZ)  # start-up probes
        with fresh_connections() as client:
            for _ in range(40):
                assert client.get(server.url + "/healthz").status_code == 200
            for n in range(10):
                response = client.post(server.url + "/v1/chat",
                                       json={"message": "hi", "thread_id": f"sum-{n}"})
                assert response.status_code == 200, response.text

        first = quiet_scrape(server)
        per_worker = {pid: worker_series(multiproc_dir, pid) for pid in pids}
        chats = {pid: total(series, REQUESTS, **CHAT) for pid, series in per_worker.items()}
        healthz = {pid: total(series, REQUESTS, **HEALTHZ) for pid, series in per_worker.items()}
        # Both workers served part of the traffic, so the totals below are sums.
        assert all(chats[pid] + healthz[pid] > 0 for pid in pids), (chats, healthz)
        assert sum(chats.values()) == 10

        for series in [first] + [scrape(server) for _ in range(12)]:
            assert total(series, REQUESTS, **CHAT) == 10
            assert total(series, REQUESTS, **HEALTHZ) == before + 40
            assert total(series, REQUESTS, **HEALTHZ) == sum(healthz.values())
            # Multiprocess mode: the process collector would describe one worker only.
            assert ("process_cpu_seconds_total", ()) not in series
        # Both workers answered scrapes (their own counts of GET /metrics).
        scraped = {pid: total(worker_series(multiproc_dir, pid), REQUESTS, route="/metrics")
                   for pid in pids}
        assert all(count > 0 for count in scraped.values()), scraped


def test_stream_outcomes_and_open_streams_sum_across_workers(tmp_path: Path) -> None:
    """Completed and disconnected streams are counted once each across workers; the
    open-streams gauge is a live sum, back to 0 when they end."""
    multiproc_dir = tmp_path / "metrics"
    with running(ProcessServer(server_env(tmp_path, multiproc_dir), "--workers", "2",
                               cwd=tmp_path)) as server:
        workers(server, multiproc_dir)
        for n in range(3):
            stream_to_end(server, thread_id=f"done-{n}")

        with httpx.stream("POST", server.url + "/v1/chat/stream", timeout=30,
                          json={"message": "hi", "thread_id": "gone"}) as response:
            assert response.status_code == 200
            first = next(f for f in iter_frames(response) if f.event == "messages")
            assert first.data["content"]
            # Hang up at once, after the first of the reply's 20 tokens (40 ms apart).

        def settled(series: Series) -> bool:
            # The stream ends, then its request: the in-flight gauge and request counter
            # follow the stream counters by a moment.
            return (total(series, STREAMS, outcome="client_disconnected") == 1
                    and open_streams(series) == 0 and total(series, IN_FLIGHT) == 1
                    and total(series, REQUESTS, route="/v1/chat/stream") == 4)

        series = eventually(lambda: scrape(server), settled, "the disconnect is counted")
        assert total(series, STREAMS, graph="demo", outcome="completed") == 3
        assert total(series, STREAMS, graph="demo", outcome="client_disconnected") == 1
        assert total(series, STREAMS) == 4
        assert total(series, REQUESTS, method="POST", route="/v1/chat/stream",
                      status_class="2xx") == 4
        # Every scrape, whichever worker answers, agrees.
        for _ in range(6):
            assert settled(scrape(server))
        promtool_check(httpx.get(server.url + "/metrics", timeout=10).text)


def test_dead_worker_gauges_are_dropped_and_counters_kept(tmp_path: Path) -> None:
    """A worker killed with an open stream: gunicorn replaces it, child_exit marks it dead
    so its live gauges stop counting, and what it counted stays in the totals."""
    multiproc_dir = tmp_path / "metrics"
    with running(ProcessServer(server_env(tmp_path, multiproc_dir), "--workers", "2",
                               cwd=tmp_path)) as server:
        assert server.proc is not None
        pids = workers(server, multiproc_dir)
        with fresh_connections() as client:
            for _ in range(20):
                assert client.get(server.url + "/healthz").status_code == 200
        healthz_before = total(quiet_scrape(server), REQUESTS, **HEALTHZ)

        with slow_run(server.url, "doomed"):
            holding = {pid: open_streams(worker_series(multiproc_dir, pid)) for pid in pids}
            [victim] = [pid for pid, count in holding.items() if count == 1]
            series = scrape(server)
            assert open_streams(series) == 1
            assert total(series, IN_FLIGHT) == 2
            events = total(series, EVENTS)
            # The victim has counted the events it sent on the stream it holds.
            assert total(worker_series(multiproc_dir, victim), EVENTS) > 0
            os.kill(victim, signal.SIGKILL)
            # The client's stream is cut; leaving the block closes it.

        replaced = eventually(lambda: children(server.proc.pid) if server.proc else set(),
                              lambda pids_now: len(pids_now) == 2 and victim not in pids_now,
                              "gunicorn replaces the killed worker")
        [newcomer] = replaced - pids
        # child_exit → mark_process_dead: the dead worker's live gauges are gone, its
        # counters (and histograms) stay to be summed.
        assert not list(multiproc_dir.glob(f"gauge_live*_{victim}.db"))
        assert (multiproc_dir / f"counter_{victim}.db").exists()
        workers(server, multiproc_dir)

        series = scrape(server)
        assert open_streams(series) == 0  # not the 1 the dead worker last wrote
        assert total(series, IN_FLIGHT) == 1
        # Totals still include what the dead worker counted.
        assert total(series, EVENTS) == events
        assert total(series, REQUESTS, **HEALTHZ) == healthz_before
        assert total(series, REQUESTS, method="GET", route="/metrics") > 0

        # Streams held open until one lands on the new worker: the live sum counts each
        # open stream once, the dead worker's never.
        with contextlib.ExitStack() as held:
            for n in range(1, 13):
                held.enter_context(slow_run(server.url, f"alive-{n}"))
                series = scrape(server)
                assert open_streams(series) == n
                assert total(series, IN_FLIGHT) == n + 1
                if open_streams(worker_series(multiproc_dir, newcomer)) > 0:
                    break
            else:
                pytest.fail("no stream reached the replacement worker in 12 tries")
        eventually(lambda: scrape(server), lambda s: open_streams(s) == 0,
                   "the held streams are closed")


def test_restart_starts_counters_from_zero(tmp_path: Path) -> None:
    """Files left by a stopped server are wiped when the next one starts on the same
    directory, so its counters start from 0 rather than from the last run's totals."""
    multiproc_dir = tmp_path / "metrics"
    env = server_env(tmp_path, multiproc_dir)
    with running(ProcessServer(env, "--workers", "2", cwd=tmp_path)) as first:
        old_pids = workers(first, multiproc_dir)
        with fresh_connections() as client:
            for _ in range(5):
                assert client.post(first.url + "/v1/chat",
                                   json={"message": "hi"}).status_code == 200
            for _ in range(20):
                assert client.get(first.url + "/healthz").status_code == 200
        series = quiet_scrape(first)
        assert total(series, REQUESTS, **CHAT) == 5
        assert total(series, REQUESTS, **HEALTHZ) > 20
    # Stopped: its workers' files are still there, and would be summed if not wiped.
    assert old_pids <= file_pids(multiproc_dir)

    with running(ProcessServer(env, "--workers", "2", cwd=tmp_path)) as second:
        new_pids = workers(second, multiproc_dir)
        assert file_pids(multiproc_dir) == new_pids
        assert all(not worker_files(multiproc_dir, pid) for pid in old_pids)
        series = scrape(second)
        assert total(series, REQUESTS, **CHAT) == 0
        assert total(series, REQUESTS, **HEALTHZ) < 20  # only the start-up probe(s)
        assert httpx.post(second.url + "/v1/chat", json={"message": "hi"},
                          timeout=30).status_code == 200
        assert total(quiet_scrape(second), REQUESTS, **CHAT) == 1


def test_single_process_serves_process_metrics(tmp_path: Path) -> None:
    """`--workers 1` needs no multiprocess directory and exports the process collector;
    promtool accepts its exposition."""
    with running(ProcessServer(server_env(tmp_path), "--workers", "1", cwd=tmp_path)) as server:
        assert httpx.post(server.url + "/v1/chat", json={"message": "hi"},
                          timeout=30).status_code == 200
        stream_to_end(server)
        assert httpx.get(server.url + "/no-such-page", timeout=10).status_code == 404
        quiet_scrape(server)
        response = httpx.get(server.url + "/metrics", timeout=10)
        assert response.status_code == 200
        series = parse_exposition(response.text)
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_open_fds"):
            assert (name, ()) in series, name
        assert any(name == "python_info" for name, _ in series)
        assert total(series, REQUESTS, **CHAT) == 1
        assert total(series, STREAMS, outcome="completed") == 1
        assert not list(tmp_path.rglob("*.db"))
        promtool_check(response.text)


def test_promtool_accepts_multiprocess_exposition(tmp_path: Path) -> None:
    """The summed exposition (counters, live gauges, histograms from two workers) lints."""
    multiproc_dir = tmp_path / "metrics"
    with running(ProcessServer(server_env(tmp_path, multiproc_dir), "--workers", "2",
                               cwd=tmp_path)) as server:
        workers(server, multiproc_dir)
        for n in range(3):
            assert httpx.post(server.url + "/v1/chat", json={"message": "hi"},
                              timeout=30).status_code == 200
            stream_to_end(server, thread_id=f"lint-{n}")
            assert httpx.get(server.url + f"/missing-{n}", timeout=10).status_code == 404
        quiet_scrape(server)
        text = httpx.get(server.url + "/metrics", timeout=10).text
        series = parse_exposition(text)
        assert total(series, "graphgate_http_request_duration_seconds_count",
                     route="/v1/chat") == 3
        assert total(series, "graphgate_build_info") == 1  # livemax: one, not one per worker
        promtool_check(text)


def test_unmatched_paths_add_no_series(tmp_path: Path) -> None:
    """300 random unknown paths, spread over both workers, are one `unmatched` series."""
    multiproc_dir = tmp_path / "metrics"
    with running(ProcessServer(server_env(tmp_path, multiproc_dir), "--workers", "2",
                               cwd=tmp_path)) as server:
        pids = workers(server, multiproc_dir)
        assert httpx.get(server.url + "/warm-up", timeout=10).status_code == 404
        before = set(quiet_scrape(server))  # GET /metrics has its series too

        tokens = [uuid.uuid4().hex for _ in range(300)]
        with fresh_connections() as client:
            for n, token in enumerate(tokens):
                path = f"/{token}" if n % 3 else f"/v1/{token}/x/{n}?q={token}"
                assert client.get(server.url + path).status_code == 404
        quiet_scrape(server)
        per_worker = [total(worker_series(multiproc_dir, pid), REQUESTS, route="unmatched")
                      for pid in pids]
        assert sum(per_worker) == 301 and min(per_worker) > 0, per_worker

        response = httpx.get(server.url + "/metrics", timeout=10)
        after = set(parse_exposition(response.text))
        assert after == before, sorted(after ^ before)
        assert not any(token in response.text for token in tokens)
        series = parse_exposition(response.text)
        assert total(series, REQUESTS, route="unmatched") == 301
        assert total(series, REQUESTS, method="GET", route="unmatched",
                     status_class="4xx") == 301
