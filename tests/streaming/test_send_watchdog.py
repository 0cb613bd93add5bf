"""The worker's send watchdog: one task stops every stream whose write waited too long."""

from __future__ import annotations

from dataclasses import dataclass

from service.streaming.send_watchdog import SendWatchdog


@dataclass(eq=False)
class Stream:
    send_timeout_s: float
    sending_since: float | None = None
    timed_out: int = 0

    def send_timed_out(self) -> None:
        self.timed_out += 1


def test_only_a_write_waiting_past_its_timeout_stops_its_stream() -> None:
    now = [100.0]
    watchdog = SendWatchdog(clock=lambda: now[0])
    idle = Stream(send_timeout_s=5)                         # nothing being written
    quick = Stream(send_timeout_s=5, sending_since=99.0)    # writing for 1 s
    stuck = Stream(send_timeout_s=5, sending_since=94.0)    # writing for 6 s
    short = Stream(send_timeout_s=0.5, sending_since=99.0)  # its own, shorter timeout
    for stream in (idle, quick, stuck, short):
        watchdog.watch(stream)

    watchdog.check()
    assert (idle.timed_out, quick.timed_out, stuck.timed_out, short.timed_out) == (0, 0, 1, 1)

    # A stopped stream is told once, not at every check.
    now[0] = 200.0
    quick.sending_since = None
    watchdog.check()
    assert (idle.timed_out, quick.timed_out, stuck.timed_out, short.timed_out) == (0, 0, 1, 1)


def test_an_unwatched_stream_is_never_stopped() -> None:
    now = [0.0]
    watchdog = SendWatchdog(clock=lambda: now[0])
    stream = Stream(send_timeout_s=1, sending_since=0.0)
    watchdog.watch(stream)
    watchdog.unwatch(stream)
    now[0] = 10.0
    watchdog.check()
    assert stream.timed_out == 0
