"""The `/v1` API as `graphgate chat` uses it: one streamed chat turn, thread reads, delete.

Synchronous httpx on purpose: the terminal loop is synchronous, and Ctrl-C arrives as a
KeyboardInterrupt in the main thread, wherever it is blocked (usually reading the
stream). Leaving the `stream` block then closes the connection, which the server takes
as a disconnect and cancels the run.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from service import __version__
from service.chat.errors import ChatError, problem_from_response, transport_failure
from service.chat.text import one_line

CHAT_STREAM_PATH = "/v1/chat/stream"
# Tokens and tool calls come as `messages`, progress as `custom`. The reply's text is all
# a person reads; `values` would resend the whole state after every step.
STREAM_MODES = ("messages", "custom")
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0
# Between two frames of a stream. Heartbeats come every [streaming] heartbeat_interval_s
# (15 s by default) while a node is quiet, so silence this long means a dead connection.
STREAM_READ_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: its name and its JSON `data`."""

    name: str
    data: Any


def iter_events(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the lines of an event stream (the SSE spec's parsing, minus `retry`).

    Comment lines (graphgate's `: heartbeat`) are skipped. A frame the stream ends in the
    middle of is dropped, as the spec says.
    """
    name: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    raise ChatError("the server sent an event whose data is not JSON; "
                                    "is --url a graphgate service?") from None
                yield Event(name or "message", payload)
            name, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


def _display_url(url: httpx.URL) -> str:
    return str(url.copy_with(query=None, fragment=None))


class ChatClient:
    """HTTP calls to one graphgate base URL with one set of credential headers."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"user-agent": f"graphgate-chat/{__version__}", **headers}
        self._transport = transport
        self._http = self._open()

    def _open(self) -> httpx.Client:
        # No redirects: a 301 from nginx's plain-HTTP server would turn the POST into a GET
        # (and resend the credentials); the error line names the https:// URL instead.
        # trust_env (the default) honours SSL_CERT_FILE and the *_PROXY variables.
        return httpx.Client(
            base_url=self.base_url, headers=self._headers, follow_redirects=False,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            transport=self._transport,
        )

    def reset(self) -> None:
        """Drop every pooled connection (after Ctrl-C, one may be half-read) and start over."""
        self._http.close()
        self._http = self._open()

    def close(self) -> None:
        self._http.close()

    def _url(self, path: str) -> str:
        return _display_url(self._http.base_url.join(path.lstrip("/")))

    def request_json(self, method: str, path: str, **params: Any) -> Any:
        """`method path` and its JSON body (None for 204); ChatError for anything else."""
        try:
            response = self._http.request(method, path, params=params or None)
        except httpx.HTTPError as exc:
            raise transport_failure(exc, self._url(path)) from None
        if response.status_code >= 300:
            raise problem_from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ChatError(f"{self._url(path)} did not answer with JSON; "
                            "is --url a graphgate service?") from None

    def check_access(self) -> None:
        """One cheap authenticated request: is the service there, and are we let in?"""
        self.request_json("GET", "/v1/threads", limit=1)

    def thread_state(self, thread_id: str) -> Any:
        return self.request_json("GET", f"/v1/threads/{quote(thread_id, safe='')}/state")

    def delete_thread(self, thread_id: str) -> None:
        self.request_json("DELETE", f"/v1/threads/{quote(thread_id, safe='')}")

    def stream_chat(self, message: str, *, thread_id: str | None,
                    graph: str | None) -> Generator[Event, None, None]:
        """The events of one turn, as they arrive. Close the iterator to hang up early."""
        body: dict[str, Any] = {"message": message, "stream_mode": list(STREAM_MODES)}
        if thread_id is not None:
            body["thread_id"] = thread_id
        if graph is not None:
            body["graph"] = graph
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S,
                                read=STREAM_READ_TIMEOUT_S)
        try:
            with self._http.stream("POST", CHAT_STREAM_PATH, json=body,
                                   timeout=timeout) as response:
                if response.status_code != 200:
                    # Errors before the stream starts are ordinary problem+json responses.
                    response.read()
                    raise problem_from_response(response)
                media_type = one_line(response.headers.get("content-type", ""), 80)
                if not media_type.startswith("text/event-stream"):
                    raise ChatError(f"{self._url(CHAT_STREAM_PATH)} answered with "
                                    f"{media_type or 'no content type'}, not an event "
                                    "stream; is --url a graphgate service?")
                yield from iter_events(response.iter_lines())
        except httpx.HTTPError as exc:
            raise transport_failure(exc, self._url(CHAT_STREAM_PATH)) from None
