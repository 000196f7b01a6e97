"""Events through Redis Streams: the owner writes each stream's events, every gateway reads them.

**Writing (``EventLog``).**  The gateway that runs a stream appends each of its events
to the stream's Redis Stream, with the event's own SSE id (``<run>-<seq>``) as the
entry id, so an id means the same event on every gateway.  Appends go through one
bounded queue per gateway and one writer task that sends whatever is queued in one
pipelined round trip.  While Redis is down the queue keeps the newest
``cluster.events_maxlen`` x 4 events (the oldest are dropped and counted) and the
writer sends them, in order, when Redis answers again.

**Reading (``EventHub``).**  ``GET /streams/{id}/events`` on any gateway subscribes to a
``Mirror`` of the stream on that gateway: one per stream with subscribers, fed by one
reader task that sends a single ``XREAD BLOCK`` for every mirrored stream at once, so
Redis sees one reader per gateway, not one per client.  A subscriber that sends
``Last-Event-ID`` first gets what it missed from the Redis Stream (``XRANGE``), then
the mirror's live events, with no event missed or repeated.  A hole in a run's
sequence (events the owner dropped while Redis was down) and events trimmed from
the Redis Stream are announced as a ``status`` event with reason ``events_lost``,
as on a single gateway.

While Redis is down, a mirror of a stream this gateway runs is fed from the stream's
local broadcaster instead (the same ids), so subscribers of local streams go on
unaware; mirrors of other gateways' streams wait (keep-alives go on) and resume
from their last id when Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import TypeAdapter, ValidationError

from gateway.cluster.store import Outgoing, RedisStore, StoredEvent
from gateway.errors import ClusterUnavailable, StreamNotFound
from gateway.fanout import Broadcaster, Envelope, EventId, Subscription, gap_notice
from gateway.ingest import StreamState
from gateway.schema import (
    EVENTS_LOST,
    STREAM_REMOVED,
    PredictionEvent,
    StatusEvent,
    StreamEvent,
    TritonState,
    event_type,
)

log = logging.getLogger(__name__)
_PREDICTION: TypeAdapter[PredictionEvent] = TypeAdapter(PredictionEvent)  # discriminated by task: fast
MIRROR_RING = 256  # a mirror's recent events: joins a resume from Redis to the live events
READ_COUNT = 512  # entries per stream per XREAD
# After an XREAD that returned events, wait before the next one, so that events gather and one
# XREAD carries more of them.  An XREAD costs ~7 µs of the gateway's CPU per mirrored stream
# (redis-py packs every key and id, measured with bench/event_path.py), so the wait grows with
# the mirrored streams to keep the reader within READ_BUDGET of a core: 5 ms up to ~70 streams,
# 70 ms at 1,000.  It adds at most that to an event's delivery.
READ_LINGER_S = 0.005
READ_COST_PER_STREAM_S = 7e-6
READ_BUDGET = 0.1  # of a core


def read_linger(mirrored: int) -> float:
    return max(READ_LINGER_S, mirrored * READ_COST_PER_STREAM_S / READ_BUDGET)


def envelope_of(stored: StoredEvent) -> Envelope:
    """An event read from Redis, validated as the kind its entry names."""
    event: StreamEvent
    if stored.kind == "status":
        event = StatusEvent.model_validate_json(stored.data)
    else:
        event = _PREDICTION.validate_json(stored.data)
    return Envelope(EventId.parse(stored.id), event, stored.data, time.monotonic())


class EventLog:
    """The writer: every event of the streams this gateway runs, appended to Redis in order."""

    def __init__(self, store: RedisStore, maxlen: int, *, on_drop: Callable[[int], None] | None = None) -> None:
        self._store = store
        self._maxlen = maxlen
        self._queue: deque[Outgoing] = deque()
        self._limit = maxlen * 4
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_drop = on_drop or (lambda n: None)
        self.written = 0
        self.dropped = 0  # lost while Redis was down (queue full) or refused by Redis
        self.down_since: float | None = None

    def append(self, stream: str, envelope: Envelope) -> None:
        """Called from the stream worker (event loop): never blocks, never raises."""
        if envelope.id is None:
            return
        if len(self._queue) >= self._limit:
            self._queue.popleft()
            self._drop(1)
        self._queue.append(Outgoing(stream, str(envelope.id), event_type(envelope.event), envelope.data))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _drop(self, n: int) -> None:
        self.dropped += n
        self._on_drop(n)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cluster-event-log")

    async def stop(self, flush_s: float = 2.0) -> None:
        """Send what is queued (bounded by ``flush_s``), then stop; safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        deadline = time.monotonic() + flush_s
        while self._queue and self.down_since is None and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), 1024))]
                try:
                    accepted = await self._store.append(batch, self._maxlen)
                except ClusterUnavailable as e:
                    self._queue.extendleft(reversed(batch))  # in order, in front of what came since
                    while len(self._queue) > self._limit:
                        self._queue.popleft()
                        self._drop(1)
                    if self.down_since is None:
                        self.down_since = time.monotonic()
                        log.warning("cluster: cannot append events to Redis (%s); keeping them", e.message)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if self.down_since is not None:
                    log.warning("cluster: Redis takes events again (%d queued)", len(self._queue))
                    self.down_since = None
                backoff = 0.1
                refused = accepted.count(False)
                self.written += len(accepted) - refused
                if refused:  # ids not above the stream's last: another gateway runs the stream now
                    self._drop(refused)


@dataclass(eq=False)
class Mirror:
    """One stream's events on this gateway, for its local subscribers."""

    stream: str
    position: EventId | None  # the last event delivered (None: before the first)
    queue_size: int
    subscribers: dict[Subscription, EventId | None] = field(default_factory=dict)  # -> what it has already
    ring: deque[Envelope] = field(default_factory=lambda: deque(maxlen=MIRROR_RING))
    last_status: Envelope | None = None
    local: Subscription | None = None  # fed from the local broadcaster while Redis is down
    dropped: int = 0
    closed: bool = False

    def deliver(self, envelope: Envelope) -> None:
        ident = envelope.id
        if ident is None or (self.position is not None and ident <= self.position):
            return
        prev = self.position
        self.position = ident
        if prev is not None and ident.run == prev.run and ident.seq > prev.seq + 1:
            self._fan(self.notice(ident.seq - prev.seq - 1))  # the owner lost these (Redis was down)
        if isinstance(envelope.event, StatusEvent):
            self.last_status = envelope
        self.ring.append(envelope)
        self._fan(envelope)
        event = envelope.event
        if isinstance(event, StatusEvent) and event.state is StreamState.STOPPED and event.reason == STREAM_REMOVED:
            self.close()

    def _fan(self, envelope: Envelope) -> None:
        ident = envelope.id
        for sub, floor in self.subscribers.items():
            if floor is not None and ident is not None and ident <= floor:
                continue  # its resume read from Redis had it already
            if not sub.put(envelope):
                self.dropped += 1

    def notice(self, lost: int | None) -> Envelope:
        current = self.last_status.event if self.last_status is not None else None
        if isinstance(current, StatusEvent):
            return gap_notice(self.stream, current.state, current.triton, lost)
        return gap_notice(self.stream, StreamState.CONNECTING, "available", lost)

    def close(self, last: Envelope | None = None) -> None:
        self.closed = True
        for sub in self.subscribers:
            if last is not None:
                sub.put(last)
            sub.put(None)
        self.subscribers.clear()


class EventHub:
    """The reader: mirrors of the streams this gateway's clients watch, fed from Redis."""

    def __init__(
        self,
        store: RedisStore,
        *,
        queue_size: int,
        resume_limit: int,
        local: Callable[[str], Broadcaster | None],
    ) -> None:
        self._store = store
        self._queue_size = queue_size
        self._resume_limit = resume_limit
        self._local = local  # the broadcaster of a stream this gateway runs, else None
        self._mirrors: dict[str, Mirror] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pumps: set[asyncio.Task[None]] = set()
        self.redis_up = True
        self.read_events = 0

    @property
    def subscribers(self) -> int:
        return sum(len(m.subscribers) for m in self._mirrors.values())

    def subscribers_of(self, sid: str) -> int:
        mirror = self._mirrors.get(sid)
        return len(mirror.subscribers) if mirror is not None else 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cluster-event-hub")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for mirror in list(self._mirrors.values()):
            self._unfeed(mirror)
            mirror.close()
        self._mirrors.clear()

    def drain(self, reason: str) -> None:
        """Shutdown: each subscriber gets a last ``status`` event (``reason``), then its response ends."""
        for mirror in list(self._mirrors.values()):
            self._unfeed(mirror)
            mirror.close(_final(mirror, reason))
        self._mirrors.clear()

    def forget(self, known: set[str]) -> None:
        """Streams no longer registered: their mirrors end (a removal nobody announced, e.g. its owner was dead)."""
        for sid in [s for s in self._mirrors if s not in known]:
            mirror = self._mirrors.pop(sid)
            self._unfeed(mirror)
            mirror.close(_final(mirror, STREAM_REMOVED, StreamState.STOPPED))

    async def subscribe(self, sid: str, after: EventId | None) -> tuple[Subscription, Callable[[Subscription], None]]:
        """A subscription to ``sid``'s events, resumed after ``after``; and how to end it."""
        mirror = self._mirrors.get(sid)
        try:
            if mirror is None or mirror.closed:
                last = await self._store.last_event_id(sid)
                status = await self._store.status_of(sid)
                mirror = self._mirrors.get(sid)  # another subscriber may have made it meanwhile
                if mirror is None or mirror.closed:
                    mirror = Mirror(sid, EventId.parse(last) if last else None, self._queue_size)
                    if status is not None:
                        mirror.last_status = envelope_of(status)
                    self._mirrors[sid] = mirror
                    self._wake.set()
            backlog = await self._backlog(mirror, after)
        except ClusterUnavailable:
            broadcaster = self._local(sid)
            if broadcaster is None:
                raise
            sub = broadcaster.subscribe(after)  # Redis is down: a stream run here is served from here
            return sub, broadcaster.unsubscribe
        if mirror.closed:
            raise StreamNotFound(f"stream {sid!r} was removed")
        # join the backlog (read from Redis) to the live events with no hole and no repeat
        tail = backlog[-1].id if backlog and backlog[-1].id is not None else after
        if tail is not None:
            backlog += [e for e in mirror.ring if e.id is not None and e.id > tail]
        sub = Subscription(asyncio.Queue(maxsize=self._queue_size), deque(backlog))
        ids = [e.id for e in backlog if e.id is not None]
        mirror.subscribers[sub] = max(ids) if ids else None
        return sub, lambda s: self._unsubscribe(sid, s)

    def notice_for(self, sid: str) -> Callable[[int], Envelope | None]:
        def notice(lost: int) -> Envelope | None:
            mirror = self._mirrors.get(sid)
            return mirror.notice(lost) if mirror is not None else None

        return notice

    def _unsubscribe(self, sid: str, sub: Subscription) -> None:
        mirror = self._mirrors.get(sid)
        if mirror is None:
            return
        mirror.subscribers.pop(sub, None)
        if not mirror.subscribers:
            self._unfeed(mirror)
            del self._mirrors[sid]

    async def _backlog(self, mirror: Mirror, after: EventId | None) -> list[Envelope]:
        if after is None:  # a new subscriber learns the current state first
            return [mirror.last_status] if mirror.last_status is not None else []
        stored = await self._store.events_after(mirror.stream, str(after), self._resume_limit)
        entries = _with_holes(mirror, [envelope_of(e) for e in stored])
        first = entries[0].id if entries else None
        lost: int | None = 0
        if first is None or first.run != after.run or first.seq != after.seq + 1:
            oldest = await self._store.first_event_id(mirror.stream)
            oldest_id = EventId.parse(oldest) if oldest else None
            if oldest_id is not None and oldest_id > after:  # trimmed past the client's position
                lost = oldest_id.seq - after.seq - 1 if oldest_id.run == after.run else None
            elif first is not None and first.run == after.run:
                lost = first.seq - after.seq - 1  # a hole the owner left
        if lost == 0:
            return entries
        ids = {e.id for e in entries}
        status = mirror.last_status
        older = [status] if status is not None and status.id not in ids else []  # the state, if older than these
        return [mirror.notice(lost), *older, *entries]

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            positions = {sid: str(m.position or "0-0") for sid, m in self._mirrors.items() if m.local is None}
            if not positions:
                self._wake.clear()
                if not any(m.local is not None for m in self._mirrors.values()):
                    await self._wake.wait()
                    continue
            try:
                got = await self._store.read(positions, READ_COUNT) if positions else await self._probe()
            except ClusterUnavailable as e:
                if self.redis_up:
                    log.warning("cluster: cannot read events from Redis (%s)", e.message)
                self.redis_up = False
                self._feed_locally()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not self.redis_up:
                log.warning("cluster: reading events from Redis again")
                self.redis_up = True
                for mirror in self._mirrors.values():
                    self._unfeed(mirror)
            backoff = 0.1
            if got:
                self._deliver(got)
                await asyncio.sleep(read_linger(len(positions)))

    def _deliver(self, got: dict[str, list[StoredEvent]]) -> None:
        for sid, entries in got.items():
            target = self._mirrors.get(sid)
            if target is None:
                continue
            for stored in entries:
                try:
                    target.deliver(envelope_of(stored))
                except (ValidationError, ValueError) as e:  # not ours: counted, never fatal
                    log.warning("cluster: stream %s: unreadable event %s: %s", sid, stored.id, e)
                self.read_events += 1
            if target.closed:
                self._mirrors.pop(sid, None)

    async def _probe(self) -> dict[str, list[StoredEvent]]:
        """Every mirror is fed locally (Redis was down): wait, then see whether Redis answers."""
        await asyncio.sleep(0.5)
        await self._store.last_event_id("-")
        return {}

    def _feed_locally(self) -> None:
        for mirror in self._mirrors.values():
            if mirror.local is not None:
                continue
            broadcaster = self._local(mirror.stream)
            if broadcaster is None:
                continue
            mirror.local = broadcaster.subscribe(mirror.position)
            task = asyncio.create_task(self._pump(mirror, mirror.local, broadcaster), name=f"mirror-{mirror.stream}")
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, mirror: Mirror, sub: Subscription, broadcaster: Broadcaster) -> None:
        try:
            while mirror.local is sub:
                envelope = await sub.get()
                if envelope is None or mirror.local is not sub:
                    return
                if envelope.id is None:  # the broadcaster's own gap notice: pass it on
                    mirror._fan(envelope)
                else:
                    mirror.deliver(envelope)
        finally:
            broadcaster.unsubscribe(sub)

    def _unfeed(self, mirror: Mirror) -> None:
        sub, mirror.local = mirror.local, None
        if sub is not None:
            sub.put(None)  # ends its pump


def _with_holes(mirror: Mirror, entries: list[Envelope]) -> list[Envelope]:
    """Events read from Redis, with a notice where a run's sequence has a hole (events its owner lost)."""
    out: list[Envelope] = []
    prev: EventId | None = None
    for e in entries:
        if prev is not None and e.id is not None and e.id.run == prev.run and e.id.seq > prev.seq + 1:
            out.append(mirror.notice(e.id.seq - prev.seq - 1))
        out.append(e)
        prev = e.id or prev
    return out


def _final(mirror: Mirror, reason: str, state: StreamState | None = None) -> Envelope:
    current = mirror.last_status.event if mirror.last_status is not None else None
    triton: TritonState = current.triton if isinstance(current, StatusEvent) else "available"
    event = StatusEvent(
        stream=mirror.stream,
        state=state or StreamState.STOPPED,
        reason=reason,
        at=time.time(),
        triton=triton,
    )
    return Envelope(None, event, event.model_dump_json())


__all__ = ["EVENTS_LOST", "STREAM_REMOVED", "EventHub", "EventLog", "Mirror", "envelope_of"]
