"""A Postgres pool that health-checks connections, except ones just seen working.

psycopg_pool's `check_connection` costs a round trip per checkout (about a quarter of a
millisecond of CPU here, two milliseconds per conversation turn). A connection handed
back a moment ago has just answered a query, so checking it again proves little;
HikariCP skips validation the same way (its alive-bypass window, 500 ms). Ours is
shorter, 100 ms: a database restart takes longer than that (0.28 s for a tiny local
server here), so every connection opened before a restart is checked again before use.
What the window gives up: a connection killed within 100 ms of its last use (an
operator's pg_terminate_backend, say) fails one call, which answers 503, instead of
being replaced first.

The time a connection comes back is noted in `putconn` (which `connection()` calls), not
with the pool's `reset` callback: with a callback, the pool returns every connection
through a worker task.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

RECENTLY_RETURNED_S = 0.1


class CheckedPool(AsyncConnectionPool[AsyncConnection[DictRow]]):
    """`AsyncConnectionPool` with `check_connection` unless handed back within the window."""

    def __init__(self, *args: Any, check_connections: bool = True,
                 window_s: float = RECENTLY_RETURNED_S, **kwargs: Any) -> None:
        self.window_s = window_s
        self._returned: weakref.WeakKeyDictionary[AsyncConnection[DictRow], float] = (
            weakref.WeakKeyDictionary())
        super().__init__(*args, check=self._check if check_connections else None, **kwargs)

    async def putconn(self, conn: AsyncConnection[DictRow]) -> None:
        self._returned[conn] = time.monotonic()
        await super().putconn(conn)

    async def _check(self, conn: AsyncConnection[DictRow]) -> None:
        returned = self._returned.pop(conn, None)
        if returned is not None and time.monotonic() - returned < self.window_s:
            return
        await AsyncConnectionPool.check_connection(conn)
