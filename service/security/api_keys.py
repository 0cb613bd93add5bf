"""API keys: format, generation, the hashed keys file, and verification.

A key looks like ``ggk_<id>_<secret>_<checksum>``. The fixed prefix and shape let secret
scanners find leaked keys; the CRC32 checksum lets a typo or a made-up key be refused
before any lookup. The file holds only ``sha256(key)``: the secret has 256 random bits,
so a fast unsalted hash cannot be brute-forced, and a stolen file grants nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import threading
import tomllib
import unicodedata
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog

from service.security.principal import ALL_SCOPES, WILDCARD, AuthFailure, Principal
from service.settings.security import check_limit_string
from service.settings.sources import ConfigError

KEY_PREFIX = "ggk_"
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
SECRET_BYTES = 32
SECRET_CHARS = 43  # 62**43 > 2**256: every 32-byte secret fits, zero-padded to fixed width
CHECKSUM_CHARS = 6  # 62**6 > 2**32
ID_PATTERN = re.compile(r"[a-z0-9-]{1,64}")
# No `_` in any part, so the three parts split unambiguously.
KEY_PATTERN = re.compile(
    rf"{KEY_PREFIX}(?P<id>[a-z0-9-]{{1,64}})_(?P<secret>[0-9A-Za-z]{{{SECRET_CHARS}}})"
    rf"_(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_CHARS}}})"
)
MAX_KEY_LENGTH = len(KEY_PREFIX) + 64 + 1 + SECRET_CHARS + 1 + CHECKSUM_CHARS
HASH_PREFIX = "sha256:"
_HASH_PATTERN = re.compile(r"sha256:[0-9a-fA-F]{64}")
ENTRY_FIELDS = frozenset({"id", "hash", "tenant", "name", "scopes", "rate_limit", "expires_at"})
REQUIRED_FIELDS = ("id", "hash", "tenant", "name", "scopes")
# Scopes earlier versions granted: refused like any unknown scope, with a pointer onward.
REMOVED_SCOPES = {
    "metrics:read": "/metrics no longer takes API keys; see [metrics] token and port",
}

log = structlog.get_logger("graphgate.auth")


def removed_scope_hint(scopes: Iterable[str]) -> str:
    """` (why)` for scopes that were removed, to append to an unknown-scope error; else ""."""
    hints = [REMOVED_SCOPES[scope] for scope in scopes if scope in REMOVED_SCOPES]
    return f" ({'; '.join(hints)})" if hints else ""


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(BASE62[digit])
    if number:
        raise ValueError("number does not fit the width")  # pragma: no cover - sizes above
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_CHARS)


def generate_key(key_id: str | None = None) -> tuple[str, str]:
    """A new (key_id, key). The key is the only copy of the secret: show it once."""
    key_id = key_id or secrets.token_hex(6)
    secret = _base62(int.from_bytes(secrets.token_bytes(SECRET_BYTES), "big"), SECRET_CHARS)
    body = f"{KEY_PREFIX}{key_id}_{secret}"
    return key_id, f"{body}_{_checksum(body)}"


def hash_key(key: str) -> str:
    """The keys file's `hash` value for `key`."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def looks_like_api_key(text: str) -> bool:
    """Cheap test for telling an API key from a JWT in `Authorization: Bearer …`."""
    return text.startswith(KEY_PREFIX)


def parse_key_id(key: str) -> str | None:
    """The id of a well-formed key with a correct checksum, else None. No lookups."""
    if len(key) > MAX_KEY_LENGTH:
        return None
    match = KEY_PATTERN.fullmatch(key)
    if match is None:
        return None
    body = key[: match.start("checksum") - 1]
    # The checksum is public (derived from the key's text); plain comparison is fine.
    if _checksum(body) != match["checksum"]:
        return None
    return match["id"]


def text_problem(value: str) -> str | None:
    """Why `value` is unfit as a tenant or name (these reach logs and storage keys)."""
    if not value.strip():
        return "must not be empty"
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        return "must not contain control or format characters"
    return None


@dataclass(frozen=True)
class ApiKeyEntry:
    """One `[[keys]]` entry, validated."""

    id: str
    digest: bytes = field(repr=False)  # sha256(key); never logged or printed
    tenant: str
    name: str
    scopes: frozenset[str]
    rate_limit: str | None = None
    expires_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        """Everything an audit may show: no hash."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "rate_limit": self.rate_limit,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


class _EntryError(Exception):
    """One entry is invalid; the message never holds a hash or a key."""


def _safe_name(name: str) -> str:
    # Field names are echoed only if they look like field names: a pasted key must not be.
    return repr(name) if re.fullmatch(r"[a-z_]{1,32}", name) else "(unprintable name)"


def _parse_expiry(value: object) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise _EntryError("expires_at is not an RFC 3339 date-time") from None
    if not isinstance(value, datetime):
        # A bare TOML date (a `date`) would leave the time and zone to guesswork.
        kind = "a date without a time" if isinstance(value, date) else "not a date-time"
        raise _EntryError(f"expires_at is {kind}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _EntryError("expires_at needs a timezone (e.g. 2030-01-01T00:00:00Z)")
    return value


def _parse_entry(raw: Mapping[str, Any]) -> ApiKeyEntry:
    unknown = sorted(set(raw) - ENTRY_FIELDS)
    if unknown:
        raise _EntryError("unknown field " + ", ".join(_safe_name(n) for n in unknown))
    for name in REQUIRED_FIELDS:
        if name not in raw:
            raise _EntryError(f"{name} is missing")
    for name in ("hash", "tenant", "name"):
        if not isinstance(raw[name], str):
            raise _EntryError(f"{name} must be a string")
    if not _HASH_PATTERN.fullmatch(raw["hash"]):
        raise _EntryError('hash must be "sha256:" followed by 64 hex digits')
    for name in ("tenant", "name"):
        problem = text_problem(raw[name])
        if problem:
            raise _EntryError(f"{name} {problem}")
    scopes = raw["scopes"]
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise _EntryError("scopes must be a list of strings")
    # A misspelt scope would silently grant nothing; refuse it so the operator notices.
    bad = sorted(set(scopes) - {*ALL_SCOPES, WILDCARD})
    if bad:
        raise _EntryError(f"unknown scope {', '.join(map(repr, bad))}{removed_scope_hint(bad)}")
    rate_limit = raw.get("rate_limit")
    if rate_limit is not None:
        if not isinstance(rate_limit, str):
            raise _EntryError("rate_limit must be a string like '100/minute'")
        try:
            check_limit_string(rate_limit)
        except ValueError as exc:
            raise _EntryError(f"rate_limit {exc}") from None
    expires_at = raw.get("expires_at")
    return ApiKeyEntry(
        id=raw["id"],
        digest=bytes.fromhex(raw["hash"].removeprefix(HASH_PREFIX)),
        tenant=raw["tenant"],
        name=raw["name"],
        scopes=frozenset(scopes),
        rate_limit=rate_limit,
        expires_at=None if expires_at is None else _parse_expiry(expires_at),
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read API keys file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: API keys file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages name a position, not the text found there.
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


class KeyStore:
    """The valid API keys, by id. Immutable: a reload builds a new store."""

    def __init__(self, entries: Mapping[str, ApiKeyEntry]) -> None:
        self._by_id = dict(entries)
        # Unknown ids are compared against this, so they cost what a wrong secret does.
        self._dummy = secrets.token_bytes(hashlib.sha256().digest_size)

    @classmethod
    def empty(cls) -> KeyStore:
        return cls({})

    @classmethod
    def load(cls, path: Path) -> KeyStore:
        """Read and validate a keys file; ConfigError (one line, no secrets) if it is bad."""
        document = _read_toml(path)
        extra = sorted(set(document) - {"keys"})
        if extra:
            names = ", ".join(_safe_name(n) for n in extra)
            raise ConfigError(f"{path}: unknown top-level entry {names} (expected [[keys]])")
        raw_entries = document.get("keys", [])
        if not isinstance(raw_entries, list):
            raise ConfigError(f"{path}: `keys` must be an array of tables ([[keys]])")
        entries: dict[str, ApiKeyEntry] = {}
        for index, raw in enumerate(raw_entries):
            where = f"{path}: keys[{index}]"
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: must be a table ([[keys]])")
            key_id = raw.get("id")
            if not isinstance(key_id, str) or not ID_PATTERN.fullmatch(key_id):
                # Not echoed: a mis-pasted key could sit here.
                raise ConfigError(f"{where}: id must match ^[a-z0-9-]{{1,64}}$")
            where = f"{where} (id {key_id!r})"
            if key_id in entries:
                raise ConfigError(f"{where}: duplicate id")
            try:
                entries[key_id] = _parse_entry(raw)
            except _EntryError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        return cls(entries)

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_id))

    @property
    def entries(self) -> tuple[dict[str, Any], ...]:
        """Audit view of every key, sorted by id: no hashes."""
        return tuple(self._by_id[key_id].public() for key_id in self.ids)

    def verify(self, key: str, now: datetime | None = None) -> Principal:
        """The principal for `key`, or AuthFailure with a reason for logs and metrics."""
        key_id = parse_key_id(key)
        if key_id is None:
            raise AuthFailure("malformed_key")
        entry = self._by_id.get(key_id)
        presented = hashlib.sha256(key.encode()).digest()
        matches = hmac.compare_digest(presented, entry.digest if entry else self._dummy)
        if entry is None or not matches:
            raise AuthFailure("invalid_key")
        # Checked only after the secret matched, so expiry reveals nothing to guessers.
        if entry.expires_at is not None and entry.expires_at <= (now or datetime.now(UTC)):
            raise AuthFailure("expired_key")
        return Principal(
            tenant=entry.tenant,
            # The key's name is the client: a rotated key (new id, same tenant and name)
            # keeps owning the client's threads.
            subject=entry.name,
            method="api_key",
            key_id=entry.id,
            scopes=entry.scopes,
            rate_limit=entry.rate_limit,
        )


class ReloadableKeyStore:
    """The keys file's current contents; `reload()` (on SIGHUP) applies edits."""

    def __init__(self, path: Path, store: KeyStore | None = None) -> None:
        self.path = path
        # Loading here makes a bad file stop start-up with its ConfigError.
        self._store = store if store is not None else KeyStore.load(path)
        self._lock = threading.Lock()

    @property
    def current(self) -> KeyStore:
        return self._store

    def reload(self) -> bool:
        """Re-read the file. On error the old keys stay in force (fail static, not open)."""
        with self._lock:
            try:
                store = KeyStore.load(self.path)
            except ConfigError as exc:
                log.error("api_keys_reload_failed", reason=str(exc))
                return False
            self._store = store  # one reference swap: verifiers see old or new, never a mix
        log.info("api_keys_reloaded", count=len(store))
        return True

    def verify(self, key: str, now: datetime | None = None) -> Principal:
        return self._store.verify(key, now)


DEVELOPMENT_KEY_ID = "dev"


def development_key_store(key: str) -> KeyStore:
    """A store holding one ephemeral key for development (`[auth]` unset, env development).

    The id is fixed, so the principal (and the threads it owns) stays the same across
    restarts even though the key itself changes every time.
    """
    entry = ApiKeyEntry(
        id=DEVELOPMENT_KEY_ID,
        digest=hashlib.sha256(key.encode()).digest(),
        tenant="development",
        name="development key",
        scopes=frozenset({WILDCARD}),
    )
    return KeyStore({entry.id: entry})

