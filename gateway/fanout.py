"""Fan-out: one stream's events to many subscribers, each with its own bounded queue.

Publishing never blocks and never waits for a subscriber.  A full queue loses its
oldest event (counted per subscriber); the SSE response disconnects a subscriber
that stops reading after its send timeout.  Inference work does not depend on the
number of subscribers.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str  # "prediction" | "status"
    data: dict[str, Any]
    id: int


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Event | None]  # None: the stream is gone, end the response
    dropped: int = 0

    async def get(self) -> Event | None:
        return await self.queue.get()

    def put(self, item: Event | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # a slow subscriber loses its oldest event, never the stream
            self.dropped += 1
        self.queue.put_nowait(item)


@dataclass
class Broadcaster:
    """Owned by one stream; lives on the event loop (not thread-safe by design)."""

    queue_size: int = 16
    _subscribers: set[Subscription] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    last_status: Event | None = None
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

    def publish(self, type_: str, data: dict[str, Any]) -> Event | None:
        if self.closed:
            return None
        event = Event(type_, data, next(self._ids))
        if type_ == "status":
            self.last_status = event
        for sub in self._subscribers:
            sub.put(event)
        return event

    def close(self) -> None:
        """The stream is gone: every subscriber gets what is queued, then its response ends."""
        self.closed = True
        for sub in self._subscribers:
            sub.put(None)
