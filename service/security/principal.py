"""The authenticated caller, as the middleware after auth and the routes see it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from starlette.types import Scope

AuthMethod = Literal["api_key", "jwt", "anonymous"]

# The scopes routes check. `*` in a key's or token's scopes grants all of them.
THREADS_READ = "threads:read"
THREADS_WRITE = "threads:write"
RUNS_CREATE = "runs:create"
ALL_SCOPES = (THREADS_READ, THREADS_WRITE, RUNS_CREATE)
WILDCARD = "*"

SCOPE_STATE_KEY = "principal"


class AuthFailure(Exception):
    """Credentials were refused. `reason` is for logs and metrics, never for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """A verified caller. Holds identifiers only, never a secret or a token."""

    tenant: str
    subject: str
    method: AuthMethod
    key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    rate_limit: str | None = None  # overrides [rate_limit] default_limits when set

    def has_scope(self, scope: str) -> bool:
        return WILDCARD in self.scopes or scope in self.scopes

    @property
    def identity(self) -> str:
        """Stable, secret-free name for logs, metrics and rate-limit buckets."""
        if self.method == "api_key":
            return f"key:{self.key_id}"
        # Quoted, so tenant "a:b" + subject "c" and tenant "a" + subject "b:c" differ.
        return f"{self.method}:{quote(self.tenant, safe='')}:{quote(self.subject, safe='')}"

    def owner(self, *, share_within_tenant: bool) -> str:
        """Who owns the threads this principal creates (an unambiguous encoding).

        The method is part of it: an API key's `name` and an identity provider's `sub`
        are chosen by different parties, so key "alice" and token sub "alice" of the
        same tenant are different owners.
        """
        if share_within_tenant:
            return json.dumps(["tenant", self.tenant], ensure_ascii=False)
        return json.dumps([self.method, self.tenant, self.subject], ensure_ascii=False)


def principal_of(scope: Scope) -> Principal | None:
    """The principal the auth middleware put in the ASGI scope, if any."""
    state = scope.get("state") or {}
    principal = state.get(SCOPE_STATE_KEY)
    return principal if isinstance(principal, Principal) else None
