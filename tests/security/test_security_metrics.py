"""The security counters agreed with the observability work: auth failures by reason,
rate-limit refusals by limit, the limiter's storage health."""

from __future__ import annotations

import httpx

from tests.observability.test_metrics import value
from tests.security.conftest import KeyRing, SecureServe


def test_security_counters(secure_server: SecureServe, keyring: KeyRing) -> None:
    server = secure_server(rate_limit={"default_limits": "2/minute"})
    httpx.get(server.url + "/v1/threads")
    httpx.get(server.url + "/v1/threads", headers={"X-API-Key": keyring["expired"].key})
    for _ in range(3):
        httpx.get(server.url + "/v1/threads", headers=keyring["alice"].headers)
    url = server.url
    assert value(url, "graphgate_auth_failures_total", reason="missing") == 1
    assert value(url, "graphgate_auth_failures_total", reason="expired_key") == 1
    assert value(url, "graphgate_rate_limited_total", limit="requests") == 1
    assert value(url, "graphgate_rate_limit_backend_up") == 1
    text = httpx.get(url + "/metrics").text
    assert keyring["alice"].key_id not in text  # no key ids or other unbounded labels
    # /metrics itself needs no credentials and is never rate-limited.
    assert all(httpx.get(url + "/metrics").status_code == 200 for _ in range(5))




def test_refused_requests_are_labelled_with_their_route(secure_server: SecureServe) -> None:
    """A 401 never reached the router; it is still counted under the route's template."""
    server = secure_server()
    httpx.get(server.url + "/v1/threads/abc/state")
    httpx.post(server.url + "/v1/chat", json={})
    assert value(server.url, "graphgate_http_requests_total", method="GET",
                 route="/v1/threads/{thread_id}/state", status_class="4xx") == 1
    assert value(server.url, "graphgate_http_requests_total", method="POST",
                 route="/v1/chat", status_class="4xx") == 1
