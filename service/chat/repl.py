"""The prompt loop: messages go to the graph, `/` lines are commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.chat.client import ChatClient
from service.chat.errors import ChatError, ServiceProblem
from service.chat.render import Outcome, ReplyView, Terminal
from service.chat.thread_view import message_lines, state_lines

PROMPT = "you> "
# The server's rule for ids (service/api/schemas.py), checked here to fail before a request.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
HELP = """\
/new         start a new thread (the server names it when you send a message)
/thread ID   switch to thread ID (an unused id starts a thread with that id)
/thread      show the current thread
/history     show the current thread's messages
/state       show the current thread's state: checkpoint, next nodes, values
/delete      delete the current thread, then start a new one
/help        show this help
/quit        leave (or Ctrl-D, or Ctrl-C at the prompt)
Anything else is sent as a message ("//text" sends "/text"). Ctrl-C during a reply
cancels it."""


@dataclass
class Session:
    """Where the next message goes."""

    thread_id: str | None
    graph: str | None
    timings: bool = False


class NoThread(ChatError):
    def __init__(self) -> None:
        super().__init__("no thread yet: send a message first, or switch with /thread ID")


class Repl:
    """Reads lines until /quit, Ctrl-D or Ctrl-C at the prompt; returns the exit code."""

    def __init__(self, client: ChatClient, term: Terminal, session: Session,
                 read_line: Callable[[str], str]) -> None:
        self.client = client
        self.term = term
        self.session = session
        self.read_line = read_line
        self.commands: dict[str, Callable[[str], bool]] = {
            "/new": self._new, "/thread": self._thread, "/history": self._history,
            "/state": self._state, "/delete": self._delete, "/help": self._help,
            "/quit": self._quit, "/exit": self._quit,
        }

    def run(self) -> int:
        while True:
            try:
                line = self.read_line(PROMPT).strip()
            except (EOFError, KeyboardInterrupt):
                self.term.line()  # leave the shell's prompt on a line of its own
                return 0
            if not line:
                continue
            try:
                if line.startswith("//"):  # a message that starts with "/"
                    self.send(line[1:])
                elif line.startswith("/"):
                    if not self.command(line):
                        return 0
                else:
                    self.send(line)
            except ChatError as exc:
                self.term.error(str(exc))
            except KeyboardInterrupt:
                # Ctrl-C during a command (or a second one while a reply was closing).
                self.client.reset()
                self.term.spinner.stop()
                self.term.line()
                self.term.notice("[cancelled]")

    def command(self, line: str) -> bool:
        """Run a `/` command; False to leave."""
        name, _, argument = line.partition(" ")
        handler = self.commands.get(name.lower())
        if handler is None:
            raise ChatError(f"unknown command {name[:40]} (/help lists the commands)")
        return handler(argument.strip())

    def send(self, message: str) -> None:
        """One turn: stream the reply; Ctrl-C hangs up and comes back to the prompt."""
        session = self.session
        view = ReplyView(self.term, requested_thread=session.thread_id, timings=session.timings)
        events = self.client.stream_chat(message, thread_id=session.thread_id,
                                         graph=session.graph)
        outcome: Outcome = "done"
        failure: ChatError | None = None
        try:
            for event in events:
                view.event(event)
        except ChatError as exc:
            outcome, failure = "failed", exc
        except KeyboardInterrupt:
            outcome = "cancelled"
        finally:
            # Closing the stream closes its connection: the server sees the disconnect and
            # cancels the run.
            events.close()
            # Set by the first event: keep it even if the reply was cut short, since the
            # server has already created the thread and saved the message.
            if view.thread_id is not None:
                session.thread_id = view.thread_id
        if outcome == "cancelled":
            # Ctrl-C may have landed anywhere in httpx; start from a fresh pool so no
            # half-read connection is ever reused.
            self.client.reset()
        view.finish(outcome, None if failure is None else str(failure))
        if isinstance(failure, ServiceProblem) and failure.code == "thread_busy":
            self.term.hint("another run is using this thread; wait for it, or /new")

    # -- commands --

    def _current(self) -> str:
        if self.session.thread_id is None:
            raise NoThread()
        return self.session.thread_id

    def _new(self, _: str) -> bool:
        self.session.thread_id = None
        self.term.notice("[new thread: the server names it when you send a message]")
        return True

    def _thread(self, argument: str) -> bool:
        if not argument:
            current = self.session.thread_id or "(new: named when you send a message)"
            self.term.notice(f"[thread {current}]")
            return True
        if not NAME_PATTERN.fullmatch(argument):
            raise ChatError("a thread id is 1 to 64 letters, digits, '_' or '-'")
        self.session.thread_id = argument
        try:
            about = self.describe(argument)
        except ChatError:
            self.term.notice(f"[thread {argument}]")  # switched, though it could not be read
            raise
        self.term.notice(f"[thread {argument}: {about}]")
        return True

    def describe(self, thread_id: str) -> str:
        """How many messages the thread holds, or that it does not exist yet."""
        try:
            state = self.client.thread_state(thread_id)
        except ServiceProblem as exc:
            if exc.code == "thread_not_found":
                return "no messages yet; your next message starts it"
            raise
        values = state.get("values") if isinstance(state, dict) else None
        messages = values.get("messages") if isinstance(values, dict) else None
        if not isinstance(messages, list):
            return "exists"  # a graph whose state has no messages
        return f"{len(messages)} message{'s' if len(messages) != 1 else ''}"

    def _read_state(self) -> Any:
        """The current thread's state; None (and a notice) if it has no checkpoint yet."""
        thread_id = self._current()
        try:
            return self.client.thread_state(thread_id)
        except ServiceProblem as exc:
            if exc.code != "thread_not_found":
                raise
        self.term.notice(f"[thread {thread_id} has no messages yet]")
        return None

    def _history(self, _: str) -> bool:
        state = self._read_state()
        if state is None:
            return True
        lines = message_lines(state.get("values") if isinstance(state, dict) else None)
        if lines is None:
            self.term.notice("[this thread's state has no messages; /state shows its values]")
        elif not lines:
            self.term.notice("[no messages yet]")
        for line in lines or []:
            self.term.line(line)
        return True

    def _state(self, _: str) -> bool:
        state = self._read_state()
        for line in state_lines(state) if state is not None else []:
            self.term.line(line)
        return True

    def _delete(self, _: str) -> bool:
        thread_id = self._current()
        self.client.delete_thread(thread_id)
        self.session.thread_id = None
        self.term.notice(f"[deleted thread {thread_id}; your next message starts a new one]")
        return True

    def _help(self, _: str) -> bool:
        self.term.line(HELP)
        return True

    def _quit(self, _: str) -> bool:
        return False
