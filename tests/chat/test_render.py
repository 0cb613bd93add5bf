"""What the terminal shows for a turn's events, and for /history and /state, with colour
on and off. Each test feeds events as they arrive from the stream."""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest

from service.chat.client import Event
from service.chat.render import ReplyView, Spinner, Style, Terminal
from service.chat.thread_view import message_lines, state_lines

MESSAGE_ID = "lc_run--1"


class Screen:
    def __init__(self, *, color: bool = False) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.term = Terminal(self.out, self.err, out_style=Style(color), err_style=Style(color),
                             spinner=Spinner(self.err, enabled=False))

    def reply(self, *events: tuple[str, Any], requested_thread: str | None = "t-1",
              timings: bool = False, outcome: Any = "done") -> ReplyView:
        clock = itertools.count(10.0, 0.25)  # every reading is a quarter second later
        view = ReplyView(self.term, requested_thread=requested_thread, timings=timings,
                         clock=lambda: next(clock))
        for name, data in events:
            view.event(Event(name, data))
        view.finish(outcome)
        return view


def token(text: str, message_id: str = MESSAGE_ID, **extra: Any) -> tuple[str, Any]:
    return "messages", {"message_id": message_id, "type": "ai", "content": text,
                        "node": "agent", "step": 1, **extra}


METADATA = ("metadata", {"run_id": "r-1", "thread_id": "t-1", "graph": "demo"})
END = ("end", {"run_id": "r-1", "status": "success"})


def test_tokens_print_as_one_line_of_text() -> None:
    screen = Screen()
    view = screen.reply(METADATA, token("I "), token("have "), token("seen"),
                        token("", last=True), END)
    assert screen.out.getvalue() == "I have seen\n"
    assert screen.err.getvalue() == ""
    assert view.thread_id == "t-1" and view.ended


def test_a_new_thread_is_announced_with_its_id() -> None:
    screen = Screen()
    view = screen.reply(METADATA, token("hi"), END, requested_thread=None)
    assert screen.out.getvalue() == "[new thread t-1, graph demo]\nhi\n"
    assert view.thread_id == "t-1"


def test_tool_calls_results_and_progress_are_side_lines() -> None:
    """The demo's tool turn: progress, a streamed tool call, its result, then the reply."""
    screen = Screen()
    screen.reply(
        METADATA,
        ("custom", {"stage": "thinking", "messages_seen": 1}),
        ("messages", {"message_id": "m-1", "type": "ai", "content": "", "node": "agent",
                      "step": 1, "tool_call_chunks": [
                          {"name": "count_words", "args": '{"text": ', "id": "c1", "index": 0}]}),
        ("messages", {"message_id": "m-1", "type": "ai", "content": "", "node": "agent",
                      "step": 1, "tool_call_chunks": [
                          {"name": None, "args": '"a tool"}', "id": None, "index": 0}]}),
        ("messages", {"message_id": "t-9", "type": "tool", "content": "2 words",
                      "node": "tools", "step": 2, "name": "count_words"}),
        token("The ", "m-2"), token("tool said.", "m-2"),
        ("custom", {"stage": "replied"}),
        END,
    )
    assert screen.out.getvalue().splitlines() == [
        "[custom] stage=thinking messages_seen=1",
        '[tool call] count_words {"text": "a tool"}',
        "[tool count_words] 2 words",
        "The tool said.",
        "[custom] stage=replied",
    ]


def test_side_lines_are_dimmed_when_colour_is_on() -> None:
    screen = Screen(color=True)
    screen.reply(METADATA, ("custom", {"stage": "x"}), token("plain"), END)
    assert screen.out.getvalue() == "\x1b[2m[custom] stage=x\x1b[0m\nplain\n"


def test_a_whole_message_with_tool_calls_shows_them() -> None:
    screen = Screen()
    screen.reply(METADATA, ("messages", {"message_id": "m", "type": "ai", "content": "",
                                         "tool_calls": [{"name": "lookup", "args": {"q": 1},
                                                         "id": "c", "type": "tool_call"}]}), END)
    assert screen.out.getvalue() == '[tool call] lookup {"q": 1}\n'


def test_two_messages_in_one_reply_do_not_run_together() -> None:
    """A second AI message (after a tool call, say) starts on its own line."""
    screen = Screen()
    screen.reply(token("first", "m-1"), token("second", "m-2"), END)
    assert screen.out.getvalue() == "first\nsecond\n"


def test_a_run_error_is_one_line_with_its_request_id() -> None:
    """An `error` event after some tokens: the partial line is closed, the error is one line."""
    screen = Screen()
    screen.reply(METADATA, token("partial"),
                 ("error", {"code": "storage_unavailable", "retryable": True, "request_id": "q-1",
                            "message": "The conversation store is unavailable; try again."}),
                 ("end", {"run_id": "r-1", "status": "error"}))
    assert screen.out.getvalue() == "partial\n"
    assert screen.err.getvalue() == (
        "error: the run failed: storage_unavailable: The conversation store is unavailable; "
        "try again. (request id q-1; retryable)\n")


def test_a_stream_cut_before_end_says_so() -> None:
    """Without `end`, the run's fate is unknown: say the stream was cut, not that it ended."""
    screen = Screen()
    screen.reply(METADATA, token("half"))
    assert screen.out.getvalue() == "half\n"
    assert screen.err.getvalue().startswith("error: the stream ended without its `end` event")


def test_a_cancelled_reply_says_the_server_stops_the_run() -> None:
    screen = Screen()
    screen.reply(METADATA, token("I have"), outcome="cancelled")
    lines = screen.out.getvalue().splitlines()
    assert lines[0] == "I have"
    assert lines[1].startswith("[reply cancelled")
    assert screen.err.getvalue() == ""


def test_timings_give_first_token_and_total() -> None:
    """Clock readings: start 10.0, first token 10.25, finish 10.5."""
    screen = Screen()
    screen.reply(token("x"), END, timings=True)
    assert screen.out.getvalue().splitlines()[-1] == "[timings] first token 0.25 s, total 0.50 s"


def test_escape_sequences_in_model_output_are_not_printed() -> None:
    """A reply is model output: it must not recolour, retitle or clear the terminal."""
    screen = Screen()
    screen.reply(token("safe\x1b]0;pwned\x07 \x1b[2Jtext\r\n"), ("custom", "\x1b[31mred"), END)
    assert "\x1b" not in screen.out.getvalue() and "\x07" not in screen.out.getvalue()
    # JSON escapes the custom event's ESC as text: harmless.
    assert screen.out.getvalue() == 'safe]0;pwned [2Jtext\n[custom] "\\u001b[31mred"\n'


@pytest.mark.parametrize("enabled", [True, False])
def test_the_spinner_erases_itself(enabled: bool) -> None:
    stream = io.StringIO()
    spinner = Spinner(stream, enabled=enabled, interval_s=0.01)
    spinner.start()
    spinner.stop()
    spinner.stop()  # twice is harmless
    text = stream.getvalue()
    assert text.endswith("\r\x1b[K") if enabled else text == ""


def test_colour_needs_a_terminal_and_no_no_color() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Style.detect(Tty(), {"TERM": "xterm"}).color
    assert not Style.detect(Tty(), {"TERM": "xterm", "NO_COLOR": "1"}).color
    assert not Style.detect(Tty(), {"TERM": "dumb"}).color
    assert not Style.detect(io.StringIO(), {"TERM": "xterm"}).color
    assert not Spinner.detect(io.StringIO(), {}).enabled


STATE = {
    "thread_id": "t-1",
    "values": {"messages": [
        {"type": "human", "content": "count words with a tool", "id": "h1"},
        {"type": "ai", "content": "", "id": "a1", "tool_calls": [
            {"name": "count_words", "args": {"text": "count words with a tool"}, "id": "c1"}]},
        {"type": "tool", "content": "5 words", "name": "count_words", "id": "t1"},
        {"type": "ai", "content": [{"type": "text", "text": "It has 5 words."}], "id": "a2"},
    ]},
    "next": [],
    "checkpoint_id": "1f1e-cp",
    "created_at": "2026-11-21T14:33:50+00:00",
    "metadata": {"source": "loop", "step": 4, "graph_id": "demo"},
    "tasks": [],
    "interrupts": [],
}


def test_history_lists_who_said_what() -> None:
    assert message_lines(STATE["values"]) == [
        "you: count words with a tool",
        'assistant: [tool call] count_words {"text": "count words with a tool"}',
        "tool count_words: 5 words",
        "assistant: It has 5 words.",
    ]
    assert message_lines({"steps": ["a"]}) is None


def test_state_shows_checkpoint_next_and_values() -> None:
    assert state_lines(STATE) == [
        "thread      t-1",
        "graph       demo",
        "checkpoint  1f1e-cp (step 4, 2026-11-21T14:33:50+00:00)",
        "next        (nothing: the last run finished)",
        "values      messages: 4 messages",
    ]
    paused = {**STATE, "next": ["agent"], "values": {"steps": ["a"]},
              "tasks": [{"id": "x", "name": "agent", "failed": True}]}
    lines = state_lines(paused)
    assert "next        agent" in lines
    assert 'values      steps: ["a"]' in lines
    assert "tasks       agent (1 failed)" in lines


def test_a_failed_request_prints_its_error_before_the_timings() -> None:
    screen = Screen()
    clock = itertools.count(1.0, 1.0)
    view = ReplyView(screen.term, requested_thread=None, timings=True, clock=lambda: next(clock))
    view.finish("failed", "409 Thread busy (request id r)")
    assert screen.err.getvalue() == "error: 409 Thread busy (request id r)\n"
    assert screen.out.getvalue() == "[timings] first token no tokens, total 1.00 s\n"
