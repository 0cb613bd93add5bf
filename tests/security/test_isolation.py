"""Thread isolation: another principal's thread is unreachable through every route.

Runs on SQLite and Postgres. "Unreachable" means a 404 byte-identical (but for the
request id) to the one for a thread that never existed, and the owner's checkpoints
unchanged afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from service.persistence.threads import owner_namespace
from service.security.principal import Principal
from tests.security.conftest import Caller, KeyRing, RsaIssuer, SecureServe
from tests.support.sse import iter_frames

ALICE = Principal(tenant="tenant-a", subject="alice", method="api_key")


def _chat(url: str, caller: Caller, thread_id: str, message: str = "hello") -> httpx.Response:
    return httpx.post(url + "/v1/chat", json={"message": message, "thread_id": thread_id},
                      headers=caller.headers, timeout=30)


def _without_request_id(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    body.pop("request_id")
    return body


def _history_length(url: str, caller: Caller, thread_id: str) -> int:
    response = httpx.get(url + f"/v1/threads/{thread_id}/history", params={"limit": 100},
                         headers=caller.headers)
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


@pytest.mark.parametrize("intruder", ["carol", "bob"])
def test_other_principals_cannot_reach_a_thread(secure_server: SecureServe, keyring: KeyRing,
                                                database_url: str, intruder: str) -> None:
    """Another tenant (carol), and another subject of the same tenant (bob), get 404s."""
    server = secure_server(database_url)
    alice, other = keyring["alice"], keyring[intruder]
    assert _chat(server.url, alice, "private").status_code == 200
    checkpoints = _history_length(server.url, alice, "private")
    missing = httpx.get(server.url + "/v1/threads/never-existed/state", headers=other.headers)
    assert missing.status_code == 404

    state = httpx.get(server.url + "/v1/threads/private/state", headers=other.headers)
    history = httpx.get(server.url + "/v1/threads/private/history", headers=other.headers)
    delete = httpx.delete(server.url + "/v1/threads/private", headers=other.headers)
    for response in (state, history, delete):
        assert response.status_code == 404
        assert _without_request_id(response) == _without_request_id(missing)
    listed = httpx.get(server.url + "/v1/threads", headers=other.headers).json()
    assert [item["thread_id"] for item in listed["items"]] == []

    # Writing to the same thread id starts the intruder's own, separate thread.
    reply = _chat(server.url, other, "private", "mine now").json()["reply"]
    assert reply.startswith("I have seen 1 message")
    with httpx.stream("POST", server.url + "/v1/chat/stream", headers=other.headers,
                      json={"message": "again", "thread_id": "private"}, timeout=30) as stream:
        events = [f.event for f in iter_frames(stream) if f.event]
    assert events[-1] == "end" and "error" not in events
    theirs = httpx.get(server.url + "/v1/threads/private/state", headers=other.headers).json()
    assert len(theirs["values"]["messages"]) == 4  # the intruder's two turns only

    # The owner's thread is untouched by all of it.
    assert _history_length(server.url, alice, "private") == checkpoints
    own = httpx.get(server.url + "/v1/threads/private/state", headers=alice.headers).json()
    assert own["values"]["messages"][0]["content"] == "hello"
    assert len(own["values"]["messages"]) == 2


def test_listing_shows_only_the_callers_threads(secure_server: SecureServe,
                                                keyring: KeyRing) -> None:
    server = secure_server()
    for thread in ("a-1", "a-2"):
        assert _chat(server.url, keyring["alice"], thread).status_code == 200
    assert _chat(server.url, keyring["carol"], "c-1").status_code == 200
    alice = httpx.get(server.url + "/v1/threads", headers=keyring["alice"].headers).json()
    carol = httpx.get(server.url + "/v1/threads", headers=keyring["carol"].headers).json()
    assert sorted(i["thread_id"] for i in alice["items"]) == ["a-1", "a-2"]
    assert [i["thread_id"] for i in carol["items"]] == ["c-1"]


def test_tenant_sharing_is_opt_in(secure_server: SecureServe, keyring: KeyRing) -> None:
    """With share_threads_within_tenant, bob (tenant-a) sees alice's thread; carol does not."""
    server = secure_server(auth={"share_threads_within_tenant": True})
    assert _chat(server.url, keyring["alice"], "team").status_code == 200
    shared = httpx.get(server.url + "/v1/threads/team/state", headers=keyring["bob"].headers)
    assert shared.status_code == 200
    other = httpx.get(server.url + "/v1/threads/team/state", headers=keyring["carol"].headers)
    assert other.status_code == 404


CRAFTED_IDS = [
    "a.b",  # the namespace separator
    "tenant-a:alice:private",
    "..%2Fprivate",
    "private%00",
    "x" * 65,
    "priv\u0430te",  # Cyrillic a
    "private ",
    "*",
    "%2e%2e",
]


@pytest.mark.parametrize("thread_id", CRAFTED_IDS)
def test_crafted_thread_ids_are_refused(secure_server: SecureServe, keyring: KeyRing,
                                        thread_id: str) -> None:
    server = secure_server()
    assert _chat(server.url, keyring["alice"], "private").status_code == 200
    carol = keyring["carol"]
    body = httpx.post(server.url + "/v1/chat", headers=carol.headers,
                      json={"message": "hi", "thread_id": thread_id})
    assert body.status_code == 422
    path = httpx.get(server.url + f"/v1/threads/{thread_id}/state", headers=carol.headers)
    assert path.status_code in (404, 422)
    assert "private" not in path.text or path.status_code == 422


def test_another_owners_namespace_cannot_be_named(secure_server: SecureServe,
                                                  keyring: KeyRing) -> None:
    """Even knowing alice's storage namespace, carol cannot form a key inside it."""
    server = secure_server()
    assert _chat(server.url, keyring["alice"], "private").status_code == 200
    namespace = owner_namespace(ALICE.owner(share_within_tenant=False))
    for thread_id in (f"{namespace}.private", f"{namespace}private", namespace):
        response = httpx.get(server.url + f"/v1/threads/{thread_id}/state",
                             headers=keyring["carol"].headers)
        assert response.status_code in (404, 422), response.text


def test_storage_keys_never_reach_clients(secure_server: SecureServe, keyring: KeyRing) -> None:
    """Responses speak of the client's thread id, never the namespaced storage key."""
    server = secure_server()
    alice = keyring["alice"]
    namespace = owner_namespace(ALICE.owner(share_within_tenant=False))
    texts = [_chat(server.url, alice, "visible").text]
    for path in ("/v1/threads/visible/state", "/v1/threads/visible/history", "/v1/threads"):
        texts.append(httpx.get(server.url + path, headers=alice.headers).text)
    with httpx.stream("POST", server.url + "/v1/chat/stream", headers=alice.headers,
                      json={"message": "stream", "thread_id": "visible"}, timeout=30) as stream:
        texts.append(json.dumps([f.data for f in iter_frames(stream)]))
    for text in texts:
        assert namespace not in text


def test_a_token_cannot_pose_as_a_key_of_the_same_name(secure_server: SecureServe,
                                                       keyring: KeyRing,
                                                       rsa_issuer: RsaIssuer) -> None:
    """Key names and token subjects come from different parties: a JWT with sub "alice"
    in tenant-a is not the API key named "alice" in tenant-a."""
    server = secure_server()
    assert _chat(server.url, keyring["alice"], "named").status_code == 200
    token = rsa_issuer.token(sub="alice", tenant="tenant-a")
    response = httpx.get(server.url + "/v1/threads/named/state",
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404
