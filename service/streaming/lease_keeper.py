"""One task per worker keeps the leases of all of its runs alive.

A run's lease expires `lease_ttl_s` after its last renewal, so a crashed worker's threads
free themselves. Renewing from one task per worker, every third of the ttl and in one
statement for all runs, costs a wake-up and a query per period however many streams are
open; a task and timer per run cost memory per open stream and, at thousands of open
streams, a steady trickle of CPU and single-row writes while nothing is being sent.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

import anyio
import structlog

from service.persistence.leases import Lease, ThreadLeases

log = structlog.get_logger("graphgate.run")


class LeaseHolder(Protocol):
    """A run, as the keeper sees it."""

    @property
    def lease(self) -> Lease: ...

    @property
    def wants_renewal(self) -> bool:
        """False once the run has started giving its lease back."""

    renewed_at: float

    def lease_lost(self, renewed_s_ago: float) -> None:
        """Stop: another worker holds the thread now, or may at any moment."""


async def keep_leases(
    leases: ThreadLeases, ttl_s: float, holders: Collection[LeaseHolder],
    *, clock: Callable[[], float] = anyio.current_time,
) -> None:
    """Renew every holder's lease each third of the ttl, until cancelled.

    A holder whose lease is gone (someone else has the thread) is stopped at once; one
    whose renewals have failed (store down) for two thirds of the ttl is stopped too,
    since another worker may take the thread any moment after that, and stopping is the
    only way to be sure two runs never interleave on one thread.
    """
    period = ttl_s / 3
    while True:
        await anyio.sleep(period)
        due = [holder for holder in list(holders) if holder.wants_renewal]
        if not due:
            continue
        renewed: set[Lease] | None = None
        with anyio.move_on_after(period):
            try:
                renewed = await leases.renew_many([holder.lease for holder in due], ttl_s)
            except Exception as exc:
                log.warning("lease_renew_failed", runs=len(due), exc_type=type(exc).__name__)
        now = clock()
        for holder in due:
            if not holder.wants_renewal:  # released while we were renewing
                continue
            if renewed is not None and holder.lease in renewed:
                holder.renewed_at = now
            elif renewed is not None or now - holder.renewed_at >= ttl_s * 2 / 3:
                holder.lease_lost(now - holder.renewed_at)
