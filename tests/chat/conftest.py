"""Driving `graphgate chat` as a person would: a real key made with `graphgate keys create`,
real servers that require it, and the client in a pseudo-terminal (pexpect)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

from service.settings import Settings
from tests.conftest import make_settings
from tests.support.servers import ThreadServer

REPO = Path(__file__).resolve().parents[2]
PROMPT = "you> "
# The spinner: frames each drawn from the line's start, then the line erased.
_ERASED = re.compile(r"(?:\r[^\r\n]*)*\r\x1b\[K")
# Other CSI sequences (colour, readline's mode switches) and carriage returns.
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
SGR = re.compile(r"\x1b\[[0-9;]*m")  # colour and dimming only


def plain(text: str) -> str:
    """What a person reads: erased lines gone, terminal control sequences removed."""
    return _TERMINAL_CODES.sub("", _ERASED.sub("", text))


@dataclass(frozen=True)
class IssuedKey:
    key: str
    keys_file: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


def base_env(home: Path) -> dict[str, str]:
    """A minimal environment: no GRAPHGATE_* and no proxies from the developer's shell."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "PYTHONPATH": str(REPO), "LANG": "C.UTF-8", "TERM": "xterm"}


@pytest.fixture(scope="session")
def issued_key(tmp_path_factory: pytest.TempPathFactory) -> IssuedKey:
    """A key made the way an operator makes one, and a keys file holding its entry."""
    directory = tmp_path_factory.mktemp("chat-keys")
    made = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--tenant", "smoke",
         "--name", "chat-tests"],
        env=base_env(directory), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    found = re.search(r"^key: (ggk_\S+)$", made.stdout, re.MULTILINE)
    assert found is not None, made.stdout
    keys_file = directory / "keys.toml"
    keys_file.write_text(made.stdout[made.stdout.index("# created"):])
    return IssuedKey(found.group(1), keys_file)


def chat_settings(directory: Path, keys_file: Path, **demo: int) -> Settings:
    """Auth on, with only the issued key; the demo model's speed as given."""
    return make_settings(f"sqlite:///{directory}/{uuid.uuid4().hex}.sqlite",
                         auth={"enabled": True, "api_keys_file": str(keys_file)},
                         demo={"token_delay_ms": 2, "reply_tokens": 12, **demo})


@pytest.fixture(scope="module")
def chat_server(issued_key: IssuedKey,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    server = ThreadServer(chat_settings(tmp_path_factory.mktemp("chat-db"),
                                        issued_key.keys_file)).start()
    yield server
    server.stop()


def api(server_url: str, key: IssuedKey, **kwargs: Any) -> httpx.Client:
    """The service's own API, to check what the client did from the server's side."""
    return httpx.Client(base_url=server_url, headers=key.headers, timeout=30, **kwargs)


def wait_for_metric(url: str, line: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in (text := httpx.get(url + "/metrics", timeout=10).text):
        assert time.monotonic() < deadline, f"{line!r} never appeared in:\n{text}"
        time.sleep(0.05)


class Chat:
    """`graphgate chat` in a pseudo-terminal: type lines, read what the screen shows."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.log = io.StringIO()
        self.child = pexpect.spawn(sys.executable, ["-m", "service", "chat", *args],
                                   env=dict(env), cwd=str(REPO), encoding="utf-8",
                                   timeout=30, dimensions=(50, 250))
        self.child.logfile_read = self.log

    @property
    def transcript(self) -> str:
        """Everything the terminal received, control sequences included."""
        return self.log.getvalue()

    def expect(self, text: str) -> str:
        """Wait for `text` on screen; what came before it (since the last match), plain."""
        self.child.expect_exact(text)
        return plain(self.child.before)

    def prompt(self) -> str:
        return self.expect(PROMPT)

    def type(self, line: str) -> None:
        self.child.sendline(line)

    def run(self, line: str) -> str:
        """Type a line; what was printed before the next prompt, plain."""
        self.type(line)
        return self.prompt()

    def interrupt(self) -> None:
        """Ctrl-C, through the terminal, as a person presses it."""
        self.child.sendintr()

    def end_of_input(self) -> None:
        """Ctrl-D."""
        self.child.sendeof()

    def finish(self) -> int:
        """Wait for the client to exit; its exit status (a signal death fails the test)."""
        self.child.expect(pexpect.EOF)
        self.child.close()
        assert self.child.signalstatus is None, plain(self.transcript)
        return int(self.child.exitstatus)

    def output(self) -> str:
        return plain(self.transcript)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture
def spawn_chat(tmp_path: Path) -> Iterator[Callable[..., Chat]]:
    """Start `graphgate chat ARGS` with env (on top of a minimal one); all closed afterwards."""
    chats: list[Chat] = []

    def spawn(*args: str, env: Mapping[str, str] | None = None) -> Chat:
        chat = Chat(list(args), {**base_env(tmp_path), **(env or {})})
        chats.append(chat)
        return chat

    yield spawn
    for chat in chats:
        chat.close()
