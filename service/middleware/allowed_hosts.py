"""Refuse requests whose Host header is not ours (DNS rebinding, host-header poisoning).

Starlette's TrustedHostMiddleware answers with a plain-text 400; this answers in the
service's one error shape. `*.example.com` matches any subdomain (not the apex).

Probes (kubelet, load balancers) and scrapes on the separate metrics port reach a
process by its address, not its name; they are exempt. They carry no credentials and
render nothing a poisoned Host could steer, which is what the check protects against.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import problem

# A DNS name or IPv4 address, or a bracketed IPv6 address, with an optional port.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class AllowedHostsMiddleware:
    def __init__(self, app: ASGIApp, *, allowed_hosts: Sequence[str],
                 exempt_paths: Sequence[str] = (), exempt_port: int | None = None) -> None:
        self.app = app
        self.exact = frozenset(h.lower() for h in allowed_hosts if not h.startswith("*."))
        self.suffixes = tuple(h.lower()[1:] for h in allowed_hosts if h.startswith("*."))
        self.exempt_paths = frozenset(exempt_paths)
        self.exempt_port = exempt_port

    def allows(self, host: str) -> bool:
        if not _HOST.fullmatch(host):
            # "evil.com#.example.com" would pass a suffix test; only plain names qualify.
            return False
        name = host.lower()
        # Drop the port: "[::1]:8000" -> "[::1]", "api.example.com:443" -> "api.example.com".
        name = name.partition("]")[0] + "]" if name.startswith("[") else name.partition(":")[0]
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if (scope["type"] != "http" or scope["path"] in self.exempt_paths
                or (self.exempt_port is not None and server is not None
                    and server[1] == self.exempt_port)):
            await self.app(scope, receive, send)
            return
        host = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
                break
        if not self.allows(host):
            response = problem(Request(scope), 400, "invalid_host", "Invalid host header",
                               "This service does not answer for that host name.")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
