"""deploy/k8s: every kustomize target builds and passes Kubernetes' own schemas.

`kubectl kustomize` (kustomize v5, built into kubectl) renders each target offline, as
`kubectl apply -k` would; `kubernetes-validate --strict` (PyPI, bundled schemas, no
cluster needed) checks the output against two Kubernetes versions: 1.30, the oldest
the manifests support (the kubelet's preStop `sleep` action is on by default from
1.30), and the newest it bundles. --strict rejects unknown fields, which is what catches
a misspelt or misplaced key (without it they pass silently).

What this cannot check: how a real API server, admission (Pod Security) and a CNI treat
the objects; no API server can run here (../shared/RECIPES.md, section 9).
"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.support.k8s import TARGETS, build, find, rendered, venv_tool

MIN_KUBERNETES = "1.30.0"
VERSIONS = (MIN_KUBERNETES, latest_version())
# Custom resources the bundled schemas do not cover (checked in test_k8s_policy.py).
CRD_KINDS = {"ServiceMonitor"}


def validate(manifests: str, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("kubernetes-validate", "kubernetes-validate (pip install -e '.[test]')"),
         "-k", version, "--strict", "-"],
        input=manifests, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("target", TARGETS)
def test_builds(target: str) -> None:
    docs = build(target)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy",
            "PodDisruptionBudget", "ServiceAccount"} <= kinds


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_validates_strictly(target: str, version: str) -> None:
    result = validate(rendered(target), version)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    major_minor = ".".join(version.split(".")[:2])
    for doc in build(target):
        if doc["kind"] in CRD_KINDS:
            continue
        name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        assert f"passed for resource {name} against version {major_minor}" in output
    # The only warnings are the CRDs it has no schema for.
    for line in output.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {kind} " in line for kind in CRD_KINDS), line


def test_strict_validation_catches_a_misplaced_field() -> None:
    """The check above would notice a typo: `--strict` refuses an unknown field."""
    docs = build("overlays/production")
    deployment = find(docs, "Deployment", "graphgate")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    result = validate(yaml.safe_dump(deployment), MIN_KUBERNETES)
    assert result.returncode == 1
    assert "'paht' was unexpected" in result.stdout + result.stderr


def test_production_has_every_part() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in build("overlays/production")}
    assert {("HorizontalPodAutoscaler", "graphgate"), ("Ingress", "graphgate"),
            ("ServiceMonitor", "graphgate"), ("Namespace", "graphgate"),
            ("NetworkPolicy", "graphgate-egress-datastores"),
            ("NetworkPolicy", "graphgate-egress-model-provider")} <= kinds


@pytest.mark.parametrize(("target", "namespace"),
                         [("overlays/dev", "graphgate-dev"), ("overlays/production", "graphgate")])
def test_overlays_own_their_namespace(target: str, namespace: str) -> None:
    """Every namespaced object lands in the overlay's namespace, which enforces the
    restricted Pod Security Standard at admission."""
    docs = build(target)
    ns = find(docs, "Namespace", namespace)[0]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
