"""Text from the server, made safe to print on a terminal."""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, and C1 controls. ESC (and the C1 CSI) start
# escape sequences that recolour, move the cursor, retitle the window or write to the
# clipboard (OSC 52). A reply is model output, which whoever wrote the prompt can steer,
# and error bodies may come from any proxy on the way, so none of it is trusted.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` without control characters; tabs and newlines are kept."""
    return _CONTROL.sub("", text)


def one_line(text: str, limit: int = 300) -> str:
    """`text` as one printable line of at most `limit` characters."""
    flat = " ".join(printable(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
