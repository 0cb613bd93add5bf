"""CORS allowlist, security headers, allowed hosts: the browser-facing defences."""

from __future__ import annotations

import httpx
import pytest

from tests.security.conftest import KeyRing, SecureServe
from tests.support.ports import free_port
from tests.support.servers import ThreadServer
from tests.support.sse import iter_frames

APP = "https://app.example.com"
EVIL = "https://evil.example.net"


@pytest.fixture
def server(secure_server: SecureServe) -> ThreadServer:
    return secure_server(cors={"allow_origins": [APP], "allow_credentials": True})


def _preflight(server: ThreadServer, origin: str, method: str = "POST",
               headers: str = "content-type,x-api-key") -> httpx.Response:
    return httpx.options(server.url + "/v1/chat", headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers})


def test_allowed_origin_preflight(server: ThreadServer) -> None:
    response = _preflight(server, APP)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-max-age"] == "600"
    assert "x-api-key" in response.headers["access-control-allow-headers"].lower()
    assert "Origin" in response.headers["vary"]


@pytest.mark.parametrize(("origin", "method", "headers", "what"), [
    (EVIL, "POST", "content-type", "origin"),
    ("null", "POST", "content-type", "origin"),
    (APP + ".evil.net", "POST", "content-type", "origin"),
    (APP, "PUT", "content-type", "method"),
    (APP, "POST", "x-evil", "headers"),
])
def test_refused_preflights_use_the_error_shape(server: ThreadServer, origin: str, method: str,
                                                headers: str, what: str) -> None:
    response = _preflight(server, origin, method, headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "cors_rejected" and what in body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    if what == "origin":
        assert "access-control-allow-origin" not in response.headers


def test_disallowed_origin_gets_no_cors_headers(server: ThreadServer, keyring: KeyRing) -> None:
    response = httpx.get(server.url + "/v1/threads",
                         headers={"Origin": EVIL, **keyring["alice"].headers})
    # The request itself is served (CORS is enforced by browsers), so the API authenticates
    # by header only, never cookies; the browser is simply not allowed to read it.
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert "Origin" in response.headers["vary"]


def test_errors_and_streams_carry_the_same_cors_headers(server: ThreadServer,
                                                        keyring: KeyRing) -> None:
    origin = {"Origin": APP}
    unauthorized = httpx.get(server.url + "/v1/threads", headers=origin)
    assert unauthorized.status_code == 401
    ok = httpx.get(server.url + "/v1/threads", headers={**origin, **keyring["alice"].headers})
    with httpx.stream("POST", server.url + "/v1/chat/stream", json={"message": "hi"},
                      headers={**origin, **keyring["alice"].headers}, timeout=30) as stream:
        list(iter_frames(stream))
        stream_headers = stream.headers
    for headers in (unauthorized.headers, ok.headers, stream_headers):
        assert headers["access-control-allow-origin"] == APP
        assert headers["access-control-allow-credentials"] == "true"
        exposed = headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "retry-after" in exposed


def test_cors_off_by_default(secure_server: SecureServe, keyring: KeyRing) -> None:
    server = secure_server()
    preflight = _preflight(server, APP)
    assert "access-control-allow-origin" not in preflight.headers
    response = httpx.get(server.url + "/v1/threads", headers={"Origin": APP,
                                                              **keyring["alice"].headers})
    assert "access-control-allow-origin" not in response.headers


def test_security_headers_everywhere(secure_server: SecureServe, keyring: KeyRing) -> None:
    server = secure_server(http={"hsts_max_age_s": 31536000, "hsts_include_subdomains": True})
    alice = keyring["alice"].headers
    responses = [
        httpx.get(server.url + "/healthz"),
        httpx.get(server.url + "/v1/threads"),  # 401
        httpx.get(server.url + "/v1/threads", headers=alice),
        httpx.get(server.url + "/v1/threads/missing/state", headers=alice),  # 404
        httpx.post(server.url + "/v1/chat", content=b"{", headers=alice),  # 400
    ]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["strict-transport-security"] == (
            "max-age=31536000; includeSubDomains")
    with httpx.stream("POST", server.url + "/v1/chat/stream", json={"message": "hi"},
                      headers=alice, timeout=30) as stream:
        assert stream.headers["x-content-type-options"] == "nosniff"
        assert "no-store" in stream.headers["cache-control"]
        assert stream.headers["x-accel-buffering"] == "no"


def test_hsts_is_opt_in(secure_server: SecureServe) -> None:
    server = secure_server()
    assert "strict-transport-security" not in httpx.get(server.url + "/healthz").headers


def test_allowed_hosts(secure_server: SecureServe, keyring: KeyRing) -> None:
    server = secure_server(http={"allowed_hosts": ["api.example.com", "*.internal.example"]})
    alice = keyring["alice"].headers
    for host in ("api.example.com", "api.example.com:8443", "pod-1.internal.example"):
        ok = httpx.get(server.url + "/v1/threads", headers={**alice, "Host": host})
        assert ok.status_code == 200, host
    for host in ("evil.example.net", "127.0.0.1", "internal.example", "api.example.com.evil"):
        refused = httpx.get(server.url + "/v1/threads", headers={**alice, "Host": host})
        assert refused.status_code == 400, host
        assert refused.json()["code"] == "invalid_host"


@pytest.mark.parametrize("host", ["evil.com#.internal.example", "evil.com/.internal.example",
                                  "evil.com?.internal.example", "evil.com .internal.example"])
def test_allowed_hosts_refuse_malformed_hosts(secure_server: SecureServe, keyring: KeyRing,
                                              host: str) -> None:
    server = secure_server(http={"allowed_hosts": ["*.internal.example"]})
    response = httpx.get(server.url + "/v1/threads",
                         headers={**keyring["alice"].headers, "Host": host})
    assert response.status_code == 400


def test_probes_and_the_metrics_port_answer_any_host(secure_server: SecureServe,
                                                     keyring: KeyRing) -> None:
    """Kubelets and Prometheus reach pods by address; the API still checks the Host."""
    metrics_port = free_port()
    server = secure_server(http={"allowed_hosts": ["api.example.com"]},
                           metrics={"port": metrics_port})
    by_address = {"Host": "10.1.2.3:8000"}
    for path in ("/healthz", "/readyz", "/ok"):
        assert httpx.get(server.url + path, headers=by_address).status_code == 200, path
    scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics",
                       headers={"Host": f"10.1.2.3:{metrics_port}"})
    assert scrape.status_code == 200 and b"graphgate_" in scrape.content
    api = httpx.get(server.url + "/v1/threads", headers={**keyring["alice"].headers,
                                                         **by_address})
    assert api.status_code == 400
    # The metrics port still serves nothing but /metrics and the probes, whatever the Host.
    assert httpx.get(f"http://127.0.0.1:{metrics_port}/v1/threads",
                     headers=keyring["alice"].headers).status_code == 404
