"""limits' in-memory storage, with its clean-up run from graphgate instead of a thread.

`limits.storage.MemoryStorage` keeps the counts itself, and every count it reads checks
its own expiry, so dropping old entries is only memory hygiene. It does that from a
`threading.Timer` started again on any hit that finds none running: a new thread every
10 ms under load, each walking every entry while holding the GIL. Measured in-process,
that thread adds 2-3 ms to a stream's time to first token (the event loop waits for the
GIL it takes) besides its CPU. `SweptMemoryStorage` is the same storage with that timer
never restarted; `sweep` does the same clean-up, called once a second by the lifespan on
the event loop, where every hit on this storage also happens (the check is synchronous),
so the two never interleave. It also drops the keys limits' clean-up leaves behind with
no entries, which would otherwise pile up, one per client address ever seen.
"""

from __future__ import annotations

from limits.storage import MemoryStorage

# limits finds storages by URI scheme; `memory://` in the settings is served by this one.
SCHEME = "graphgate-memory"
SWEEP_INTERVAL_S = 1.0


def storage_uri(configured: str) -> str:
    """The URI slowapi gets: graphgate's memory storage for `memory://`, else unchanged."""
    if configured.startswith("memory://"):
        return SCHEME + configured.removeprefix("memory")
    return configured


class SweptMemoryStorage(MemoryStorage):
    STORAGE_SCHEME = [SCHEME]  # noqa: RUF012 - how limits registers a storage

    def _MemoryStorage__schedule_expiry(self) -> None:
        """limits calls this on every hit to (re)start its expiry thread; we sweep instead."""

    def sweep(self) -> None:
        """Drop expired entries (limits' own clean-up routine), then emptied keys. Call it
        from the thread that makes the hits."""
        self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        for key in [key for key, entries in self.events.items() if not entries]:
            del self.events[key]
