"""The prompt loop against mock transports: Ctrl-C at each point it can come, and the
hints that follow refusals. The live versions are in test_session.py."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator

import httpx

from service.chat.client import ChatClient
from service.chat.render import Spinner, Style, Terminal
from service.chat.repl import Repl, Session

Handler = Callable[[httpx.Request], httpx.Response]
FRAMES = [b'event: metadata\ndata: {"run_id":"r","thread_id":"t-new","graph":"demo"}\n\n',
          b'event: messages\ndata: {"message_id":"m","type":"ai","content":"Hel"}\n\n']


class Harness:
    def __init__(self, handler: Handler, lines: list[str | BaseException]) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        term = Terminal(self.out, self.err, out_style=Style(False), err_style=Style(False),
                        spinner=Spinner(self.err, enabled=False))
        self.client = ChatClient("http://graphgate.test", {},
                                 transport=httpx.MockTransport(handler))
        self.resets = 0
        original_reset = self.client.reset

        def counting_reset() -> None:
            self.resets += 1
            original_reset()

        self.client.reset = counting_reset  # type: ignore[method-assign]
        self.session = Session(thread_id=None, graph=None)
        script = iter(lines)

        def read_line(prompt: str) -> str:
            item = next(script, EOFError())
            if isinstance(item, BaseException):
                raise item
            return item

        self.repl = Repl(self.client, term, self.session, read_line)


def _interrupted_stream() -> Iterator[bytes]:
    yield from FRAMES
    raise KeyboardInterrupt  # Ctrl-C while the next frame is awaited


def test_ctrl_c_mid_reply_cancels_it_and_keeps_the_thread() -> None:
    """The reply stops, the pool is dropped, and the thread the server made is kept."""
    harness = Harness(lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=_interrupted_stream()),
        ["hello"])
    assert harness.repl.run() == 0
    lines = harness.out.getvalue().splitlines()
    assert lines[0] == "[new thread t-new, graph demo]"
    assert lines[1] == "Hel"
    assert lines[2].startswith("[reply cancelled")
    assert harness.err.getvalue() == ""
    assert harness.session.thread_id == "t-new"
    assert harness.resets == 1


def test_ctrl_c_during_a_command_returns_to_the_prompt() -> None:
    """A slow /thread lookup abandoned with Ctrl-C; the next command still runs."""
    def handler(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    harness = Harness(handler, ["/thread t-1", "/thread"])
    assert harness.repl.run() == 0
    assert "[cancelled]" in harness.out.getvalue()
    assert harness.out.getvalue().rstrip().endswith("[thread t-1]")  # the loop went on


def test_ctrl_c_or_ctrl_d_at_the_prompt_leaves_with_0() -> None:
    for ending in (KeyboardInterrupt(), EOFError()):
        harness = Harness(lambda request: httpx.Response(500), [ending])
        assert harness.repl.run() == 0
        assert harness.out.getvalue() == "\n"


def test_a_busy_thread_gets_the_error_and_a_hint() -> None:
    problem = {"type": "urn:graphgate:problem:thread_busy", "title": "Thread busy",
               "status": 409, "code": "thread_busy", "request_id": "rid-1"}
    harness = Harness(lambda request: httpx.Response(409, json=problem), ["hello"])
    assert harness.repl.run() == 0
    assert harness.err.getvalue().splitlines() == [
        "error: 409 Thread busy (request id rid-1)",
        "hint: another run is using this thread; wait for it, or /new",
    ]


def test_a_doubled_slash_sends_a_message_that_starts_with_one() -> None:
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=b'event: end\ndata: {"status":"success"}\n\n')

    harness = Harness(handler, ["//etc/hosts"])
    assert harness.repl.run() == 0
    assert [json.loads(body)["message"] for body in sent] == ["/etc/hosts"]
