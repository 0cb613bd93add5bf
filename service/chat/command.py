"""`graphgate chat`: its arguments, credentials from the environment, and start-up.

Every `graphgate` command imports this module to build its parser, so the client's
modules (and httpx) are imported only once `chat` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from service.chat.repl import Repl

API_KEY_VAR = "GRAPHGATE_API_KEY"
TOKEN_VAR = "GRAPHGATE_TOKEN"  # noqa: S105 - the variable's name, not a secret
DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_UNREACHABLE = 1  # the service could not be reached, or refused the credentials
EXIT_USAGE = 2
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a header value can carry


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an http:// or https:// URL (e.g. {DEFAULT_URL})")
    if parts.username is not None or parts.password is not None:
        raise argparse.ArgumentTypeError(
            f"the URL must not carry credentials; set {API_KEY_VAR} or {TOKEN_VAR}")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError("the URL takes no query string or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} has an invalid port") from None
    return value.rstrip("/")


def _name(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not _NAME.fullmatch(value):
            raise argparse.ArgumentTypeError(
                f"a {what} is 1 to 64 letters, digits, '_' or '-'")
        return value
    return check


def add_chat_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `chat` on the `graphgate` command's sub-parsers."""
    chat = subparsers.add_parser(
        "chat", help="talk to a running service from the terminal (a smoke test)",
        description="Chat with a running graphgate service and watch replies stream. "
        f"Credentials come from the environment only, never the command line: {API_KEY_VAR} "
        f"(sent as X-API-Key) or {TOKEN_VAR} (a JWT or key, sent as Authorization: Bearer). "
        "For HTTPS with a private CA, set SSL_CERT_FILE. Type /help at the prompt for "
        "commands. See docs/chat.md.",
    )
    chat.add_argument("--url", type=_base_url, default=DEFAULT_URL,
                      help=f"the service's base URL (default: {DEFAULT_URL})")
    chat.add_argument("--graph", type=_name("graph name"), help="graph to run (default: the "
                      "service's default graph)")
    chat.add_argument("--thread", type=_name("thread id"), help="thread to continue or start "
                      "(default: a new thread, named by the service)")
    chat.add_argument("--timings", action="store_true",
                      help="after each reply, print the time to the first token and in total")


def credential_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """The auth header from GRAPHGATE_API_KEY or GRAPHGATE_TOKEN (at most one may be set)."""
    from service.chat.errors import ChatError

    key, token = (environ.get(name, "").strip() for name in (API_KEY_VAR, TOKEN_VAR))
    if key and token:
        raise ChatError(f"set {API_KEY_VAR} or {TOKEN_VAR}, not both")
    for name, value in ((API_KEY_VAR, key), (TOKEN_VAR, token)):
        if value and not _HEADER_SAFE.fullmatch(value):
            raise ChatError(f"{name} holds characters an HTTP header cannot carry")
    if key:
        return {"X-API-Key": key}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def _in_clear(url: str) -> bool:
    """Plain HTTP to anything but this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _reader(stdin: TextIO, out: TextIO) -> Callable[[str], str]:
    """input() with line editing on a terminal; otherwise lines echoed like a transcript."""
    if stdin.isatty() and out.isatty() and stdin is sys.stdin and out is sys.stdout:
        # Importing readline gives input() line editing and in-memory history (never saved:
        # messages may be sensitive). Some Python builds lack it.
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401
        return input

    def read_line(prompt: str) -> str:
        line = stdin.readline()
        if not line:
            raise EOFError
        line = line.rstrip("\r\n")
        out.write(f"{prompt}{line}\n")
        return line

    return read_line


def _greet(repl: Repl, args: argparse.Namespace) -> None:
    """Check the service answers and lets us in (a ChatError if not), then say where we are."""
    from service.chat.errors import ChatError, ServiceProblem

    term = repl.term
    readable = True
    try:
        repl.client.check_access()
    except ServiceProblem as exc:
        if exc.status != 403:
            raise
        # Valid credentials without threads:read: messages work, /history does not.
        readable = False
        term.error(str(exc))
        term.hint("this key cannot read threads: messages work; /history and /state do not")
    thread = f"thread {args.thread}" if args.thread else "a new thread"
    term.notice(f"[{args.url}, graph {args.graph or '(default)'}, {thread}; "
                "/help lists commands]")
    if args.thread and readable:
        try:
            term.notice(f"[thread {args.thread}: {repl.describe(args.thread)}]")
        except ChatError as exc:  # the service is there and lets us in: not fatal
            term.error(str(exc))


def run_chat(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None,
             stdin: TextIO | None = None, stdout: TextIO | None = None,
             stderr: TextIO | None = None) -> int:
    """Run `graphgate chat` until the user leaves; the exit code."""
    from service.chat.client import ChatClient
    from service.chat.errors import ChatError, ServiceProblem
    from service.chat.render import Terminal
    from service.chat.repl import Repl, Session

    environ = os.environ if environ is None else environ
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    for stream in (stdout, stderr):
        if hasattr(stream, "reconfigure"):
            # A reply may hold characters the terminal's encoding lacks: show "?", not a crash.
            stream.reconfigure(errors="replace")
    term = Terminal.detect(stdout, stderr, environ)
    try:
        headers = credential_headers(environ)
    except ChatError as exc:
        term.error(str(exc))
        return EXIT_USAGE
    if headers and _in_clear(args.url):
        term.hint(f"credentials go to {args.url} unencrypted; use https:// across a network")
    client = ChatClient(args.url, headers)
    session = Session(thread_id=args.thread, graph=args.graph, timings=args.timings)
    repl = Repl(client, term, session, _reader(stdin, stdout))
    try:
        _greet(repl, args)
        return repl.run()
    except ChatError as exc:
        term.error(str(exc))
        if isinstance(exc, ServiceProblem) and exc.status == 401:
            term.hint(f"check {API_KEY_VAR} or {TOKEN_VAR}" if headers
                      else f"set {API_KEY_VAR} or {TOKEN_VAR}")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:  # during start-up
        term.line()
        return 0
    except BrokenPipeError:
        # Output piped to a program that stopped reading (`| head`): nothing to tell it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        return 1
    except Exception as exc:
        # Never a traceback on the terminal, but never a silent one either: say what it was.
        term.error(f"unexpected {type(exc).__name__} in graphgate chat (a bug; please "
                   f"report it): {exc}")
        return EXIT_UNREACHABLE
    finally:
        client.close()
