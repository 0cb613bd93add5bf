"""docs/deploy-k8s.md: every command block says whether it is tested, the tests it names
exist, its Secret commands create what the manifests use, and its numbers are the
manifests' numbers."""

from __future__ import annotations

import re

from tests.support.k8s import K8S, ROOT, build, find, pod_spec

DOC = ROOT / "docs" / "deploy-k8s.md"
MARKERS = ("Tested:", "Not testable here:")
REFERENCE = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?")
CREATE_SECRET = re.compile(r"create secret (generic|tls) ([\w-]+)((?:\s+\\?\s*--[\w-]+=\S+)+)")
GRACE = re.compile(r"terminationGracePeriodSeconds \d+ = preStop \d+ \+ graceful_timeout_s \d+ "
                   r"\+ margin \d+")


def blocks(text: str) -> list[tuple[str, str]]:
    """(body, the first paragraph after it) for every fenced block."""
    found = []
    for match in re.finditer(r"^```\w*\n(.*?)^```\n\n?(.*?)(?:\n\n|\Z)", text, re.M | re.S):
        found.append((match[1], " ".join(match[2].split())))
    return found


def test_every_block_is_followed_by_a_marker() -> None:
    found = blocks(DOC.read_text())
    assert len(found) >= 6
    unmarked = [body.splitlines()[0] for body, after in found if not after.startswith(MARKERS)]
    assert not unmarked, f"blocks without a Tested:/Not testable here: marker: {unmarked}"


def test_referenced_tests_exist() -> None:
    references = REFERENCE.findall(DOC.read_text())
    assert len(references) >= 8
    for path, name in references:
        file = ROOT / path
        assert file.is_file(), path
        if name:
            assert re.search(rf"^def {name}\(", file.read_text(), re.M), f"{path}::{name}"


def secrets_created() -> dict[str, set[str]]:
    created: dict[str, set[str]] = {}
    for kind, name, flags in CREATE_SECRET.findall(DOC.read_text()):
        keys = {"tls.crt", "tls.key"} if kind == "tls" else set(
            re.findall(r"--from-file=([\w.-]+)=", flags))
        created.setdefault(name, set()).update(keys)
    return created


def secrets_used() -> dict[str, set[str]]:
    """Secret name -> keys, from the production pods, ServiceMonitor and Ingress."""
    docs = build("overlays/production")
    used: dict[str, set[str]] = {}
    for volume in pod_spec(docs)["volumes"]:
        sources = [s["secret"] for s in volume.get("projected", {}).get("sources", [])]
        if "secret" in volume:
            sources.append({**volume["secret"], "name": volume["secret"]["secretName"]})
        for secret in sources:
            keys = {item["key"] for item in secret.get("items", [])} or {"keys.toml"}
            used.setdefault(secret["name"], set()).update(keys)
    for monitor in find(docs, "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            credentials = endpoint["authorization"]["credentials"]
            used.setdefault(credentials["name"], set()).add(credentials["key"])
    for ingress in find(docs, "Ingress"):
        for tls in ingress["spec"]["tls"]:
            used.setdefault(tls["secretName"], set()).update({"tls.crt", "tls.key"})
    return used


def test_every_secret_the_manifests_use_is_created() -> None:
    used, created = secrets_used(), secrets_created()
    assert set(used) == {"graphgate-secrets", "graphgate-metrics-token", "graphgate-api-keys",
                         "graphgate-jwt", "graphgate-tls"}
    for name, keys in used.items():
        assert keys <= created.get(name, set()), f"{name}: the doc does not create {keys}"


def test_grace_period_line_matches_the_deployment() -> None:
    stated = GRACE.search(DOC.read_text())
    in_manifest = GRACE.search((K8S / "base" / "deployment.yaml").read_text())
    assert stated and in_manifest
    assert stated[0] == in_manifest[0]
