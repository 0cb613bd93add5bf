"""Agent Server protocol runs: each runs in a task of its own, not in the request's, so
it can outlive the connection that started it (background runs, `on_disconnect=continue`,
resumable streams), be joined, streamed again, and cancelled from any worker.

- The run's events are encoded once and pushed into a `RunChannel` that local readers
  follow. A durable run (resumable stream or background run) also writes them, in
  batches, to the shared event log, where readers on other workers and replicas, and
  clients reconnecting with `Last-Event-ID`, find them.
- The run record (status) lives in the shared run registry. A run polls it for cancel
  requests made on other workers; a cancel made here cancels the task at once.

It knows nothing of HTTP: the API layer decides what to launch and how to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio
import structlog

from service.persistence.event_log import EventLog, LoggedEvent
from service.persistence.runs import RunRecord, RunRegistry
from service.settings import RunSettings, StreamingSettings
from service.streaming.executor import Run, RunEvent
from service.streaming.run_channel import RunChannel

log = structlog.get_logger("graphgate.runs")

FINAL_STATUSES = frozenset({"success", "error", "timeout", "interrupted"})
# Batching writes to the event log: per-token inserts would cost a round trip per token.
LOG_FLUSH_S = 0.05
LOG_BATCH = 500
# How often a reader on another worker polls the shared log and run record.
REMOTE_POLL_S = 0.1

Encoder = Callable[[RunEvent], Iterable[tuple[str, bytes]]]


@dataclass(eq=False)
class ManagedRun:
    record: RunRecord
    owner: str
    run: Run
    channel: RunChannel
    task: asyncio.Task[None] | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    status: str = "pending"
    cancelled: bool = False
    _scope: anyio.CancelScope | None = None

    @property
    def run_id(self) -> str:
        return self.record.run_id


class RunManager:
    def __init__(self, registry: RunRegistry, events: EventLog, run_settings: RunSettings,
                 streaming: StreamingSettings) -> None:
        self.registry = registry
        self.events = events
        self.run_settings = run_settings
        self.streaming = streaming
        self._local: dict[str, ManagedRun] = {}

    def local(self, run_id: str) -> ManagedRun | None:
        return self._local.get(run_id)

    async def launch(self, record: RunRecord, owner: str, run: Run, encode: Encoder, *,
                     durable: bool, on_done: Callable[[], Awaitable[None]],
                     observe: Callable[[RunEvent], None] | None = None,
                     ) -> tuple[ManagedRun, int]:
        """Record the run and start it; returns it with a reader token for the caller,
        opened before the first event so the starting client misses nothing."""
        await self.registry.create(owner, record)
        managed = ManagedRun(record, owner, run, RunChannel(durable=durable))
        token, _ = managed.channel.open_reader(0)
        self._local[record.run_id] = managed
        managed.task = asyncio.ensure_future(self._execute(managed, encode, on_done, observe))
        managed.task.add_done_callback(_log_failure)
        return managed, token

    async def _execute(self, managed: ManagedRun, encode: Encoder,
                       on_done: Callable[[], Awaitable[None]],
                       observe: Callable[[RunEvent], None] | None) -> None:
        channel, run = managed.channel, managed.run
        seq = 0
        pending: list[LoggedEvent] = []
        wake_writer = anyio.Event()

        def emit(event: RunEvent) -> None:
            nonlocal seq, wake_writer
            for name, data in encode(event):
                seq += 1
                frame = LoggedEvent(seq, name, data)
                channel.push(frame)
                if channel.durable and seq <= self.run_settings.max_logged_events:
                    pending.append(frame)
                    if len(pending) >= LOG_BATCH:
                        wake_writer.set()
            if observe is not None:
                observe(event)

        async def write_log() -> None:
            nonlocal wake_writer
            while True:
                with anyio.move_on_after(LOG_FLUSH_S):
                    await wake_writer.wait()
                wake_writer = anyio.Event()
                # Shielded: the batch has left `pending`; cancelled mid-append it would be
                # lost to the log (the final flush only sees what is still pending).
                with anyio.CancelScope(shield=True):
                    await self._flush(managed, pending)

        managed.status = "running"
        try:
            await self._set_status(managed, "running")
            async with anyio.create_task_group() as tg:
                managed._scope = tg.cancel_scope
                if managed.cancelled:
                    tg.cancel_scope.cancel()
                if channel.durable:
                    tg.start_soon(write_log)
                tg.start_soon(self._watch_cancel, managed)
                await run.produce(emit)
                tg.cancel_scope.cancel()
            # A cancelled run (a client hung up, or a cancel request) is "interrupted".
            managed.status = "interrupted" if managed.cancelled else _run_status(run)
        except BaseException:
            managed.status = "interrupted"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(managed, pending, on_done)

    async def _finish(self, managed: ManagedRun, pending: list[LoggedEvent],
                      on_done: Callable[[], Awaitable[None]]) -> None:
        try:
            await on_done()
        finally:
            if managed.channel.durable:
                await self._flush(managed, pending)
                with contextlib.suppress(Exception):
                    await self.events.finish(managed.run_id)
            await self._set_status(managed, managed.status)
            managed.channel.close()
            managed.done.set()
            self._local.pop(managed.run_id, None)

    async def _flush(self, managed: ManagedRun, pending: list[LoggedEvent]) -> None:
        if not pending:
            return
        batch = pending[:]
        del pending[:]
        try:
            await self.events.append(managed.run_id, batch)
        except Exception as exc:
            # Live readers are unaffected; a reconnect may not be able to replay these.
            log.warning("run_events_not_logged", run_id=managed.run_id, events=len(batch),
                        exc_type=type(exc).__name__)
        managed.channel.logged(batch[-1].seq)

    async def _set_status(self, managed: ManagedRun, status: str) -> None:
        try:
            await self.registry.set_status(managed.run_id, status)
        except Exception as exc:
            log.warning("run_status_not_saved", run_id=managed.run_id, status=status,
                        exc_type=type(exc).__name__)

    async def _watch_cancel(self, managed: ManagedRun) -> None:
        """Stop the run when a cancel for it was recorded (by this or another worker)."""
        while True:
            await anyio.sleep(self.run_settings.cancel_poll_s)
            try:
                action = await self.registry.cancel_requested(managed.run_id)
            except Exception as exc:  # the store is down: the run goes on; ask again
                log.warning("run_cancel_check_failed", run_id=managed.run_id,
                            exc_type=type(exc).__name__)
                continue
            if action is not None:
                log.info("run_cancelled", run_id=managed.run_id, action=action)
                self.cancel_local(managed)
                return

    def cancel_local(self, managed: ManagedRun) -> None:
        """Stop a run of this process at its last finished step."""
        managed.cancelled = True
        if managed._scope is not None:
            managed._scope.cancel()

    async def cancel(self, owner: str, record: RunRecord, action: str) -> None:
        """Cancel a run wherever it executes (here at once; elsewhere at its next poll)."""
        await self.registry.request_cancel(owner, record.thread_id, record.run_id, action)
        managed = self._local.get(record.run_id)
        if managed is not None:
            self.cancel_local(managed)

    async def wait(self, owner: str, record: RunRecord) -> str:
        """Wait for the run to end; returns its final status."""
        managed = self._local.get(record.run_id)
        if managed is not None:
            await managed.done.wait()
            return managed.status
        deadline = self._deadline(record)
        while True:
            current = await self.registry.get(owner, record.thread_id, record.run_id)
            if current is None or current.status in FINAL_STATUSES:
                return current.status if current else "error"
            if time.time() > deadline:
                return "error"  # its worker died without recording the end
            await anyio.sleep(REMOTE_POLL_S)

    async def follow(self, owner: str, record: RunRecord, *, after: int | None,
                     token: int | None = None) -> AsyncIterator[LoggedEvent]:
        """The run's events after `after` (None: from now on), until it ends."""
        managed = self._local.get(record.run_id)
        if managed is None:
            async for event in self._follow_remote(owner, record, after):
                yield event
            return
        channel = managed.channel
        if token is None:
            token, reader = channel.open_reader(channel.last_seq if after is None else after)
        else:
            reader = channel.reader(token)
        try:
            while True:
                if reader.cursor < channel.first_held - 1 and channel.durable:
                    # Behind what is held here (a reconnect): catch up from the log.
                    older = await self.events.read(record.run_id, after=reader.cursor,
                                                   limit=LOG_BATCH)
                    older = [e for e in older if e.seq < channel.first_held]
                    if older:
                        for event in older:
                            yield event
                        reader.cursor = older[-1].seq
                        continue
                    reader.cursor = channel.first_held - 1
                for event in channel.take(reader):
                    yield event
                if channel.done and reader.cursor >= channel.last_seq:
                    return
                await channel.changed()
        finally:
            channel.close_reader(token)

    async def _follow_remote(self, owner: str, record: RunRecord,
                             after: int | None) -> AsyncIterator[LoggedEvent]:
        cursor = await self.events.last_seq(record.run_id) if after is None else after
        deadline = self._deadline(record)
        while True:
            events = await self.events.read(record.run_id, after=cursor, limit=LOG_BATCH)
            for event in events:
                yield event
                cursor = event.seq
            if events:
                continue
            current = await self.registry.get(owner, record.thread_id, record.run_id)
            if current is None or current.status in FINAL_STATUSES or time.time() > deadline:
                for event in await self.events.read(record.run_id, after=cursor,
                                                    limit=self.run_settings.max_logged_events):
                    yield event
                return
            await anyio.sleep(REMOTE_POLL_S)

    def _deadline(self, record: RunRecord) -> float:
        # No run lives past the maximum duration; a record still "running" after that
        # (and the cancel grace) belongs to a worker that died mid-run.
        return record.created_at.timestamp() + self.streaming.max_duration_s + 60

    async def aclose(self) -> None:
        """On shutdown, after the executor's drain has stopped every run: let the tasks
        record how their runs ended."""
        tasks = [m.task for m in self._local.values() if m.task is not None]
        if tasks:
            with anyio.move_on_after(10):
                await asyncio.wait(tasks)


async def purge_run_events(events: EventLog, settings: RunSettings,
                           interval_s: float = 60.0) -> None:
    """Forget the logged events of runs that ended over `event_retention_s` ago."""
    while True:
        await anyio.sleep(interval_s)
        try:
            await events.purge(settings.event_retention_s)
        except Exception as exc:
            log.warning("run_events_purge_failed", exc_type=type(exc).__name__)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("run_task_failed", exc_info=task.exception())


def _run_status(run: Run) -> str:
    return {"success": "success", "timeout": "timeout"}.get(run.outcome, "error")
