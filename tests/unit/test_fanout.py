"""The resume ring, event ids and the status feed (gateway/fanout.py): pure, on one event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import BadRequest
from gateway.fanout import Broadcaster, Envelope, EventId, StatusFeed, Subscription
from gateway.ingest import StreamState
from gateway.schema import EVENTS_LOST, SHUTTING_DOWN, StatusEvent
from harness.helpers import detection_event

RUN = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def status(state: StreamState = StreamState.RUNNING, stream: str = "cam", reason: str = "") -> StatusEvent:
    return StatusEvent(stream=stream, state=state, reason=reason, at=time.time(), triton="available")


def drain(sub: Subscription) -> list[Envelope]:
    out = list(sub.backlog)
    sub.backlog.clear()
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if item is not None:
            out.append(item)
    return out


def seqs(envelopes: list[Envelope]) -> list[int | None]:
    return [e.id.seq if e.id else None for e in envelopes]


def broadcaster(**kw: object) -> tuple[Broadcaster, Clock]:
    clock = Clock()
    b = Broadcaster(stream="cam", run=RUN, clock=clock, **kw)  # type: ignore[arg-type]
    return b, clock


def publish(b: Broadcaster, n: int, start: int = 1) -> None:
    for i in range(start, start + n):
        b.publish(detection_event("cam", i))


def run_in_loop(fn: object) -> object:
    async def main() -> object:
        return fn()  # type: ignore[operator]

    return asyncio.run(main())


def test_event_ids_parse_and_order() -> None:
    assert str(EventId(RUN, 7)) == f"{RUN}-7"
    assert EventId.parse(f" {RUN}-7 ") == EventId(RUN, 7)
    assert EventId(RUN, 9) < EventId(RUN + 1, 1)  # a later run is newer, whatever its seq
    for bad in ("", "7", "a-b", f"{RUN}-", "-1-2", "1" * 16 + "-1", f"{RUN}-7-8"):
        with pytest.raises(BadRequest):
            EventId.parse(bad)


def test_a_new_subscriber_gets_the_current_status_then_live_events() -> None:
    def scenario() -> None:
        b, _ = broadcaster()
        b.publish(status(StreamState.CONNECTING))
        b.publish(status(StreamState.RUNNING))
        publish(b, 3)
        sub = b.subscribe()
        publish(b, 2, start=4)
        got = drain(sub)
        assert seqs(got) == [2, 6, 7]
        assert isinstance(got[0].event, StatusEvent) and got[0].event.state is StreamState.RUNNING

    run_in_loop(scenario)


def test_a_reconnecting_subscriber_gets_exactly_what_it_missed() -> None:
    def scenario() -> None:
        b, _ = broadcaster()
        b.publish(status())
        publish(b, 10)  # seq 2..11
        sub = b.subscribe(EventId(RUN, 5))
        publish(b, 1, start=11)  # seq 12, live
        assert seqs(drain(sub)) == list(range(6, 13))
        # an id that is the latest: nothing replayed, nothing lost
        sub = b.subscribe(EventId(RUN, 12))
        assert drain(sub) == []

    run_in_loop(scenario)


def test_an_id_older_than_the_ring_gets_a_counted_gap_never_a_silent_one() -> None:
    def scenario() -> None:
        b, clock = broadcaster(resume_events=5, resume_s=60)
        b.publish(status())  # seq 1
        publish(b, 20)  # seq 2..21; the ring keeps 17..21
        got = drain(b.subscribe(EventId(RUN, 3)))
        notice = got[0]
        assert notice.id is None and isinstance(notice.event, StatusEvent)
        assert notice.event.reason == EVENTS_LOST and notice.event.lost_events == 13  # 4..16
        # then the current status (older than the ring), then the ring
        assert seqs(got[1:]) == [1, 17, 18, 19, 20, 21]
        # the ring's age limit: 61 s later, nothing is kept, and everything after 21... is 0 events
        clock.now += 61
        assert drain(b.subscribe(EventId(RUN, 21))) == []
        got = drain(b.subscribe(EventId(RUN, 18)))
        assert isinstance(got[0].event, StatusEvent) and got[0].event.lost_events == 3  # 19..21, aged out

    run_in_loop(scenario)


def test_ids_of_a_previous_run_count_its_lost_tail_and_unknown_runs_say_unknown() -> None:
    def scenario() -> None:
        b, _ = broadcaster(previous=EventId(RUN - 5000, 40))
        b.publish(status())
        publish(b, 2)
        got = drain(b.subscribe(EventId(RUN - 5000, 35)))
        assert isinstance(got[0].event, StatusEvent) and got[0].event.lost_events == 5  # 36..40 of the old run
        assert seqs(got[1:]) == [1, 2, 3]  # and the whole new run, which the ring still holds
        # resumed exactly where the previous run ended: this run's events, each once
        assert seqs(drain(b.subscribe(EventId(RUN - 5000, 40)))) == [1, 2, 3]
        got = drain(b.subscribe(EventId(RUN - 9000, 3)))  # a run nobody remembers
        assert isinstance(got[0].event, StatusEvent) and got[0].event.lost_events is None
        got = drain(b.subscribe(EventId(RUN, 99)))  # from the future of this run: not ours either
        assert isinstance(got[0].event, StatusEvent) and got[0].event.lost_events is None

    run_in_loop(scenario)


def test_a_slow_subscriber_learns_how_many_events_it_lost() -> None:
    def scenario() -> None:
        b, _ = broadcaster(queue_size=4)
        sub = b.subscribe()
        publish(b, 10)
        assert sub.take_lost() == 6 and b.dropped == 6
        assert sub.take_lost() == 0

    run_in_loop(scenario)


def test_a_closed_stream_ends_new_and_old_subscribers() -> None:
    def scenario() -> None:
        b, _ = broadcaster()
        old = b.subscribe()
        b.publish(status(StreamState.STOPPED, reason=SHUTTING_DOWN))
        b.close()
        assert old.queue.get_nowait() is not None and old.queue.get_nowait() is None
        new = b.subscribe()
        assert new.backlog[0].event.state is StreamState.STOPPED  # type: ignore[union-attr]
        assert new.queue.get_nowait() is None
        assert b.publish(status()) is None

    run_in_loop(scenario)


def test_the_status_feed_sends_each_streams_current_status_then_changes() -> None:
    def scenario() -> None:
        a, _ = broadcaster()
        feed = StatusFeed()
        for env in (a.publish(status(StreamState.CONNECTING)), a.publish(status(StreamState.RUNNING))):
            assert env is not None
            feed.publish(env)
        other = Broadcaster(stream="lobby", run=RUN)
        env = other.publish(status(StreamState.RECONNECTING, stream="lobby"))
        assert env is not None
        feed.publish(env)
        sub = feed.subscribe()
        states = {e.event.stream: e.event.state for e in drain(sub)}  # type: ignore[union-attr]
        assert states == {"cam": StreamState.RUNNING, "lobby": StreamState.RECONNECTING}
        # a removed stream leaves the snapshot
        removed = other.publish(status(StreamState.STOPPED, stream="lobby", reason="stream removed"))
        assert removed is not None
        feed.publish(removed)
        assert [e.event.stream for e in feed.current()] == ["cam"]
        feed.close()
        assert feed.subscribe().queue.get_nowait() is None

    run_in_loop(scenario)
