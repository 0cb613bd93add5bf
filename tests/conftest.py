from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.support.postgres import PostgresServer, running_postgres
from tests.support.redis import RedisServer, running_redis
from tests.support.servers import ThreadServer

TEST_GRAPHS = {
    "demo": "service.graphs.demo:make_demo_graph",
    "slow": "tests.support.graphs:slow",
    "failing": "tests.support.graphs:failing",
    "silent": "tests.support.graphs:silent",
    "odd": "tests.support.graphs:odd",
    "flood": "tests.support.graphs:flood",
    "stubborn": "tests.support.graphs:stubborn",
    "approval": "tests.support.graphs:approval",
    "nested": "tests.support.graphs:nested",
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's GRAPHGATE_* variables."""
    for name in list(os.environ):
        if name.startswith("GRAPHGATE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store: a SQLite file, or a new database on the throwaway Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/graphgate.sqlite"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The throwaway Redis, running (a test that stopped it may have failed) and empty."""
    redis_server.start()
    redis_server.flush()
    return redis_server.url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "development",
        "database_url": database_url,
        "graphs": TEST_GRAPHS,
        "default_graph": "demo",
        "demo": {"token_delay_ms": 0, "reply_tokens": 8},
        # Off unless a test turns them on; tests/security drives the full stack.
        "auth": {"enabled": False},
        "rate_limit": {"enabled": False},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def serve() -> Iterator[Callable[[Settings], ThreadServer]]:
    """Start real uvicorn servers for a test; all are stopped afterwards."""
    started: list[ThreadServer] = []

    def _serve(settings: Settings) -> ThreadServer:
        server = ThreadServer(settings).start()
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()


@pytest.fixture
def server(serve: Callable[[Settings], ThreadServer], database_url: str) -> ThreadServer:
    """A server on a fresh SQLite or Postgres store (the test runs once for each)."""
    return serve(make_settings(database_url))
