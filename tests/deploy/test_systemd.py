"""deploy/systemd: the units pass `systemd-analyze verify` cleanly and stay hardened.

`systemd-analyze` runs for real, offline (no systemd as PID 1 is needed; it comes with
the `systemd` Debian package). verify reports unknown keys and bad values only as
warnings with exit code 0, so stderr must be empty too. It also insists that
ExecStart's binary exists, which /opt/graphgate/venv/bin/graphgate does not here: the
copies it checks run /bin/true instead (`--root=` did not find the units offline).

MemoryDenyWriteExecute= cannot be exercised without systemd, so the dependency test
applies the kernel's equivalent, prctl(PR_SET_MDWE), to a subprocess and serves a
request there.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service.settings import Settings
from service.settings.sections import ServerSettings
from tests.support.binaries import missing

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
UNITS = ("graphgate.service", "graphgate-migrate.service")
MAX_EXPOSURE = 2.0
EXPECTED_EXEC = {
    "graphgate.service": "/opt/graphgate/venv/bin/graphgate serve",
    "graphgate-migrate.service": "/opt/graphgate/venv/bin/graphgate migrate",
}
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        missing("systemd (systemd-analyze)")
    assert found is not None
    return found


def directives(unit: str) -> dict[str, list[str]]:
    """Key -> values, from the unit's non-comment lines (no continuation lines used)."""
    values: dict[str, list[str]] = {}
    for line in (SYSTEMD_DIR / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def comments(unit: str) -> str:
    lines = (SYSTEMD_DIR / unit).read_text().splitlines()
    return "\n".join(line for line in lines if line.lstrip().startswith("#"))


@pytest.fixture
def unit_copies(tmp_path: Path) -> Path:
    """The shipped units with ExecStart pointing at a binary that exists here."""
    for unit in UNITS:
        text = (SYSTEMD_DIR / unit).read_text()
        text, count = re.subn(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", text)
        assert count == 1, f"{unit}: expected exactly one ExecStart= line"
        (tmp_path / unit).write_text(text)
    return tmp_path


def analyze_security(unit_path: Path) -> tuple[float, str]:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes",
         f"--threshold={round(MAX_EXPOSURE * 10)}", "--no-pager", str(unit_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no overall exposure in the output:\n{result.stdout}\n{result.stderr}"
    score = float(match.group(1))
    # --threshold makes it exit 1 above the limit: both must agree.
    assert result.returncode == (0 if score <= MAX_EXPOSURE else 1), result.stderr
    return score, result.stdout


def test_verify_is_clean(unit_copies: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", "--no-pager",
         *(str(unit_copies / unit) for unit in UNITS)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_verify_catches_a_typo(unit_copies: Path) -> None:
    """The check above would notice a misspelt directive (a warning, exit code 0)."""
    unit = unit_copies / "graphgate.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilegs="))
    result = subprocess.run(
        [systemd_analyze(), "verify", "--no-pager",
         *(str(unit_copies / name) for name in UNITS)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert "NoNewPrivilegs" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_exec_start_is_the_shipped_command(unit: str) -> None:
    assert directives(unit)["ExecStart"] == [EXPECTED_EXEC[unit]]


@pytest.mark.parametrize("unit", UNITS)
def test_exposure_is_at_most_2(unit_copies: Path, unit: str) -> None:
    score, _ = analyze_security(unit_copies / unit)
    print(f"{unit}: systemd-analyze security exposure {score}")
    assert score <= MAX_EXPOSURE


@pytest.mark.parametrize("unit", UNITS)
def test_every_remaining_exposure_is_explained(unit_copies: Path, unit: str) -> None:
    """Each check still flagged (✗) is named, as `Directive=`, in a comment of the unit."""
    _, output = analyze_security(unit_copies / unit)
    flagged = [line.split()[1] for line in output.splitlines() if line.startswith("✗")]
    assert flagged, "expected some flagged checks (e.g. PrivateNetwork=) in the output"
    explained = comments(unit)
    for name in flagged:
        # `RootDirectory=/RootImage=`, `RestrictAddressFamilies=~AF_UNIX`: the first
        # directive name is what the comment must mention.
        directive = name.split("=", 1)[0]
        assert f"{directive}=" in explained, f"{unit}: {name} is flagged but not explained"


def test_service_lifecycle_settings() -> None:
    service = directives("graphgate.service")
    graceful = ServerSettings().graceful_timeout_s
    stop = service["TimeoutStopSec"][0]
    assert stop.isdigit() and int(stop) > graceful, "TimeoutStopSec must exceed the drain"
    assert service["KillMode"] == ["mixed"]
    assert service["Restart"] == ["on-failure"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["RestartPreventExitStatus"] == ["2"]  # cli.EXIT_CONFIG
    assert "graphgate-migrate.service" in service["Requires"][0]
    assert "graphgate-migrate.service" in service["After"][-1]
    migrate = directives("graphgate-migrate.service")
    assert migrate["Type"] == ["oneshot"]
    assert migrate["RemainAfterExit"] == ["yes"]
    assert migrate["Before"] == ["graphgate.service"]


def test_units_share_identity_and_hardening() -> None:
    service, migrate = directives("graphgate.service"), directives("graphgate-migrate.service")
    keys = ["User", "Group", "EnvironmentFile", "LoadCredential", "StateDirectory",
            "WorkingDirectory", "MemoryDenyWriteExecute", "SystemCallFilter",
            "ProtectSystem", "PrivateUsers", "IPAddressDeny", "IPAddressAllow", "UMask"]
    for key in keys:
        assert service[key] == migrate[key], key


def test_writable_paths_are_the_unit_directories() -> None:
    """ProtectSystem=strict: state and runtime files must live in the unit's directories."""
    service = directives("graphgate.service")
    env = dict(item.split("=", 1) for item in service["Environment"])
    assert service["ProtectSystem"] == ["strict"]
    assert env["GRAPHGATE_DATA_DIR"] == "%S/graphgate" and service["StateDirectory"] == [
        "graphgate"]
    assert service["RuntimeDirectory"] == ["graphgate"]
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("%t/graphgate/")
    assert env["GRAPHGATE_SERVER__WORKER_TMP_DIR"].startswith("%t/graphgate")


def test_credentials_are_settings() -> None:
    """Each LoadCredential= name is a settings file name the secrets dir understands."""
    names = [value.split(":", 1)[0] for value in directives("graphgate.service")[
        "LoadCredential"]]
    for name in names:
        top = name.split("__")[0]
        assert top in Settings.model_fields, name
    assert {"database_url", "auth__jwt__secret", "metrics__token"} <= set(names)


def test_env_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example env file's variables are real settings with valid values."""
    for key in list(os.environ):
        if key.startswith("GRAPHGATE_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)
    for line in (SYSTEMD_DIR / "graphgate.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.env == "production"
    assert settings.server.workers == 2
    assert settings.server.graceful_timeout_s < int(
        directives("graphgate.service")["TimeoutStopSec"][0])


# ---- MemoryDenyWriteExecute ------------------------------------------------------------

MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, sys

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({set_mdwe}, {refuse}, 0, 0, 0) != 0:
        print("prctl-refused", ctypes.get_errno())
        sys.exit(3)
    if libc.prctl({get_mdwe}, 0, 0, 0, 0) != {refuse}:
        print("prctl-not-applied")
        sys.exit(3)

    # The heavy dependencies, native parts included.
    import psycopg, psycopg_binary  # noqa: F401
    import cryptography.hazmat.primitives.asymmetric.ec as ec
    import jose.jwt, pydantic_core, orjson, uvloop, httptools  # noqa: F401
    import langgraph.graph, prometheus_client  # noqa: F401

    ec.generate_private_key(ec.SECP256R1())
    token = jose.jwt.encode({{"sub": "x"}}, "k" * 32, algorithm="HS256")
    assert jose.jwt.decode(token, "k" * 32, algorithms=["HS256"])["sub"] == "x"
    assert orjson.loads(orjson.dumps({{"a": 1}})) == {{"a": 1}}
    uvloop.new_event_loop().close()

    # The real app, on SQLite, through its lifespan: /healthz, /readyz and a demo run.
    from fastapi.testclient import TestClient
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        env="development", database_url="sqlite:///" + sys.argv[1],
        auth={{"enabled": False}}, rate_limit={{"enabled": False}},
        demo={{"token_delay_ms": 0, "reply_tokens": 4}},
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        chat = client.post("/v1/chat", json={{"message": "hello"}})
        assert chat.status_code == 200, chat.text
    print("mdwe-ok")
    """
)


def test_dependencies_work_under_memory_deny_write_execute(tmp_path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "prctl"):
        pytest.skip("no prctl() in this libc")
    script = MDWE_PROBE.format(set_mdwe=PR_SET_MDWE, get_mdwe=PR_SET_MDWE + 1,
                               refuse=PR_MDWE_REFUSE_EXEC_GAIN)
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "graphgate.sqlite")],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    if result.returncode == 3 and "prctl-" in result.stdout:
        # A kernel feature (Linux 6.3+), not a missing binary: skip even in CI.
        pytest.skip(f"the kernel does not support PR_SET_MDWE ({result.stdout.strip()})")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mdwe-ok" in result.stdout


def test_mdwe_probe_would_notice_a_jit() -> None:
    """The prctl really is enforced: making anonymous memory executable fails."""
    script = textwrap.dedent(
        f"""
        import ctypes, mmap, sys
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
            sys.exit(3)
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except OSError:
            sys.exit(0)
        sys.exit(1)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    if result.returncode == 3:
        pytest.skip("the kernel does not support PR_SET_MDWE")
    assert result.returncode == 0, "an RWX mapping succeeded under PR_SET_MDWE"
