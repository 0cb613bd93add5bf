"""The three servers under test, as subprocesses on free loopback ports.

(a) graphgate: `python -m service serve`, configured only through GRAPHGATE_* variables,
    in production mode with every protection on unless a row turns one off;
(b) the bare app: `uvicorn bench.bare_app:app`;
(c) the official `langgraph dev` server, when langgraph-cli[inmem] is installed.

All serve bench/graph.py with the same knobs (BENCH_TOKENS, BENCH_TOKEN_DELAY_MS).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench import proc
from bench.client import Target
from bench.infra import REPO, free_port, stop_process

Kind = Literal["bare", "graphgate", "official"]
ORIGIN = "https://app.example.com"
STREAM_LIMIT = "1000000/hour"  # per principal: never reached in a run, always counted
JWT_ISSUER = "https://issuer.bench.invalid/"
JWT_AUDIENCE = "https://graphgate.bench.invalid"
OFFICIAL_VENV = REPO / "var" / "bench-official"


def find_langgraph(explicit: str | None = None) -> str | None:
    """The `langgraph` CLI: --langgraph, then .venv, then var/bench-official (a venv of
    its own: langgraph-api pins structlog<26, which would downgrade graphgate's .venv)."""
    candidates = [explicit] if explicit else []
    candidates += [str(Path(sys.executable).parent / "langgraph"),
                   str(OFFICIAL_VENV / "bin" / "langgraph")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Credentials:
    """API keys (in a keys file) and HS256 JWTs for `count` principals, made per run."""

    directory: Path
    count: int
    api_keys: list[str] = field(default_factory=list)
    jwts: list[str] = field(default_factory=list)
    jwt_secret: str = ""

    def __post_init__(self) -> None:
        from jose import jwt

        from service.security.api_keys import generate_key, hash_key

        self.directory.mkdir(parents=True, exist_ok=True)
        entries = []
        for index in range(self.count):
            key_id, key = generate_key()
            self.api_keys.append(key)
            entries.append(
                f'[[keys]]\nid = "{key_id}"\nhash = "{hash_key(key)}"\ntenant = "bench"\n'
                f'name = "bench-{index}"\nscopes = ["*"]\nrate_limit = "{STREAM_LIMIT}"\n')
        self.keys_file.write_text("\n".join(entries))
        self.jwt_secret = secrets.token_urlsafe(48)
        now = int(time.time())
        for index in range(self.count):
            claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": f"bench-{index}",
                      "tenant": "bench", "scope": "runs:create threads:read threads:write",
                      "iat": now, "exp": now + 6 * 3600}
            self.jwts.append(jwt.encode(claims, self.jwt_secret, algorithm="HS256"))

    @property
    def keys_file(self) -> Path:
        return self.directory / "keys.toml"

    def headers(self, method: str) -> list[tuple[str, str]]:
        if method == "api_key":
            return [("x-api-key", key) for key in self.api_keys]
        if method == "jwt":
            return [("authorization", f"Bearer {token}") for token in self.jwts]
        return []


def graphgate_env(creds: Credentials, workdir: Path, *, protections: bool = True,
                  rate_limit_uri: str = "memory://", otlp_endpoint: str | None = None,
                  database_url: str = "memory:") -> dict[str, str]:
    """GRAPHGATE_* for a production server with every protection on (or all off)."""
    env = {
        "GRAPHGATE_GRAPHS": "bench=bench.graph:make_graph",
        "GRAPHGATE_DATABASE_URL": database_url,
        "GRAPHGATE_DATA_DIR": str(workdir),
        "GRAPHGATE_LOGGING__FORMAT": "json",
    }
    if not protections:
        # What graphgate costs with every protection off (development allows it).
        return {**env, "GRAPHGATE_ENV": "development", "GRAPHGATE_AUTH__ENABLED": "false",
                "GRAPHGATE_RATE_LIMIT__ENABLED": "false", "GRAPHGATE_METRICS__ENABLED": "false",
                "GRAPHGATE_LOGGING__ACCESS_LOG": "false",
                "GRAPHGATE_HTTP__SECURITY_HEADERS": "false"}
    env.update({
        "GRAPHGATE_ENV": "production",
        "GRAPHGATE_AUTH__API_KEYS_FILE": str(creds.keys_file),
        "GRAPHGATE_AUTH__JWT__ALGORITHMS": "HS256",
        "GRAPHGATE_AUTH__JWT__SECRET": creds.jwt_secret,
        "GRAPHGATE_AUTH__JWT__ISSUER": JWT_ISSUER,
        "GRAPHGATE_AUTH__JWT__AUDIENCE": JWT_AUDIENCE,
        "GRAPHGATE_RATE_LIMIT__STORAGE_URI": rate_limit_uri,
        "GRAPHGATE_RATE_LIMIT__DEFAULT_LIMITS": STREAM_LIMIT,
        "GRAPHGATE_RATE_LIMIT__RUN_LIMITS": STREAM_LIMIT,
        "GRAPHGATE_RATE_LIMIT__MAX_CONCURRENT_STREAMS": "64",
        "GRAPHGATE_METRICS__TOKEN": secrets.token_urlsafe(32),
        "GRAPHGATE_CORS__ALLOW_ORIGINS": ORIGIN,
        "GRAPHGATE_HTTP__ALLOWED_HOSTS": "127.0.0.1,graphgate.example.com",
    })
    if otlp_endpoint:
        env["GRAPHGATE_TELEMETRY__OTLP_ENDPOINT"] = otlp_endpoint
    return env


@dataclass
class Server:
    """One server process; `start()` returns once it answers its health path."""

    name: str
    kind: Kind
    workdir: Path
    tokens: int
    delay_ms: float
    env: Mapping[str, str] = field(default_factory=dict)
    workers: int = 1
    langgraph: str | None = None
    official_jobs: int | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / f"{self.name}-{self.port}.log"

    @property
    def health_path(self) -> str:
        return {"bare": "/hello", "graphgate": "/healthz", "official": "/ok"}[self.kind]

    def argv(self) -> list[str]:
        port = str(self.port)
        if self.kind == "bare":
            return [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host",
                    "127.0.0.1", "--port", port, "--no-access-log", "--log-level", "warning",
                    "--timeout-keep-alive", "75", "--no-server-header"]
        if self.kind == "graphgate":
            return [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port",
                    port, "--workers", str(self.workers)]
        assert self.langgraph is not None
        argv = [self.langgraph, "dev", "--host", "127.0.0.1", "--port", port, "--no-browser",
                "--no-reload", "--config", str(self._official_config())]
        if self.official_jobs:
            argv += ["--n-jobs-per-worker", str(self.official_jobs)]
        return argv

    def _official_config(self) -> Path:
        directory = self.workdir / f"official-{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "langgraph.json"
        config.write_text(json.dumps({"dependencies": [str(REPO)],
                                      "graphs": {"bench": f"{REPO}/bench/graph.py:graph"}}))
        return config

    def launch(self) -> Server:
        """Start the process; `wait_ready()` waits for it (servers boot in parallel)."""
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("GRAPHGATE_", "BENCH_", "OTEL_", "LANGSMITH_"))}
        env = {**clean, "PYTHONPATH": str(REPO), "BENCH_TOKENS": str(self.tokens),
               "BENCH_TOKEN_DELAY_MS": str(self.delay_ms), "LANGSMITH_TRACING": "false",
               "LANGCHAIN_TRACING_V2": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1",
               **self.env}
        cwd = self.workdir / f"official-{self.port}" if self.kind == "official" else REPO
        argv = self.argv()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> Server:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}{self.health_path}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer within {timeout_s} s:\n{self.tail()}")

    def start(self, timeout_s: float = 90.0) -> Server:
        return self.launch().wait_ready(timeout_s)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return proc.cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return proc.rss_bytes(self.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, timeout_s=20)
        if self.kind == "official":
            shutil.rmtree(self.workdir / f"official-{self.port}", ignore_errors=True)

    # -- what the load generator sends --

    def stream_target(self, credentials: Sequence[tuple[str, str]] = (), *,
                      body: bytes | None = None, port: int | None = None,
                      ssl_context: ssl.SSLContext | None = None,
                      host_header: str = "") -> Target:
        """The stream request; `port`/`ssl_context`/`host_header` aim it at a proxy."""
        if self.kind == "bare":
            return Target(self.name, port or self.port, "POST", "/chat/stream",
                          body or b'{"message": "hi"}', token_prefix=b"data:")
        if self.kind == "official":
            return Target(self.name, port or self.port, "POST", "/runs/stream",
                          body or (b'{"assistant_id": "bench", "input": {"messages": '
                                   b'[{"role": "user", "content": "hi"}]}, '
                                   b'"stream_mode": ["messages-tuple"]}'))
        return Target(self.name, port or self.port, "POST", "/v1/chat/stream",
                      body or b'{"message": "hi"}', credentials=credentials,
                      extra_headers=[("origin", ORIGIN)], ssl_context=ssl_context,
                      server_hostname=host_header or None, host_header=host_header)

    def get_target(self, credentials: Sequence[tuple[str, str]] = (), *,
                   path: str | None = None) -> Target:
        # graphgate's trivial authenticated route: /info (static, behind every protection).
        path = path or {"bare": "/hello", "official": "/ok", "graphgate": "/info"}[self.kind]
        extra = [("origin", ORIGIN)] if self.kind == "graphgate" else []
        return Target(self.name, self.port, "GET", path, credentials=credentials,
                      extra_headers=extra)
