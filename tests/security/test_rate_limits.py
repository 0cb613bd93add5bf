"""Rate limits on memory storage, against real servers with the whole production stack.

Per-principal request buckets (and who may replace the default), refusals before any
bucket is made, client IPs only from trusted proxies, the probes, the run limit and the
cap on open event streams. Redis storage, outages and multi-worker exactness are in
test_rate_limits_shared.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from service.security.api_keys import generate_key
from tests.security.conftest import KeyRing, RsaIssuer, SecureServe
from tests.support.servers import ProcessServer
from tests.support.sse import SSEFrame, iter_frames, wait_for_stage

PROBLEM = "application/problem+json"
REPO = Path(__file__).resolve().parents[2]


def get(url: str, headers: dict[str, str], path: str = "/v1/threads") -> httpx.Response:
    return httpx.get(url + path, headers=headers, timeout=10)


def chat(url: str, headers: dict[str, str], thread_id: str = "t") -> httpx.Response:
    return httpx.post(url + "/v1/chat", json={"message": "hi", "thread_id": thread_id},
                      headers=headers, timeout=30)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_limited(response: httpx.Response, code: str = "rate_limited") -> None:
    """A 429 problem+json with the code, a whole-second Retry-After and the request id."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == code and body["status"] == 429
    assert int(response.headers["retry-after"]) >= 1
    assert body["request_id"] == response.headers["x-request-id"]


def statuses(url: str, headers: dict[str, str], n: int) -> list[int]:
    return [get(url, headers).status_code for _ in range(n)]


# -- per-principal request buckets ------------------------------------------------------------


def test_limit_plus_one_is_refused_with_headers(secure_server: SecureServe,
                                                keyring: KeyRing) -> None:
    """3/minute: three requests pass with X-RateLimit-*, the fourth is a 429 problem. The
    budget is shared by all routes."""
    server = secure_server(rate_limit={"default_limits": "3/minute"})
    alice = keyring["alice"].headers
    passed = [get(server.url, alice), get(server.url, alice, "/v1/threads/x/state"),
              get(server.url, alice)]
    assert [r.status_code for r in passed] == [200, 404, 200]
    now = time.time()
    for remaining, response in zip((2, 1, 0), passed, strict=True):
        assert response.headers["x-ratelimit-limit"] == "3"
        assert response.headers["x-ratelimit-remaining"] == str(remaining)
        reset = int(response.headers["x-ratelimit-reset"])  # whole epoch seconds
        assert now - 5 < reset <= now + 62
        assert "retry-after" not in response.headers

    refused = get(server.url, alice)
    assert_limited(refused)
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert int(refused.headers["x-ratelimit-reset"]) >= int(now)
    assert int(refused.headers["retry-after"]) <= 61
    assert refused.json()["title"] == "Too many requests"
    # Another route, same principal: the same (exhausted) budget.
    assert_limited(get(server.url, alice, "/v1/threads/other/history"))
    assert_limited(chat(server.url, alice))


def test_buckets_are_per_principal(secure_server: SecureServe, keyring: KeyRing,
                                   rsa_issuer: RsaIssuer) -> None:
    """alice running out leaves bob (same tenant) and carol (other tenant) untouched; two
    JWT subjects are two principals too."""
    server = secure_server(rate_limit={"default_limits": "3/minute"})
    assert statuses(server.url, keyring["alice"].headers, 4) == [200, 200, 200, 429]
    assert statuses(server.url, keyring["bob"].headers, 4) == [200, 200, 200, 429]
    assert statuses(server.url, keyring["carol"].headers, 1) == [200]

    one, two = bearer(rsa_issuer.token(sub="u-1")), bearer(rsa_issuer.token(sub="u-2"))
    assert statuses(server.url, one, 4) == [200, 200, 200, 429]
    # A freshly minted token for the same subject is the same principal: same bucket.
    assert statuses(server.url, bearer(rsa_issuer.token(sub="u-1")), 1) == [429]
    assert statuses(server.url, two, 1) == [200]
    # Same subject in another tenant: another principal.
    assert statuses(server.url, bearer(rsa_issuer.token(sub="u-1", tenant="t-2")), 1) == [200]


def test_a_credentials_own_limit_replaces_the_default(secure_server: SecureServe,
                                                      keyring: KeyRing,
                                                      rsa_issuer: RsaIssuer) -> None:
    """A key's `rate_limit` and the JWT `rate_limit` claim replace the default, lower or
    higher."""
    server = secure_server(rate_limit={"default_limits": "100/minute"})
    limited = keyring["limited"].headers  # rate_limit = "3/minute"
    responses = [get(server.url, limited) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert {r.headers["x-ratelimit-limit"] for r in responses} == {"3"}
    assert_limited(responses[-1])

    claimed = bearer(rsa_issuer.token(sub="claimed", rate_limit="2/minute"))
    responses = [get(server.url, claimed) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].headers["x-ratelimit-limit"] == "2"

    alice = get(server.url, keyring["alice"].headers)
    assert alice.status_code == 200
    assert alice.headers["x-ratelimit-limit"] == "100"
    assert alice.headers["x-ratelimit-remaining"] == "99"

    # Higher than the default: replaced, not added to (the default alone would stop at 3).
    low_default = secure_server(rate_limit={"default_limits": "3/minute"})
    generous = bearer(rsa_issuer.token(sub="generous", rate_limit="5/minute"))
    assert statuses(low_default.url, generous, 6) == [200] * 5 + [429]


def test_refused_credentials_never_reach_the_limiter(secure_server: SecureServe,
                                                     keyring: KeyRing,
                                                     rsa_issuer: RsaIssuer) -> None:
    """Rotating bogus keys and tokens get 401 every time (never 429: they have no bucket)
    and cost a real principal nothing."""
    server = secure_server(rate_limit={"default_limits": "5/minute"})
    alice = keyring["alice"]
    assert get(server.url, alice.headers).headers["x-ratelimit-remaining"] == "4"
    wrong_secret = alice.key[:-10] + ("A" if alice.key[-10] != "A" else "B") + alice.key[-9:]
    bogus: list[dict[str, str]] = [{"X-API-Key": generate_key()[1]} for _ in range(20)]
    bogus += [{"X-API-Key": f"ggk_{alice.key_id}_{uuid.uuid4().hex}"} for _ in range(5)]
    bogus += [{"X-API-Key": wrong_secret}, {"X-API-Key": "not-a-key"}, {}]
    bogus += [bearer(rsa_issuer.token(sub=f"x-{i}", lifetime_s=-120)) for i in range(5)]
    bogus += [bearer(f"garbage.{i}.token") for i in range(5)]
    for headers in bogus:
        response = get(server.url, headers)
        assert response.status_code == 401, (headers, response.text)
        assert "x-ratelimit-limit" not in response.headers
    # Nothing was counted against alice, whose key id some of the forged keys carried.
    after = get(server.url, alice.headers)
    assert after.status_code == 200
    assert after.headers["x-ratelimit-remaining"] == "3"


def _anonymous_server(tmp_path: Path, trusted_proxies: str) -> ProcessServer:
    """`graphgate serve` (one worker, as deployed) with auth off and 3/minute per IP."""
    env = {"HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "GRAPHGATE_DATABASE_URL": f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.sqlite",
           "GRAPHGATE_RATE_LIMIT__ENABLED": "true",
           "GRAPHGATE_RATE_LIMIT__ANONYMOUS_LIMITS": "3/minute",
           "GRAPHGATE_SERVER__TRUSTED_PROXIES": trusted_proxies}
    return ProcessServer(env, cwd=tmp_path)


@pytest.mark.slow
def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    """Anonymous callers are limited by client IP. X-Forwarded-For from a peer that is not
    a trusted proxy changes nothing; from a trusted one, it names the client (and so the
    bucket).

    Run through `graphgate serve`, not a ThreadServer: the app resolves X-Forwarded-For
    itself and the CLI turns uvicorn's own (always-trust-loopback) rewrite off.
    """
    untrusted = _anonymous_server(tmp_path, "[]")
    trusted = _anonymous_server(tmp_path, "127.0.0.1")
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ProcessServer.start, (untrusted, trusted)))
        spoofed = [get(untrusted.url, {"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(5)]
        assert [r.status_code for r in spoofed] == [200, 200, 200, 429, 429]
        assert_limited(spoofed[3])

        # From a trusted proxy each forwarded client has its own bucket ...
        for i in range(6):
            response = get(trusted.url, {"X-Forwarded-For": f"198.51.100.{i}"})
            assert response.status_code == 200
            assert response.headers["x-ratelimit-remaining"] == "2"
        # ... the forwarded client, not the proxy, runs out ...
        one = {"X-Forwarded-For": "192.0.2.1, 198.51.100.9"}  # the proxy appends the peer
        assert statuses(trusted.url, one, 4) == [200, 200, 200, 429]
        # ... and the proxy's own address is yet another bucket.
        assert get(trusted.url, {}).status_code == 200
    finally:
        for server in (untrusted, trusted):
            if server.proc is not None:
                server.stop()


def test_probes_are_never_limited(secure_server: SecureServe, keyring: KeyRing) -> None:
    """With a principal (and the anonymous IP bucket) exhausted, the probes still answer."""
    server = secure_server(rate_limit={"default_limits": "2/minute",
                                       "anonymous_limits": "1/minute"})
    alice = keyring["alice"].headers
    assert statuses(server.url, alice, 3) == [200, 200, 429]
    for _ in range(8):
        for headers in (alice, {}):
            for path in ("/healthz", "/readyz"):
                response = get(server.url, headers, path)
                assert response.status_code == 200, response.text
                assert "x-ratelimit-limit" not in response.headers
            # Exempt too; whatever it answers, it is never throttled.
            assert get(server.url, headers, "/metrics").status_code != 429
    assert_limited(get(server.url, alice))


# -- the run limit ------------------------------------------------------------------------


def test_run_limit_counts_runs_only(secure_server: SecureServe, keyring: KeyRing) -> None:
    """run_limits 2/minute: the third run (chat or stream) is 429; reads still work, and
    other principals can still run."""
    server = secure_server(rate_limit={"default_limits": "100/minute",
                                       "run_limits": "2/minute"})
    alice = keyring["alice"].headers
    assert chat(server.url, alice, "r-1").status_code == 200
    assert chat(server.url, alice, "r-2").status_code == 200
    third = chat(server.url, alice, "r-3")
    assert_limited(third)
    assert third.headers["x-ratelimit-limit"] == "2"
    assert third.headers["x-ratelimit-remaining"] == "0"
    with httpx.stream("POST", server.url + "/v1/chat/stream", headers=alice, timeout=30,
                      json={"message": "hi", "thread_id": "r-4"}) as stream:
        stream.read()
        assert_limited(stream)
    for path in ("/v1/threads", "/v1/threads/r-1/state", "/v1/threads/r-1/history"):
        response = get(server.url, alice, path)
        assert response.status_code == 200, response.text
        # The request budget (100/minute) is the one reported on ordinary routes.
        assert response.headers["x-ratelimit-limit"] == "100"
    listed = get(server.url, alice).json()["items"]
    assert sorted(item["thread_id"] for item in listed) == ["r-1", "r-2"]  # refused = not run
    assert chat(server.url, keyring["carol"].headers, "r-1").status_code == 200


# -- the cap on open streams --------------------------------------------------------------


@contextmanager
def open_stream(url: str, headers: dict[str, str], thread_id: str) -> Iterator[Iterator[SSEFrame]]:
    """A run of the `slow` graph, held open (mid-run) until the block ends."""
    with httpx.stream("POST", url + "/v1/chat/stream", headers=headers, timeout=30,
                      json={"input": {}, "graph": "slow", "thread_id": thread_id,
                            "stream_mode": "custom"}) as response:
        assert response.status_code == 200, response.read()
        frames = iter_frames(response)
        wait_for_stage(frames, "b-started")
        yield frames


def try_stream(url: str, headers: dict[str, str], thread_id: str) -> httpx.Response:
    """Start a stream; return the response read in full if refused, closed if accepted."""
    with httpx.stream("POST", url + "/v1/chat/stream", headers=headers, timeout=30,
                      json={"message": "hi", "thread_id": thread_id}) as response:
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("text/event-stream")
        else:
            response.read()
        return response


def test_concurrent_stream_cap(secure_server: SecureServe, keyring: KeyRing) -> None:
    """max_concurrent_streams 2: a third open stream is refused with a JSON 429 before any
    event; closing one frees its slot; other principals have their own slots."""
    server = secure_server(rate_limit={"max_concurrent_streams": 2,
                                       "default_limits": "1000/minute",
                                       "run_limits": "1000/minute"})
    alice, carol = keyring["alice"].headers, keyring["carol"].headers
    with ExitStack() as streams:
        first = ExitStack()
        first.enter_context(open_stream(server.url, alice, "s-1"))
        streams.callback(first.close)
        streams.enter_context(open_stream(server.url, alice, "s-2"))

        with httpx.stream("POST", server.url + "/v1/chat/stream", headers=alice, timeout=30,
                          json={"message": "hi", "thread_id": "s-3"}) as refused:
            raw = refused.read()
        assert_limited(refused, code="too_many_streams")
        assert raw.startswith(b"{") and b"event:" not in raw
        # A refused stream started no run.
        assert get(server.url, alice, "/v1/threads/s-3/state").status_code == 404
        # carol's slots are her own.
        streams.enter_context(open_stream(server.url, carol, "c-1"))

        first.close()  # the server notices the disconnect and gives the slot back
        deadline = time.monotonic() + 10
        while (response := try_stream(server.url, alice, "s-4")).status_code == 429:
            assert response.json()["code"] == "too_many_streams"
            assert time.monotonic() < deadline, "the slot was not released within 10 s"
            time.sleep(0.05)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == "1000"  # on the stream's start too
        # Still capped with the other stream open: the slot was released, not the cap.
        streams.enter_context(open_stream(server.url, alice, "s-5"))
        assert try_stream(server.url, alice, "s-6").status_code == 429


# -- off ----------------------------------------------------------------------------------


def test_limits_off(secure_server: SecureServe, keyring: KeyRing) -> None:
    """rate_limit.enabled = false: no X-RateLimit headers, no 429, no stream cap."""
    server = secure_server(rate_limit={"enabled": False, "default_limits": "1/minute",
                                       "run_limits": "1/minute", "max_concurrent_streams": 1})
    alice = keyring["alice"].headers
    for _ in range(10):
        response = get(server.url, alice)
        assert response.status_code == 200
        assert not [h for h in response.headers if h.startswith("x-ratelimit")]
        assert "retry-after" not in response.headers
    assert [chat(server.url, alice, f"off-{i}").status_code for i in range(3)] == [200] * 3
    with open_stream(server.url, alice, "o-1"), open_stream(server.url, alice, "o-2"):
        assert try_stream(server.url, alice, "o-3").status_code == 200


def test_plain_chat_runs_count_against_the_cap(secure_server: SecureServe,
                                               keyring: KeyRing) -> None:
    """A `/v1/chat` run holds a slot like a stream does, so fire-and-forget runs cannot
    pile up past the cap."""
    server = secure_server(rate_limit={"max_concurrent_streams": 1})
    alice = keyring["alice"].headers
    with httpx.stream("POST", server.url + "/v1/chat/stream", headers=alice, timeout=30,
                      json={"input": {}, "graph": "slow", "thread_id": "held",
                            "stream_mode": "custom"}) as stream:
        assert stream.status_code == 200
        refused = httpx.post(server.url + "/v1/chat", headers=alice, timeout=30,
                             json={"message": "hi", "thread_id": "other"})
        assert refused.status_code == 429
        assert refused.json()["code"] == "too_many_streams"
