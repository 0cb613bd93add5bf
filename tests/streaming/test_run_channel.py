"""RunChannel: what a run's in-process buffer keeps, and for whom."""

from __future__ import annotations

from service.persistence.event_log import LoggedEvent
from service.streaming.run_channel import RunChannel


def _push(channel: RunChannel, *seqs: int) -> None:
    for seq in seqs:
        channel.push(LoggedEvent(seq, "values", b"{}"))


def test_events_every_reader_took_are_dropped() -> None:
    channel = RunChannel(durable=False)
    fast_token, fast = channel.open_reader(0)
    _, slow = channel.open_reader(0)
    _push(channel, 1, 2, 3)
    assert [e.seq for e in channel.take(fast)] == [1, 2, 3]
    assert len(channel.frames) == 3  # the slow reader has not read them yet
    assert [e.seq for e in channel.take(slow)] == [1, 2, 3]
    assert not channel.frames and channel.first_held == 4
    channel.close_reader(fast_token)


def test_without_readers_nothing_is_held() -> None:
    channel = RunChannel(durable=False)
    token, _ = channel.open_reader(0)
    channel.close_reader(token)
    _push(channel, 1, 2)
    channel.logged(0)
    assert not channel.frames


def test_a_durable_run_holds_events_until_they_are_logged() -> None:
    channel = RunChannel(durable=True)
    _, reader = channel.open_reader(0)
    _push(channel, 1, 2, 3)
    assert [e.seq for e in channel.take(reader)] == [1, 2, 3]
    assert [e.seq for e in channel.frames] == [1, 2, 3]
    channel.logged(2)
    assert [e.seq for e in channel.frames] == [3]
    assert channel.first_held == 3


def test_a_late_reader_starts_after_its_cursor() -> None:
    channel = RunChannel(durable=True)
    _push(channel, 1, 2, 3, 4)
    _, reader = channel.open_reader(2)
    assert [e.seq for e in channel.take(reader)] == [3, 4]
    assert channel.take(reader) == []
    channel.close()
    assert channel.done and reader.cursor == channel.last_seq == 4


def test_a_run_nobody_follows_holds_nothing() -> None:
    """A non-durable run whose client left (on_disconnect=continue) keeps no events."""
    channel = RunChannel(durable=False)
    token, _ = channel.open_reader(0)
    _push(channel, 1)
    channel.close_reader(token)
    _push(channel, 2, 3, 4)
    assert not channel.frames and channel.last_seq == 4
