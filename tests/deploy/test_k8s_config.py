"""deploy/k8s: the configuration the pods get, run through the real `graphgate` CLI.

`Pod` (tests/support/k8s.py) lays a target's volumes out in a temporary directory (the
ConfigMap's TOML, stand-in Secret files, emptyDirs), rewrites the container's mount paths
to point there, and runs the commands its containers run: `check-config` (production: also with
--strict, the CI step the issue asks for) and `migrate`, against a throwaway Postgres
for the production overlay. Secrets reach the pods only as files.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from service.app import needs_development_key
from service.settings import Settings
from tests.support.k8s import (
    TARGETS,
    Pod,
    all_containers,
    build,
    env_of,
    mounts_of,
    pod_spec,
    server_container,
)
from tests.support.postgres import PostgresServer

PASSWORD = "k8s-test-s3cret"
STAND_IN_SECRETS = {
    "database_url": f"postgresql://graphgate:{PASSWORD}@postgresql.databases.svc.cluster.local"
                    ":5432/graphgate",
    "rate_limit__storage_uri": f"redis://:{PASSWORD}@redis-master.databases.svc.cluster.local"
                               ":6379/0",
    "metrics__token": secrets.token_urlsafe(48),
}


@pytest.fixture
def production(tmp_path: Path) -> Pod:
    return Pod("overlays/production", tmp_path, STAND_IN_SECRETS)


def audit(pod: Pod, *flags: str) -> tuple[int, dict[str, Any]]:
    result = pod.run("check-config", "--format", "json", *flags)
    assert PASSWORD not in result.stdout + result.stderr
    assert STAND_IN_SECRETS["metrics__token"] not in result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize("target", TARGETS)
def test_config_map_loads_into_settings(target: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the pod's own sources: GRAPHGATE_CONFIG, the secrets dir, the env."""
    settings = Pod(target, tmp_path, STAND_IN_SECRETS).settings(monkeypatch)
    assert settings.server.worker_count >= 2
    assert settings.metrics.port is not None and not settings.metrics.public
    if target == "overlays/production":
        assert settings.env == "production"
        assert settings.database_kind == "postgres"
        assert settings.database_url is not None
        assert PASSWORD in settings.database_url.get_secret_value(), "the Secret file wins"
        assert settings.rate_limit.shared
        assert settings.auth.methods == ["api_key", "jwt"]
    elif target == "overlays/dev":
        assert settings.env == "development" and needs_development_key(settings)
        assert settings.database_kind == "sqlite"
        assert str(settings.sqlite_path).startswith(str(tmp_path / "data"))
    else:
        assert settings.env == "production" and settings.auth.methods == ["api_key"]


def test_production_passes_check_config_strict(production: Pod) -> None:
    code, report = audit(production, "--strict")
    assert code == 0, report["findings"]
    assert report["summary"]["critical"] == report["summary"]["warning"] == 0
    posture = report["posture"]
    assert posture["database"]["address"] == "postgresql.databases.svc.cluster.local:5432"
    assert posture["rate_limit"]["storage"]["kind"] == "redis"
    assert posture["metrics"] == {"enabled": True, "token": True, "port": 9464,
                                  "public": False}
    assert posture["server"]["workers"] == 2


def test_strict_audit_would_notice_a_weak_setting(production: Pod) -> None:
    """The check above has teeth: memory:// rate limits with 2 workers are a warning."""
    (production.root / "secrets" / "rate_limit__storage_uri").write_text("memory://")
    code, report = audit(production, "--strict")
    assert code == 1
    assert "rate-limit-memory-multiworker" in {f["code"] for f in report["findings"]}


def test_base_check_config_passes_and_a_missing_keys_secret_stops_the_pod(
        tmp_path: Path) -> None:
    """The init container's check (not --strict) passes on the base config; with the
    optional keys Secret absent (an empty volume) it fails, so the pod never starts."""
    pod = Pod("base", tmp_path, {})
    assert audit(pod)[0] == 0
    (tmp_path / "api-keys" / "keys.toml").unlink()
    code, report = audit(pod)
    assert code == 1
    assert "api-keys-unloadable" in {f["code"] for f in report["findings"]}


def test_dev_migrate_creates_the_sqlite_database(tmp_path: Path) -> None:
    pod = Pod("overlays/dev", tmp_path, {})
    result = pod.run("migrate")
    assert result.returncode == 0, result.stderr
    assert "sqlite storage is migrated" in result.stderr
    assert (tmp_path / "data" / "graphgate.sqlite").exists()


@pytest.mark.postgres
def test_production_migrate_uses_the_secret_database_url(tmp_path: Path,
                                                         postgres: PostgresServer) -> None:
    """The migrate init container, with database_url from the Secret file (the TOML's
    password-less URL points at a host that does not exist here)."""
    pod = Pod("overlays/production", tmp_path, {**STAND_IN_SECRETS,
                                                "database_url": postgres.create_database()})
    result = pod.run("migrate")
    assert result.returncode == 0, result.stderr
    assert "postgres storage is migrated" in result.stderr


def test_secrets_reach_the_pods_only_as_files() -> None:
    docs = build("overlays/production")
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in all_containers(spec):
        assert all("valueFrom" not in item for item in container["env"]), container["name"]
        assert "envFrom" not in container
    server = server_container(docs)
    mounts = {name: path for path, name in mounts_of(server).items()}
    assert env_of(server)["GRAPHGATE_SECRETS_DIR"] == mounts["secrets"]
    files = {path for _, path in Pod.secret_items(volumes["secrets"])}
    assert files == set(STAND_IN_SECRETS)
    for name in files:  # names the settings' secrets directory understands
        assert name.split("__")[0] in Settings.model_fields, name
    for name in ("secrets", "jwt", "api-keys"):
        volume = volumes[name]
        mode = (volume.get("projected") or volume["secret"])["defaultMode"]
        assert mode == 0o440, name
    assert volumes["api-keys"]["secret"]["optional"] is False


def test_production_key_files_are_in_their_secret_volumes(
        production: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = production.settings(monkeypatch)
    assert settings.auth.api_keys_file == production.root / "api-keys" / "keys.toml"
    assert settings.auth.jwt.public_key_file == production.root / "jwt" / "public.pem"
    assert settings.auth.api_keys_file.read_text().startswith("[[keys]]")
