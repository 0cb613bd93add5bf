"""Security on the Agent Server routes: scopes, rate limits, the concurrency cap, and
the LangSmith key the SDK sends along with a graphgate token."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import PermissionDeniedError, RateLimitError

from service.settings import Settings
from tests.agent.conftest import AgentServer
from tests.security.conftest import KeyRing, RsaIssuer, secure_settings
from tests.support.servers import ThreadServer

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}
LANGSMITH_KEY = "lsv2_pt_0123456789abcdef0123456789abcdef_0123456789"


def test_scopes_apply(agent: AgentServer) -> None:
    alice, reader = agent.client("alice"), agent.client("reader")
    thread_id = alice.threads.create()["thread_id"]
    assert reader.threads.search() == []  # reader is another principal: its own space
    with pytest.raises(PermissionDeniedError):
        reader.threads.create()
    with pytest.raises(PermissionDeniedError):
        list(reader.runs.stream(None, "demo", input=HELLO))
    with pytest.raises(PermissionDeniedError):
        reader.runs.create(thread_id, "demo", input=HELLO)


def test_rate_limits_apply(agent_server: Callable[..., AgentServer]) -> None:
    agent = agent_server(rate_limit={"enabled": True})
    limited = agent.client("limited")  # 3/minute
    statuses = []
    for _ in range(4):
        try:
            limited.threads.search()
            statuses.append(200)
        except RateLimitError:
            statuses.append(429)
    assert statuses == [200, 200, 200, 429]
    assert agent.client("alice").threads.search() == []


def test_background_runs_hold_a_concurrency_slot(agent_server: Callable[..., AgentServer],
                                                 ) -> None:
    agent = agent_server(rate_limit={"enabled": True, "max_concurrent_streams": 1})
    client = agent.client()
    first = client.threads.create()["thread_id"]
    second = client.threads.create()["thread_id"]
    run = client.runs.create(first, "slow", input={"steps": []})
    with pytest.raises(RateLimitError):
        client.runs.create(second, "demo", input=HELLO)
    client.runs.cancel(first, run["run_id"], wait=True)
    deadline = time.monotonic() + 10
    while True:  # the slot is given back as the cancelled run unwinds
        try:
            client.runs.create(second, "demo", input=HELLO)
            break
        except RateLimitError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_two_graphgate_credentials_are_refused(agent: AgentServer) -> None:
    response = httpx.post(f"{agent.url}/threads/search", json={}, headers={
        "X-API-Key": agent.keyring["alice"].key,
        "Authorization": f"Bearer {agent.keyring['carol'].key}"})
    assert response.status_code == 401


def test_a_token_with_the_sdks_langsmith_key(serve: Callable[[Settings], ThreadServer],
                                             keyring: KeyRing, rsa_issuer: RsaIssuer,
                                             database_url: str,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    """With LANGSMITH_API_KEY set the SDK sends it as x-api-key on every request. Beside a
    graphgate JWT it is ignored (it names no principal here) and never logged."""
    server = serve(secure_settings(database_url, keyring, rsa_issuer,
                                   rate_limit={"enabled": False}))
    monkeypatch.setenv("LANGSMITH_API_KEY", LANGSMITH_KEY)
    token = rsa_issuer.token(sub="user-7")
    client = get_sync_client(url=server.url, headers={"Authorization": f"Bearer {token}"})
    try:
        thread_id = client.threads.create()["thread_id"]
        values = client.runs.wait(thread_id, "demo", input=HELLO)
        assert values["messages"][-1]["type"] == "ai"
        # The key alone is no credential of ours.
        alone = httpx.post(f"{server.url}/threads/search", json={},
                           headers={"X-API-Key": LANGSMITH_KEY})
        assert alone.status_code == 401
    finally:
        client.http.client.close()
    out, err = capfd.readouterr()
    assert "user-7" in out + err  # the log lines were captured
    assert LANGSMITH_KEY not in out + err
