"""Credentials never reach the log: unit cases, and a real server's output."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.observability.redact import REDACTED, Redactor, secret_values
from service.security.api_keys import generate_key
from service.settings import Settings
from tests.support.servers import ProcessServer

KEY = generate_key()[1]
JWT = ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0."
       "c2lnbmF0dXJlLWJ5dGVzLWhlcmU")


@pytest.mark.parametrize(("text", "secret"), [
    (f"bad key {KEY} sent", KEY),
    (f"token={JWT}", JWT),
    (f"Authorization: Bearer {JWT}", JWT),
    ("connection to postgresql://app:s3cr3t-pw@db:5432/x failed", "s3cr3t-pw"),
    ("redis://:hunter22@cache:6379/0 refused", "hunter22"),
    ("password=hunter2 SELECT secret FROM vault", "hunter2"),
    ("host=db password='p w d' user=app", "p w d"),
    ("api_key: abcdef123456", "abcdef123456"),
    (f"GET /v1/threads?api_key={KEY}", KEY),
])
def test_credential_shapes_are_redacted(text: str, secret: str) -> None:
    redacted = Redactor().text(text)
    assert secret not in redacted
    assert REDACTED in redacted


def test_configured_secrets_are_redacted_verbatim() -> None:
    settings = Settings(env="development", database_url="postgresql://app:Zq8-unusual@db/x",
                        rate_limit={"storage_uri": "redis://:R3dis-Pass@cache:6379/0"},
                        auth={"jwt": {"secret": "k" * 8 + "Ab3$Xy9!Qw2#Er5%Ty7&Ui1*Op4@",
                                      "algorithms": ["HS256"]}})
    secrets = secret_values(settings)
    redactor = Redactor(secrets)
    for secret in secrets:
        assert secret not in redactor.text(f"oops: {secret} leaked")
    assert "memory://" not in secret_values(Settings(env="development"))


def test_harmless_text_is_kept() -> None:
    text = "run_failed graph=demo thread_id=abc request_id=123 exc_type=RuntimeError"
    assert Redactor().text(text) == text


@pytest.mark.slow
def test_a_real_servers_log_holds_no_secret(tmp_path: Path) -> None:
    """A node raising with a password in its message, in production JSON logs."""
    keys = tmp_path / "keys.toml"
    keys.write_text("")
    server = ProcessServer({
        "GRAPHGATE_ENV": "development", "GRAPHGATE_AUTH__ENABLED": "false",
        "GRAPHGATE_GRAPHS": "failing=tests.support.graphs:failing",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }, cwd=tmp_path).start()
    try:
        response = httpx.post(server.url + "/v1/chat", json={"message": "x"}, timeout=30)
        assert response.status_code == 500
        response = httpx.get(server.url + f"/v1/threads?api_key={KEY}")
    finally:
        server.stop()
    output = server.output()
    assert "run_failed" in output  # the failure is logged, with its traceback
    assert "hunter2" not in output
    assert KEY not in output


def test_remembered_values_are_scrubbed_every_time() -> None:
    """Short values are remembered once scrubbed; a repeat is scrubbed the same, long
    values (never remembered) too, and another redactor keeps its own secrets."""
    secret = "s3cret-value-42"
    redactor = Redactor([secret])
    short = f"password={secret}"
    long = "x" * 200 + f" token={secret}"
    for _ in range(3):
        assert secret not in redactor.text(short)
        assert secret not in redactor.text(long)
    assert Redactor(["other-secret"]).text(f"id {secret}") == f"id {secret}"
    assert secret not in redactor.text(f"id {secret}")
