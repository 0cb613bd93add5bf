"""deploy/k8s: who may reach the pods, whom they may reach, and how they scale.

Read from the YAML `kubectl kustomize` renders (tests/support/k8s.py) and compared with
the Settings each target's ConfigMap loads into, so the Service, ServiceMonitor,
Ingress and NetworkPolicies cannot drift from the ports and hosts graphgate uses.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from service.security.paths import METRICS_PATH
from service.settings import Settings
from tests.support.k8s import (
    K8S,
    TARGETS,
    Resource,
    build,
    config,
    deployment,
    find,
    one,
    pod_spec,
    port_number,
    server_container,
)

INGRESS_NAMESPACE = "ingress-nginx"
MONITORING_NAMESPACE = "monitoring"
# ingress-nginx's default upstream keepalive timeout, which keep_alive_s must exceed.
INGRESS_UPSTREAM_KEEPALIVE_S = 60
# Postgres' default max_connections, less room for migrations and admin sessions.
POSTGRES_CONNECTION_BUDGET = 100 - 20
NGINX = "nginx.ingress.kubernetes.io/"


def pod_labels(docs: list[Resource]) -> dict[str, str]:
    labels: dict[str, str] = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    return labels


def selects_pods(selector: Resource, docs: list[Resource]) -> bool:
    return selector["matchLabels"].items() <= pod_labels(docs).items()


def namespace_of(peer: Resource) -> str:
    name: str = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    return name


@pytest.mark.parametrize("target", TARGETS)
def test_default_deny_and_every_policy_selects_the_pods(target: str) -> None:
    docs = build(target)
    policies = find(docs, "NetworkPolicy")
    for policy in policies:
        assert selects_pods(policy["spec"]["podSelector"], docs), policy["metadata"]["name"]
    deny = one(docs, "NetworkPolicy", "graphgate-default-deny")["spec"]
    assert sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny


@pytest.mark.parametrize("target", TARGETS)
def test_ingress_only_from_the_controller_and_prometheus(target: str) -> None:
    docs = build(target)
    rules = [rule for policy in find(docs, "NetworkPolicy")
             for rule in policy["spec"].get("ingress", [])]
    allowed = {(namespace_of(peer), port["port"]) for rule in rules
               for peer in rule["from"] for port in rule["ports"]}
    assert allowed == {(INGRESS_NAMESPACE, "http"), (MONITORING_NAMESPACE, "metrics")}
    for rule in rules:  # every peer is a pod selector inside its namespace, never "all"
        assert all(peer["podSelector"]["matchLabels"] for peer in rule["from"])
    server = server_container(docs)
    for port in ("http", "metrics"):
        port_number(server, port)  # the named ports exist on the container


@pytest.mark.parametrize("target", TARGETS)
def test_egress_is_an_allow_list(target: str) -> None:
    docs = build(target)
    rules = [rule for policy in find(docs, "NetworkPolicy")
             for rule in policy["spec"].get("egress", [])]
    for rule in rules:
        assert rule.get("to") and rule.get("ports"), "an egress rule without peers or ports"
    dns = {(namespace_of(peer), port["port"], port["protocol"]) for rule in rules
           for peer in rule["to"] if "namespaceSelector" in peer for port in rule["ports"]
           if port["port"] == 53}
    assert dns == {("kube-system", 53, "UDP"), ("kube-system", 53, "TCP")}
    if target != "overlays/production":
        assert {port["port"] for rule in rules for port in rule["ports"]} == {53}


def test_production_egress_matches_the_configured_datastores() -> None:
    """The hosts in the shipped config are what the egress policy opens."""
    docs = build("overlays/production")
    settings = Settings(**config(docs))
    rules = one(docs, "NetworkPolicy", "graphgate-egress-datastores")["spec"]["egress"]
    opened = {(namespace_of(rule["to"][0]), rule["ports"][0]["port"]) for rule in rules}
    assert settings.database_url is not None
    for url in (settings.database_url.get_secret_value(),
                settings.rate_limit.storage_uri.get_secret_value()):
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        namespace = parts.hostname.split(".")[1]  # <service>.<namespace>.svc…
        assert (namespace, parts.port) in opened, url


def test_production_egress_to_the_internet_is_https_only() -> None:
    docs = build("overlays/production")
    rule = one(docs, "NetworkPolicy", "graphgate-egress-model-provider")["spec"]["egress"]
    assert [port["port"] for port in rule[0]["ports"]] == [443]
    blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"]["except"]) for peer in rule[0]["to"]}
    # Cluster and VPC addresses and the cloud metadata endpoint stay unreachable.
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= blocks[
        "0.0.0.0/0"]
    assert {"fc00::/7", "fe80::/10"} <= blocks["::/0"]


@pytest.mark.parametrize("target", TARGETS)
def test_service_ports_reach_the_configured_listeners(target: str) -> None:
    docs = build(target)
    settings, server = Settings(**config(docs)), server_container(docs)
    service = one(docs, "Service", "graphgate")
    assert service["spec"]["selector"].items() <= pod_labels(docs).items()
    ports = {p["name"]: port_number(server, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"http": settings.server.port, "metrics": settings.metrics.port}


def test_service_monitor_scrapes_the_metrics_listener_with_its_token() -> None:
    docs = build("overlays/production")
    monitor = one(docs, "ServiceMonitor", "graphgate")["spec"]
    service = one(docs, "Service", "graphgate")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == METRICS_PATH
    assert int(endpoint["scrapeTimeout"].rstrip("s")) < int(endpoint["interval"].rstrip("s"))
    # The token Prometheus sends is the file graphgate reads as [metrics] token.
    secrets = {v["name"]: v for v in pod_spec(docs)["volumes"]}["secrets"]["projected"]
    token_source = [(source["secret"]["name"], item["key"]) for source in secrets["sources"]
                    for item in source["secret"]["items"] if item["path"] == "metrics__token"]
    credentials = endpoint["authorization"]["credentials"]
    assert token_source == [(credentials["name"], credentials["key"])]


def test_ingress_streams_server_sent_events() -> None:
    docs = build("overlays/production")
    settings = Settings(**config(docs))
    ingress = one(docs, "Ingress", "graphgate")
    notes = ingress["metadata"]["annotations"]
    assert notes[NGINX + "proxy-buffering"] == "off"
    # At least two heartbeats fit in the read timeout, so one late ping cuts nothing.
    assert int(notes[NGINX + "proxy-read-timeout"]) >= 2 * settings.streaming.heartbeat_interval_s
    assert int(notes[NGINX + "proxy-send-timeout"]) >= 2 * settings.streaming.heartbeat_interval_s
    assert notes[NGINX + "proxy-http-version"] == "1.1"
    size = re.fullmatch(r"(\d+)m", notes[NGINX + "proxy-body-size"])
    assert size and int(size[1]) * 2**20 >= settings.limits.max_body_bytes
    assert notes[NGINX + "force-ssl-redirect"] == "true"
    assert not [key for key in notes if key.endswith("snippet")], "snippets are refused"
    assert settings.server.keep_alive_s > INGRESS_UPSTREAM_KEEPALIVE_S
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]]
    assert backends == [{"name": "graphgate", "port": {"name": "http"}}], "never `metrics`"
    assert ingress["spec"]["tls"], "TLS terminates at the ingress"


def test_production_autoscales_with_a_disruption_budget() -> None:
    docs = build("overlays/production")
    settings = Settings(**config(docs))
    hpa = one(docs, "HorizontalPodAutoscaler", "graphgate")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "graphgate"}
    assert "replicas" not in deployment(docs)["spec"], "the autoscaler owns the count"
    assert hpa["minReplicas"] >= 3
    pdb = one(docs, "PodDisruptionBudget", "graphgate")["spec"]
    assert selects_pods(pdb["selector"], docs)
    assert hpa["minReplicas"] - pdb["maxUnavailable"] >= 2, "a drain leaves two replicas"
    assert hpa["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 120}]
    # Every worker of every replica has its own pool: the total fits Postgres.
    connections = hpa["maxReplicas"] * settings.server.worker_count * \
        settings.postgres.pool_max_size
    assert connections <= POSTGRES_CONNECTION_BUDGET
    stated = re.search(r"maxReplicas (\d+) \* \[server\] workers (\d+) \* \[postgres\] "
                       r"pool_max_size (\d+) = (\d+) connections",
                       (K8S / "overlays/production/horizontalpodautoscaler.yaml").read_text())
    assert stated, "the HPA's comment must spell out the connection arithmetic"
    assert [int(value) for value in stated.groups()] == [
        hpa["maxReplicas"], settings.server.worker_count, settings.postgres.pool_max_size,
        connections]


def test_production_allows_exactly_the_ingress_hosts() -> None:
    """[http] allowed_hosts names what the Ingress routes and has certificates for; the
    probes and scrapes that reach pods by IP are exempt (test_k8s_policy.py,
    test_k8s_replicas.py)."""
    docs = build("overlays/production")
    settings = Settings(**config(docs))
    ingress = one(docs, "Ingress", "graphgate")["spec"]
    routed = {rule["host"] for rule in ingress["rules"]}
    certified = {host for tls in ingress["tls"] for host in tls["hosts"]}
    assert settings.http.allowed_hosts, "production checks the Host header"
    assert set(settings.http.allowed_hosts) == routed <= certified
