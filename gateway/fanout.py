"""Fan-out owns one stream's subscribers: each gets its own bounded queue of typed events.

Publishing never blocks and never waits for a subscriber.  A full queue loses its
oldest event (counted per stream, exported as a metric); the SSE response
disconnects a subscriber that stops reading after its send timeout.  Inference
work does not depend on the number of subscribers.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from gateway.schema import StatusEvent, StreamEvent


@dataclass(frozen=True)
class Envelope:
    id: int  # the SSE id: increasing per stream
    event: StreamEvent
    data: str  # the event as JSON: serialized once, however many subscribers send it


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Envelope | None]  # None: the stream is gone, end the response

    async def get(self) -> Envelope | None:
        return await self.queue.get()

    def put(self, item: Envelope | None) -> bool:
        """Queue ``item``; False when the oldest queued event had to make room."""
        lost = self.queue.full()
        if lost:
            self.queue.get_nowait()  # a slow subscriber loses its oldest event, never the stream
        self.queue.put_nowait(item)
        return not lost


@dataclass
class Broadcaster:
    """Owned by one stream; lives on the event loop (not thread-safe by design)."""

    queue_size: int = 16
    _subscribers: set[Subscription] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    last_status: Envelope | None = None
    dropped: int = 0  # events lost by slow subscribers, over the stream's life
    closed: bool = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        sub = Subscription(asyncio.Queue(maxsize=self.queue_size))
        if self.closed:
            sub.put(None)
        if self.last_status is not None:  # a new subscriber learns the current state first
            sub.queue.put_nowait(self.last_status)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def publish(self, event: StreamEvent) -> Envelope | None:
        if self.closed:
            return None
        envelope = Envelope(next(self._ids), event, event.model_dump_json())
        if isinstance(event, StatusEvent):
            self.last_status = envelope
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
