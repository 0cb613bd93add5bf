"""Conversations survive server restarts, crashes and database restarts."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from service.persistence import open_persistence
from service.persistence.pool_check import RECENTLY_RETURNED_S
from service.settings import Settings
from tests.conftest import make_settings
from tests.support.postgres import PostgresServer
from tests.support.servers import ProcessServer, ThreadServer
from tests.support.sse import slow_run

REPO = Path(__file__).resolve().parents[2]


def chat(url: str, message: str, thread_id: str) -> dict[str, object]:
    response = httpx.post(url + "/v1/chat", json={"message": message, "thread_id": thread_id},
                          timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.mark.slow
def test_state_survives_a_server_restart(database_url: str, tmp_path: Path) -> None:
    """Turn two, served by a new process, sees turn one."""
    env = {"GRAPHGATE_DATABASE_URL": database_url}
    first = ProcessServer(env, cwd=tmp_path).start()
    try:
        assert str(chat(first.url, "remember me", "durable")["reply"]).startswith(
            "I have seen 1 message")
    finally:
        assert first.stop() == 0, first.output()
    second = ProcessServer(env, cwd=tmp_path).start()
    try:
        reply = str(chat(second.url, "still there?", "durable")["reply"])
        assert reply.startswith("I have seen 3 messages")
    finally:
        second.stop()


@pytest.mark.slow
def test_embedded_default_is_sqlite_in_var(tmp_path: Path) -> None:
    """With no database configured, threads persist in ./var/graphgate.sqlite."""
    server = ProcessServer({}, cwd=tmp_path).start()
    try:
        chat(server.url, "hello", "default-store")
        assert httpx.get(server.url + "/readyz").json()["storage"] == "sqlite"
    finally:
        server.stop()
    assert (tmp_path / "var" / "graphgate.sqlite").exists()


@pytest.mark.slow
def test_crash_keeps_finished_steps_and_frees_the_thread(database_url: str,
                                                         tmp_path: Path) -> None:
    """After SIGKILL mid-run, finished steps are kept and the lease expires on its own."""
    env = {"GRAPHGATE_DATABASE_URL": database_url, "PYTHONPATH": str(REPO),
           "GRAPHGATE_GRAPHS": "slow=tests.support.graphs:slow,"
                               "demo=service.graphs.demo:make_demo_graph",
           "GRAPHGATE_RUNS__LEASE_TTL_S": "2"}
    doomed = ProcessServer(env, cwd=tmp_path).start()
    with slow_run(doomed.url, "crash"):
        doomed.stop(signal.SIGKILL)
    revived = ProcessServer(env, cwd=tmp_path).start()
    try:
        state = httpx.get(revived.url + "/v1/threads/crash/state").json()
        assert state["values"]["steps"] == ["a"]
        assert state["next"] == ["b"]
        # The dead run's lease lapses after lease_ttl_s; then the thread is usable again.
        deadline = time.monotonic() + 15
        status = 0
        while time.monotonic() < deadline:
            status = httpx.post(revived.url + "/v1/chat",
                                json={"message": "hi", "thread_id": "crash", "graph": "demo"},
                                timeout=30).status_code
            if status != 409:
                break
            time.sleep(0.2)
        assert status == 200
    finally:
        revived.stop()


@pytest.mark.postgres
def test_postgres_restart_mid_life(serve: Callable[[Settings], ThreadServer],
                                   postgres: PostgresServer) -> None:
    """A running server keeps working after Postgres restarts, with the thread intact."""
    server = serve(make_settings(postgres.create_database()))
    chat(server.url, "before", "pg-restart")
    postgres.restart()
    reply = str(chat(server.url, "after", "pg-restart")["reply"])
    assert reply.startswith("I have seen 3 messages")
    assert httpx.get(server.url + "/readyz").status_code == 200


@pytest.mark.postgres
def test_postgres_outage_is_503_and_recovers(serve: Callable[[Settings], ThreadServer],
                                             postgres: PostgresServer) -> None:
    """With Postgres down: liveness 200, readiness 503, runs 503; all well once it is back."""
    server = serve(make_settings(postgres.create_database(),
                                 postgres={"pool_timeout_s": 1, "connect_timeout_s": 1}))
    chat(server.url, "before", "pg-outage")
    postgres.stop()
    try:
        assert httpx.get(server.url + "/healthz").status_code == 200
        ready = httpx.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["reason"] == "storage"
        refused = httpx.post(server.url + "/v1/chat",
                             json={"message": "during", "thread_id": "pg-outage"}, timeout=30)
        assert refused.status_code == 503
        assert refused.json()["code"] == "storage_unavailable"
        assert "postgres" not in refused.text.lower() and "127.0.0.1" not in refused.text
    finally:
        postgres.start()
    # The pool reconnects on its own exponential backoff (psycopg_pool: 1 s, doubling), so
    # recovery is not instant; readiness reports when it has happened, then runs work.
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "readiness did not recover within 30 s"
        time.sleep(0.2)
    reply = str(chat(server.url, "after", "pg-outage")["reply"])
    assert reply.startswith("I have seen 3 messages")


@pytest.mark.postgres
def test_busy_thread_is_refused_across_replicas(serve: Callable[[Settings], ThreadServer],
                                                postgres: PostgresServer) -> None:
    """Two servers on one Postgres: a run on replica A makes replica B answer 409."""
    url = postgres.create_database()
    replica_a = serve(make_settings(url))
    replica_b = serve(make_settings(url))
    with slow_run(replica_a.url, "shared"):
        refused = httpx.post(replica_b.url + "/v1/chat",
                             json={"message": "me too", "thread_id": "shared"}, timeout=10)
        assert refused.status_code == 409
        assert refused.json()["code"] == "thread_busy"
    # The disconnect ended the run on A and released its lease; B may now run.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        again = httpx.post(replica_b.url + "/v1/chat",
                           json={"message": "now", "thread_id": "shared"}, timeout=30)
        if again.status_code != 409:
            break
        time.sleep(0.05)
    assert again.status_code == 200


@pytest.mark.postgres
@pytest.mark.parametrize("check", [True, False])
def test_pool_connection_check_survives_killed_connections(postgres: PostgresServer,
                                                           check: bool) -> None:
    """[postgres] check_connections (on by default) is what lets the first call after the
    server dropped our connections succeed; off, that call fails. A connection handed back
    within the last 100 ms is not checked again (service.persistence.pool_check): killed
    inside that window, it fails one call even with checks on."""
    url = postgres.create_database()
    settings = make_settings(url, postgres={"pool_min_size": 1, "pool_max_size": 1,
                                            "check_connections": check})

    def kill_connections() -> None:  # a failover or an operator, in effect
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()")

    async def scenario() -> None:
        async with open_persistence(settings) as persistence:
            await persistence.ping()
            await asyncio.sleep(RECENTLY_RETURNED_S * 2)  # idle past the window
            kill_connections()
            if check:
                await persistence.ping()  # checked, found dead, replaced
                kill_connections()  # right after use: inside the window
                with pytest.raises(psycopg.OperationalError):
                    await persistence.ping()
                await persistence.ping()  # the dead one was dropped
            else:
                with pytest.raises(psycopg.OperationalError):
                    await persistence.ping()

    asyncio.run(scenario())
