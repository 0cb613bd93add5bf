"""Rate limits on Redis: shared by replicas and workers, and what happens when Redis is not.

Every test runs real servers against the suite's throwaway Redis (or a port nothing
listens on). The exactness test runs a real two-worker gunicorn and pins its requests to
known workers, so its counts are deterministic.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis

from tests.security.conftest import KeyRing, RsaIssuer, SecureServe
from tests.security.test_rate_limits import (
    PROBLEM,
    assert_limited,
    bearer,
    chat,
    get,
    open_stream,
    statuses,
    try_stream,
)
from tests.support.redis import RedisServer, closed_redis_url
from tests.support.servers import ProcessServer
from tests.test_gunicorn import children

REPO = Path(__file__).resolve().parents[2]


def redis_keys(url: str) -> list[str]:
    with redis.Redis.from_url(url) as client:
        return sorted(key.decode() for key in client.keys("*"))


def assert_no_leak(response: httpx.Response, storage_uri: str) -> None:
    """A refusal says nothing about the storage behind it."""
    text = response.text.lower()
    host_port = storage_uri.removeprefix("redis://").removesuffix("/0")
    for word in ("redis", "connection", "refused", "errno", "traceback", host_port):
        assert word not in text, (word, response.text)


# -- shared buckets -----------------------------------------------------------------------


def test_replicas_share_buckets(secure_server: SecureServe, keyring: KeyRing,
                                redis_url: str) -> None:
    """Two servers on one Redis: 3/minute is 3 in total, whichever replica answers. Redis
    holds buckets for principals only, named by key id (never a credential)."""
    limits = {"default_limits": "3/minute", "storage_uri": redis_url}
    one = secure_server(rate_limit=limits)
    two = secure_server(rate_limit=limits)
    alice, bob = keyring["alice"], keyring["bob"]

    # Refused credentials make no bucket at all.
    for _ in range(10):
        assert get(one.url, {"X-API-Key": f"ggk_{alice.key_id}_{uuid.uuid4().hex}"}
                   ).status_code == 401
    assert redis_keys(redis_url) == []

    answers = [get(url, alice.headers) for url in (one.url, two.url, one.url, two.url, one.url)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["2", "1", "0", "0", "0"]
    assert_limited(answers[3])
    assert statuses(two.url, bob.headers, 4) == [200, 200, 200, 429]
    keys = redis_keys(redis_url)
    assert keys and all(alice.key_id in key or bob.key_id in key for key in keys), keys
    assert not [key for key in keys if alice.key in key or bob.key in key]


def test_run_limit_and_stream_cap_are_shared(secure_server: SecureServe, keyring: KeyRing,
                                             redis_url: str) -> None:
    """On Redis, the run limit and the open-stream cap hold across replicas: a stream open
    on one server takes the principal's only slot on the other too."""
    limits = {"storage_uri": redis_url, "max_concurrent_streams": 1, "run_limits": "3/minute",
              "default_limits": "1000/minute"}
    one, two = secure_server(rate_limit=limits), secure_server(rate_limit=limits)
    alice, carol = keyring["alice"].headers, keyring["carol"].headers
    with ExitStack() as streams:
        first = streams.enter_context(ExitStack())
        first.enter_context(open_stream(one.url, alice, "a-1"))  # run 1
        refused = try_stream(two.url, alice, "a-2")
        assert_limited(refused, code="too_many_streams")
        assert try_stream(one.url, alice, "a-3").status_code == 429
        streams.enter_context(open_stream(two.url, carol, "c-1"))  # carol's own slot

        first.close()
        deadline = time.monotonic() + 10
        while (response := try_stream(two.url, alice, "a-4")).status_code == 429:  # run 2
            assert response.json()["code"] == "too_many_streams"
            assert time.monotonic() < deadline, "the slot was not released within 10 s"
            time.sleep(0.05)
        assert response.status_code == 200
    assert chat(one.url, alice, "a-5").status_code == 200  # run 3
    third = chat(two.url, alice, "a-6")
    assert_limited(third)
    assert third.json()["limit"] == "runs"


# -- Redis unreachable --------------------------------------------------------------------


POLICIES = {
    # (on_storage_error, runs_on_storage_error): (GET, POST /v1/chat, POST /v1/chat/stream)
    ("memory", "closed"): (200, 503, 503),  # the defaults
    ("closed", "closed"): (503, 503, 503),
    ("open", "open"): (200, 200, 200),
    ("memory", "memory"): (200, 200, 200),
}


@pytest.mark.parametrize(("policy", "expected"), list(POLICIES.items()),
                         ids=["-".join(p) for p in POLICIES])
def test_storage_refusing_connections(secure_server: SecureServe, keyring: KeyRing,
                                      policy: tuple[str, str],
                                      expected: tuple[int, int, int]) -> None:
    """Each storage-error policy does what it says, quickly, with a problem body that
    names no host or exception; never a 500; the probes keep answering."""
    uri = closed_redis_url()
    server = secure_server(rate_limit={"storage_uri": uri, "on_storage_error": policy[0],
                                       "runs_on_storage_error": policy[1]})
    alice = keyring["alice"].headers
    started = time.monotonic()
    for _ in range(3):
        answers = [get(server.url, alice), chat(server.url, alice, uuid.uuid4().hex),
                   try_stream(server.url, alice, uuid.uuid4().hex)]
        assert tuple(r.status_code for r in answers) == expected, [r.text for r in answers]
        for response in answers:
            if response.status_code == 503:
                assert response.headers["content-type"] == PROBLEM
                assert response.json()["code"] in ("rate_limit_unavailable", "unavailable")
                assert int(response.headers["retry-after"]) >= 1
                assert_no_leak(response, uri)
        for path in ("/healthz", "/readyz"):
            assert get(server.url, alice, path).status_code == 200
    # Refused connections fail fast: nine requests, not nine timeouts or retry backoffs.
    assert time.monotonic() - started < 5


def test_memory_fallback_still_limits(secure_server: SecureServe, keyring: KeyRing) -> None:
    """on_storage_error = memory: with Redis unreachable, this process keeps counting."""
    server = secure_server(rate_limit={"storage_uri": closed_redis_url(),
                                       "default_limits": "3/minute"})
    alice = keyring["alice"].headers
    responses = [get(server.url, alice) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert responses[0].headers["x-ratelimit-limit"] == "3"
    assert_limited(responses[-1])
    assert statuses(server.url, keyring["carol"].headers, 1) == [200]


def test_memory_fallback_is_one_budget_across_routes(secure_server: SecureServe,
                                                     keyring: KeyRing) -> None:
    """The fallback is the same per-principal budget as the Redis one: varying the path
    (here, the thread id) must not buy more requests."""
    server = secure_server(rate_limit={"storage_uri": closed_redis_url(),
                                       "default_limits": "3/minute"})
    alice = keyring["alice"].headers
    codes = [get(server.url, alice, f"/v1/threads/t-{i}/state").status_code for i in range(6)]
    assert codes == [404, 404, 404, 429, 429, 429]


def test_redis_outage_and_recovery(secure_server: SecureServe, keyring: KeyRing,
                                   rsa_issuer: RsaIssuer, redis_server: RedisServer,
                                   redis_url: str) -> None:
    """Redis stops under a running server: no 500s (the defaults: reads on memory limits,
    runs refused with 503). It starts again (empty): the limits are shared on Redis again
    within a bounded time."""
    server = secure_server(rate_limit={"storage_uri": redis_url, "default_limits": "5/minute"})
    alice = keyring["alice"].headers
    assert statuses(server.url, alice, 2) == [200, 200]
    assert chat(server.url, alice, "before").status_code == 200

    redis_server.stop()
    try:
        seen: dict[str, set[int]] = {"get": set(), "chat": set(), "stream": set(), "probe": set()}
        for i in range(1):  # within the fallback budget of 5
            seen["get"].add(get(server.url, alice).status_code)
            seen["chat"].add(chat(server.url, alice, f"during-{i}").status_code)
            seen["stream"].add(try_stream(server.url, alice, f"during-s-{i}").status_code)
            for path in ("/healthz", "/readyz"):
                seen["probe"].add(get(server.url, alice, path).status_code)
        assert seen == {"get": {200}, "chat": {503}, "stream": {503}, "probe": {200}}, seen
    finally:
        redis_server.start()
    restarted = time.monotonic()

    # Poll as a principal of its own (high limit, so polling never runs out) until its
    # bucket shows up in Redis: the request limiter has left its memory fallback.
    poller = bearer(rsa_issuer.token(sub="poller", rate_limit="10000/minute"))
    while not [key for key in redis_keys(redis_url) if "poller" in key]:
        response = get(server.url, poller)
        assert response.status_code == 200, response.text
        assert time.monotonic() - restarted < 60, "limits did not return to Redis within 60 s"
        time.sleep(0.1)
    recovered_after = time.monotonic() - restarted
    # Runs and stream slots need no re-check: no fallback, they reconnect at once.
    assert chat(server.url, alice, "after").status_code == 200
    assert try_stream(server.url, alice, "after-s").status_code == 200

    # Back on Redis: a second replica shares the (new, empty) buckets.
    other = secure_server(rate_limit={"storage_uri": redis_url, "default_limits": "5/minute"})
    carol = keyring["carol"].headers
    answers = [get(url, carol).status_code for url in (server.url, other.url) * 3]
    assert answers == [200] * 5 + [429]
    print(f"request limits back on Redis {recovered_after:.1f} s after it restarted")


# -- two gunicorn workers -----------------------------------------------------------------


def _socket_owner(server_port: int, client_port: int, pids: list[int]) -> int:
    """The worker whose socket is the server end of the connection from `client_port`."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            inode = fields[9]
    assert inode is not None, f"no server socket for client port {client_port}"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().name == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds socket {inode}")


def _pinned_clients(server: ProcessServer, per_worker: int) -> list[list[httpx.Client]]:
    """`per_worker` keep-alive connections to each of the two workers.

    Connections are opened in concurrent bursts (whichever worker accepts one serves it)
    and each is traced to its worker through /proc, until both have enough; the extras
    are closed.
    """
    assert server.proc is not None
    deadline = time.monotonic() + 30
    while len(workers := children(server.proc.pid)) < 2:
        assert time.monotonic() < deadline, "gunicorn did not start two workers"
        time.sleep(0.1)

    def connect(_: int) -> tuple[httpx.Client, int]:
        client = httpx.Client(base_url=server.url, timeout=10)
        response = client.get("/healthz")  # exempt: costs no limit
        assert response.status_code == 200
        _host, port = response.extensions["network_stream"].get_extra_info("client_addr")
        return client, _socket_owner(server.port, port, workers)

    pinned: dict[int, list[httpx.Client]] = {pid: [] for pid in workers}
    with ThreadPoolExecutor(2 * per_worker) as pool:
        while min(len(clients) for clients in pinned.values()) < per_worker:
            assert time.monotonic() < deadline, {p: len(c) for p, c in pinned.items()}
            for client, pid in pool.map(connect, range(2 * per_worker)):
                if len(pinned[pid]) < per_worker:
                    pinned[pid].append(client)
                else:
                    client.close()
    return list(pinned.values())


def _burst(clients: list[httpx.Client], headers: dict[str, str]) -> list[int]:
    with ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(lambda c: c.get("/v1/threads", headers=headers).status_code,
                             clients))


def _gunicorn(tmp_path: Path, keyring: KeyRing, storage_uri: str) -> ProcessServer:
    env = {"HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "GRAPHGATE_ENV": "production",
           "GRAPHGATE_AUTH__ENABLED": "true",
           "GRAPHGATE_AUTH__API_KEYS_FILE": str(keyring.path),
           "GRAPHGATE_RATE_LIMIT__ENABLED": "true",
           "GRAPHGATE_RATE_LIMIT__STORAGE_URI": storage_uri,
           "GRAPHGATE_RATE_LIMIT__DEFAULT_LIMITS": "20/minute",
           "GRAPHGATE_DATABASE_URL": f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.sqlite",
           "GRAPHGATE_SERVER__GRACEFUL_TIMEOUT_S": "5"}
    return ProcessServer(env, "--workers", "2", cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["redis", "memory"])
def test_two_workers_count_exactly_on_redis(tmp_path: Path, keyring: KeyRing, redis_url: str,
                                            storage: str) -> None:
    """30 concurrent requests at 20/minute, 15 on each worker of a real gunicorn: on Redis
    exactly 20 pass; on memory each worker counts alone, so all 30 do."""
    server = _gunicorn(tmp_path, keyring, redis_url if storage == "redis" else "memory://")
    server.start()
    pinned: list[list[httpx.Client]] = []
    try:
        pinned = _pinned_clients(server, 15)
        clients = [client for worker in pinned for client in worker]
        codes = _burst(clients, keyring["alice"].headers)
        if storage == "redis":
            assert codes.count(200) == 20 and codes.count(429) == 10, codes
        else:
            assert codes == [200] * 30
    finally:
        for client in (c for worker in pinned for c in worker):
            client.close()
        code = server.stop()
    assert code == 0, server.output()
