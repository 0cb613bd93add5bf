"""Let middlewares act on the response start (and end) without each wrapping `send`.

A pure-ASGI middleware that adds headers or notes the status wraps `send`, and then every
message of the response passes through its wrapper: for an event stream that is every
token, through every such layer, although only `http.response.start` interests them.
Instead the outermost of them (RequestIdMiddleware) `hosts` the hooks: it wraps `send`
once and runs, on the response start, every hook the middlewares inside it registered,
innermost first (the order their wrappers would have run in), and after the final body
message the end hooks. Used outside a host (alone, in tests), `on_response_start` and
`on_response_end` wrap `send` themselves, so a middleware works the same either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import Message, Scope, Send

HOOKS_SCOPE_KEY = "graphgate.response_hooks"

# Given the `http.response.start` message; may change its headers in place or return a
# replacement message (None: keep it).
StartHook = Callable[[Message], Message | None]
# Called once the final body message has been sent.
EndHook = Callable[[], None]


@dataclass
class ResponseHooks:
    start: list[StartHook] = field(default_factory=list)
    end: list[EndHook] = field(default_factory=list)


def host_response_hooks(scope: Scope, send: Send) -> Send:
    """For the outermost middleware: one wrapper for every hook registered inside it."""
    hooks = ResponseHooks()
    scope[HOOKS_SCOPE_KEY] = hooks

    async def send_running_hooks(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            for hook in reversed(hooks.start):
                message = hook(message) or message
            await send(message)
            return
        await send(message)
        if hooks.end and ((kind == "http.response.body" and not message.get("more_body", False))
                          or kind == "http.response.pathsend"):
            for end_hook in reversed(hooks.end):
                end_hook()

    return send_running_hooks


def on_response_start(scope: Scope, send: Send, hook: StartHook) -> Send:
    """Run `hook` on the response start; returns the `send` to pass on (the same one when
    a host runs the hook, else a wrapper)."""
    hooks = scope.get(HOOKS_SCOPE_KEY)
    if isinstance(hooks, ResponseHooks):
        hooks.start.append(hook)
        return send

    async def send_with_hook(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = hook(message) or message
        await send(message)

    return send_with_hook


def on_response_end(scope: Scope, send: Send, hook: EndHook) -> Send:
    """Run `hook` once the final body message has been sent; returns the `send` to pass on."""
    hooks = scope.get(HOOKS_SCOPE_KEY)
    if isinstance(hooks, ResponseHooks):
        hooks.end.append(hook)
        return send

    async def send_then_hook(message: Message) -> None:
        await send(message)
        kind = message["type"]
        if (kind == "http.response.body" and not message.get("more_body", False)) or (
                kind == "http.response.pathsend"):
            hook()

    return send_then_hook
