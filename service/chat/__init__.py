"""`graphgate chat`: an interactive terminal client for smoke-testing a deployment.

- `command`: the argparse sub-command, credentials from the environment, start-up.
- `client`: HTTP and Server-Sent Events against the `/v1` API (httpx, synchronous).
- `render`: what the terminal shows (streamed replies, side lines, spinner, state).
- `repl`: the prompt and its `/` commands.
"""

from __future__ import annotations

from service.chat.command import add_chat_parser, run_chat

__all__ = ["add_chat_parser", "run_chat"]
