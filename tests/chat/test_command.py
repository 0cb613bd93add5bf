"""`graphgate chat`'s arguments and credentials: from the environment only, never argv."""

from __future__ import annotations

import pytest

from service.chat.command import credential_headers
from service.chat.errors import ChatError
from service.cli import main

KEY = "ggk_abc123_" + "A" * 43 + "_ZZZZZZ"


def test_an_api_key_goes_in_x_api_key() -> None:
    assert credential_headers({"GRAPHGATE_API_KEY": f" {KEY}\n"}) == {"X-API-Key": KEY}


def test_a_token_goes_in_a_bearer_header() -> None:
    assert credential_headers({"GRAPHGATE_TOKEN": "eyJ.abc.def"}) == {
        "Authorization": "Bearer eyJ.abc.def"}


def test_no_credentials_sends_none() -> None:
    """A development server with auth off needs none; an empty variable counts as unset."""
    assert credential_headers({"GRAPHGATE_API_KEY": "", "PATH": "/bin"}) == {}


def test_both_variables_is_ambiguous() -> None:
    with pytest.raises(ChatError, match="not both"):
        credential_headers({"GRAPHGATE_API_KEY": KEY, "GRAPHGATE_TOKEN": "eyJ.a.b"})


def test_a_value_no_header_can_carry_is_refused() -> None:
    """Rather than a traceback from the HTTP library (or a header injection)."""
    with pytest.raises(ChatError, match="GRAPHGATE_TOKEN holds characters"):
        credential_headers({"GRAPHGATE_TOKEN": "abc\r\nX-Evil: 1"})


@pytest.mark.parametrize("option", ["--api-key", "--key", "--token", "--password"])
def test_there_is_no_credential_option(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Credentials on the command line end up in shell history and `ps` output."""
    with pytest.raises(SystemExit) as exited:
        main(["chat", option, KEY])
    assert exited.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_help_names_the_credential_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("GRAPHGATE_API_KEY", "GRAPHGATE_TOKEN", "--url", "--graph", "--thread",
                     "--timings", "http://127.0.0.1:8000", "SSL_CERT_FILE"):
        assert expected in text


@pytest.mark.parametrize(("args", "expected"), [
    (["--url", "ftp://host"], "is not an http:// or https:// URL"),
    (["--url", "127.0.0.1:8000"], "is not an http:// or https:// URL"),
    (["--url", f"https://user:{KEY}@host"], "must not carry credentials"),
    (["--url", f"https://host/?api_key={KEY}"], "takes no query string"),
    (["--url", "http://host:99999"], "has an invalid port"),
    (["--thread", "a/b"], "a thread id is 1 to 64"),
    (["--graph", "x" * 65], "a graph name is 1 to 64"),
])
def test_bad_arguments_are_usage_errors(args: list[str], expected: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["chat", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err


def test_both_variables_exit_2_before_any_request(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Ambiguous credentials are a usage error, found before any network traffic."""
    monkeypatch.setenv("GRAPHGATE_API_KEY", KEY)
    monkeypatch.setenv("GRAPHGATE_TOKEN", "eyJ.a.b")
    # Port 1 refuses connections: reaching it would print a different error.
    assert main(["chat", "--url", "http://127.0.0.1:1"]) == 2
    assert capsys.readouterr().err == (
        "error: set GRAPHGATE_API_KEY or GRAPHGATE_TOKEN, not both\n")
