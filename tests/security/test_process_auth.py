"""Auth as operators run it: `graphgate serve` processes, the development key, SIGHUP."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import KEY_SPECS, KeyRing, write_keys_file
from tests.support.servers import ProcessServer

DEV_KEY = re.compile(r"ggk_dev_[0-9A-Za-z]{43}_[0-9A-Za-z]{6}")


@pytest.mark.slow
def test_development_without_auth_config_prints_a_working_key(tmp_path: Path) -> None:
    """`make run`'s situation: development, auth on, nothing configured."""
    server = ProcessServer({"GRAPHGATE_AUTH__ENABLED": "true"}, cwd=tmp_path).start()
    try:
        keys = DEV_KEY.findall(server.output())
        assert len(keys) == 1, server.output()
        assert httpx.get(server.url + "/v1/threads").status_code == 401
        ok = httpx.post(server.url + "/v1/chat", json={"message": "hi"},
                        headers={"X-API-Key": keys[0]}, timeout=30)
        assert ok.status_code == 200
        # Printed once, on the terminal; the request logs never repeat it.
        assert server.output().count(keys[0]) == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_development_key_is_shared_by_gunicorn_workers(tmp_path: Path) -> None:
    server = ProcessServer({"GRAPHGATE_AUTH__ENABLED": "true"}, "--workers", "2",
                           cwd=tmp_path).start()
    try:
        keys = DEV_KEY.findall(server.output())
        assert len(keys) == 1, server.output()
        statuses = set()
        for _ in range(20):  # new connections, so both workers answer some
            with httpx.Client() as client:
                statuses.add(client.get(server.url + "/v1/threads",
                                        headers={"X-API-Key": keys[0]}).status_code)
        assert statuses == {200}
    finally:
        server.stop()


@pytest.mark.slow
def test_sighup_reloads_the_keys_file(keyring: KeyRing, tmp_path: Path) -> None:
    """Revocation is removing the entry, then SIGHUP (or a restart)."""
    env = {"GRAPHGATE_ENV": "production", "GRAPHGATE_AUTH__ENABLED": "true",
           "GRAPHGATE_AUTH__API_KEYS_FILE": str(keyring.path)}
    server = ProcessServer(env, cwd=tmp_path).start()
    try:
        alice, bob = keyring["alice"], keyring["bob"]
        assert httpx.get(server.url + "/v1/threads", headers=bob.headers).status_code == 200
        kept = {name: c for name, c in keyring.callers.items() if name != "bob"}
        write_keys_file(keyring.path, kept, KEY_SPECS)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/v1/threads", headers=bob.headers).status_code != 401:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        assert httpx.get(server.url + "/v1/threads", headers=alice.headers).status_code == 200
        # A broken file on reload keeps the keys in force rather than locking everyone out.
        keyring.path.write_text("[[keys]\nbroken")
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert httpx.get(server.url + "/v1/threads", headers=alice.headers).status_code == 200
        assert server.proc.poll() is None
        assert "api_keys_reload_failed" in server.output()
    finally:
        assert server.stop() == 0, server.output()


@pytest.mark.slow
def test_sighup_under_gunicorn_keeps_the_last_good_keys(keyring: KeyRing, tmp_path: Path) -> None:
    """gunicorn replaces its workers on SIGHUP; the master re-reads the keys file, and a
    broken file leaves the last good keys in force instead of halting the service."""
    env = {"GRAPHGATE_ENV": "production", "GRAPHGATE_AUTH__ENABLED": "true",
           "GRAPHGATE_AUTH__API_KEYS_FILE": str(keyring.path)}
    server = ProcessServer(env, "--workers", "2", cwd=tmp_path).start()
    assert server.proc is not None
    alice, bob = keyring["alice"], keyring["bob"]

    def status(headers: dict[str, str]) -> int:
        with httpx.Client() as client:  # a new connection: any worker may answer
            return client.get(server.url + "/v1/threads", headers=headers).status_code

    def status_or_zero(headers: dict[str, str]) -> int:
        try:
            return status(headers)
        except httpx.TransportError:
            return 0

    try:
        assert status(bob.headers) == 200
        kept = {name: c for name, c in keyring.callers.items() if name != "bob"}
        write_keys_file(keyring.path, kept, KEY_SPECS)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        # Revoked once every worker is new: several 401s in a row. While gunicorn swaps
        # workers, a connection an old worker accepted as it stopped may be closed unanswered
        # (a proxy retries those); that counts as "not yet".
        while [status_or_zero(bob.headers) for _ in range(6)] != [401] * 6:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        keyring.path.write_text("[[keys]\nbroken")
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(3)
        assert server.proc.poll() is None, server.output()
        # The second swap has settled once new connections are answered again.
        deadline = time.monotonic() + 20
        while 0 in [status_or_zero(alice.headers) for _ in range(6)]:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        assert [status(alice.headers) for _ in range(6)] == [200] * 6
        assert [status(bob.headers) for _ in range(6)] == [401] * 6
        assert "api_keys_reload_failed" in server.output()
    finally:
        assert server.stop() == 0, server.output()
