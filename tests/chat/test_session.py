"""`graphgate chat` driven in a pseudo-terminal against a real server that requires an API key:
conversations, thread commands, Ctrl-C, and every kind of failure as one line."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.security.api_keys import generate_key
from service.security.keys_cli import keys_entry
from tests.chat.conftest import (
    PROMPT,
    REPO,
    SGR,
    Chat,
    IssuedKey,
    api,
    base_env,
    chat_settings,
    wait_for_metric,
)
from tests.support import graphs
from tests.support.ports import free_port
from tests.support.servers import ThreadServer

Spawn = Callable[..., Chat]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_a_second_turn_remembers_the_first(chat_server: ThreadServer, issued_key: IssuedKey,
                                           spawn_chat: Spawn) -> None:
    """Two turns on a new thread, then /history and /state show what the server kept."""
    chat = spawn_chat("--url", chat_server.url, env={"GRAPHGATE_API_KEY": issued_key.key})
    banner = chat.prompt()
    assert f"[{chat_server.url}, graph (default), a new thread; /help lists commands]" in banner

    first = chat.run("hello")
    found = re.search(r"\[new thread ([A-Za-z0-9_-]+), graph demo\]", first)
    assert found is not None, first
    thread_id = found.group(1)
    assert "[custom] stage=thinking messages_seen=1" in first
    assert "I have seen 1 message in this conversation." in first

    second = chat.run("do you remember me?")
    assert "new thread" not in second  # the same thread
    assert "I have seen 3 messages in this conversation." in second

    history = _lines(chat.run("/history"))
    assert history[0] == "/history"  # the terminal's echo of what was typed
    assert [line.split(":")[0] for line in history[1:]] == ["you", "assistant", "you",
                                                            "assistant"]
    assert history[1] == "you: hello"
    assert history[2].startswith("assistant: I have seen 1 message in this conversation.")
    assert history[3] == "you: do you remember me?"
    assert history[4].startswith("assistant: I have seen 3 messages in this conversation.")

    state = _lines(chat.run("/state"))
    assert f"thread      {thread_id}" in state
    assert "graph       demo" in state
    assert "next        (nothing: the last run finished)" in state
    assert "values      messages: 4 messages" in state

    chat.type("/quit")
    assert chat.finish() == 0
    assert "Traceback" not in chat.output()
    # The server's view of the same thread.
    with api(chat_server.url, issued_key) as client:
        messages = client.get(f"/v1/threads/{thread_id}/state").json()["values"]["messages"]
    assert [m["content"] for m in messages if m["type"] == "human"] == [
        "hello", "do you remember me?"]


def test_tool_calls_and_progress_are_shown_apart_from_the_reply(
        chat_server: ThreadServer, issued_key: IssuedKey, spawn_chat: Spawn) -> None:
    """Tool call, tool result and progress are dimmed side lines; --timings times the reply."""
    chat = spawn_chat("--url", chat_server.url, "--timings",
                      env={"GRAPHGATE_API_KEY": issued_key.key})
    chat.prompt()
    turn = _lines(chat.run("count these words with a tool"))
    assert turn.index("[custom] stage=thinking messages_seen=1") < turn.index(
        '[tool call] count_words {"text": "count these words with a tool"}') < turn.index(
        "[custom] stage=tool tool=count_words") < turn.index(
        "[tool count_words] 6 words") < turn.index("[custom] stage=thinking messages_seen=3")
    [reply] = [line for line in turn if line.startswith("I have seen")]
    assert reply.startswith("I have seen 3 messages in this conversation. "
                            "The tool said: 6 words.")
    assert re.fullmatch(r"\[timings\] first token \d+\.\d\d s, total \d+\.\d\d s", turn[-1])
    # Colour is on (a terminal, no NO_COLOR): side lines are dimmed, the reply is not.
    assert "\x1b[2m[tool count_words] 6 words\x1b[0m" in chat.transcript
    assert "\x1b[2m[custom] stage=tool tool=count_words\x1b[0m" in chat.transcript
    assert "\x1b[2mI have seen" not in chat.transcript
    chat.end_of_input()
    assert chat.finish() == 0


def test_threads_can_be_switched_made_and_deleted(
        chat_server: ThreadServer, issued_key: IssuedKey, spawn_chat: Spawn) -> None:
    """/thread, /new, /delete and the rest, with the key sent as a bearer token."""
    a, b = f"chat-a-{uuid.uuid4().hex[:8]}", f"chat-b-{uuid.uuid4().hex[:8]}"
    chat = spawn_chat("--url", chat_server.url, "--thread", a,
                      env={"GRAPHGATE_TOKEN": issued_key.key})
    assert f"[thread {a}: no messages yet; your next message starts it]" in chat.prompt()
    first = chat.run("one")
    assert "I have seen 1 message in" in first and "new thread" not in first

    assert f"[thread {b}: no messages yet" in chat.run(f"/thread {b}")
    assert f"[thread {b} has no messages yet]" in chat.run("/history")
    assert "I have seen 1 message in" in chat.run("two")
    assert f"[thread {a}: 2 messages]" in chat.run(f"/thread {a}")
    assert "I have seen 3 messages in" in chat.run("three")

    assert f"[deleted thread {a}; your next message starts a new one]" in chat.run("/delete")
    with api(chat_server.url, issued_key) as client:
        assert client.get(f"/v1/threads/{a}/state").json()["code"] == "thread_not_found"
        kept = client.get(f"/v1/threads/{b}/state").json()["values"]["messages"]
        assert len(kept) == 2
    assert ("error: no thread yet: send a message first, or switch with /thread ID"
            in chat.run("/history"))
    assert "[thread (new: named when you send a message)]" in chat.run("/thread")

    chat.run(f"/thread {b}")
    assert "[new thread: the server names it" in chat.run("/new")
    fresh = chat.run("four")
    assert re.search(r"\[new thread [0-9a-f-]{36}, graph demo\]", fresh)
    assert "I have seen 1 message in" in fresh

    assert "error: a thread id is 1 to 64 letters" in chat.run("/thread ../etc")
    assert "error: unknown command /bogus (/help lists the commands)" in chat.run("/bogus")
    help_text = chat.run("/help")
    for command in ("/new", "/thread ID", "/history", "/state", "/delete", "/help", "/quit"):
        assert command in help_text
    chat.interrupt()  # Ctrl-C at the prompt leaves
    assert chat.finish() == 0
    assert "Traceback" not in chat.output()


def test_ctrl_c_cancels_the_reply_and_the_server_stops_the_run(
        serve: Callable[..., ThreadServer], issued_key: IssuedKey, tmp_path: Path,
        spawn_chat: Spawn) -> None:
    """A slow reply (300 tokens, 100 ms apart): Ctrl-C after the first tokens returns to the
    prompt; the server records a client disconnect, saved no reply, and frees the thread."""
    server = serve(chat_settings(tmp_path, issued_key.keys_file, token_delay_ms=100,
                                 reply_tokens=300))
    thread_id = f"cancel-{uuid.uuid4().hex[:8]}"
    chat = spawn_chat("--url", server.url, "--thread", thread_id,
                      env={"GRAPHGATE_API_KEY": issued_key.key})
    chat.prompt()
    chat.type("hello")
    chat.expect("I have seen 1 message")
    chat.interrupt()
    after = chat.prompt()
    assert "[reply cancelled: the connection was closed, so the server stops the run]" in after
    assert "error" not in after
    # The spinner ran until the first token and was erased before it.
    assert "\x1b[KI have seen 1 message" in chat.transcript

    # The server saw the hang-up and cancelled the run (recorded after the thread's lease
    # was released)...
    wait_for_metric(server.url,
                    'graphgate_streams_total{graph="demo",outcome="client_disconnected"} 1.0')
    assert ('graphgate_run_duration_seconds_count{graph="demo",outcome="cancelled"} 1.0'
            in api(server.url, issued_key).get("/metrics").text)
    # ... so the reply was never saved: the thread holds the question, and waits at `agent`.
    with api(server.url, issued_key) as client:
        state = client.get(f"/v1/threads/{thread_id}/state").json()
    assert [m["type"] for m in state["values"]["messages"]] == ["human"]
    assert state["next"] == ["agent"]

    # The thread is free: the next turn runs on it at once and sees the saved question.
    chat.type("are you still there?")
    chat.expect("I have seen 2 messages")
    chat.interrupt()
    assert "[reply cancelled" in chat.prompt()
    chat.end_of_input()  # Ctrl-D at the prompt leaves
    assert chat.finish() == 0
    assert "Traceback" not in chat.output()


def test_run_errors_and_refusals_are_one_line(chat_server: ThreadServer, issued_key: IssuedKey,
                                              spawn_chat: Spawn) -> None:
    """An `error` event mid-stream and a 422 before it, each one line; NO_COLOR is obeyed."""
    env = {"GRAPHGATE_API_KEY": issued_key.key, "NO_COLOR": "1"}
    failing = spawn_chat("--url", chat_server.url, "--graph", "failing", env=env)
    failing.prompt()
    turn = _lines(failing.run("hello"))
    errors = [line for line in turn if line.startswith("error:")]
    assert len(errors) == 1
    assert re.fullmatch(r"error: the run failed: graph_error: The graph failed while running\. "
                        r"\(request id [0-9a-f]{32}\)", errors[0])
    assert graphs.SECRET not in failing.output()
    failing.type("/quit")
    assert failing.finish() == 0

    unknown = spawn_chat("--url", chat_server.url, "--graph", "nope", env=env)
    unknown.prompt()
    turn = _lines(unknown.run("hello"))
    errors = [line for line in turn if line.startswith("error:")]
    assert len(errors) == 1
    assert re.fullmatch(r"error: 422 .+ \(request id [0-9a-f]{32}\)", errors[0])
    unknown.type("/quit")
    assert unknown.finish() == 0
    for chat in (failing, unknown):
        assert not SGR.search(chat.transcript)  # NO_COLOR: neither dim nor red
        assert "Traceback" not in chat.output()


@pytest.mark.parametrize("credentials", ["unknown-key", "garbage-token", "none"])
def test_bad_credentials_give_one_clear_line(chat_server: ThreadServer, spawn_chat: Spawn,
                                             credentials: str) -> None:
    """401 at start-up: status, title, request id on one line, a hint, exit 1."""
    secret = {"unknown-key": generate_key()[1], "garbage-token": "not.a.jwt",
              "none": ""}[credentials]
    variable = "GRAPHGATE_TOKEN" if credentials == "garbage-token" else "GRAPHGATE_API_KEY"
    chat = spawn_chat("--url", chat_server.url, env={variable: secret})
    assert chat.finish() == 1
    lines = _lines(chat.output())
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    assert re.fullmatch(r"error: 401 Unauthorized: .+ \(request id [0-9a-f]{32}\)", errors[0])
    hint = "hint: check GRAPHGATE_API_KEY or GRAPHGATE_TOKEN" if secret else (
        "hint: set GRAPHGATE_API_KEY or GRAPHGATE_TOKEN")
    assert hint in lines
    assert "Traceback" not in chat.output()
    if secret:
        assert secret not in chat.output()


def test_an_unreachable_service_names_the_url(serve: Callable[..., ThreadServer],
                                              issued_key: IssuedKey, tmp_path: Path,
                                              spawn_chat: Spawn) -> None:
    """Nothing listening: exit 1 at start-up. A service that goes away mid-session: one line
    per failed turn, and the prompt comes back."""
    port = free_port()
    nowhere = spawn_chat("--url", f"http://127.0.0.1:{port}",
                         env={"GRAPHGATE_API_KEY": issued_key.key})
    assert nowhere.finish() == 1
    assert _lines(nowhere.output()) == [
        f"error: cannot connect to http://127.0.0.1:{port}/v1/threads: connection refused"]

    server = serve(chat_settings(tmp_path, issued_key.keys_file))
    chat = spawn_chat("--url", server.url, env={"GRAPHGATE_API_KEY": issued_key.key})
    chat.prompt()
    assert "I have seen 1 message" in chat.run("hello")
    server.stop()
    turn = _lines(chat.run("hello again"))
    errors = [line for line in turn if line.startswith("error:")]
    assert len(errors) == 1, turn
    assert errors[0].startswith(f"error: cannot connect to {server.url}/v1/chat/stream: ")
    chat.type("/quit")
    assert chat.finish() == 0
    assert "Traceback" not in chat.output() + nowhere.output()


def test_piped_input_and_output_have_no_terminal_codes(chat_server: ThreadServer,
                                                       issued_key: IssuedKey,
                                                       tmp_path: Path) -> None:
    """Not a terminal: no colour, no spinner, no line editing; a readable transcript."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "chat", "--url", chat_server.url],
        input="hello\nagain\n/history\n", capture_output=True, text=True, timeout=60,
        cwd=REPO, env={**base_env(tmp_path), "GRAPHGATE_API_KEY": issued_key.key})
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert f"{PROMPT}hello\n" in out and f"{PROMPT}again\n" in out
    assert "I have seen 3 messages in this conversation." in out
    assert "\nyou: again\n" in out  # /history


def test_a_key_that_cannot_read_threads_can_still_chat(
        serve: Callable[..., ThreadServer], tmp_path: Path, spawn_chat: Spawn) -> None:
    """A runs:create-only key: the start-up check's 403 is shown with a hint, not fatal."""
    key_id, key = generate_key()
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_entry(key_id, key, tenant="smoke", name="runner",
                                    scopes=["runs:create"], rate_limit=None, expires_at=None,
                                    created=datetime.now(UTC)))
    server = serve(chat_settings(tmp_path, keys_file))
    chat = spawn_chat("--url", server.url, "--thread", "runner-1",
                      env={"GRAPHGATE_API_KEY": key})
    banner = _lines(chat.prompt())
    [error] = [line for line in banner if line.startswith("error:")]  # one, not fatal
    assert error.startswith("error: 403 ")
    assert ("hint: this key cannot read threads: messages work; /history and /state do not"
            in banner)
    assert "I have seen 1 message" in chat.run("hello")
    assert re.search(r"error: 403 .+\(request id [0-9a-f]{32}\)", chat.run("/history"))
    chat.type("/quit")
    assert chat.finish() == 0
