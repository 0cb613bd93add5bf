"""configure_logging: one format and one redaction for structlog and stdlib records.

Every test captures the real output (a StringIO handed to configure_logging) and parses
it; nothing about logging is mocked.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.observability.logging import GunicornLogger, configure_logging, log_format
from service.observability.redact import REDACTED, Redactor
from service.security.api_keys import generate_key
from service.settings import Settings
from tests.support.ports import free_port

KEY = generate_key()[1]
JWT = ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0."
       "c2lnbmF0dXJlLWJ5dGVzLWhlcmU")
DB_PASSWORD = "Zq8-unusual-pw"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave the process's logging as this test found it."""
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi",
             "gunicorn", "gunicorn.error", "gunicorn.access")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level,
                 logging.getLogger(n).propagate) for n in names}
    saved_structlog = structlog.get_config()
    yield
    root.handlers[:] = saved_root[0]
    root.setLevel(saved_root[1])
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    logging.captureWarnings(False)
    structlog.configure(**saved_structlog)


def make_settings(env: str = "production", tmp: Path | None = None, **logging_: Any) -> Settings:
    values: dict[str, Any] = {"env": env, "logging": logging_,
                              "database_url": f"postgresql://app:{DB_PASSWORD}@db/x"}
    if env == "production":
        keys = (tmp or Path("/nonexistent")) / "keys.toml"
        values["auth"] = {"api_keys_file": str(keys)}
    return Settings(**values)


@pytest.fixture
def production(tmp_path: Path) -> Settings:
    (tmp_path / "keys.toml").write_text("")
    return make_settings("production", tmp_path)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    """Every line of the output, each of which must be one JSON object."""
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_production_writes_json_lines_with_timestamp_level_event(production: Settings) -> None:
    out = io.StringIO()
    configure_logging(production, stream=out)
    structlog.get_logger("graphgate.test").info("thing_happened", count=3)
    [line] = lines(out)
    assert line["event"] == "thing_happened"
    assert line["level"] == "info"
    assert line["count"] == 3
    assert line["logger"] == "graphgate.test"
    assert line["timestamp"].endswith("Z")  # ISO 8601, UTC


def test_stdlib_records_come_out_as_redacted_json(production: Settings) -> None:
    """uvicorn, gunicorn and library loggers share the format and the redaction."""
    out = io.StringIO()
    configure_logging(production, stream=out)
    logging.getLogger("uvicorn.error").warning("client sent %s", f"Authorization: Bearer {JWT}")
    logging.getLogger("gunicorn.error").info("Booting worker with pid: %d", 42)
    logging.getLogger("psycopg").error("connection to postgresql://app:%s@db failed",
                                       DB_PASSWORD)
    uvicorn_line, gunicorn_line, psycopg_line = lines(out)
    assert uvicorn_line["logger"] == "uvicorn.error"
    assert uvicorn_line["level"] == "warning"
    assert "timestamp" in uvicorn_line
    assert JWT not in uvicorn_line["event"]
    assert REDACTED in uvicorn_line["event"]
    assert gunicorn_line["event"] == "Booting worker with pid: 42"
    assert DB_PASSWORD not in psycopg_line["event"]


def test_server_loggers_lose_their_own_handlers(production: Settings) -> None:
    """As under gunicorn: uvicorn.error had gunicorn's handler and did not propagate."""
    stray = io.StringIO()
    for name in ("uvicorn.error", "gunicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [logging.StreamHandler(stray)]
        logger.propagate = False
    out = io.StringIO()
    configure_logging(production, stream=out)
    logging.getLogger("uvicorn.error").error("Exception in ASGI application")
    logging.getLogger("gunicorn.error").error("Worker timeout")
    assert stray.getvalue() == ""
    assert [line["event"] for line in lines(out)] == [
        "Exception in ASGI application", "Worker timeout"]


def test_uvicorn_access_lines_are_silenced(production: Settings) -> None:
    """Its line quotes the raw URL, query string and all; graphgate logs requests itself."""
    out = io.StringIO()
    configure_logging(production, stream=out)
    logging.getLogger("uvicorn.access").info('%s - "GET /?api_key=%s HTTP/1.1" 200', "1.2.3.4",
                                             KEY)
    logging.getLogger("gunicorn.access").info("GET /?api_key=%s", KEY)
    assert out.getvalue() == ""


def test_secrets_in_messages_fields_and_tracebacks_are_redacted(production: Settings) -> None:
    out = io.StringIO()
    configure_logging(production, stream=out)
    log = structlog.get_logger("graphgate.auth")
    log.warning(f"refused key {KEY}", header=f"Bearer {JWT}", password="hunter2-pw",
                headers={"x-api-key": KEY, "cookie": "session=abc123def"})
    try:
        raise PermissionError(f"bad credentials: X-API-Key: {KEY} password=hunter2-pw {JWT}")
    except PermissionError:
        log.exception("auth_error")
        logging.getLogger("service.security").exception("stdlib auth error")
    text = out.getvalue()
    for secret in (KEY, JWT, "hunter2-pw", "abc123def"):
        assert secret not in text
    first, structlog_exc, stdlib_exc = lines(out)
    assert first["password"] == REDACTED
    assert first["headers"] == {"x-api-key": REDACTED, "cookie": REDACTED}
    for line in (structlog_exc, stdlib_exc):
        assert "Traceback (most recent call last)" in line["exception"]
        assert "PermissionError: bad credentials" in line["exception"]
        assert REDACTED in line["exception"]


def test_configured_secret_values_are_redacted(production: Settings) -> None:
    """A settings secret that has no credential shape is still removed verbatim."""
    out = io.StringIO()
    configure_logging(production, stream=out)
    structlog.get_logger().error("db said", detail=f"role app, pw {DB_PASSWORD} rejected")
    logging.getLogger("psycopg.pool").error("pool: pw %s rejected", DB_PASSWORD)
    assert DB_PASSWORD not in out.getvalue()
    assert out.getvalue().count(REDACTED) == 2


def test_development_writes_console_lines(tmp_path: Path) -> None:
    settings = make_settings("development")
    assert log_format(settings) == "console"
    out = io.StringIO()
    configure_logging(settings, stream=out)
    structlog.get_logger("graphgate.test").info("thing_happened", thread_id="t-1",
                                                token=JWT)
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    first, second = out.getvalue().splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
    assert "thing_happened" in first
    assert "thread_id=t-1" in first
    assert "token=" + REDACTED in first
    assert JWT not in first
    assert "\x1b[" not in first  # no colour codes when the stream is not a terminal
    assert "Application startup complete." in second
    assert "info" in first and "info" in second


def test_format_setting_overrides_the_environment(production: Settings) -> None:
    out = io.StringIO()
    configure_logging(make_settings("development", format="json"), stream=out)
    structlog.get_logger().info("json_in_development")
    assert lines(out)[0]["event"] == "json_in_development"
    out = io.StringIO()
    console = production.model_copy(update={"logging": production.logging.model_copy(
        update={"format": "console"})})
    configure_logging(console, stream=out)
    structlog.get_logger().info("console_in_production")
    assert not out.getvalue().startswith("{")
    assert "console_in_production" in out.getvalue()


def test_level_filters_structlog_and_stdlib(tmp_path: Path) -> None:
    (tmp_path / "keys.toml").write_text("")
    out = io.StringIO()
    configure_logging(make_settings("production", tmp_path, level="WARNING"), stream=out)
    log = structlog.get_logger("graphgate.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    logging.getLogger("httpx").info("HTTP Request: GET http://x")
    logging.getLogger("uvicorn.error").warning("uw")
    assert [line["event"] for line in lines(out)] == ["w", "e", "uw"]


def test_debug_level_lets_debug_through(tmp_path: Path) -> None:
    (tmp_path / "keys.toml").write_text("")
    out = io.StringIO()
    configure_logging(make_settings("production", tmp_path, level="DEBUG"), stream=out)
    structlog.get_logger().debug("d")
    logging.getLogger("httpx").debug("pd")
    assert [line["event"] for line in lines(out)] == ["d", "pd"]


def test_configuring_twice_does_not_duplicate_lines(production: Settings) -> None:
    first = io.StringIO()
    configure_logging(production, stream=first)
    second = io.StringIO()
    configure_logging(production, stream=second)
    configure_logging(production, stream=second)
    structlog.get_logger().info("once")
    logging.getLogger("uvicorn.error").info("stdlib once")
    assert first.getvalue() == ""
    assert [line["event"] for line in lines(second)] == ["once", "stdlib once"]


def test_context_and_extra_processors_apply_to_every_line(production: Settings) -> None:
    """Bound request context and the trace-id hook reach stdlib records too, before redaction."""

    def add_trace_ids(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        event["trace_id"] = "4bf92f3577b34da6a3ce929d0e0e4736"
        event["span_id"] = "00f067aa0ba902b7"
        event["probe"] = f"token={JWT}"  # what the hook adds is redacted as well
        return event

    out = io.StringIO()
    configure_logging(production, stream=out, extra_processors=[add_trace_ids])
    structlog.contextvars.bind_contextvars(request_id="req-1")
    try:
        structlog.get_logger().info("structlog_line")
        logging.getLogger("httpx").warning("stdlib line")
    finally:
        structlog.contextvars.clear_contextvars()
    for line in lines(out):
        assert line["request_id"] == "req-1"
        assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert line["span_id"] == "00f067aa0ba902b7"
        assert line["probe"] == "token=" + REDACTED


def test_python_warnings_become_log_lines(production: Settings) -> None:
    out = io.StringIO()
    configure_logging(production, stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("old api", DeprecationWarning, "lib.py", 1)
    [line] = lines(out)
    assert line["logger"] == "py.warnings"
    assert "old api" in line["event"]


def test_gunicorn_logger_class_writes_through_the_root_handler(production: Settings) -> None:
    """gunicorn's master logger (set up after configure_logging) loses its own handler."""
    from gunicorn.config import Config

    out = io.StringIO()
    configure_logging(production, stream=out)
    cfg = Config()
    cfg.set("errorlog", "-")
    cfg.set("loglevel", "info")
    glog = GunicornLogger(cfg)
    glog.info("Booting worker with pid: %s", 7)
    glog.setup(cfg)  # as on SIGHUP: still one line per call
    glog.warning("Worker with pid %s was terminated", 7)
    assert [(line["logger"], line["event"]) for line in lines(out)] == [
        ("gunicorn.error", "Booting worker with pid: 7"),
        ("gunicorn.error", "Worker with pid 7 was terminated"),
    ]


def test_a_real_uvicorn_servers_lines_are_json(production: Settings) -> None:
    """uvicorn's own start-up and error records, from a real server, in our format."""

    async def fail(request: Request) -> JSONResponse:
        raise RuntimeError(f"upstream refused password=hunter2-pw key {KEY}")

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    out = io.StringIO()
    configure_logging(production, stream=out)
    app = Starlette(routes=[Route("/fail", fail), Route("/ok", ok)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

        async def requests() -> None:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get(f"/ok?api_key={KEY}")).status_code == 200
                assert (await client.get("/fail")).status_code == 500

        asyncio.run(requests())
    finally:
        server.should_exit = True
        thread.join(15)
    text = out.getvalue()
    assert KEY not in text
    assert "hunter2-pw" not in text
    parsed = lines(out)  # every line is JSON
    events = [line["event"] for line in parsed]
    assert any("Uvicorn running on" in event for event in events)
    [error] = [line for line in parsed if line["event"].startswith("Exception in ASGI app")]
    assert error["logger"] == "uvicorn.error"
    assert error["level"] == "error"
    assert "RuntimeError: upstream refused password=" + REDACTED in error["exception"]
    # No uvicorn access line (it would quote the URL with the key).
    assert not any(line["logger"] == "uvicorn.access" for line in parsed)


def test_redactor_handles_nested_and_odd_values() -> None:
    redactor = Redactor(["s3cret-value"])
    event = {
        "event": "x",
        "nested": {"list": [f"Bearer {JWT}", b"password=abcdefgh", ("s3cret-value",)]},
        "obj": ValueError("token=abcdefgh"),
        "count": 3, "ok": True, "none": None,
        "access_token": "abcdefgh", "api_key_id": "k1", "tokens": 5,
    }
    out = redactor(None, "info", event)
    assert out["nested"] == {"list": ["Bearer " + REDACTED, "password=" + REDACTED,
                                      [REDACTED]]}
    assert out["obj"] == f"ValueError('token={REDACTED}')"
    assert (out["count"], out["ok"], out["none"]) == (3, True, None)
    assert out["access_token"] == REDACTED
    assert out["api_key_id"] == "k1"
    assert out["tokens"] == 5


@pytest.mark.parametrize(("text", "secret"), [
    ("Cookie: session=abc123; csrftoken=def456", "abc123"),
    ("set-cookie: sid=zzz999; Path=/", "zzz999"),
    ("{'x-api-key': 'plainkey99', 'host': 'h'}", "plainkey99"),
    ('{"password": "pa ss"}', "pa ss"),
    ("GET /cb?access_token=abcdef99&state=1", "abcdef99"),
    ("client_secret=topsecret1", "topsecret1"),
    ("Authorization: Digest username=bob", "username=bob"),
])
def test_more_credential_shapes_are_redacted(text: str, secret: str) -> None:
    redacted = Redactor().text(text)
    assert secret not in redacted
    assert REDACTED in redacted


def test_ordinary_text_survives() -> None:
    for text in ("max_tokens=5 reply_tokens: 24", "SELECT secret FROM vault",
                 "thread_id=t1 run_id=r1 key_id=k1", "tokens_sent=12"):
        assert Redactor().text(text) == text
