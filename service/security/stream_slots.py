"""A cap on open event streams per principal (`[rate_limit] max_concurrent_streams`).

A stream takes a slot before its run starts and gives it back when the response ends,
however it ends (done, client gone, cancelled, shut down). With Redis storage the slots
are shared by every worker and replica: each is a member of a sorted set per principal,
scored by an expiry that the holder renews while the stream is open, so a crashed
worker's slots lapse on their own instead of blocking the principal forever.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Literal, Protocol

import anyio
import redis.asyncio as aioredis
import structlog

from service.settings import RateLimitSettings

log = structlog.get_logger("graphgate.rate_limit")

SLOT_TTL_S = 30.0

# Atomically: drop lapsed slots, then take one if fewer than the cap are held. Time comes
# from the Redis server so workers on different hosts agree.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
_RENEW = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
"""

class StreamSlotsFull(Exception):
    """The principal already has its maximum of open streams."""


class StreamSlotsUnavailable(Exception):
    """The shared slot storage cannot be reached and the policy is to refuse."""


class Slot(Protocol):
    async def release(self) -> None: ...


class StreamSlots(Protocol):
    async def acquire(self, identity: str) -> Slot:
        """A slot for one stream; raises StreamSlotsFull or StreamSlotsUnavailable."""
        ...

    async def aclose(self) -> None: ...


class _NoSlot:
    async def release(self) -> None:
        return None


class UnlimitedSlots:
    async def acquire(self, identity: str) -> Slot:
        return _NoSlot()

    async def aclose(self) -> None:
        return None


class _CountedSlot:
    def __init__(self, owner: MemorySlots, identity: str) -> None:
        self.owner, self.identity, self.released = owner, identity, False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            self.owner.held[self.identity] -= 1
            if not self.owner.held[self.identity]:
                del self.owner.held[self.identity]


class MemorySlots:
    """Per-process counting: exact with one worker, N times looser with N."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held: Counter[str] = Counter()

    async def acquire(self, identity: str) -> Slot:
        if self.held[identity] >= self.cap:
            raise StreamSlotsFull()
        self.held[identity] += 1
        return _CountedSlot(self, identity)

    async def aclose(self) -> None:
        return None


class _RedisSlot:
    def __init__(self, owner: RedisSlots, key: str, member: str) -> None:
        self.owner, self.key, self.member = owner, key, member
        self.renewer: asyncio.Task[None] | None = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.owner.ttl_ms / 3000)
            try:
                await self.owner.client.eval(_RENEW, 1, self.key, self.member,  # type: ignore[misc]
                                             self.owner.ttl_ms)
            except Exception as exc:
                log.warning("stream_slot_renew_failed", exc_type=type(exc).__name__)

    async def release(self) -> None:
        if self.renewer is None:
            return
        self.renewer.cancel()
        self.renewer = None
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await self.owner.client.zrem(self.key, self.member)
            except Exception as exc:
                # The slot lapses by itself after the TTL.
                log.warning("stream_slot_release_failed", exc_type=type(exc).__name__)


class RedisSlots:
    def __init__(self, url: str, cap: int, *, timeout_s: float,
                 on_storage_error: Literal["memory", "open", "closed"],
                 ttl_s: float = SLOT_TTL_S) -> None:
        self.cap = cap
        self.ttl_ms = int(ttl_s * 1000)
        self.on_storage_error = on_storage_error
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                              socket_connect_timeout=timeout_s)
        self.fallback = MemorySlots(cap)

    async def acquire(self, identity: str) -> Slot:
        key = f"graphgate:streams:{identity}"
        member = uuid.uuid4().hex
        try:
            granted = await self.client.eval(_ACQUIRE, 1, key, self.cap, member,  # type: ignore[misc]
                                             self.ttl_ms)
        except Exception as exc:  # redis errors, timeouts, refused connections
            log.warning("ratelimit_backend_down", limiter="streams", exc_type=type(exc).__name__,
                        policy=self.on_storage_error)
            if self.on_storage_error == "closed":
                raise StreamSlotsUnavailable() from None
            if self.on_storage_error == "memory":
                return await self.fallback.acquire(identity)
            return _NoSlot()
        if not granted:
            raise StreamSlotsFull()
        return _RedisSlot(self, key, member)

    async def aclose(self) -> None:
        await self.client.aclose()


def open_stream_slots(settings: RateLimitSettings) -> StreamSlots:
    cap = settings.max_concurrent_streams
    if not settings.enabled or cap == 0:
        return UnlimitedSlots()
    if settings.shared:
        return RedisSlots(settings.storage_uri.get_secret_value(), cap,
                          timeout_s=settings.storage_timeout_s,
                          on_storage_error=settings.runs_on_storage_error)
    return MemorySlots(cap)
