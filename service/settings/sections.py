"""The configuration sections that are not about security (see `security.py`)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from service.settings.types import CommaList, Section


class ServerSettings(Section):
    """How `graphgate serve` listens and how gunicorn manages workers."""

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to bind.")
    workers: int = Field(
        1, ge=0, le=64, description="1 runs one uvicorn process; more runs gunicorn workers; "
        "0 runs one gunicorn worker per CPU."
    )
    keep_alive_s: int = Field(
        75,
        ge=1,
        description="Idle keep-alive; must exceed the proxy's upstream keepalive_timeout "
        "(nginx: 60 s) or the proxy races a closing socket and returns 502.",
    )
    graceful_timeout_s: int = Field(
        30, ge=1, description="gunicorn graceful_timeout: how long workers may drain on stop."
    )
    drain_timeout_s: float | None = Field(
        None, ge=0, description="On SIGTERM/SIGINT, open runs get this long to finish; then "
        "they are stopped at their last finished step and their streams end with "
        "`error` (shutting_down, retryable) and `end`. Must be shorter than "
        "graceful_timeout_s, so streams end cleanly before the server gives up on them. "
        "Default: two thirds of graceful_timeout_s (20 s)."
    )
    worker_tmp_dir: str | None = Field(
        None, description="gunicorn heartbeat dir; default /dev/shm when it exists (tmpfs)."
    )
    trusted_proxies: CommaList = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Proxy addresses or networks whose X-Forwarded-For/-Proto are believed. "
        "Requests from anyone else keep their socket address, so clients cannot spoof the "
        "IP that anonymous rate limits and logs use. Set it to your nginx/ingress address.",
    )
    max_requests: int = Field(
        0, ge=0, description="Recycle a worker after this many requests (0 = never)."
    )
    max_requests_jitter: int = Field(0, ge=0, description="Random spread added to max_requests.")

    @property
    def drain_s(self) -> float:
        """The drain period in force (see drain_timeout_s)."""
        if self.drain_timeout_s is not None:
            return self.drain_timeout_s
        return self.graceful_timeout_s * 2 / 3

    @property
    def worker_count(self) -> int:
        """`workers`, with 0 resolved to the number of CPUs this process may use."""
        if self.workers:
            return self.workers
        import os

        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)

    @field_validator("drain_timeout_s")
    @classmethod
    def _drain_fits(cls, value: float | None, info: ValidationInfo) -> float | None:
        graceful = info.data.get("graceful_timeout_s")
        if value is not None and isinstance(graceful, int) and value >= graceful:
            raise ValueError(f"must be shorter than graceful_timeout_s ({graceful})")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            if item == "*":
                continue  # trust everyone: allowed, and reported by check-config
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value


class PostgresSettings(Section):
    """psycopg pool settings, used when database_url is postgresql://."""

    pool_min_size: int = Field(1, ge=0, description="Connections kept open per worker.")
    pool_max_size: int = Field(10, ge=1, description="Connection cap per worker.")
    pool_timeout_s: float = Field(
        5.0, gt=0, description="Wait for a free connection before failing with 503."
    )
    connect_timeout_s: int = Field(5, ge=1, description="TCP/auth timeout for new connections.")
    max_lifetime_s: float = Field(1800.0, gt=0, description="Recycle connections after this age.")
    max_idle_s: float = Field(300.0, gt=0, description="Close idle surplus connections after this.")
    check_connections: bool = Field(
        True, description="Check a connection with a round trip before the pool hands it "
        "out (unless it was handed back in the last 100 ms). Off, calls fail with "
        "AdminShutdown after a database restart on connections opened before it."
    )
    startup_timeout_s: float = Field(
        30.0, gt=0, description="How long start-up waits for the database before failing."
    )

    @field_validator("pool_max_size")
    @classmethod
    def _sizes(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("pool_min_size")
        if isinstance(minimum, int) and minimum > value:
            raise ValueError(f"must be at least pool_min_size ({minimum})")
        return value


class StreamingSettings(Section):
    """Server-Sent Events behaviour."""

    heartbeat_interval_s: float = Field(
        15.0, gt=0, description="Send a `: heartbeat` comment after this much silence."
    )
    max_duration_s: float = Field(
        900.0, gt=0, description="Cancel a run and end its stream with an error after this."
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A client that takes no data for this long (stopped reading, socket "
        "still open) is treated as disconnected and its run cancelled.",
    )


class RunSettings(Section):
    """How graph runs execute."""

    durability: Literal["sync", "async", "exit"] = Field(
        "sync",
        description="LangGraph checkpoint durability; sync commits each step before the next.",
    )
    recursion_limit: int = Field(25, ge=1, le=1000, description="LangGraph super-step limit.")
    lease_ttl_s: float = Field(
        30.0,
        ge=2,
        description="A thread's run lease expires this long after its holder stops renewing "
        "it (e.g. a crashed worker); it is renewed every third of this.",
    )
    event_retention_s: float = Field(
        3600.0,
        ge=10,
        description="Agent Server protocol: how long a finished run's logged events (resumable "
        "streams, background runs) stay available to clients that reconnect or join.",
    )
    max_logged_events: int = Field(
        50_000,
        ge=100,
        description="Agent Server protocol: most events logged per run; a run that emits more "
        "keeps streaming live, but reconnects past this point cannot replay it.",
    )
    cancel_poll_s: float = Field(
        0.5,
        gt=0,
        le=10,
        description="Agent Server protocol: how often a run checks whether another worker or "
        "replica was asked to cancel it.",
    )


class LimitsSettings(Section):
    """Input limits."""

    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted request body.")
    max_message_chars: int = Field(
        32_000, ge=1, description="Longest accepted chat message (also each message in `input`)."
    )
    max_input_messages: int = Field(
        100, ge=1, description="Most messages accepted in one request's `input`."
    )


class DemoSettings(Section):
    """The built-in offline demo graph."""

    token_delay_ms: int = Field(
        20, ge=0, le=10_000, description="Pause before each streamed token."
    )
    reply_tokens: int = Field(24, ge=1, le=10_000, description="Approximate reply length.")


class LoggingSettings(Section):
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON lines in production, readable console output in "
        "development."
    )
    access_log: bool = Field(
        True, description="One line per request and one per finished stream."
    )
