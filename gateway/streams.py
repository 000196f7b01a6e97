"""Live streams: one reader thread and **one inference loop per stream**, fanned out.

``StreamWorker`` owns a ``StreamReader`` (ingest), an asyncio task that takes the
newest frame, preprocesses it off the loop and asks Triton, and a ``Broadcaster``
that hands events to every subscriber.  Inference calls do not grow with the
number of subscribers; streams run concurrently, so their requests meet in
Triton's dynamic batcher.  ``StreamManager`` owns the workers (lifespan-scoped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.capture import Capturer
from gateway.config import Settings, StreamConfig
from gateway.errors import (
    GatewayError,
    InferenceTimeout,
    InferenceUnavailable,
    StreamConflict,
    StreamNotFound,
    StreamRefused,
)
from gateway.fanout import Broadcaster
from gateway.ingest import ReaderConfig, StateChange, StreamReader, StreamState, parse_source, redact
from gateway.ingest.sources import SourceError, SourceKind
from gateway.metrics import EmfWindow, Metrics, emf_logger
from gateway.predictor import Prediction, Predictor

log = logging.getLogger(__name__)


@dataclass
class WorkerCounters:
    inferences: int = 0
    predictions: int = 0
    errors: int = 0


def result_fields(p: Prediction) -> dict[str, Any]:
    """The task-specific part of a prediction event: the same fields as POST /predict."""
    if p.detection is not None:
        d = p.detection
        return {
            "task": "detection",
            "label": d.label,
            "person_count": d.person_count,
            "threshold": d.threshold,
            "boxes": [asdict(b) for b in d.boxes],
            "image": {"width": p.width, "height": p.height},
        }
    return {
        "task": "classification",
        "predictions": [{"index": c.index, "label": c.label, "probability": c.probability} for c in p.classes],
    }


class StreamWorker:
    def __init__(
        self,
        config: StreamConfig,
        settings: Settings,
        predictor: Predictor,
        metrics: Metrics | None = None,
        capturer: Capturer | None = None,
    ) -> None:
        self.config = config
        self.id = config.id
        self.model = config.model or settings.model
        self.source = parse_source(config.url, loop=config.loop)
        ing = settings.ingest
        self.reader_config = ReaderConfig(
            sample_fps=config.sample_fps or settings.frame_sample_fps,
            width=config.width or settings.frame_width,
            height=config.height or settings.frame_height,
            open_timeout_s=ing.open_timeout_s,
            read_timeout_s=ing.read_timeout_s,
            backoff_initial_s=ing.backoff_initial_s,
            backoff_max_s=ing.backoff_max_s,
            max_retries=ing.max_retries,
        )
        self.broadcaster = Broadcaster(queue_size=ing.subscriber_queue)
        self.counters = WorkerCounters()
        self._predictor = predictor
        self._metrics = metrics or Metrics()
        self._capturer = capturer
        self._emf = EmfWindow(self.id, self.model, settings.metrics) if settings.metrics.emf else None
        self._emf_log = emf_logger()
        self._top_k = settings.top_k
        self._wake = asyncio.Event()
        self._triton_ok = True
        self._reader: StreamReader | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def reader(self) -> StreamReader:
        assert self._reader is not None, "worker not started"
        return self._reader

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = StreamReader(
            self.id,
            self.source,
            self.reader_config,
            on_state=lambda change: loop.call_soon_threadsafe(self._on_state, change),
            on_frame=lambda: loop.call_soon_threadsafe(self._wake.set),
        )
        self._status(StreamState.CONNECTING.value, "")
        self._reader.start()
        self._task = asyncio.create_task(self._run(), name=f"infer-{self.id}")

    async def stop(self) -> None:
        """Stop the loop, then the reader; safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reader is not None:
            self._reader.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._reader.join, 15.0)
        if not self.broadcaster.closed:
            self._status(StreamState.STOPPED.value, "stream removed")
            self.broadcaster.close()

    def _status(self, state: str, reason: str, **extra: Any) -> None:
        data = {"stream": self.id, "state": state, "reason": reason, "at": time.time(), **extra}
        self.broadcaster.publish("status", data)

    def _on_state(self, change: StateChange) -> None:
        self._status(change.new.value, change.reason, triton="available" if self._triton_ok else "unavailable")

    async def _run(self) -> None:
        last = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            frame = self.reader.latest(after=last, timeout=0)
            if frame is None:
                continue
            last = frame.index
            started = time.monotonic()
            self.counters.inferences += 1
            try:
                p = await self._predictor.predict_frame(
                    frame.image, source_size=frame.source_size, model=self.model, top_k=self._top_k
                )
            except InferenceUnavailable as e:  # also InferenceTimeout
                self._failed("timeout" if isinstance(e, InferenceTimeout) else "triton")
                if self._triton_ok:
                    self._triton_ok = False
                    self._status(self.reader.state.value, e.message, triton="unavailable")
                continue
            except GatewayError as e:
                self._failed("triton")
                log.warning("stream %s: inference failed: %s", self.id, e.message)
                continue
            except Exception:  # the loop never dies silently: log, count, go on with the next frame
                self._failed("internal")
                log.exception("stream %s: unexpected inference error", self.id)
                continue
            if not self._triton_ok:
                self._triton_ok = True
                self._status(self.reader.state.value, "inference resumed", triton="available")
            done = time.monotonic()
            self.counters.predictions += 1
            self._observe(p.preprocess_ms + p.inference_ms, (done - frame.captured_mono) * 1000)
            event = {
                "stream": self.id,
                "frame": frame.index,
                "captured_at": frame.captured_at,
                "model": p.model.name,
                "model_version": p.model.version,
                **result_fields(p),
                "latency_ms": {
                    "wait": round((started - frame.captured_mono) * 1000, 3),
                    "preprocess": round(p.preprocess_ms, 3),
                    "inference": round(p.inference_ms, 3),
                    "total": round((done - frame.captured_mono) * 1000, 3),
                },
            }
            self.broadcaster.publish("prediction", event)
            if self._capturer is not None:
                self._capturer.offer(self.id, frame.index, frame.captured_at, frame.image, event)

    def _failed(self, kind: str) -> None:
        self.counters.errors += 1
        self._metrics.inference_errors.labels(self.id, self.model, kind).inc()
        if self._emf is not None:
            self._emf.error()

    def _observe(self, latency_ms: float, age_ms: float) -> None:
        self._metrics.inference_seconds.labels(self.id, self.model).observe(latency_ms / 1000)
        self._metrics.frame_age_seconds.labels(self.id, self.model).observe(age_ms / 1000)
        if self._emf is not None:
            stats = self.reader.stats
            line = self._emf.add(latency_ms, age_ms, stats.fps, stats.frames_dropped)
            if line is not None:
                self._emf_log.info(line)

    def describe(self) -> dict[str, Any]:
        stats = self.reader.stats if self._reader else None
        age = stats.frame_age() if stats else None
        return {
            "id": self.id,
            "url": redact(self.config.url),
            "model": self.model,
            "state": self.reader.state.value if self._reader else "stopped",
            "sample_fps": self.reader_config.sample_fps,
            "measured_fps": round(stats.fps, 3) if stats else 0.0,
            "last_frame_age_s": None if age is None else round(age, 3),
            "reconnects": stats.reconnects if stats else 0,
            "decode_errors": stats.decode_errors if stats else 0,
            "frames_read": stats.frames_read if stats else 0,
            "frames_sampled": stats.frames_sampled if stats else 0,
            "frames_skipped": stats.frames_skipped if stats else 0,
            "frames_dropped": stats.frames_dropped if stats else 0,
            "inferences": self.counters.inferences,
            "predictions": self.counters.predictions,
            "inference_errors": self.counters.errors,
            "subscribers": self.broadcaster.subscribers,
            "triton": "available" if self._triton_ok else "unavailable",
        }


class StreamManager:
    """Owns every stream worker; created in the lifespan, stopped in reverse order."""

    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        metrics: Metrics | None = None,
        capturer: Capturer | None = None,
    ) -> None:
        self._settings = settings
        self._predictor = predictor
        self._metrics = metrics or Metrics()
        self._capturer = capturer
        self._workers: dict[str, StreamWorker] = {}
        self.configured = [s.id for s in settings.all_streams()]

    @property
    def default_id(self) -> str | None:
        return self.configured[0] if self.configured else None

    async def start(self) -> None:
        for config in self._settings.all_streams():
            await self.add(config)

    async def stop(self) -> None:
        for sid in reversed(list(self._workers)):
            await self.remove(sid)

    def get(self, sid: str) -> StreamWorker:
        worker = self._workers.get(sid)
        if worker is None:
            raise StreamNotFound(f"no stream {sid!r}")
        return worker

    def list(self) -> list[StreamWorker]:
        return list(self._workers.values())

    def check_policy(self, config: StreamConfig) -> None:
        """Runtime-added URLs: allowed schemes and hosts only; never files or webcams."""
        policy = self._settings.stream_policy
        try:
            spec = parse_source(config.url)
        except SourceError as e:
            raise StreamRefused(str(e)) from e
        if spec.kind is not SourceKind.RTSP:
            raise StreamRefused("only RTSP URLs can be added at runtime; files and webcams are configured")
        parts = urlsplit(config.url)
        if parts.scheme.lower() not in policy.allowed_schemes:
            raise StreamRefused(f"scheme {parts.scheme!r} is not allowed (stream_policy.allowed_schemes)")
        if (parts.hostname or "").lower() not in {h.lower() for h in policy.allowed_hosts}:
            raise StreamRefused(f"host {parts.hostname!r} is not allowed (stream_policy.allowed_hosts)")

    async def add(self, config: StreamConfig) -> StreamWorker:
        if config.id in self._workers:
            raise StreamConflict(f"stream {config.id!r} already exists")
        try:
            worker = StreamWorker(config, self._settings, self._predictor, self._metrics, self._capturer)
        except SourceError as e:
            raise StreamRefused(str(e)) from e
        self._workers[config.id] = worker
        await worker.start()
        log.info("stream %s added: %s", config.id, redact(config.url))
        return worker

    async def remove(self, sid: str) -> None:
        worker = self._workers.pop(sid, None)
        if worker is None:
            raise StreamNotFound(f"no stream {sid!r}")
        await worker.stop()
