"""API keys: format and checksum, the hashed keys file, verification, reload, the CLI."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from service.security import api_keys
from service.security.api_keys import (
    KEY_PREFIX,
    ApiKeyEntry,
    KeyStore,
    ReloadableKeyStore,
    generate_key,
    hash_key,
    looks_like_api_key,
)
from service.security.keys_cli import add_keys_parser, run_keys_command
from service.security.principal import ALL_SCOPES, AuthFailure, Principal
from service.settings import ConfigError

SCANNER_PATTERN = re.compile(r"ggk_[a-z0-9-]+_[0-9A-Za-z]{43}_[0-9A-Za-z]{6}")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="graphgate")
    add_keys_parser(root.add_subparsers(dest="command", required=True))
    return root


def create(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run_keys_command(parser().parse_args(["keys", "create", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


def created_key(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    """(key, [[keys]] block) from `graphgate keys create`."""
    code, out, err = create(capsys, *argv)
    assert code == 0, err
    first, _, rest = out.partition("\n")
    assert first.startswith("key: ")
    assert "shown once" in rest
    return first.removeprefix("key: "), rest[rest.index("# created"):]


def entry_toml(key: str, key_id: str | None = None, **fields: Any) -> str:
    key_id = key_id or key.split("_")[1]
    values = {"tenant": "acme", "name": "ci", "scopes": ["threads:read"], **fields}
    lines = ["[[keys]]", f'id = "{key_id}"', f'hash = "{hash_key(key)}"']
    # JSON strings and arrays of them are valid TOML for the ASCII values used here.
    lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return path


# -- format ---------------------------------------------------------------------------------


def test_generated_keys_have_scanner_format_and_are_unique() -> None:
    """Fixed shape (for secret scanners), 12-hex ids, no repeats over many keys."""
    keys = [generate_key() for _ in range(2000)]
    for key_id, key in keys:
        assert SCANNER_PATTERN.fullmatch(key)
        assert re.fullmatch(r"[0-9a-f]{12}", key_id)
        assert key.startswith(f"{KEY_PREFIX}{key_id}_")
        assert looks_like_api_key(key)
        assert api_keys.parse_key_id(key) == key_id
    assert len({key for _, key in keys}) == len(keys)
    assert len({key_id for key_id, _ in keys}) == len(keys)
    # The secret part carries ~256 bits: over many keys every base62 symbol turns up.
    secrets_text = "".join(key.split("_")[2] for _, key in keys)
    assert set(secrets_text) == set(api_keys.BASE62)


def test_hash_key_format() -> None:
    _, key = generate_key()
    assert hash_key(key) == "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_looks_like_api_key() -> None:
    assert looks_like_api_key("ggk_abc")
    assert not looks_like_api_key("eyJhbGciOiJIUzI1NiJ9.e30.sig")
    assert not looks_like_api_key("")


# -- verification ---------------------------------------------------------------------------


@pytest.fixture
def store_and_key(tmp_path: Path) -> tuple[KeyStore, str]:
    _, key = generate_key()
    store = KeyStore.load(write(tmp_path, entry_toml(key, rate_limit="100/minute")))
    return store, key


def reason(store: KeyStore | ReloadableKeyStore, key: str, now: datetime | None = None) -> str:
    with pytest.raises(AuthFailure) as info:
        store.verify(key, now)
    return info.value.reason


def test_verify_returns_principal(store_and_key: tuple[KeyStore, str]) -> None:
    store, key = store_and_key
    key_id = key.split("_")[1]
    assert store.verify(key) == Principal(
        tenant="acme", subject="ci", method="api_key", key_id=key_id,
        scopes=frozenset({"threads:read"}), rate_limit="100/minute",
    )


def test_every_single_character_change_is_refused(store_and_key: tuple[KeyStore, str]) -> None:
    """Flip each character to every other plausible one: never accepted."""
    store, key = store_and_key
    alphabet = api_keys.BASE62 + "_-. é\x00"
    for index, original in enumerate(key):
        for replacement in alphabet:
            if replacement == original:
                continue
            mutated = key[:index] + replacement + key[index + 1:]
            assert reason(store, mutated) in ("malformed_key", "invalid_key")
    for mutated in (key[:-1], key + "0", key + "\n", " " + key, key.upper(), ""):
        assert reason(store, mutated) in ("malformed_key", "invalid_key")


def test_bad_checksum_refused_without_comparing(
    store_and_key: tuple[KeyStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Typos and forgeries stop at the checksum: no lookup, no digest comparison."""
    store, key = store_and_key
    calls: list[object] = []

    def spy(*args: object) -> bool:
        calls.append(args)
        return False

    monkeypatch.setattr(hmac, "compare_digest", spy)
    monkeypatch.setattr(store, "_by_id", _Spy())
    wrong_checksum = key[:-6] + ("000000" if not key.endswith("000000") else "000001")
    for bad in (wrong_checksum, key[:-1], "ggk_" + "x" * 200, "not-a-key"):
        assert reason(store, bad) == "malformed_key"
    assert calls == []


class _Spy(dict[str, ApiKeyEntry]):
    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("entries were looked up for a malformed key")


def _forge(key_id: str) -> str:
    """A well-formed key (valid checksum) with a random secret."""
    _, other = generate_key()
    body = f"{KEY_PREFIX}{key_id}_{other.split('_')[2]}"
    return f"{body}_{api_keys._checksum(body)}"


def test_wrong_secret_and_unknown_id_look_the_same(
    store_and_key: tuple[KeyStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both give "invalid_key", and both pay for one constant-time digest comparison."""
    store, key = store_and_key
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    wrong_secret = _forge(key.split("_")[1])
    unknown_id = _forge("0123456789ab")
    assert reason(store, wrong_secret) == reason(store, unknown_id) == "invalid_key"
    assert len(compared) == 2
    assert all(len(a) == len(b) == 32 for a, b in compared)


def test_expired_key(tmp_path: Path) -> None:
    _, key = generate_key()
    store = KeyStore.load(write(tmp_path, entry_toml(key, expires_at="2030-01-01T00:00:00Z")))
    before = datetime(2029, 12, 31, 23, 59, tzinfo=UTC)
    assert store.verify(key, now=before).tenant == "acme"
    assert reason(store, key, now=datetime(2030, 1, 1, tzinfo=UTC)) == "expired_key"
    # An expired key with the wrong secret says nothing about expiry.
    assert reason(store, _forge(key.split("_")[1]), now=datetime(2031, 1, 1, tzinfo=UTC)) == (
        "invalid_key"
    )


def test_expiry_as_toml_datetime(tmp_path: Path) -> None:
    _, key = generate_key()
    past = datetime.now(UTC) - timedelta(seconds=1)
    # A TOML offset date-time (unquoted), as `graphgate keys create` writes it.
    store = KeyStore.load(write(tmp_path, entry_toml(key) + f"expires_at = {past.isoformat()}\n"))
    assert reason(store, key) == "expired_key"


def test_wildcard_scope(tmp_path: Path) -> None:
    _, key = generate_key()
    principal = KeyStore.load(write(tmp_path, entry_toml(key, scopes=["*"]))).verify(key)
    assert all(principal.has_scope(scope) for scope in ALL_SCOPES)
    assert principal.rate_limit is None


def test_empty_store_and_empty_file(tmp_path: Path) -> None:
    _, key = generate_key()
    for store in (KeyStore.empty(), KeyStore.load(write(tmp_path, ""))):
        assert len(store) == 0 and store.ids == ()
        assert reason(store, key) == "invalid_key"


def test_audit_view_has_no_hashes(tmp_path: Path) -> None:
    _, key = generate_key()
    store = KeyStore.load(write(tmp_path, entry_toml(key, expires_at="2030-01-01T00:00:00Z")))
    assert store.ids == (key.split("_")[1],)
    (entry,) = store.entries
    assert entry == {"id": key.split("_")[1], "tenant": "acme", "name": "ci",
                     "scopes": ["threads:read"], "rate_limit": None,
                     "expires_at": "2030-01-01T00:00:00+00:00"}
    digest_hex = hash_key(key).removeprefix("sha256:")
    assert digest_hex not in repr(store.entries) and digest_hex not in repr(store._by_id)


# -- keys file errors -----------------------------------------------------------------------

_, KEY = generate_key()
KEY_ID = KEY.split("_")[1]
GOOD = entry_toml(KEY)

BAD_FILES = {
    "invalid TOML": (GOOD + "this is = = not toml\n", "invalid TOML"),
    "not UTF-8": (None, "not UTF-8"),
    "unknown field": (GOOD + 'secret = "x"\n', "unknown field 'secret'"),
    "pasted key as field": (GOOD + f'{KEY} = "x"\n', "unknown field (unprintable name)"),
    "keys not array": ("[keys]\n" + GOOD.replace("[[keys]]\n", ""),
                       "must be an array of tables"),
    "unknown top level": (GOOD + '[[key]]\nid = "x"\n', "unknown top-level entry 'key'"),
    "key as top level": (f'{KEY} = 1\n' + GOOD, "unknown top-level entry (unprintable name)"),
    "bad id": (GOOD.replace(f'id = "{KEY_ID}"', 'id = "Has_Underscore"'), "keys[0]: id must"),
    "key as id": (GOOD.replace(f'id = "{KEY_ID}"', f'id = "{KEY}"'), "keys[0]: id must"),
    "missing id": (GOOD.replace(f'id = "{KEY_ID}"\n', ""), "keys[0]: id must"),
    "duplicate id": (GOOD + GOOD, f"keys[1] (id '{KEY_ID}'): duplicate id"),
    "md5 hash": (GOOD.replace("sha256:", "md5:"), "hash must be"),
    "short hash": (GOOD.replace(hash_key(KEY), hash_key(KEY)[:-1]), "hash must be"),
    "raw key as hash": (GOOD.replace(hash_key(KEY), KEY), "hash must be"),
    "missing hash": (GOOD.replace(f'hash = "{hash_key(KEY)}"\n', ""), "hash is missing"),
    "empty tenant": (GOOD.replace('tenant = "acme"', 'tenant = " "'), "tenant must not be empty"),
    "empty name": (GOOD.replace('name = "ci"', 'name = ""'), "name must not be empty"),
    "control char": (GOOD.replace('name = "ci"', 'name = "c\\u001bi"'), "name must not contain"),
    "scopes not list": (GOOD.replace('["threads:read"]', '"threads:read"'), "scopes must be"),
    "unknown scope": (GOOD.replace('"threads:read"', '"thread:read"'), "unknown scope"),
    # /metrics has its own [metrics] token now; a key granting metrics:read is refused.
    "removed metrics scope": (
        GOOD.replace('["threads:read"]', '["threads:read", "metrics:read"]'),
        "unknown scope 'metrics:read' (/metrics no longer takes API keys; see [metrics] token",
    ),
    "bad rate limit": (GOOD + 'rate_limit = "lots"\n', "rate_limit 'lots' is not a rate"),
    "naive expiry": (GOOD + "expires_at = 2030-01-01T00:00:00\n", "needs a timezone"),
    "naive expiry string": (GOOD + 'expires_at = "2030-01-01T00:00:00"\n', "needs a timezone"),
    "date expiry": (GOOD + "expires_at = 2030-01-01\n", "a date without a time"),
    "garbage expiry": (GOOD + 'expires_at = "soon"\n', "not an RFC 3339"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_keys_file(tmp_path: Path, case: str) -> None:
    text, expected = BAD_FILES[case]
    path = tmp_path / "keys.toml"
    if text is None:
        path.write_bytes(GOOD.encode() + b'# \xff\xfe\n')
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        KeyStore.load(path)
    message = str(info.value)
    assert expected in message
    assert message.startswith(f"{path}: ") and "\n" not in message
    digest_hex = hash_key(KEY).removeprefix("sha256:")
    for secret in (KEY, KEY.split("_")[2], digest_hex[:16]):
        assert secret not in message


def test_missing_keys_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"keys\.toml: cannot read API keys file"):
        KeyStore.load(tmp_path / "keys.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        KeyStore.load(tmp_path)  # a directory


def test_uppercase_hex_hash_accepted(tmp_path: Path) -> None:
    store = KeyStore.load(write(tmp_path, GOOD.replace(hash_key(KEY), hash_key(KEY).upper()
                                                       .replace("SHA256:", "sha256:"))))
    assert store.verify(KEY).key_id == KEY_ID


# -- reload ---------------------------------------------------------------------------------


def test_reload_keeps_old_store_on_error_and_applies_revocation(tmp_path: Path) -> None:
    _, other = generate_key()
    path = write(tmp_path, GOOD + entry_toml(other))
    keys = ReloadableKeyStore(path)
    assert keys.verify(KEY).key_id == KEY_ID

    path.write_text(GOOD + "broken = = \n")
    with capture_logs() as logs:
        assert keys.reload() is False
    assert logs[0]["event"] == "api_keys_reload_failed"
    assert str(path) in logs[0]["reason"] and KEY not in str(logs)
    assert keys.verify(KEY).key_id == KEY_ID and keys.verify(other)

    path.write_text(entry_toml(other))  # revoke KEY by deleting its entry
    with capture_logs() as logs:
        assert keys.reload() is True
    assert logs == [{"event": "api_keys_reloaded", "count": 1, "log_level": "info"}]
    assert reason(keys, KEY) == "invalid_key"
    assert keys.verify(other).tenant == "acme"
    assert keys.current.ids == (other.split("_")[1],)

    path.unlink()
    assert keys.reload() is False
    assert keys.verify(other).tenant == "acme"


def test_reloadable_store_fails_fast_on_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ReloadableKeyStore(tmp_path / "absent.toml")


# -- CLI ------------------------------------------------------------------------------------


def test_cli_round_trip_through_keys_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """create → append the printed entry to a keys file → load → the key verifies."""
    path = write(tmp_path, entry_toml(generate_key()[1]))
    key, block = created_key(capsys, "--tenant", 'Acme "EU" \\ Ltd', "--name", "ci bot",
                             "--scopes", "threads:read,runs:create", "threads:write",
                             "--rate-limit", "100/minute;1000/hour",
                             "--expires-at", "2999-01-01T00:00:00+02:00")
    assert SCANNER_PATTERN.fullmatch(key)
    assert key not in block
    (entry,) = tomllib.loads(block)["keys"]
    assert entry == {
        "id": key.split("_")[1], "hash": hash_key(key), "tenant": 'Acme "EU" \\ Ltd',
        "name": "ci bot", "scopes": ["runs:create", "threads:read", "threads:write"],
        "rate_limit": "100/minute;1000/hour",
        "expires_at": datetime(2999, 1, 1, tzinfo=UTC) + timedelta(hours=-2),
    }
    with path.open("a") as file:
        file.write("\n" + block)
    principal = KeyStore.load(path).verify(key)
    assert principal.tenant == 'Acme "EU" \\ Ltd' and principal.key_id == key.split("_")[1]
    assert principal.scopes == {"runs:create", "threads:read", "threads:write"}
    assert principal.rate_limit == "100/minute;1000/hour"


def test_cli_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, block = created_key(capsys, "--tenant", "t", "--name", "n")
    (entry,) = tomllib.loads(block)["keys"]
    assert entry["scopes"] == ["runs:create", "threads:read", "threads:write"]
    assert "rate_limit" not in entry and "expires_at" not in entry
    assert KeyStore.load(write(tmp_path, block)).verify(key).subject == "n"


def test_cli_wildcard(capsys: pytest.CaptureFixture[str]) -> None:
    _, block = created_key(capsys, "--tenant", "t", "--name", "n", "--scopes", "*")
    assert tomllib.loads(block)["keys"][0]["scopes"] == ["*"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["--tenant", "", "--name", "n"], "--tenant must not be empty"),
    (["--tenant", "t", "--name", "a\nb"], "--name must not contain"),
    (["--tenant", "t", "--name", "n", "--scopes", "threads:delete"], "unknown scope"),
    (["--tenant", "t", "--name", "n", "--scopes", "threads:read", "metrics:read"],
     "unknown scope 'metrics:read': /metrics no longer takes API keys"),
    (["--tenant", "t", "--name", "n", "--scopes", ","], "at least one scope"),
    (["--tenant", "t", "--name", "n", "--rate-limit", "fast"], "--rate-limit"),
    (["--tenant", "t", "--name", "n", "--expires-at", "2030-01-01T00:00:00"], "timezone"),
    (["--tenant", "t", "--name", "n", "--expires-at", "tomorrow"], "RFC 3339"),
    (["--tenant", "t", "--name", "n", "--expires-at", "2000-01-01T00:00:00Z"], "in the past"),
])
def test_cli_rejects_bad_input(capsys: pytest.CaptureFixture[str], argv: list[str],
                               expected: str) -> None:
    code, out, err = create(capsys, *argv)
    assert code == 2 and out == ""
    assert expected in err and err.count("\n") == 1


def test_cli_requires_tenant_and_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["keys", "create", "--tenant", "t"])
    assert info.value.code == 2
    capsys.readouterr()
