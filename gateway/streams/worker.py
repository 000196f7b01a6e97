"""A stream worker owns one camera: its reader thread (ingest), **one inference loop**, and
the broadcaster that fans its events out to every subscriber.

The loop takes the newest frame, has the predictor preprocess it off the event
loop and ask Triton, and publishes a typed ``prediction`` event; state changes of
the source and of Triton's availability are ``status`` events.  Inference calls do
not grow with the number of subscribers; streams run concurrently, so their
requests meet in Triton's dynamic batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.capture import Capturer
from gateway.config import Settings, StreamConfig
from gateway.errors import GatewayError, InferenceTimeout, InferenceUnavailable, ModelDegraded
from gateway.fanout import Broadcaster, Envelope, EventId, StatusFeed
from gateway.inference.predictor import Predictor, PreparedFrame
from gateway.ingest import (
    Frame,
    ReaderConfig,
    StateChange,
    StreamReader,
    StreamState,
    make_reader,
    parse_source,
    redact,
)
from gateway.metrics import EmfWindow, Metrics, emf_logger
from gateway.schema import (
    SHUTTING_DOWN,
    STREAM_REMOVED,
    Latency,
    StatusEvent,
    StreamInfo,
    TritonState,
    prediction_event,
)
from gateway.streams.snapshot import FrameSnapshot

log = logging.getLogger(__name__)


@dataclass
class WorkerCounters:
    inferences: int = 0
    predictions: int = 0
    errors: int = 0


class StreamWorker:
    def __init__(
        self,
        config: StreamConfig,
        settings: Settings,
        predictor: Predictor,
        metrics: Metrics,
        capturer: Capturer | None = None,
        *,
        run: int | None = None,
        previous: EventId | None = None,
        feed: StatusFeed | None = None,
        on_event: Callable[[str, Envelope], None] | None = None,
    ) -> None:
        """``run``: this run's first event-id part (Unix ms), ``previous``: the last event id of the
        stream's previous run, ``feed``: where status events also go (``GET /events``), ``on_event``:
        called with every event published (cluster mode appends it to Redis)."""
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
            rtsp_transport=config.rtsp_transport or ing.rtsp_transport,
            decode=config.decode or ing.decode,
            hwaccel=ing.hwaccel,
            decoder_threads=ing.decoder_threads,
            burst_kib=ing.burst_kib,
            ffmpeg_options=tuple(ing.ffmpeg_options.items()),
        )
        self.backend = ing.backend
        self.broadcaster = Broadcaster(
            stream=self.id,
            run=run if run is not None else int(time.time() * 1000),
            queue_size=ing.subscriber_queue,
            resume_events=ing.resume_events,
            resume_s=ing.resume_s,
            previous=previous,
        )
        self.snapshot = FrameSnapshot(self.id, settings.viewer.frame_interval_s, settings.viewer.jpeg_quality)
        self._feed = feed
        self._on_event = on_event
        self.counters = WorkerCounters()
        self._predictor = predictor
        self._metrics = metrics
        self._capturer = capturer
        self._emf = EmfWindow(self.id, self.model, settings.metrics) if settings.metrics.emf else None
        self._emf_log = emf_logger()
        self._wake = asyncio.Event()
        self._triton: TritonState = "available"
        self._reader: StreamReader | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def reader(self) -> StreamReader:
        assert self._reader is not None, "worker not started"
        return self._reader

    @property
    def triton(self) -> TritonState:
        return self._triton

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = make_reader(
            self.backend,
            self.id,
            self.source,
            self.reader_config,
            on_state=lambda change: loop.call_soon_threadsafe(self._on_state, change),
            on_frame=lambda: loop.call_soon_threadsafe(self._wake.set),
            prepare=lambda image, size: self._predictor.prepare_frame_here(image, size, self.model),
        )
        self._status(StreamState.CONNECTING, "")
        self._reader.start()
        self._task = asyncio.create_task(self._run(), name=f"infer-{self.id}")

    async def stop(self, reason: str = STREAM_REMOVED) -> None:
        """Stop the loop, then the reader; safe to call twice.  ``reason``: of the last status event."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reader is not None:
            self._reader.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._reader.join, 15.0)
        if not self.broadcaster.closed:
            self._status(StreamState.STOPPED, reason)
            self.broadcaster.close()

    def drain(self, reason: str = SHUTTING_DOWN) -> None:
        """The gateway is shutting down: every subscriber gets a last ``status`` event
        (reason ``shutting_down``, or ``moving`` in cluster mode) and then the end of its
        response.  The stream itself keeps running until ``stop()``."""
        if not self.broadcaster.closed:
            self._status(StreamState.STOPPED, reason)
            self.broadcaster.close()

    def _status(self, state: StreamState, reason: str) -> None:
        envelope = self.broadcaster.publish(
            StatusEvent(stream=self.id, state=state, reason=reason, at=time.time(), triton=self.triton)
        )
        if envelope is not None:
            if self._feed is not None:
                self._feed.publish(envelope)
            if self._on_event is not None:
                self._on_event(self.id, envelope)

    def _set_triton(self, state: TritonState, reason: str) -> None:
        """A change of the stream's inference health is a ``status`` event (once per change)."""
        if state != self._triton:
            self._triton = state
            self._status(self.reader.state, reason)

    def _on_state(self, change: StateChange) -> None:
        self._status(change.new, change.reason)

    async def _run(self) -> None:
        last = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            frame = self.reader.latest(after=last, timeout=0)
            if frame is None:
                continue
            last = frame.index
            await self._infer(frame)

    async def _infer(self, frame: Frame) -> None:
        started = time.monotonic()
        self.counters.inferences += 1
        prepared = frame.prepared if isinstance(frame.prepared, PreparedFrame) else None
        try:
            out = await self._predictor.predict_frame(
                frame.image, stream=self.id, source_size=frame.source_size, model=self.model, prepared=prepared
            )
        except InferenceUnavailable as e:  # also InferenceTimeout, ModelDegraded
            degraded = isinstance(e, ModelDegraded)
            self._failed("timeout" if isinstance(e, InferenceTimeout) else "crashed_instance" if degraded else "triton")
            self._set_triton("degraded" if degraded else "unavailable", e.message)
            return
        except GatewayError as e:
            self._failed("triton")
            log.warning("stream %s: inference failed: %s", self.id, e.message)
            return
        except Exception:  # the loop never dies silently: log, count, go on with the next frame
            self._failed("internal")
            log.exception("stream %s: unexpected inference error", self.id)
            return
        self._set_triton("available", "inference resumed")
        done = time.monotonic()
        # a frame prepared on its reader's thread was prepared within the wait: that is its preprocess
        waited_ms = (started - frame.captured_mono) * 1000 - (prepared.preprocess_ms if prepared else 0.0)
        self.counters.predictions += 1
        total_ms = (done - frame.captured_mono) * 1000
        # The frame's age on the camera's clock where the stream has one (clamped: clocks differ)
        age_ms = None if frame.source_at is None else max(0.0, (time.time() - frame.source_at) * 1000)
        self._observe(out.preprocess_ms + out.batch_ms + out.inference_ms, total_ms if age_ms is None else age_ms)
        event = prediction_event(
            out.result,
            stream=self.id,
            frame=frame.index,
            captured_at=frame.captured_at,
            source_at=frame.source_at,
            clock=frame.clock,
            latency=Latency(
                wait=round(max(0.0, waited_ms), 3),
                preprocess=round(out.preprocess_ms, 3),
                queue=round(out.queue_ms, 3),
                inference=round(out.inference_ms, 3),
                batch=round(out.batch_ms, 3),
                total=round(total_ms, 3),
                age=None if age_ms is None else round(age_ms, 3),
            ),
        )
        envelope = self.broadcaster.publish(event)
        if envelope is not None and self._on_event is not None:
            self._on_event(self.id, envelope)
        self.snapshot.offer(frame)
        if self._capturer is not None:
            self._capturer.offer(event, frame.image)

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
            for line in self._emf.add(latency_ms, age_ms, stats.fps, stats.frames_dropped):
                self._emf_log.info(line)

    def describe(self) -> StreamInfo:
        reader = self._reader
        stats = reader.stats if reader is not None else None
        age = stats.silence() if stats is not None else None
        return StreamInfo(
            id=self.id,
            url=redact(self.config.url),
            model=self.model,
            state=reader.state if reader is not None else StreamState.STOPPED,
            sample_fps=self.reader_config.sample_fps,
            measured_fps=round(stats.fps, 3) if stats else 0.0,
            last_frame_age_s=None if age is None else round(max(0.0, age), 3),
            reconnects=stats.reconnects if stats else 0,
            stalls=stats.stalls if stats else 0,
            decode_errors=stats.decode_errors if stats else 0,
            frames_read=stats.frames_read if stats else 0,
            frames_decoded=stats.frames_decoded if stats else 0,
            backend=self.backend,
            decode=stats.decode_mode if stats else None,
            decode_setting=self.reader_config.decode,
            keyframe_interval_s=round(stats.keyframe_interval_s, 3) if stats and stats.keyframe_interval_s else None,
            decode_switches=stats.mode_switches if stats else 0,
            clock=stats.clock if stats else "reader",
            hwaccel=stats.hwaccel if stats else None,
            last_error=stats.last_error if stats else None,
            codec=stats.codec if stats else None,
            naps=stats.naps if stats else 0,
            napped_s=round(stats.napped_s, 3) if stats else 0.0,
            frames_sampled=stats.frames_sampled if stats else 0,
            frames_skipped=stats.frames_skipped if stats else 0,
            frames_dropped=stats.frames_dropped if stats else 0,
            inferences=self.counters.inferences,
            predictions=self.counters.predictions,
            inference_errors=self.counters.errors,
            subscribers=self.broadcaster.subscribers,
            events_dropped=self.broadcaster.dropped,
            frames_encoded=self.snapshot.encodes,
            last_event_id=str(self.broadcaster.last_id) if self.broadcaster.last_id else None,
            transitions=reader.transitions() if reader is not None else {},
            triton=self.triton,
        )
