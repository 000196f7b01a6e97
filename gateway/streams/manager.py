"""The stream manager owns every stream worker and the ingest watchdog that watches their
readers; it is created in the lifespan and stopped in reverse order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.capture import Capturer
from gateway.config import Settings, StreamConfig
from gateway.errors import StreamConflict, StreamLimit, StreamNotFound, StreamRefused
from gateway.fanout import Broadcaster, Envelope, EventId, StatusFeed
from gateway.inference.predictor import Predictor
from gateway.ingest import Watchdog, demo, redact
from gateway.ingest.sources import SourceError
from gateway.metrics import Metrics
from gateway.schema import SHUTTING_DOWN, STREAM_REMOVED, StreamCreate
from gateway.streams import policy
from gateway.streams.worker import StreamWorker

log = logging.getLogger(__name__)
MAX_REMEMBERED_RUNS = 10_000  # removed streams whose last event id is kept (resume across a re-add)


class StreamManager:
    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        metrics: Metrics,
        capturer: Capturer | None = None,
        *,
        on_event: Callable[[str, Envelope], None] | None = None,
    ) -> None:
        """``on_event``: every event of every stream (cluster mode: the Redis event log).  In cluster
        mode the cluster node decides which streams run here, and status events reach ``GET /events``
        through Redis, not ``feed``."""
        self._settings = settings
        self._cluster = settings.cluster.enabled
        self._on_event = on_event
        self._predictor = predictor
        self._metrics = metrics
        self._capturer = capturer
        self._workers: dict[str, StreamWorker] = {}
        self._watchdog = Watchdog()
        self.feed = StatusFeed()  # every stream's status events: GET /events
        self._last_ids: dict[str, EventId] = {}  # per stream id: the last event of its previous run
        self._last_run = 0  # runs (event-id prefixes) strictly increase, even within one millisecond
        self.configured = [s.id for s in settings.all_streams()]
        self.draining = False  # set by drain(): readiness is 503 from then on

    @property
    def default_id(self) -> str | None:
        return self.configured[0] if self.configured else None

    async def start(self) -> None:
        self._watchdog.start()
        if self._settings.demo_active:
            try:
                await asyncio.to_thread(demo.ensure_clip, self._settings.demo.path)
            except (OSError, RuntimeError) as e:  # the demo stream then fails to open, visibly
                log.error("cannot write the demo clip to %s: %s", self._settings.demo.path, e)
        if not self._cluster:
            for config in self._settings.all_streams():
                await self.add(config)

    async def stop(self) -> None:
        for sid in reversed(list(self._workers)):
            await self.remove(sid)
        self.feed.close()
        self._watchdog.stop()

    def drain(self, reason: str = SHUTTING_DOWN) -> None:
        """Shutdown has begun: end every subscriber's response with a final status event."""
        self.draining = True
        for worker in self._workers.values():
            worker.drain(reason)
        self.feed.close()

    def get(self, sid: str) -> StreamWorker:
        worker = self._workers.get(sid)
        if worker is None:
            raise StreamNotFound(f"no stream {sid!r}")
        return worker

    def broadcaster_of(self, sid: str) -> Broadcaster | None:
        worker = self._workers.get(sid)
        return worker.broadcaster if worker is not None else None

    def list(self) -> list[StreamWorker]:
        return list(self._workers.values())

    async def admit(self, stream: StreamCreate) -> StreamConfig:
        """A stream asked for at runtime (``POST /streams``), checked against ``stream_policy``."""
        await policy.check(stream, self._settings.stream_policy)
        return StreamConfig(
            id=stream.id,
            url=stream.url,
            sample_fps=stream.sample_fps,
            width=stream.width,
            height=stream.height,
            model=stream.model,
            decode=stream.decode,
        )

    async def create(self, stream: StreamCreate) -> StreamWorker:
        """A stream added at runtime (``POST /streams``): checked against ``stream_policy``."""
        config = await self.admit(stream)
        if stream.id in self._workers:
            raise StreamConflict(f"stream {stream.id!r} already exists")
        limit = self._settings.stream_policy.max_streams
        if len(self._workers) >= limit:
            raise StreamLimit(f"the gateway runs {len(self._workers)} streams, its limit (stream_policy.max_streams)")
        return await self.add(config)

    async def add(self, config: StreamConfig, *, after: EventId | None = None) -> StreamWorker:
        """Start a stream.  ``after``: the last event id of the stream anywhere (cluster mode: its
        Redis Stream); this run's ids come after it."""
        if config.id in self._workers:
            raise StreamConflict(f"stream {config.id!r} already exists")
        previous = after or self._last_ids.get(config.id)
        floor = previous.run + 1 if previous is not None else 0
        run = self._last_run = max(int(time.time() * 1000), self._last_run + 1, floor)
        try:
            worker = StreamWorker(
                config,
                self._settings,
                self._predictor,
                self._metrics,
                self._capturer,
                run=run,
                previous=previous,
                feed=None if self._cluster else self.feed,
                on_event=self._on_event,
            )
        except SourceError as e:
            raise StreamRefused(str(e)) from e
        self._workers[config.id] = worker
        await worker.start()
        self._watchdog.watch(worker.reader)
        log.info("stream %s added: %s", config.id, redact(config.url))
        return worker

    async def remove(self, sid: str, reason: str = STREAM_REMOVED) -> None:
        worker = self._workers.pop(sid, None)
        if worker is None:
            raise StreamNotFound(f"no stream {sid!r}")
        self._watchdog.unwatch(worker.reader)
        await worker.stop(reason)
        last = worker.broadcaster.last_id
        if last is not None:
            self._last_ids.pop(sid, None)
            self._last_ids[sid] = last
            if len(self._last_ids) > MAX_REMEMBERED_RUNS:
                self._last_ids.pop(next(iter(self._last_ids)))
