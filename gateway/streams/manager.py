"""The stream manager owns every stream worker and the ingest watchdog that watches their
readers; it is created in the lifespan and stopped in reverse order."""

from __future__ import annotations

import logging

from gateway.capture import Capturer
from gateway.config import Settings, StreamConfig
from gateway.errors import StreamConflict, StreamLimit, StreamNotFound, StreamRefused
from gateway.inference.predictor import Predictor
from gateway.ingest import Watchdog, redact
from gateway.ingest.sources import SourceError
from gateway.metrics import Metrics
from gateway.schema import StreamCreate
from gateway.streams import policy
from gateway.streams.worker import StreamWorker

log = logging.getLogger(__name__)


class StreamManager:
    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        metrics: Metrics,
        capturer: Capturer | None = None,
    ) -> None:
        self._settings = settings
        self._predictor = predictor
        self._metrics = metrics
        self._capturer = capturer
        self._workers: dict[str, StreamWorker] = {}
        self._watchdog = Watchdog()
        self.configured = [s.id for s in settings.all_streams()]
        self.draining = False  # set by drain(): readiness is 503 from then on

    @property
    def default_id(self) -> str | None:
        return self.configured[0] if self.configured else None

    async def start(self) -> None:
        self._watchdog.start()
        for config in self._settings.all_streams():
            await self.add(config)

    async def stop(self) -> None:
        for sid in reversed(list(self._workers)):
            await self.remove(sid)
        self._watchdog.stop()

    def drain(self) -> None:
        """Shutdown has begun: end every subscriber's response with a final status event."""
        self.draining = True
        for worker in self._workers.values():
            worker.drain()

    def get(self, sid: str) -> StreamWorker:
        worker = self._workers.get(sid)
        if worker is None:
            raise StreamNotFound(f"no stream {sid!r}")
        return worker

    def list(self) -> list[StreamWorker]:
        return list(self._workers.values())

    async def create(self, stream: StreamCreate) -> StreamWorker:
        """A stream added at runtime (``POST /streams``): checked against ``stream_policy``."""
        await policy.check(stream, self._settings.stream_policy)
        if stream.id in self._workers:
            raise StreamConflict(f"stream {stream.id!r} already exists")
        limit = self._settings.stream_policy.max_streams
        if len(self._workers) >= limit:
            raise StreamLimit(f"the gateway runs {len(self._workers)} streams, its limit (stream_policy.max_streams)")
        config = StreamConfig(
            id=stream.id,
            url=stream.url,
            sample_fps=stream.sample_fps,
            width=stream.width,
            height=stream.height,
            model=stream.model,
        )
        return await self.add(config)

    async def add(self, config: StreamConfig) -> StreamWorker:
        if config.id in self._workers:
            raise StreamConflict(f"stream {config.id!r} already exists")
        try:
            worker = StreamWorker(config, self._settings, self._predictor, self._metrics, self._capturer)
        except SourceError as e:
            raise StreamRefused(str(e)) from e
        self._workers[config.id] = worker
        await worker.start()
        self._watchdog.watch(worker.reader)
        log.info("stream %s added: %s", config.id, redact(config.url))
        return worker

    async def remove(self, sid: str) -> None:
        worker = self._workers.pop(sid, None)
        if worker is None:
            raise StreamNotFound(f"no stream {sid!r}")
        self._watchdog.unwatch(worker.reader)
        await worker.stop()
