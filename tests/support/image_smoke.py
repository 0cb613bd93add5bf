"""Run the built image's own command and talk to it, inside a private network namespace.

tests/deploy/test_dockerfile_build.py starts this module under `unshare -n`, so the
server's port 8000 (the image's default) can collide with nothing on the host:

    unshare -n python -m tests.support.image_smoke <buildah argv as JSON> <image>

It brings loopback up, runs the image's ENTRYPOINT + CMD with `buildah run` (which
applies the image's user, environment and working directory), makes requests, runs
the HEALTHCHECK command in the same container, stops the server the way a container
runtime does (SIGTERM to the process the entrypoint started) and prints one JSON object
with what it saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BASE = "http://127.0.0.1:8000"


def wait_ready(process: subprocess.Popen[str], timeout_s: float = 90) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(BASE + "/healthz", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("no /healthz within the timeout")


def processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, argv[0]) for every process visible here."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        table[int(entry.name)] = (parent, argv0)
    return table


def descendants(root: int) -> list[int]:
    table = processes()
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, (parent, _) in table.items() if parent in frontier]
        found += children
        frontier = children
    return found


def entrypoint_pid(runner: int) -> int:
    """The entrypoint's process (gunicorn's master), which a container runtime would
    signal: under `buildah run`, the child of buildah's chroot exec helper."""
    table = processes()
    for pid in descendants(runner):
        if table.get(table.get(pid, (0, b""))[0], (0, b""))[1] == b"buildah-chroot-exec":
            return pid
    raise RuntimeError("no process under buildah-chroot-exec")


def changed_files(root: Path, since: float) -> list[str]:
    """Paths in the container's file system modified after `since` (volumes excluded:
    buildah run mounts the image's VOLUMEs from elsewhere)."""
    changed = []
    for path in root.rglob("*"):
        try:
            if path.lstat().st_mtime > since:
                changed.append("/" + str(path.relative_to(root)))
        except OSError:
            continue
    return sorted(changed)


def main(buildah: list[str], image: str) -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    config = json.loads(subprocess.run([*buildah, "inspect", "--type", "image", image],
                                       capture_output=True, text=True, check=True).stdout)
    image_config = config["Docker"]["config"]
    command = image_config["Entrypoint"] + image_config["Cmd"]
    healthcheck = image_config["Healthcheck"]["Test"]
    container = subprocess.run([*buildah, "from", "--pull=false", image],
                               capture_output=True, text=True, check=True).stdout.strip()
    seen: dict[str, Any] = {"command": command, "healthcheck": healthcheck}
    root = Path(subprocess.run([*buildah, "mount", container], capture_output=True, text=True,
                               check=True).stdout.strip())
    since = time.time()
    time.sleep(1.1)  # file systems with 1 s timestamps
    env = ["--env", "GRAPHGATE_ENV=development", "--env", "GRAPHGATE_DEMO__TOKEN_DELAY_MS=0"]
    try:
        server = subprocess.Popen([*buildah, "run", "--isolation", "chroot", *env, container,
                                   "--", *command],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen["ready_after_s"] = round(wait_ready(server), 1)
        seen["healthz"] = httpx.get(BASE + "/healthz").status_code
        seen["readyz"] = httpx.get(BASE + "/readyz").json()
        # development prints an ephemeral API key to stderr before gunicorn starts.
        key = ""
        while "ggk_dev_" not in key:
            key = server.stderr.readline() if server.stderr else "ggk_dev_"
        key = key.strip()
        chat = httpx.post(BASE + "/v1/chat", json={"message": "hello"},
                          headers={"X-API-Key": key}, timeout=30)
        seen["chat"] = {"status": chat.status_code, "reply": chat.json().get("reply", "")}
        metrics = httpx.get(BASE + "/metrics").text
        seen["metrics_has_requests"] = "graphgate_http_requests_total" in metrics
        check = subprocess.run([*buildah, "run", "--isolation", "chroot", container, "--",
                                *healthcheck[1:]], capture_output=True, text=True, check=False)
        seen["healthcheck_rc"] = check.returncode
        uid = subprocess.run([*buildah, "run", "--isolation", "chroot", container, "--",
                              "id", "-u"], capture_output=True, text=True, check=False)
        seen["uid"] = uid.stdout.strip()
        stop_started = time.monotonic()
        os.kill(entrypoint_pid(server.pid), signal.SIGTERM)
        _, errors = server.communicate(timeout=60)
        seen["stop_s"] = round(time.monotonic() - stop_started, 1)
        seen["exit_code"] = server.returncode
        seen["master_shut_down"] = "Shutting down: Master" in errors
        seen["changed_outside_volumes"] = changed_files(root, since)
    finally:
        if server.poll() is None:  # a failed check: stop everything this run started
            for pid in reversed(descendants(server.pid)):
                os.kill(pid, signal.SIGKILL)
            server.kill()
            server.wait()
        subprocess.run([*buildah, "rm", container], capture_output=True, check=False)
    return seen


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]), sys.argv[2])))
