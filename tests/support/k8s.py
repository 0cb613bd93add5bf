"""The Kubernetes manifests in deploy/k8s, built by the real `kubectl kustomize`.

`build()` runs kustomize once per target and caches the parsed documents; the helpers
pick resources and containers out of them. `Pod` lays a target's volumes out in a
directory and runs its containers' commands there. Missing tools skip locally and fail
in CI (tests/support/binaries.py).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.settings import Settings, load_settings
from tests.support.binaries import missing

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TARGETS = ("base", "overlays/dev", "overlays/production")
CONFIG_KEY = "graphgate.toml"

Resource = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        missing("kubectl (with its built-in kustomize)")
    assert found is not None
    return found


def venv_tool(name: str, what: str) -> str:
    """A console script installed next to this interpreter (the test extra)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            missing(what)
        assert found is not None
        return found
    return str(path)


@functools.cache
def rendered(target: str) -> str:
    """`kubectl kustomize deploy/k8s/<target>`: the YAML an apply would send."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"kustomize {target} failed:\n{result.stderr}"
    return result.stdout


def build(target: str) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(rendered(target)) if doc]


def find(docs: list[Resource], kind: str, name: str | None = None) -> list[Resource]:
    return [doc for doc in docs if doc["kind"] == kind
            and (name is None or doc["metadata"]["name"] == name)]


def one(docs: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment(docs: list[Resource]) -> Resource:
    return one(docs, "Deployment", "graphgate")


def pod_spec(docs: list[Resource]) -> Resource:
    spec: Resource = deployment(docs)["spec"]["template"]["spec"]
    return spec


def all_containers(spec: Resource) -> Iterator[Resource]:
    """Init containers first, then the app's containers."""
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def server_container(docs: list[Resource]) -> Resource:
    containers = pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == ["graphgate"]
    container: Resource = containers[0]
    return container


def config_text(docs: list[Resource]) -> str:
    """The TOML file the pods read: the ConfigMap the Deployment mounts."""
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    name = volumes["config"]["configMap"]["name"]
    text: str = one(docs, "ConfigMap", name)["data"][CONFIG_KEY]
    return text


def config(docs: list[Resource]) -> dict[str, Any]:
    return tomllib.loads(config_text(docs))


def env_of(container: Resource) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def mounts_of(container: Resource) -> dict[str, str]:
    """mountPath -> volume name."""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def port_number(container: Resource, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    for item in container.get("ports", []):
        if item["name"] == port:
            number: int = item["containerPort"]
            return number
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


# -- a pod's volumes and commands, on this machine ------------------------------------------


@functools.cache
def api_key_entry() -> str:
    """A keys file entry, made by the real `graphgate keys create` (expires in 30 days)."""
    expires = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--tenant", "acme",
         "--name", "k8s-test", "--expires-at", expires],
        capture_output=True, text=True, timeout=60, check=True, cwd=ROOT,
    )
    return result.stdout[result.stdout.index("[[keys]]"):]


@functools.cache
def public_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


class Pod:
    """One target's pod, its volumes as directories under `root`.

    The ConfigMap's TOML, Secret files (`secret_values` by file name, else a stand-in
    keys file and JWT public key) and emptyDirs; the containers' mount paths, in the
    config and the environment, are rewritten to point there.
    """

    def __init__(self, target: str, root: Path, secret_values: Mapping[str, str]) -> None:
        self.docs = build(target)
        self.server = server_container(self.docs)
        self.mounts = sorted(mounts_of(self.server).items(), key=lambda m: -len(m[0]))
        volumes = {v["name"]: v for v in pod_spec(self.docs)["volumes"]}
        self.root = root
        for _, name in self.mounts:
            directory = root / name
            directory.mkdir()
            volume = volumes[name]
            if "configMap" in volume:
                (directory / CONFIG_KEY).write_text(self.local(config_text(self.docs)))
            for key, path in self.secret_items(volume):
                if path in secret_values:
                    content = secret_values[path]
                elif key == "keys.toml":
                    content = api_key_entry()
                else:
                    assert key == "public.pem", f"no stand-in for the Secret key {key}"
                    content = public_key_pem().decode()
                (directory / path).write_text(content)

    @staticmethod
    def secret_items(volume: Resource) -> list[tuple[str, str]]:
        sources = volume.get("projected", {}).get("sources", [])
        secret_volumes = [s["secret"] for s in sources] + (
            [volume["secret"]] if "secret" in volume else [])
        items = [(item["key"], item["path"]) for secret in secret_volumes
                 for item in secret.get("items", [])]
        if "secret" in volume and not volume["secret"].get("items"):
            items.append(("keys.toml", "keys.toml"))  # the whole Secret: its one key
        return items

    def local(self, text: str) -> str:
        """Mount paths in `text` (config, env values) rewritten to this pod's directories."""
        # One pass, longest path first, and only where a path starts (the beginning of a
        # value or after a quote): the pod's own directories live under /tmp too.
        names = dict(self.mounts)
        pattern = "|".join(re.escape(path) for path, _ in self.mounts)
        return re.sub(rf'(?<![^"\s])({pattern})(?=[/"]|$)',
                      lambda match: str(self.root / names[match[1]]), text, flags=re.M)

    def env(self) -> dict[str, str]:
        env = {key: self.local(value) for key, value in env_of(self.server).items()}
        return {"PATH": os.environ["PATH"], "HOME": str(self.root), "PYTHONPATH": str(ROOT),
                **env}

    def argv(self, container: Resource) -> list[str]:
        """A container's command line: the image's ENTRYPOINT (`graphgate`) + its args."""
        assert "command" not in container, "the containers keep the image's entrypoint"
        return [sys.executable, "-m", "service", *container["args"]]

    def init_containers(self) -> list[Resource]:
        containers: list[Resource] = pod_spec(self.docs).get("initContainers", [])
        return containers

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`graphgate <args>` with the pod's environment, in its directory."""
        return subprocess.run(
            [sys.executable, "-m", "service", *args], env=self.env(), cwd=self.root,
            capture_output=True, text=True, timeout=120, check=False,
        )

    def settings(self, monkeypatch: pytest.MonkeyPatch) -> Settings:
        for key, value in self.env().items():
            monkeypatch.setenv(key, value)
        return load_settings()
