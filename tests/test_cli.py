"""The `graphgate` command: version, help, config errors (exit 2), effective config, migrate,
check-config and keys create."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest

from tests.support.ports import free_port
from tests.support.postgres import PostgresServer


def graphgate(*args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHGATE_")}
    return subprocess.run([sys.executable, "-m", "service", *args], env={**clean, **(env or {})},
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def keys_file(directory: Path, text: str = "") -> Path:
    """An API keys file; empty (no [[keys]] yet) is valid."""
    path = directory / "keys.toml"
    path.write_text(text, encoding="utf-8")
    return path


def production_auth(directory: Path) -> dict[str, str]:
    """The least production needs to start: an auth method (an empty API keys file)."""
    return {"GRAPHGATE_AUTH__API_KEYS_FILE": str(keys_file(directory))}


# Like tests/support/servers.py's ProcessServer: no credentials needed, auth not the point.
DEVELOPMENT_NO_AUTH = {"GRAPHGATE_ENV": "development", "GRAPHGATE_AUTH__ENABLED": "false",
                       "GRAPHGATE_RATE_LIMIT__ENABLED": "false"}


def test_version() -> None:
    """`graphgate version` names graphgate, Python and langgraph versions."""
    result = graphgate("version")
    assert result.returncode == 0
    assert result.stdout.startswith("graphgate ")
    assert "langgraph" in result.stdout


def test_help_lists_commands() -> None:
    """`graphgate --help` lists every command."""
    result = graphgate("--help")
    assert result.returncode == 0
    for command in ("serve", "migrate", "config", "check-config", "keys", "version", "chat"):
        assert command in result.stdout
    serve_help = graphgate("serve", "--help").stdout
    assert "--workers" in serve_help and "--host" in serve_help and "--port" in serve_help


@pytest.mark.parametrize(("env", "args", "expected"), [
    ({"GRAPHGATE_SERVER__PORT": "99999"}, (), "server.port (GRAPHGATE_SERVER__PORT)"),
    ({}, ("--port", "0"), "server.port"),
    ({"GRAPHGATE_ENV": "staging"}, (), "env (GRAPHGATE_ENV)"),
    ({"GRAPHGATE_DATABASE_URL": "mysql://u:hunter2@db/x"}, (), "database_url"),
    ({"GRAPHGATE_STREAMING__HEARTBEAT_INTERVAL_S": "soon"}, (), "heartbeat_interval_s"),
    ({"GRAPHGATE_GRAPHS": "bad spec"}, (), "graphs"),
    ({"GRAPHGATE_GRAPHS": "g=no_such_module_xyz:graph"}, (), "cannot import module"),
    ({"GRAPHGATE_GRAPHS": "g=json:no_such_attr"}, (), "has no attribute"),
    ({"GRAPHGATE_GRAPHS": "g=json:__name__"}, (), "is a str; expected a compiled graph"),
    ({"GRAPHGATE_DEFAULT_GRAPH": "other"}, (), "default_graph"),
    ({"GRAPHGATE_CONFIG": "/nonexistent/graphgate.toml"}, (), "does not exist"),
])
def test_config_errors_exit_2_with_one_line(tmp_path: Path, env: dict[str, str],
                                             args: tuple[str, ...], expected: str) -> None:
    """An invalid setting stops start-up: exit 2, one line naming it, no traceback."""
    result = graphgate("serve", *args, env={**production_auth(tmp_path), **env}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("graphgate: error: ")
    assert expected in lines[0]
    assert "GRAPHGATE_AUTH" not in lines[0]  # auth is configured: only the bad setting shows
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    assert not (tmp_path / "var").exists()  # nothing was started or created


@pytest.mark.parametrize(("text", "expected"), [
    ("[server]\nprot = 8000\n", "server.prot"),
    ("[server\nport = 1\n", "not valid TOML"),
    ("[streaming]\nheartbeat_interval_s = 0\n", "streaming.heartbeat_interval_s"),
])
def test_config_file_errors(tmp_path: Path, text: str, expected: str) -> None:
    """Typos and invalid values in the TOML file are refused the same way."""
    config = tmp_path / "graphgate.toml"
    config.write_text(text)
    result = graphgate("serve", env={**production_auth(tmp_path),
                                     "GRAPHGATE_CONFIG": str(config)}, cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "GRAPHGATE_AUTH" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_config_shows_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    """`graphgate config` prints merged settings and never the database password."""
    config = tmp_path / "graphgate.toml"
    config.write_text('[streaming]\nheartbeat_interval_s = 7\n[graphs]\nmine = "json:loads"\n')
    result = graphgate("config", env={
        **production_auth(tmp_path),
        "GRAPHGATE_CONFIG": str(config),
        "GRAPHGATE_DATABASE_URL": "postgresql://app:hunter2@db.internal/graphs",
        "GRAPHGATE_STREAMING__MAX_DURATION_S": "60",
    })
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert '"heartbeat_interval_s": 7.0' in result.stdout
    assert '"max_duration_s": 60.0' in result.stdout
    assert '"mine": "json:loads"' in result.stdout


METRICS_TOKEN = "Pm3Xw8Qz1Rv6Ty0Us4Lk9Jh2Gf7Dn5Bc-Ae_Io"


@pytest.mark.parametrize("command", [("config",), ("check-config", "--format", "text"),
                                     ("check-config", "--format", "json")])
def test_metrics_token_is_never_printed(tmp_path: Path, command: tuple[str, ...]) -> None:
    """`config` masks [metrics] token; `check-config` only says that one is set."""
    result = graphgate(*command, env={**production_auth(tmp_path),
                                      "GRAPHGATE_METRICS__TOKEN": METRICS_TOKEN}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert METRICS_TOKEN not in result.stdout + result.stderr
    if command == ("config",):
        assert json.loads(result.stdout)["metrics"]["token"] == "**********"
    elif "json" in command:
        assert json.loads(result.stdout)["posture"]["metrics"]["token"] is True


def test_migrate_creates_tables(postgres: PostgresServer, tmp_path: Path) -> None:
    """`graphgate migrate` creates the checkpointer's and graphgate's tables, idempotently."""
    url = postgres.create_database()
    for _ in range(2):
        result = graphgate("migrate", env={**production_auth(tmp_path),
                                           "GRAPHGATE_DATABASE_URL": url})
        assert result.returncode == 0, result.stderr
    with psycopg.connect(url) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations",
            "graphgate_thread_leases"} <= tables


def test_concurrent_migrations_are_safe(postgres: PostgresServer, tmp_path: Path) -> None:
    """Several processes migrating one fresh database at once all succeed."""
    url = postgres.create_database()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHGATE_")}
    env = {**clean, **production_auth(tmp_path), "GRAPHGATE_DATABASE_URL": url}
    procs = [subprocess.Popen([sys.executable, "-m", "service", "migrate"], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    with psycopg.connect(url) as conn:
        versions = conn.execute("SELECT v FROM checkpoint_migrations ORDER BY v").fetchall()
    assert [v[0] for v in versions] == list(range(len(versions)))  # each applied once


def test_unreachable_database_fails_start_clearly(tmp_path: Path) -> None:
    """With Postgres down at start, serve exits 1 with one line, not a traceback."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = graphgate("serve", env={**production_auth(tmp_path), "GRAPHGATE_DATABASE_URL": url,
                                     "GRAPHGATE_POSTGRES__STARTUP_TIMEOUT_S": "1"}, cwd=tmp_path)
    assert result.returncode == 1
    assert "could not connect to the Postgres database" in result.stderr
    assert "Traceback" not in result.stderr


# --- auth at start-up ---------------------------------------------------------------------


def test_serve_in_production_without_auth_exits_2(tmp_path: Path) -> None:
    """Production (the default) with no auth method configured refuses to start."""
    result = graphgate("serve", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("graphgate: error: ")
    assert "auth (GRAPHGATE_AUTH)" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()


def test_serve_with_an_invalid_keys_file_exits_2(tmp_path: Path) -> None:
    """A keys file that is not valid TOML stops start-up with one line naming the file."""
    path = keys_file(tmp_path, "[[keys]\nid = = 1\n")
    result = graphgate("serve", env={"GRAPHGATE_AUTH__API_KEYS_FILE": str(path)}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("graphgate: error: ")
    assert str(path) in lines[0]
    assert "invalid TOML" in lines[0]
    assert "Traceback" not in result.stderr


# --- check-config and keys create ---------------------------------------------------------


def test_check_config_strict_fails_in_development_without_auth(tmp_path: Path) -> None:
    """check-config --strict exits non-zero when auth is off, and says why."""
    result = graphgate("check-config", "--strict", env=DEVELOPMENT_NO_AUTH, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "auth-disabled" in result.stdout
    assert "env-development" in result.stdout


def _created_key(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The key and the [[keys]] block (with its comment) that `keys create` printed."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    key = next(line.removeprefix("key: ") for line in lines if line.startswith("key: "))
    start = next(i for i, line in enumerate(lines) if line.startswith("# created"))
    assert lines[start + 1] == "[[keys]]"
    return key, "\n".join(lines[start:]) + "\n"


def test_created_key_is_listed_by_check_config_without_its_hash(tmp_path: Path) -> None:
    """`keys create` prints a key and an entry that, in the keys file, check-config lists."""
    key, entry = _created_key(graphgate("keys", "create", "--tenant", "t", "--name", "n"))
    assert key not in entry  # the entry holds the hash, never the key
    (created,) = tomllib.loads(entry)["keys"]
    assert (created["tenant"], created["name"]) == ("t", "n")
    path = keys_file(tmp_path, entry)

    result = graphgate("check-config", "--format", "json",
                       env={"GRAPHGATE_AUTH__API_KEYS_FILE": str(path)}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    api_keys = report["posture"]["auth"]["api_keys"]
    assert api_keys["error"] is None
    assert [k["id"] for k in api_keys["keys"]] == [created["id"]]
    assert api_keys["keys"][0]["tenant"] == "t"
    assert created["hash"] not in result.stdout
    assert key not in result.stdout
    assert "hash" not in api_keys["keys"][0]
