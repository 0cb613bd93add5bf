"""Graceful drain on SIGTERM: open streams end cleanly, new runs are refused, the process
exits within its bound, and the thread keeps every committed step."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.conftest import make_settings
from tests.support.servers import ProcessServer, ThreadServer
from tests.support.sse import SSEFrame, iter_frames

REPO = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(REPO),
            "GRAPHGATE_DATABASE_URL": f"sqlite:///{tmp_path}/drain.sqlite",
            "GRAPHGATE_GRAPHS": "demo=service.graphs.demo:make_demo_graph,"
                                "slow=tests.support.graphs:slow",
            "GRAPHGATE_SERVER__GRACEFUL_TIMEOUT_S": "15",
            "GRAPHGATE_SERVER__DRAIN_TIMEOUT_S": "2", **extra}


def _stream_in_background(url: str, body: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    """Read a stream on a thread; the list gets the frames, then ("done", error or None)."""
    got: list[Any] = []

    def read() -> None:
        try:
            with httpx.stream("POST", url + "/v1/chat/stream", json=body, timeout=60) as resp:
                for frame in iter_frames(resp):
                    got.append(frame)
            got.append(("done", None))
        except Exception as exc:
            got.append(("done", exc))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


def _wait_started(got: list[Any], stage: str) -> None:
    deadline = time.monotonic() + 20
    while not any(isinstance(f, SSEFrame) and f.event == "custom" and f.data == {"stage": stage}
                  for f in got):
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_ends_open_streams_cleanly(tmp_path: Path, workers: str) -> None:
    server = ProcessServer(_env(tmp_path), "--workers", workers, cwd=tmp_path).start()
    assert server.proc is not None
    thread, got = _stream_in_background(server.url, {
        "input": {}, "graph": "slow", "thread_id": "draining", "stream_mode": "custom"})
    _wait_started(got, "b-started")
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    ended_after = time.monotonic() - signalled
    frames = [f for f in got if isinstance(f, SSEFrame) and f.event]
    assert got[-1] == ("done", None), got[-1]  # a complete response, not a cut connection
    assert [f.event for f in frames][-2:] == ["error", "end"]
    error = frames[-2].data
    assert error["code"] == "shutting_down" and error["retryable"] is True
    assert 1.5 <= ended_after < 10  # after the drain period, well before graceful_timeout
    code = server.proc.wait(20)
    exited_after = time.monotonic() - signalled
    assert code == 0, server.output()
    assert exited_after < 15
    # The finished step is committed; the interrupted one is next.
    with sqlite3.connect(tmp_path / "drain.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] > 0
    revived = ProcessServer(_env(tmp_path), cwd=tmp_path).start()
    try:
        state = httpx.get(revived.url + "/v1/threads/draining/state").json()
        assert state["values"]["steps"] == ["a"] and state["next"] == ["b"]
    finally:
        revived.stop()


@pytest.mark.slow
def test_runs_that_finish_within_the_drain_period_complete(tmp_path: Path) -> None:
    server = ProcessServer(_env(tmp_path, GRAPHGATE_SERVER__DRAIN_TIMEOUT_S="8",
                                GRAPHGATE_DEMO__TOKEN_DELAY_MS="100",
                                GRAPHGATE_DEMO__REPLY_TOKENS="15"), cwd=tmp_path).start()
    assert server.proc is not None
    thread, got = _stream_in_background(server.url, {"message": "hi", "thread_id": "finish"})
    deadline = time.monotonic() + 20
    while not any(isinstance(f, SSEFrame) and f.event == "messages" for f in got):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    events = [f.event for f in got if isinstance(f, SSEFrame) and f.event]
    assert events[-1] == "end" and "error" not in events
    assert server.proc.wait(20) == 0


def test_readiness_and_new_runs_during_the_drain(
        serve: Callable[[Settings], ThreadServer], tmp_path: Path) -> None:
    """Once draining (the signal handler's first step), /readyz is 503 at once, new runs
    are refused with 503 and Retry-After, and the open stream still ends cleanly."""
    server = serve(make_settings(f"sqlite:///{tmp_path}/r.sqlite",
                                 server={"drain_timeout_s": 0.5}))
    thread, got = _stream_in_background(server.url, {
        "input": {}, "graph": "slow", "thread_id": "hold", "stream_mode": "custom"})
    _wait_started(got, "b-started")
    server.lifecycle.begin_shutdown()
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["reason"] == "shutting_down"
    refused = httpx.post(server.url + "/v1/chat", json={"message": "late"})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    thread.join(10)
    events = [f.event for f in got if isinstance(f, SSEFrame) and f.event]
    assert events[-2:] == ["error", "end"]


def test_drain_must_fit_in_the_graceful_timeout() -> None:
    from service.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"DRAIN_TIMEOUT_S.*shorter than graceful_timeout_s"):
        load_settings(env="development", server={"graceful_timeout_s": 10,
                                                 "drain_timeout_s": 10})


