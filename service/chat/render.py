"""What `graphgate chat` prints: streamed replies, side lines, the spinner, errors.

Reply text goes to stdout as it arrives. Tool calls, tool results, custom (progress)
events and notices are side lines: on a line of their own, in brackets, dimmed when
colour is on. Colour needs a terminal, no NO_COLOR (https://no-color.org) and a TERM
other than `dumb`. The spinner is drawn on stderr, only when stderr is a terminal, and
erased before anything else is printed. Errors go to stderr, one line each.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from service.chat.client import Event
from service.chat.text import one_line, printable

DIM, RED, RESET = "\x1b[2m", "\x1b[31m", "\x1b[0m"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


@dataclass(frozen=True)
class Style:
    """ANSI styling for one output stream, or none."""

    color: bool

    @classmethod
    def detect(cls, stream: TextIO, environ: Mapping[str, str]) -> Style:
        return cls(color=_isatty(stream) and not environ.get("NO_COLOR")
                   and environ.get("TERM") != "dumb")

    def dim(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color and text else text

    def error(self, text: str) -> str:
        return f"{RED}{text}{RESET}" if self.color else text


class Spinner:
    """A spinner on its own line of `stream`, drawn by a thread until `stop()` erases it."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, *, enabled: bool,
                 label: str = "waiting for the reply", interval_s: float = 0.1) -> None:
        self.stream = stream
        self.enabled = enabled
        self.label = label
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def detect(cls, stream: TextIO, environ: Mapping[str, str]) -> Spinner:
        return cls(stream, enabled=_isatty(stream) and environ.get("TERM") != "dumb")

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._spin, name="chat-spinner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self.stream.write("\r\x1b[K")  # back to the line's start, and clear it
        self.stream.flush()

    def _spin(self) -> None:
        frame = 0
        while not self._stop.wait(0 if frame == 0 else self.interval_s):
            self.stream.write(f"\r{self.FRAMES[frame % len(self.FRAMES)]} {self.label}")
            self.stream.flush()
            frame += 1


def content_text(content: Any) -> str:
    """A message's text: a string, or the text of its content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block if isinstance(block, str)
            else str(block.get("text", "")) if isinstance(block, dict) else ""
            for block in content
        )
    return ""


def json_text(value: Any, limit: int = 500) -> str:
    """A value as one line of JSON (tool-call arguments are JSON objects)."""
    return one_line(json.dumps(value, ensure_ascii=False, default=str), limit)


def compact(value: Any, limit: int = 200) -> str:
    """A value as short one-line text: `k=v` pairs for a flat dict, else JSON."""
    if isinstance(value, dict) and all(
        isinstance(v, str | int | float | bool) or v is None for v in value.values()
    ):
        text = " ".join(f"{k}={v}" for k, v in value.items())
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return one_line(text, limit)


class Terminal:
    """The two output streams with their styles, and the spinner."""

    def __init__(self, out: TextIO, err: TextIO, *, out_style: Style, err_style: Style,
                 spinner: Spinner) -> None:
        self.out, self.err = out, err
        self.out_style, self.err_style = out_style, err_style
        self.spinner = spinner

    @classmethod
    def detect(cls, out: TextIO, err: TextIO, environ: Mapping[str, str]) -> Terminal:
        return cls(out, err, out_style=Style.detect(out, environ),
                   err_style=Style.detect(err, environ), spinner=Spinner.detect(err, environ))

    def write(self, text: str) -> None:
        self.spinner.stop()
        self.out.write(text)
        self.out.flush()

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    def notice(self, text: str) -> None:
        """A line about the session, not from the graph: dimmed."""
        self.line(self.out_style.dim(text))

    def error(self, text: str) -> None:
        """One line on stderr. Flushes stdout first so the two stay in order."""
        self.spinner.stop()
        self.out.flush()
        self.err.write(self.err_style.error(f"error: {one_line(text, 500)}") + "\n")
        self.err.flush()

    def hint(self, text: str) -> None:
        self.spinner.stop()
        self.out.flush()
        self.err.write(self.err_style.dim(f"hint: {text}") + "\n")
        self.err.flush()


Outcome = Literal["done", "failed", "cancelled"]


class ReplyView:
    """One reply on the terminal, fed the turn's events as they arrive."""

    def __init__(self, term: Terminal, *, requested_thread: str | None, timings: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.term = term
        self.requested_thread = requested_thread
        self.timings = timings
        self.clock = clock
        self.started = clock()
        self.first_token_at: float | None = None
        self.thread_id: str | None = None
        self.ended = False
        self._error_shown = False
        self._line: Literal["start", "reply", "tool"] = "start"
        self._message_id: object = None
        self._tool_key: object = None
        term.spinner.start()

    # -- events --

    def event(self, event: Event) -> None:
        data = event.data
        if event.name == "metadata" and isinstance(data, dict):
            self._metadata(data)
        elif event.name == "messages" and isinstance(data, dict):
            self._message(data)
        elif event.name == "custom":
            self._side(f"[custom] {compact(data)}")
        elif event.name == "error":
            self._run_error(data if isinstance(data, dict) else {})
        elif event.name == "end":
            self.ended = True
            status = data.get("status") if isinstance(data, dict) else None
            if status != "success" and not self._error_shown:
                self._to_line_start()
                self.term.error(f"the run ended with status {one_line(str(status), 40)}")
        # `values`, `updates` and `debug` are not asked for; unknown events are ignored.

    def _metadata(self, data: dict[str, Any]) -> None:
        thread_id = data.get("thread_id")
        if isinstance(thread_id, str):
            self.thread_id = thread_id
            if thread_id != self.requested_thread:
                graph = one_line(str(data.get("graph", "?")), 64)
                self._side(f"[new thread {one_line(thread_id, 64)}, graph {graph}]")

    def _message(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "ai":
            for chunk in data.get("tool_call_chunks") or []:
                if isinstance(chunk, dict):
                    self._tool_chunk(data.get("message_id"), chunk)
            for call in data.get("tool_calls") or []:
                if isinstance(call, dict):
                    self._side(f"[tool call] {one_line(str(call.get('name')), 64)} "
                               f"{json_text(call.get('args'))}")
            text = printable(content_text(data.get("content")))
            if text:
                self._token(data.get("message_id"), text)
        elif kind == "tool":
            name = one_line(str(data.get("name") or "tool"), 64)
            self._side(f"[tool {name}] {one_line(content_text(data.get('content')), 500)}")
        elif kind != "human":  # the user's own message is never echoed; others are odd
            self._side(f"[{one_line(str(kind), 40)}] {compact(data.get('content'))}")

    def _token(self, message_id: object, text: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = self.clock()
        if self._line == "tool" or (self._line == "reply" and message_id != self._message_id):
            self.term.write("\n")
        self._message_id = message_id
        self.term.write(text)
        self._line = "start" if text.endswith("\n") else "reply"

    def _tool_chunk(self, message_id: object, chunk: dict[str, Any]) -> None:
        """Tool-call arguments stream as JSON fragments: print them as they come."""
        key = (message_id, chunk.get("index"))
        if key != self._tool_key or self._line != "tool":
            self._to_line_start()
            name = one_line(str(chunk.get("name") or "?"), 64)
            self.term.write(self.term.out_style.dim(f"[tool call] {name} "))
            self._tool_key = key
            self._line = "tool"
        args = chunk.get("args")
        if isinstance(args, str) and args:
            # Not one_line(): a fragment's own spaces matter where it joins the next one.
            self.term.write(self.term.out_style.dim(printable(args).replace("\n", " ")))

    def _side(self, text: str) -> None:
        self._to_line_start()
        self.term.notice(text)
        self._waiting()

    def _run_error(self, data: dict[str, Any]) -> None:
        self._to_line_start()
        code = one_line(str(data.get("code", "error")), 64)
        message = one_line(str(data.get("message") or data.get("title") or ""), 300)
        notes = []
        if data.get("request_id"):
            notes.append(f"request id {one_line(str(data['request_id']), 80)}")
        if data.get("retryable") is True:
            notes.append("retryable")
        suffix = f" ({'; '.join(notes)})" if notes else ""
        self.term.error(f"the run failed: {code}: {message}{suffix}")
        self._error_shown = True

    def _to_line_start(self) -> None:
        if self._line != "start":
            self.term.write("\n")
            self._line = "start"

    def _waiting(self) -> None:
        if self.first_token_at is None and not self.ended:
            self.term.spinner.start()

    # -- the end --

    def finish(self, outcome: Outcome, failure: str | None = None) -> None:
        """After the last event: close the reply's line, say how it ended, time it."""
        self.term.spinner.stop()
        self._to_line_start()
        if failure is not None:
            self.term.error(failure)
        if outcome == "cancelled":
            self.term.notice("[reply cancelled: the connection was closed, so the server "
                             "stops the run]")
        elif outcome == "done" and not self.ended:
            self.term.error("the stream ended without its `end` event: cut off by the "
                            "network, a proxy or the server")
        if self.timings:
            total = self.clock() - self.started
            first = ("no tokens" if self.first_token_at is None
                     else f"{self.first_token_at - self.started:.2f} s")
            self.term.notice(f"[timings] first token {first}, total {total:.2f} s")
