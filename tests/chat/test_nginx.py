"""`graphgate chat` through the shipped nginx config (real nginx, TLS) in front of a real
`graphgate serve` in production mode with an API keys file."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chat.conftest import REPO, Chat, IssuedKey
from tests.support.nginx import Nginx
from tests.support.servers import ProcessServer

pytestmark = pytest.mark.slow

Spawn = Callable[..., Chat]


@dataclass
class Deployment:
    service: ProcessServer
    nginx: Nginx


@pytest.fixture
def deployment(issued_key: IssuedKey, tmp_path: Path) -> Iterator[Deployment]:
    service = ProcessServer({
        "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
        "GRAPHGATE_ENV": "production",
        "GRAPHGATE_AUTH__ENABLED": "true",
        "GRAPHGATE_AUTH__API_KEYS_FILE": str(issued_key.keys_file),
        "GRAPHGATE_RATE_LIMIT__ENABLED": "true",
        "GRAPHGATE_DATABASE_URL": f"sqlite:///{tmp_path}/graphgate.sqlite",
        "GRAPHGATE_DEMO__TOKEN_DELAY_MS": "20",
        "GRAPHGATE_DEMO__REPLY_TOKENS": "12",
    }, cwd=tmp_path)
    nginx = Nginx(f"127.0.0.1:{service.port}")
    try:
        service.start()
        nginx.start()
        yield Deployment(service, nginx)
    finally:
        nginx.cleanup()
        if service.proc is not None:
            service.stop()


def test_a_conversation_through_nginx(deployment: Deployment, issued_key: IssuedKey,
                                      spawn_chat: Spawn) -> None:
    """Two turns, /history and /delete over HTTPS through nginx, as an operator would check
    a fresh deployment; the requests really went through nginx's streaming location."""
    nginx = deployment.nginx
    chat = spawn_chat("--url", nginx.url, env={"GRAPHGATE_API_KEY": issued_key.key,
                                               "SSL_CERT_FILE": str(nginx.cert)})
    chat.prompt()
    first = chat.run("hello through nginx")
    found = re.search(r"\[new thread ([A-Za-z0-9_-]+), graph demo\]", first)
    assert found is not None, first
    assert "[custom] stage=thinking messages_seen=1" in first
    assert "I have seen 1 message in this conversation." in first
    assert "I have seen 3 messages in this conversation." in chat.run("and again")
    history = chat.run("/history")
    assert "you: hello through nginx" in history and "you: and again" in history
    assert f"[deleted thread {found.group(1)}" in chat.run("/delete")
    chat.type("/quit")
    assert chat.finish() == 0
    assert "Traceback" not in chat.output()

    streams = [line for line in nginx.wait_access_line()
               if line["uri"] == "/v1/chat/stream"]
    assert [line["status"] for line in streams] == [200, 200]


def test_tls_and_redirect_failures_are_one_line(deployment: Deployment, issued_key: IssuedKey,
                                                spawn_chat: Spawn) -> None:
    """Without the private CA: a certificate error naming the URL and SSL_CERT_FILE. Plain
    HTTP: nginx's redirect, named, not followed (it would resend the key)."""
    nginx = deployment.nginx
    untrusted = spawn_chat("--url", nginx.url, env={"GRAPHGATE_API_KEY": issued_key.key})
    assert untrusted.finish() == 1
    [line] = [line for line in untrusted.output().splitlines() if line.strip()]
    assert line.startswith(f"error: cannot connect to {nginx.url}/v1/threads: ")
    assert "certificate verify failed" in line and "set SSL_CERT_FILE" in line

    plain_http = spawn_chat("--url", nginx.http_url, env={"GRAPHGATE_API_KEY": issued_key.key,
                                                          "SSL_CERT_FILE": str(nginx.cert)})
    assert plain_http.finish() == 1
    errors = [line for line in plain_http.output().splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: 301 Moved Permanently")
    assert "redirects to https://" in errors[0] and "use that as --url" in errors[0]
    assert "Traceback" not in untrusted.output() + plain_http.output()
