"""The Agent Server protocol, driven through the official `langgraph-sdk` client against a
real production-mode graphgate (API keys on, SQLite and Postgres)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.client import SyncLangGraphClient

from service.settings import Settings
from tests.security.conftest import KeyRing, keyring, rsa_issuer, secure_settings  # noqa: F401
from tests.support.servers import ThreadServer


@dataclass
class AgentServer:
    server: ThreadServer
    keyring: KeyRing
    clients: list[SyncLangGraphClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, caller: str = "alice") -> SyncLangGraphClient:
        """The official client, presenting `caller`'s API key (sent as x-api-key)."""
        client = get_sync_client(url=self.url, api_key=self.keyring[caller].key)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.http.client.close()


@pytest.fixture
def agent_server(serve: Callable[[Settings], ThreadServer], keyring: KeyRing,  # noqa: F811
                 database_url: str) -> Iterator[Callable[..., AgentServer]]:
    """Start graphgate in production mode with API keys, on SQLite or Postgres."""
    started: list[AgentServer] = []

    def _start(**overrides: Any) -> AgentServer:
        overrides.setdefault("rate_limit", {"enabled": False})
        settings = secure_settings(database_url, keyring, **overrides)
        started.append(AgentServer(serve(settings), keyring))
        return started[-1]

    yield _start
    for server in started:
        server.close()


@pytest.fixture
def agent(agent_server: Callable[..., AgentServer]) -> AgentServer:
    return agent_server()


def wait_status(call: Callable[[], Any]) -> int:
    """The HTTP status `runs.wait` failed with (it raises httpx's own error, untyped)."""
    with pytest.raises(httpx.HTTPStatusError) as raised:
        call()
    return raised.value.response.status_code
