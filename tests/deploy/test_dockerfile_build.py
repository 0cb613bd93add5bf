"""The image, built for real by scripts/build-image.sh and run from its own command.

buildah (apt) builds the Dockerfile from a local debootstrapped bookworm base, under
`unshare -n`: nothing is downloaded during the build (the wheels are fetched first, by
the base's Python; ../shared/RECIPES.md section 10). Then the image's ENTRYPOINT + CMD
run with `buildah run`, in a network namespace of their own (tests/support/image_smoke.py):
requests, the HEALTHCHECK command, SIGTERM.

Needs root, network access for the wheels (and, the first time, for debootstrap: the
base's root file system is cached in ~/.cache/graphgate-image), and up to 1 GB in the
temporary directory for buildah's storage, which is deleted afterwards. Measured here:
about 1.5 minutes, 2.5 with a cold base cache. What a real container runtime adds (a truly
read-only root file system, cgroup limits, the kubelet's probes) is not covered here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.binaries import missing
from tests.support.k8s import ROOT

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(900)]

TAG = "localhost/graphgate:test"
UID = 10001


def buildah_argv(storage: Path) -> list[str]:
    # The driver the script chose (overlay on ext4/xfs/btrfs, else vfs) named its directory.
    driver = "overlay" if (storage / "storage" / "overlay").is_dir() else "vfs"
    return ["buildah", "--root", str(storage / "storage"), "--runroot", str(storage / "run"),
            "--storage-driver", driver]


def unmount_all(storage: Path) -> None:
    """Anything buildah left mounted below `storage`, deepest first, so it can be deleted."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(str(storage))), reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    for tool in ("buildah", "unshare", "debootstrap", "ip"):
        if shutil.which(tool) is None:
            missing(f"{tool} (scripts/system-deps.sh --test installs buildah and debootstrap)")
    if os.geteuid() != 0:
        missing("root (buildah's chroot isolation and debootstrap need it)")
    path = tmp_path_factory.mktemp("buildah")
    try:
        yield path
    finally:
        # Hundreds of MB of layers (vfs keeps a full copy of each): never left behind.
        subprocess.run([*buildah_argv(path), "umount", "--all"], capture_output=True,
                       check=False)
        unmount_all(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def image(storage: Path) -> dict[str, Any]:
    started = time.monotonic()
    result = subprocess.run(
        ["scripts/build-image.sh", "--root", str(storage), "--tag", TAG],
        cwd=ROOT, capture_output=True, text=True, timeout=840, check=False,
        env={**os.environ, "REVISION": "test", "PYTHON": sys.executable},
    )
    print(f"build-image.sh took {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == TAG
    inspected = subprocess.run([*buildah_argv(storage), "inspect", "--type", "image", TAG],
                               capture_output=True, text=True, check=True)
    document: dict[str, Any] = json.loads(inspected.stdout)
    return document


def test_image_configuration(image: dict[str, Any]) -> None:
    config = image["Docker"]["config"]  # built with --format docker: HEALTHCHECK survives
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["graphgate"]
    assert config["Cmd"][0] == "serve"
    assert config["StopSignal"] == "SIGTERM"
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    volumes = {"/run/graphgate", "/var/lib/graphgate", "/tmp"}  # noqa: S108 - in the image
    assert set(config["Volumes"]) == volumes
    assert config["Labels"]["org.opencontainers.image.revision"] == "test"


def test_image_contents(image: dict[str, Any], storage: Path) -> None:
    """The venv and nothing of the build: no pip, no wheels, no sources, no compilers."""
    buildah = buildah_argv(storage)
    container = subprocess.run([*buildah, "from", "--pull=false", TAG], capture_output=True,
                               text=True, check=True).stdout.strip()
    try:
        root = Path(subprocess.run([*buildah, "mount", container], capture_output=True,
                                   text=True, check=True).stdout.strip())
        venv = root / "opt/venv"
        assert (venv / "bin/graphgate").exists()
        assert not list(venv.glob("bin/pip*"))
        assert not list(venv.glob("lib/python3*/site-packages/pip"))
        for leftover in ("wheels", "src", "usr/bin/gcc", "usr/bin/cc"):
            assert not (root / leftover).exists(), leftover
        assert venv.stat().st_uid == 0, "the code is root's: the app cannot change it"
        for writable in ("run/graphgate", "var/lib/graphgate"):
            info = (root / writable).stat()
            assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (UID, UID, 0o700)
    finally:
        subprocess.run([*buildah, "rm", container], capture_output=True, check=False)


def test_image_serves_and_stops_cleanly(image: dict[str, Any], storage: Path) -> None:
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.support.image_smoke",
         json.dumps(buildah_argv(storage)), TAG],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"image smoke: {seen}")
    assert seen["command"] == image["Docker"]["config"]["Entrypoint"] + image["Docker"][
        "config"]["Cmd"]
    assert seen["uid"] == str(UID)
    assert seen["healthz"] == 200
    assert seen["readyz"] == {"status": "ready", "storage": "sqlite"}
    assert seen["chat"]["status"] == 200 and seen["chat"]["reply"].startswith("I have seen 1")
    assert seen["metrics_has_requests"], "Prometheus multiprocess files in /run/graphgate"
    assert seen["healthcheck_rc"] == 0, "the image's HEALTHCHECK command passes"
    # SIGTERM to the entrypoint's process, as a runtime sends it: a graceful stop, rc 0.
    assert seen["exit_code"] == 0 and seen["master_shut_down"]
    # Nothing was written outside the VOLUMEs (the one entry is /run itself, whose
    # directory listing buildah run changes while it sets up the /run/graphgate volume).
    assert set(seen["changed_outside_volumes"]) <= {"/run"}
