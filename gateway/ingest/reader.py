"""One reader per source: its own thread, a latest-frame slot, and a state machine.

The reader decodes continuously and keeps **only the newest sampled frame**: a
consumer that falls behind gets the newest frame, never a backlog, and every frame
it missed is counted as dropped.  Frames between samples are grabbed but not
converted (``grab`` without ``retrieve``), and counted as skipped.

Waits are bounded: OpenCV's open and read timeouts stop a dead or frozen source
from hanging the thread; the reader then reconnects with exponential backoff and
jitter, and gives up (``failed``) after ``max_retries`` if one is set.  Every state
change is logged (URL redacted), counted and handed to ``on_state``.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from gateway.ingest.sources import SourceKind, SourceSpec, ffmpeg_options

log = logging.getLogger(__name__)
_OPEN_LOCK = threading.Lock()  # OPENCV_FFMPEG_CAPTURE_OPTIONS is process-wide: set it and open under one lock


class StreamState(enum.Enum):
    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    STOPPED = "stopped"
    FAILED = "failed"


_ALLOWED: dict[StreamState, frozenset[StreamState]] = {
    StreamState.CONNECTING: frozenset(
        {StreamState.RUNNING, StreamState.RECONNECTING, StreamState.ENDED, StreamState.STOPPED, StreamState.FAILED}
    ),
    StreamState.RUNNING: frozenset(
        {StreamState.RECONNECTING, StreamState.ENDED, StreamState.STOPPED, StreamState.FAILED}
    ),
    StreamState.RECONNECTING: frozenset({StreamState.RUNNING, StreamState.STOPPED, StreamState.FAILED}),
    StreamState.ENDED: frozenset({StreamState.STOPPED}),
    StreamState.FAILED: frozenset({StreamState.STOPPED}),
    StreamState.STOPPED: frozenset(),
}


@dataclass(frozen=True)
class StateChange:
    stream_id: str
    old: StreamState
    new: StreamState
    at: float  # wall clock, seconds
    reason: str = ""


@dataclass(frozen=True)
class Frame:
    stream_id: str
    index: int  # sampled-frame counter, from 1
    captured_at: float  # wall clock when it was read
    captured_mono: float  # monotonic clock when it was read
    image: np.ndarray  # H x W x 3, BGR, uint8, at the configured size
    source_size: tuple[int, int] = (0, 0)  # width, height as decoded, before the resize


@dataclass(frozen=True)
class ReaderConfig:
    sample_fps: float = 2.0
    width: int = 640
    height: int = 360
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    max_retries: int | None = None  # None: retry forever
    rtsp_transport: str = "tcp"


@dataclass
class ReaderStats:
    frames_read: int = 0
    frames_sampled: int = 0
    frames_skipped: int = 0  # read but not sampled (above sample_fps)
    frames_dropped: int = 0  # sampled but replaced before anyone took them
    reconnects: int = 0
    decode_errors: int = 0  # a grabbed frame the decoder could not deliver
    last_frame_mono: float | None = None
    state_changes: Counter[str] = field(default_factory=Counter)
    _samples: deque[float] = field(default_factory=lambda: deque(maxlen=32))

    @property
    def fps(self) -> float:
        """Sampled frames per second over the recent window."""
        if len(self._samples) < 2:
            return 0.0
        span = self._samples[-1] - self._samples[0]
        return (len(self._samples) - 1) / span if span > 0 else 0.0

    def frame_age(self, now: float | None = None) -> float | None:
        if self.last_frame_mono is None:
            return None
        return (now if now is not None else time.monotonic()) - self.last_frame_mono


class StreamReader:
    """Owns one source's thread, latest-frame slot and state. ``stop()`` is idempotent."""

    def __init__(
        self,
        stream_id: str,
        spec: SourceSpec,
        config: ReaderConfig,
        on_state: Callable[[StateChange], object] | None = None,
        on_frame: Callable[[], object] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.spec = spec
        self.config = config
        self.stats = ReaderStats()
        self._on_state = on_state
        self._on_frame = on_frame
        self._state = StreamState.CONNECTING
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._slot_taken = True
        self._thread = threading.Thread(target=self._run, name=f"reader-{stream_id}", daemon=True)

    # --- public ------------------------------------------------------------------
    @property
    def state(self) -> StreamState:
        return self._state

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def latest(self, after: int = 0, timeout: float | None = None) -> Frame | None:
        """The newest sampled frame with ``index > after``; waits up to ``timeout``.
        None on timeout, or once the reader is stopped, ended or failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                frame = self._slot
                if frame is not None and frame.index > after:
                    self._slot_taken = True
                    return frame
                if self._stop.is_set() or self._state in (StreamState.ENDED, StreamState.FAILED):
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    # --- thread --------------------------------------------------------------------
    def _set_state(self, new: StreamState, reason: str = "") -> None:
        old = self._state
        if new is old:
            return
        if new not in _ALLOWED[old]:
            log.error("stream %s: illegal transition %s -> %s ignored", self.stream_id, old.value, new.value)
            return
        self._state = new
        self.stats.state_changes[new.value] += 1
        log.info(
            "stream %s (%s): %s -> %s%s",
            self.stream_id,
            self.spec.display,
            old.value,
            new.value,
            f" ({reason})" if reason else "",
        )
        with self._cond:
            self._cond.notify_all()
        if self._on_state is not None:
            try:
                self._on_state(StateChange(self.stream_id, old, new, time.time(), reason))
            except Exception:  # a subscriber must not kill the reader
                log.exception("stream %s: state listener failed", self.stream_id)

    def _open(self) -> cv2.VideoCapture:
        c = self.config
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(c.open_timeout_s * 1000),
            # FFmpeg retries a stalled read about three times before giving up.
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, int(c.read_timeout_s * 1000 / 3)),
        ]
        if self.spec.kind is SourceKind.WEBCAM:
            return cv2.VideoCapture(int(self.spec.location), cv2.CAP_ANY)
        with _OPEN_LOCK:
            previous = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = ffmpeg_options(self.spec, transport=c.rtsp_transport)
            try:
                return cv2.VideoCapture(self.spec.location, cv2.CAP_FFMPEG, params)
            finally:
                if previous is None:
                    os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
                else:
                    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = previous

    def _backoff(self, attempt: int) -> float:
        c = self.config
        delay: float = min(c.backoff_max_s, c.backoff_initial_s * 2.0 ** max(0, attempt - 1))
        return delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a reader never dies silently
            log.exception("stream %s: reader crashed", self.stream_id)
            self._set_state(StreamState.FAILED, f"reader crashed: {e}")
        finally:
            if self._stop.is_set():
                self._set_state(StreamState.STOPPED)

    def _loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            cap = self._open()
            try:
                if cap.isOpened():
                    outcome = self._read(cap)
                    if outcome == "ended":
                        self._set_state(StreamState.ENDED, "end of file")
                        return
                    if outcome == "stopped":
                        return
                    attempt = 0 if outcome == "dropped" else attempt
                reason = "no frames" if cap.isOpened() else "could not open"
            finally:
                cap.release()
            attempt += 1
            if self.config.max_retries is not None and attempt > self.config.max_retries:
                self._set_state(StreamState.FAILED, f"{reason}; gave up after {self.config.max_retries} retries")
                return
            self._set_state(StreamState.RECONNECTING, reason)
            self.stats.reconnects += 1
            if self._stop.wait(self._backoff(attempt)):
                return

    def _read(self, cap: cv2.VideoCapture) -> str:
        """Read until the source fails ("dropped" after frames, "empty" before any), ends or we stop."""
        period = 1.0 / self.config.sample_fps
        native_fps = float(cap.get(cv2.CAP_PROP_FPS)) if not self.spec.live else 0.0
        frame_period = 1.0 / native_fps if 0 < native_fps < 1000 else 1.0 / 25
        next_sample = time.monotonic()
        next_frame = time.monotonic()
        got_any = False
        while not self._stop.is_set():
            if not self.spec.live:  # files play at their own frame rate
                delay = next_frame - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return "stopped"
                next_frame = max(next_frame + frame_period, time.monotonic() - frame_period)
            if not cap.grab():
                if self.spec.kind is SourceKind.FILE and got_any:
                    if self.spec.loop and cap.set(cv2.CAP_PROP_POS_FRAMES, 0) and cap.grab():
                        pass
                    else:
                        return "ended"
                else:
                    return "dropped" if got_any else "empty"
            now = time.monotonic()
            wall = time.time()
            self.stats.frames_read += 1
            if not got_any:
                got_any = True
                self._set_state(StreamState.RUNNING)
            if now < next_sample:
                self.stats.frames_skipped += 1
                continue
            next_sample = max(next_sample + period, now - period)  # steady rate, no burst after a stall
            ok, image = cap.retrieve()
            if not ok or image is None:
                self.stats.decode_errors += 1
                continue
            self._publish(image, now, wall)
        return "stopped"

    def _publish(self, image: np.ndarray, mono: float, wall: float) -> None:
        c = self.config
        source = (int(image.shape[1]), int(image.shape[0]))
        if image.shape[1] != c.width or image.shape[0] != c.height:
            image = cv2.resize(image, (c.width, c.height), interpolation=cv2.INTER_AREA)
        with self._cond:
            if not self._slot_taken:
                self.stats.frames_dropped += 1
            index = self._slot.index + 1 if self._slot else 1
            self._slot = Frame(self.stream_id, index, wall, mono, image, source)
            self._slot_taken = False
            self.stats.frames_sampled += 1
            self.stats.last_frame_mono = mono
            self.stats._samples.append(mono)
            self._cond.notify_all()
        if self._on_frame is not None:
            self._on_frame()
