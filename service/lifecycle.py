"""Process lifecycle: knowing that shutdown has begun, so /readyz can say so at once."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self._on_drain: list[Callable[[], object]] = []

    def on_drain(self, callback: Callable[[], object]) -> None:
        """Call `callback` once when shutdown begins (possibly from a signal handler, so
        it must only schedule work, e.g. with loop.call_soon_threadsafe)."""
        self._on_drain.append(callback)

    def begin_shutdown(self) -> None:
        if self.draining:
            return
        self.draining = True
        for callback in self._on_drain:
            callback()

    def chain_signal_handlers(self) -> Callable[[], None]:
        """Mark draining on SIGTERM/SIGINT, then run whatever handler was there.

        The server (uvicorn, or uvicorn inside a gunicorn worker) installs its own
        handlers before the lifespan starts; we wrap them rather than replace them, so
        the server still shuts down as it would. Returns a function that restores them.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: FrameType | None) -> None:
            self.begin_shutdown()
            prior = previous.get(signum)
            if callable(prior):
                prior(signum, frame)
            elif prior == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        for sig in _SIGNALS:
            previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, prior in previous.items():
                if signal.getsignal(sig) is handler:
                    signal.signal(sig, prior)

        return restore

    def on_reload(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Run `callback` on SIGHUP (in the event loop); returns a function that stops it.

        Under gunicorn, SIGHUP goes to the master, which replaces the workers (and so
        reloads everything); this serves the single-process `graphgate serve`.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, callback)
        except (NotImplementedError, RuntimeError):  # not the main loop / no signals
            return lambda: None

        def stop() -> None:
            loop.remove_signal_handler(signal.SIGHUP)

        return stop

