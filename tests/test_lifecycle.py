"""Shutdown is noticed at the signal, before the server starts closing connections."""

from __future__ import annotations

import signal
from types import FrameType

from service.lifecycle import Lifecycle


def test_sigterm_marks_draining_and_runs_the_servers_handler() -> None:
    """SIGTERM sets draining, then calls the handler that was installed before ours."""
    seen: list[int] = []

    def server_handler(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    original = signal.signal(signal.SIGTERM, server_handler)
    try:
        lifecycle = Lifecycle()
        restore = lifecycle.chain_signal_handlers()
        assert not lifecycle.draining
        signal.raise_signal(signal.SIGTERM)
        assert lifecycle.draining
        assert seen == [signal.SIGTERM]
        restore()
        assert signal.getsignal(signal.SIGTERM) is server_handler
    finally:
        signal.signal(signal.SIGTERM, original)
