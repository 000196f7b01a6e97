"""Fan-out owns one stream's subscribers, its resume ring, and the gateway-wide status feed.

Each subscriber gets its own bounded queue of typed events.  Publishing never blocks
and never waits for a subscriber.  A full queue loses its oldest event (counted per
stream, exported as a metric), and the subscriber is told how many it lost by a
``status`` event (reason ``events_lost``) before its next event: a gap is never silent.
The SSE response disconnects a subscriber that stops reading.  Inference work does not
depend on the number of subscribers.

**Event ids and resuming.**  Every event of a stream has the id ``"<run>-<seq>"``: ``run``
is when this run of the stream began (Unix milliseconds, strictly increasing per stream
id, so a stream removed and added again, or the gateway restarted, never reuses an
id), and ``seq`` counts the run's events from 1 without holes.  The broadcaster keeps
the last ``ingest.resume_events`` events, none older than ``ingest.resume_s``.  A client
that reconnects with ``Last-Event-ID`` (``EventSource`` sends it by itself) is replayed
what it missed from the ring, then goes on live.  When the ring no longer holds
everything after that id, the client first gets a ``status`` event (reason
``events_lost``) with how many events are gone, or ``null`` when nobody can know (an
id from a run of the stream this gateway no longer remembers).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import BadRequest
from gateway.ingest import StreamState
from gateway.schema import EVENTS_LOST, SHUTTING_DOWN, StatusEvent, StreamEvent, TritonState

_EVENT_ID = re.compile(r"([0-9]{1,15})-([0-9]{1,15})")


@dataclass(frozen=True, order=True)
class EventId:
    run: int  # when the stream's run began, Unix ms
    seq: int  # from 1 within the run

    def __str__(self) -> str:
        return f"{self.run}-{self.seq}"

    @classmethod
    def parse(cls, text: str) -> EventId:
        """A ``Last-Event-ID``; a malformed one is the client's error (400)."""
        match = _EVENT_ID.fullmatch(text.strip())
        if match is None:
            raise BadRequest(f"Last-Event-ID must be an event id of this API, '<run>-<seq>', got {text[:64]!r}")
        return cls(int(match[1]), int(match[2]))


@dataclass(frozen=True)
class Envelope:
    id: EventId | None  # None: an event for one subscriber only (a gap notice), outside the sequence
    event: StreamEvent
    data: str  # the event as JSON: serialized once, however many subscribers send it
    at: float = 0.0  # monotonic publish time: the ring's age limit


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Envelope | None]  # None: the stream is gone, end the response
    backlog: deque[Envelope] = field(default_factory=deque)  # replayed before the queue
    lost: int = 0  # events dropped from the queue since the subscriber was last told

    async def get(self) -> Envelope | None:
        if self.backlog:
            return self.backlog.popleft()
        return await self.queue.get()

    def put(self, item: Envelope | None) -> bool:
        """Queue ``item``; False when the oldest queued event had to make room."""
        lost = self.queue.full()
        if lost:
            self.queue.get_nowait()  # a slow subscriber loses its oldest event, never the stream
            self.lost += 1
        self.queue.put_nowait(item)
        return not lost

    def take_lost(self) -> int:
        lost, self.lost = self.lost, 0
        return lost


def _subscribe(
    queue_size: int, backlog: list[Envelope], subscribers: set[Subscription], *, closed: bool
) -> Subscription:
    """A subscription that replays ``backlog`` first; on a closed fan-out it ends right after it."""
    sub = Subscription(asyncio.Queue(maxsize=queue_size), deque(backlog))
    if closed:
        sub.put(None)
    else:
        subscribers.add(sub)
    return sub


def gap_notice(stream: str, state: StreamState, triton: TritonState, lost: int | None) -> Envelope:
    """A ``status`` event for one subscriber: ``lost`` events after its position are gone."""
    event = StatusEvent(stream=stream, state=state, reason=EVENTS_LOST, at=time.time(), triton=triton, lost_events=lost)
    return Envelope(None, event, event.model_dump_json())


@dataclass
class Broadcaster:
    """Owned by one stream; lives on the event loop (not thread-safe by design)."""

    stream: str
    run: int  # Unix ms: see the module docstring
    queue_size: int = 16
    resume_events: int = 120
    resume_s: float = 60.0
    previous: EventId | None = None  # the last event of the stream's previous run, when known
    clock: Callable[[], float] = time.monotonic
    _subscribers: set[Subscription] = field(default_factory=set)
    _ring: deque[Envelope] = field(default_factory=deque)
    _seq: int = 0
    last_status: Envelope | None = None
    dropped: int = 0  # events lost by slow subscribers, over the stream's life
    closed: bool = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def last_id(self) -> EventId | None:
        return EventId(self.run, self._seq) if self._seq else None

    def subscribe(self, after: EventId | None = None) -> Subscription:
        """A new subscriber.  ``after`` (its ``Last-Event-ID``): replay what came after it.
        Taken atomically on the event loop with the registration: nothing is missed or sent twice."""
        return _subscribe(self.queue_size, self._replay(after), self._subscribers, closed=self.closed)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def publish(self, event: StreamEvent) -> Envelope | None:
        if self.closed:
            return None
        self._seq += 1
        now = self.clock()
        envelope = Envelope(EventId(self.run, self._seq), event, event.model_dump_json(), now)
        if isinstance(event, StatusEvent):
            self.last_status = envelope
        self._ring.append(envelope)
        while len(self._ring) > self.resume_events or (self._ring and now - self._ring[0].at > self.resume_s):
            self._ring.popleft()
        for sub in self._subscribers:
            if not sub.put(envelope):
                self.dropped += 1
        return envelope

    def close(self) -> None:
        """The stream is gone: every subscriber gets what is queued, then its response ends."""
        self.closed = True
        for sub in self._subscribers:
            if not sub.put(None):
                self.dropped += 1

    def _replay(self, after: EventId | None) -> list[Envelope]:
        status = [self.last_status] if self.last_status is not None else []
        if after is None:  # a new subscriber learns the current state first
            return status
        self._expire()
        ring = list(self._ring)
        first = ring[0].id.seq if ring and ring[0].id is not None else self._seq + 1
        if after.run == self.run and after.seq <= self._seq:
            if after.seq >= first - 1:  # the ring holds everything after it
                return [e for e in ring if e.id is not None and e.id.seq > after.seq]
            lost: int | None = first - 1 - after.seq  # aged out of the ring
        elif self.previous is not None and after.run == self.previous.run and after.seq <= self.previous.seq:
            lost = (self.previous.seq - after.seq) + (first - 1)  # the rest of the previous run, and more
        else:
            lost = None  # a run this gateway does not remember (it restarted), or not an id of this stream
        if lost == 0:  # the previous run ended at the client's id, and the ring holds all of this one
            return ring
        # the current state, if it is older than the ring, then the ring
        older = [self.last_status] if self.last_status is not None and self.last_status not in ring else []
        return [self.gap_notice(lost), *older, *ring]

    def gap_notice(self, lost: int | None) -> Envelope:
        """A ``status`` event for one subscriber, in the stream's current state: ``lost`` events are gone."""
        current = self.last_status.event if self.last_status is not None else None
        if not isinstance(current, StatusEvent):
            return gap_notice(self.stream, StreamState.CONNECTING, "available", lost)
        return gap_notice(self.stream, current.state, current.triton, lost)

    def _expire(self) -> None:
        now = self.clock()
        while self._ring and now - self._ring[0].at > self.resume_s:
            self._ring.popleft()


@dataclass(eq=False)
class StatusFeed:
    """Every stream's ``status`` events in one feed (``GET /events``): a page that lists many
    streams needs one connection, not one per stream.  A subscriber first gets each stream's
    current status, then every change; state, not history, so there is nothing to resume."""

    queue_size: int = 256
    _current: dict[str, Envelope] = field(default_factory=dict)
    _subscribers: set[Subscription] = field(default_factory=set)
    dropped: int = 0
    closed: bool = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        return _subscribe(self.queue_size, list(self._current.values()), self._subscribers, closed=self.closed)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def current(self) -> list[Envelope]:
        return list(self._current.values())

    def publish(self, envelope: Envelope) -> None:
        event = envelope.event
        assert isinstance(event, StatusEvent)
        if event.state is StreamState.STOPPED and event.reason != SHUTTING_DOWN:
            self._current.pop(event.stream, None)  # removed: a new subscriber no longer hears of it
        else:
            self._current[event.stream] = envelope
        for sub in self._subscribers:
            if not sub.put(envelope):
                self.dropped += 1

    def close(self) -> None:
        """Shutdown: every subscriber gets what is queued, then its response ends."""
        self.closed = True
        for sub in self._subscribers:
            sub.put(None)
