"""Scrub credentials from log output before it is written.

Exception messages are the usual leak: a driver quotes its connection string, a graph
node puts a token in an error, a client sends a key in a URL. Every string in a log
event (the formatted traceback included) passes through `Redactor`, which removes the
configured secret values verbatim and anything shaped like a credential.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from pydantic import BaseModel, SecretStr

REDACTED = "[REDACTED]"

_PATTERNS = [
    # graphgate API keys.
    (re.compile(r"ggk_[a-z0-9-]{1,64}_[0-9A-Za-z]{43}_[0-9A-Za-z]{6}"), REDACTED),
    # JWTs and other JWS/JWE compact tokens.
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}(?:\.[A-Za-z0-9_-]*){1,3}"), REDACTED),
    # Authorization header values.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    # user:password@ in URLs (postgresql://, redis://, https://).
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]+@"), r"\1:" + REDACTED + "@"),
    # key=value / key: value pairs with a secret-sounding key (libpq conninfo, configs).
    (re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|authorization)"
                r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"), r"\1\2" + REDACTED),
]


def secret_values(model: BaseModel) -> list[str]:
    """Every SecretStr value in a settings model, nested sections included."""
    found: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
            if len(text) >= 6 and text not in ("memory://", "memory:"):
                found.append(text)
        elif isinstance(value, BaseModel):
            found.extend(secret_values(value))
    return found


class Redactor:
    """A structlog processor (and a plain function) that scrubs credentials."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is removed whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            value = pattern.sub(replacement, value)
        return value

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.text(value)
        return event
