"""Scrub credentials from log output before it is written.

Exception messages are the usual leak: a driver quotes its connection string, a graph
node puts a token in an error, a client sends a key in a URL. Every value in a log
event (the formatted traceback included, and strings nested in dicts and lists) passes
through `Redactor`, which removes the configured secret values verbatim and anything
shaped like a credential. A value logged under a credential-sounding key
(`password=...`, `authorization=...`, `cookie=...`) is dropped whole.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr

REDACTED = "[REDACTED]"

# Names whose value is a credential, as a key in "k=v" / "k: v" text or an event field.
# A prefix is allowed ("access_token", "db_password", "x-api-key", "client_secret").
_CREDENTIAL_NAMES = (
    r"password|passwd|passphrase|pwd|secret|secret[_-]?key|private[_-]?key"
    r"|token|api[_-]?key|authorization|credentials?"
)
_CREDENTIAL_KEY = re.compile(
    r"(?i)(?:[a-z0-9]+[_-])*(?:" + _CREDENTIAL_NAMES + r"|cookie|set[_-]cookie)"
)

_PATTERNS = [
    # graphgate API keys.
    (re.compile(r"ggk_[a-z0-9-]{1,64}_[0-9A-Za-z]{43}_[0-9A-Za-z]{6}"), REDACTED),
    # JWTs and other JWS/JWE compact tokens.
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}(?:\.[A-Za-z0-9_-]*){1,3}"), REDACTED),
    # Authorization header values.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    # user:password@ in URLs (postgresql://, redis://, https://).
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]+@"), r"\1:" + REDACTED + "@"),
    # Cookie headers: the whole rest of the line (several name=value pairs).
    (re.compile(r"(?i)(?<![a-z0-9_-])((?:set-)?cookie)([\"']?\s*[=:]\s*)[^\r\n]+"),
     r"\1\2" + REDACTED),
    # key=value / key: value pairs with a secret-sounding key (libpq conninfo, configs,
    # query strings, Python and JSON reprs of dicts: 'api_key': '...').
    (re.compile(r"(?i)(?<![a-z0-9])((?:[a-z0-9]+[_-])*(?:" + _CREDENTIAL_NAMES + r"))"
                r"([\"']?\s*[=:]\s*)(?:(?:bearer|basic|digest|token)\s+)?"
                r"(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"), r"\1\2" + REDACTED),
]


# Every pattern above needs one of these in the text; most log values (ids, routes,
# numbers as text) contain none, and one search is much cheaper than six substitutions.
_MAY_HOLD_CREDENTIAL = re.compile(
    r"(?i)ggk_|eyJ|bearer|basic|://|cookie|" + _CREDENTIAL_NAMES
)


def _could_hold_credential(value: str) -> bool:
    """A cheaper first test: every pattern needs one of these characters or prefixes
    (a key=value separator, whitespace before a token, a URL, a key or a JWT)."""
    return ("=" in value or ":" in value or " " in value or "\t" in value
            or "ggk_" in value or "eyJ" in value or not value.isascii())


def secret_values(model: BaseModel) -> list[str]:
    """Every SecretStr value in a settings model, nested sections included.

    For a URL (a database or Redis URL) its password is added on its own too: a driver
    may quote it without the rest of the URL.
    """
    found: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
            if len(text) >= 6 and text not in ("memory://", "memory:"):
                found.append(text)
                password = _url_password(text)
                if password is not None and len(password) >= 6:
                    found.append(password)
        elif isinstance(value, BaseModel):
            found.extend(secret_values(value))
    return found


def _url_password(text: str) -> str | None:
    if "://" not in text:
        return None
    try:
        password = urlsplit(text).password
    except ValueError:
        return None
    return unquote(password) if password else None


@functools.lru_cache(maxsize=1024)
def is_secret_key(name: str) -> bool:
    """Whether an event field of this name holds a credential (its value is dropped)."""
    return _CREDENTIAL_KEY.fullmatch(name) is not None


# Strings up to this long, the last this many distinct ones, are remembered scrubbed.
REMEMBERED_LENGTH = 128
REMEMBERED_VALUES = 4096


# Fields the logging setup itself adds (the time stamp is added after redaction).
OWN_FIELDS = frozenset({"level", "logger"})


class Redactor:
    """A structlog processor (and a plain function) that scrubs credentials."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is removed whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        # Most logged strings recur (routes, principals, client addresses, event names):
        # short ones are scrubbed once and remembered. This redactor's secrets are fixed,
        # so a remembered result stays right; it holds only what is logged anyway.
        self._remembered = functools.lru_cache(maxsize=REMEMBERED_VALUES)(self._scrub)

    def text(self, value: str) -> str:
        if len(value) <= REMEMBERED_LENGTH:
            return self._remembered(value)
        return self._scrub(value)

    def _scrub(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if not _could_hold_credential(value) or _MAY_HOLD_CREDENTIAL.search(value) is None:
            return value
        for pattern, replacement in _PATTERNS:
            value = pattern.sub(replacement, value)
        return value

    def value(self, value: Any, depth: int = 0) -> Any:
        """`value` with every string in it scrubbed.

        Numbers, booleans and None pass as they are; containers are rebuilt; any other
        object becomes its scrubbed repr (what the renderers would print anyway).
        """
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bytes | bytearray):
            return self.text(bytes(value).decode("utf-8", "replace"))
        if depth < 8:
            if isinstance(value, Mapping):
                return {k: self.field(str(k), v, depth + 1) for k, v in value.items()}
            if isinstance(value, list | tuple | set | frozenset):
                return [self.value(item, depth + 1) for item in value]
        return self.text(repr(value))

    def field(self, key: str, value: Any, depth: int = 0) -> Any:
        if is_secret_key(key) and value not in (None, "") and not isinstance(value, bool):
            return REDACTED
        return self.value(value, depth)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if key.startswith("_") or key in OWN_FIELDS:
                # structlog's own bookkeeping (`_record`, `_from_structlog`), and the level
                # and logger name, which come from code, never from data.
                continue
            event[key] = self.field(key, value)
        return event
