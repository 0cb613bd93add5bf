"""deploy/k8s: the pods' security, probes, shutdown and resources, read from the built YAML.

Each target is rendered by the real `kubectl kustomize` (tests/support/k8s.py); the
checks compare it with the app itself: probe paths against the routes `create_app`
really registers, ports and timeouts against the Settings each target's ConfigMap
loads into.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.health import READY_TIMEOUT_S
from service.app import create_app
from service.security.paths import PROBE_PATHS
from service.settings import Settings
from tests.support.k8s import (
    K8S,
    ROOT,
    TARGETS,
    Resource,
    all_containers,
    build,
    config,
    deployment,
    env_of,
    mounts_of,
    pod_spec,
    port_number,
    server_container,
)

# Pod Security Standards, "restricted" profile (Kubernetes 1.30+).
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}
ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}
# ../shared/SECURITY-CHECKLIST.md section 9: preStop + graceful_timeout + at least 5 s.
MIN_GRACE_MARGIN_S = 5
# An address from kind's pod network, as the kubelet's probes put in the Host header.
POD_IP = "10.244.1.7"
GRACE_COMMENT = re.compile(
    r"terminationGracePeriodSeconds (\d+) = preStop (\d+) \+ graceful_timeout_s (\d+) "
    r"\+ margin (\d+)")


def settings_of(docs: list[Resource]) -> Settings:
    return Settings(**config(docs))


def cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def security_value(spec: Resource, container: Resource, key: str) -> object:
    """A container's effective setting: its own, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else spec.get("securityContext", {}).get(key)


@pytest.mark.parametrize("target", TARGETS)
def test_restricted_pod_security_standard(target: str) -> None:
    spec = pod_spec(build(target))
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(flag), flag
    assert spec.get("automountServiceAccountToken") is False
    for volume in spec["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUME_TYPES, f"volume {volume['name']}: {kinds}"
    containers = list(all_containers(spec))
    assert len(containers) >= 2, "the init containers are checked too"
    for container in containers:
        name, own = container["name"], container["securityContext"]
        assert own["allowPrivilegeEscalation"] is False, name
        assert own.get("privileged") in (None, False), name
        assert own["capabilities"]["drop"] == ["ALL"], name
        assert set(own["capabilities"].get("add", [])) <= ALLOWED_ADDED_CAPABILITIES, name
        assert own["readOnlyRootFilesystem"] is True, name
        assert security_value(spec, container, "runAsNonRoot") is True, name
        user = security_value(spec, container, "runAsUser")
        assert isinstance(user, int) and user != 0, name
        profile = security_value(spec, container, "seccompProfile")
        assert isinstance(profile, dict) and profile["type"] == "RuntimeDefault", name
        assert all(not port.get("hostPort") for port in container.get("ports", [])), name
        assert "procMount" not in own and "seLinuxOptions" not in own, name


def test_run_as_user_is_the_images_user() -> None:
    """runAsNonRoot can only be verified against a numeric image USER; both must agree."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user, "the Dockerfile's USER must be numeric uid:gid"
    context = pod_spec(build("base"))["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(user[1]), int(user[2]))
    assert context["fsGroup"] == int(user[2])


@pytest.mark.parametrize("target", TARGETS)
def test_containers_share_image_environment_and_mounts(target: str) -> None:
    """check-config and migrate see exactly what the server will run with."""
    containers = list(all_containers(pod_spec(build(target))))
    server = containers[-1]
    for container in containers[:-1]:
        for key in ("image", "env", "volumeMounts", "securityContext"):
            assert container[key] == server[key], f"{container['name']}: {key}"
    commands = [c["args"] for c in containers]
    assert commands[-1] == ["serve"], "workers, host and port come from the config file"
    assert ["migrate"] in commands[:-1]
    if target != "overlays/dev":
        assert ["check-config"] in commands[:-1]


@pytest.mark.parametrize("target", TARGETS)
def test_writable_paths_are_empty_dirs(target: str) -> None:
    """readOnlyRootFilesystem: everything graphgate writes lands in an emptyDir."""
    docs = build(target)
    spec, server = pod_spec(docs), server_container(docs)
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounts = mounts_of(server)
    env = env_of(server)
    scratch = "/tmp"  # noqa: S108 - the pod's own emptyDir, checked here, not used
    for path in (scratch, env["GRAPHGATE_DATA_DIR"], env["GRAPHGATE_SERVER__WORKER_TMP_DIR"],
                 env["PROMETHEUS_MULTIPROC_DIR"].rsplit("/", 1)[0]):
        assert mounts.get(path) in empty_dirs, path
    memory_dirs = [v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    limit = memory(server["resources"]["limits"]["memory"])
    for volume in memory_dirs:  # tmpfs counts against the container's memory limit
        assert memory(volume["emptyDir"]["sizeLimit"]) <= limit // 8, volume["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_probes_use_real_routes_and_ports(target: str, tmp_path: Path) -> None:
    docs = build(target)
    settings = settings_of(docs)
    server = server_container(docs)
    probes = {kind: server[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    # The target's own [server] and [metrics] settings, with a local store and no
    # credentials: the probes must answer 200 from the real app, through its lifespan.
    local = Settings(**{**config(docs), "env": "development", "auth": {"enabled": False},
                        "rate_limit": {"enabled": False},
                        "database_url": f"sqlite:///{tmp_path}/probes.sqlite"})
    # The kubelet addresses the pod by IP: its Host header is no name in allowed_hosts.
    by_ip = {"Host": f"{POD_IP}:{settings.server.port}"}
    with TestClient(create_app(local)) as client:
        for kind, probe in probes.items():
            path = probe["httpGet"]["path"]
            assert "host" not in probe["httpGet"] and "httpHeaders" not in probe["httpGet"]
            assert client.get(path, headers=by_ip).status_code == 200, f"{kind}: {path}"
            assert path in PROBE_PATHS, f"{kind}: {path} needs credentials or is rate-limited"
            assert port_number(server, probe["httpGet"]["port"]) == settings.server.port, kind
        if settings.http.allowed_hosts:  # the Host check is on, and exempts only the probes
            refused = client.get("/v1/threads", headers=by_ip)
            assert refused.status_code == 400 and refused.json()["code"] == "invalid_host"
            host = {"Host": settings.http.allowed_hosts[0]}
            assert client.get("/v1/threads", headers=host).status_code == 200
    # Start-up and liveness ask only whether the process answers: /healthz never touches
    # the database (tests/persistence/test_durability.py stops Postgres and gets 200), so
    # a database outage makes pods unready and never restarts them.
    assert probes["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The app answers a slow database with 503 before the probe itself times out.
    assert probes["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT_S
    startup = probes["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget > settings.postgres.startup_timeout_s + 30, "start-up waits for the database"


@pytest.mark.parametrize("target", TARGETS)
def test_container_ports_are_the_configured_ones(target: str) -> None:
    docs = build(target)
    settings, server = settings_of(docs), server_container(docs)
    assert settings.server.host == "0.0.0.0"
    assert port_number(server, "http") == settings.server.port
    assert settings.metrics.port is not None
    assert port_number(server, "metrics") == settings.metrics.port


@pytest.mark.parametrize("target", TARGETS)
def test_grace_period_covers_prestop_and_drain(target: str) -> None:
    docs = build(target)
    settings, spec, server = settings_of(docs), pod_spec(docs), server_container(docs)
    grace = spec["terminationGracePeriodSeconds"]
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    graceful = settings.server.graceful_timeout_s
    assert settings.server.drain_s < graceful, "streams end before gunicorn cuts them"
    assert pre_stop >= 5, "time for the endpoint removal to reach the ingress controller"
    assert grace >= pre_stop + graceful + MIN_GRACE_MARGIN_S
    for container in spec.get("initContainers", []):
        assert "lifecycle" not in container
    # The comment that explains the number states the same numbers.
    stated = GRACE_COMMENT.search((K8S / "base" / "deployment.yaml").read_text())
    assert stated, "deployment.yaml must spell out the grace period arithmetic"
    total, pre, drain, margin = (int(value) for value in stated.groups())
    assert (total, pre, drain) == (grace, pre_stop, graceful)
    assert total == pre + drain + margin


@pytest.mark.parametrize("target", TARGETS)
def test_resources_are_bounded(target: str) -> None:
    docs = build(target)
    settings = settings_of(docs)
    for container in all_containers(pod_spec(docs)):
        resources, name = container["resources"], container["name"]
        for key in ("cpu", "memory"):
            assert key in resources["requests"] and key in resources["limits"], (name, key)
        assert cpu(resources["limits"]["cpu"]) >= cpu(resources["requests"]["cpu"]), name
        assert memory(resources["limits"]["memory"]) >= memory(resources["requests"]["memory"])
    server = server_container(docs)["resources"]
    # One core per gunicorn worker at most; more workers than that only contend.
    assert cpu(server["limits"]["cpu"]) >= settings.server.worker_count


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned(target: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for container in all_containers(pod_spec(build(target))):
        image = container["image"]
        assert container["imagePullPolicy"] == "IfNotPresent", image
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image} has no tag"
        assert tag != "latest"
        assert tag == version, f"{image}: release the image of graphgate {version}"


def test_topology_spread_across_nodes() -> None:
    docs = build("overlays/production")
    spec = pod_spec(docs)
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    constraints = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    hostname = constraints["kubernetes.io/hostname"]
    assert hostname["whenUnsatisfiable"] == "DoNotSchedule"
    assert hostname["maxSkew"] == 1
    assert "topology.kubernetes.io/zone" in constraints
    for constraint in constraints.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
