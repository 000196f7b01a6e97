"""One reader per source: its own thread, a latest-frame slot, and a state machine.

The reader decodes continuously and keeps **only the newest sampled frame**: a
consumer that falls behind gets the newest frame, never a backlog, and every frame
it missed is counted as dropped.  Frames between samples are grabbed but not
converted (``grab`` without ``retrieve``), and counted as skipped.

Waits are bounded: OpenCV's open and read timeouts stop a dead or frozen network
source from hanging the thread, and V4L2's select timeout bounds a webcam's read;
the reader then reconnects with exponential backoff and jitter, and gives up
(``failed``) after ``max_retries`` if one is set.  A read that failed after the
source fell silent for its read timeout is a stall (``stalled``, then
``reconnecting``); a source that closed is a drop (``reconnecting``).  A source no
decoder timeout covers (a pipe, a wedged driver) is caught by the ``Watchdog``,
which calls ``mark_stalled`` and ``restart``.  Every state change is logged (URL
redacted), counted and handed to ``on_state``.

``restart`` opens the source again on a fresh thread: a thread stuck in the
decoder cannot be interrupted, so it is abandoned, and when its call returns it
finds itself superseded (its generation is old), releases its capture and exits
without touching the stream.  Pipes are never reopened (two readers would split
the writer's bytes); a stalled pipe resumes when its writer does.
"""

from __future__ import annotations

import enum
import logging
import math
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
V4L_SELECT_TIMEOUT = "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"  # seconds a webcam read waits for a frame (default 10)
STALL_FRACTION = 0.8  # a failed read after this fraction of read_timeout_s of silence is a stall, not a drop
_REASONS = {"stalled": "no frames", "dropped": "source closed", "empty": "no frames", "unopened": "could not open"}


class StreamState(enum.Enum):
    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    STALLED = "stalled"  # open, but no frame for read_timeout_s
    ENDED = "ended"
    STOPPED = "stopped"
    FAILED = "failed"


_ALLOWED: dict[StreamState, frozenset[StreamState]] = {
    StreamState.CONNECTING: frozenset(
        {StreamState.RUNNING, StreamState.RECONNECTING, StreamState.ENDED, StreamState.STOPPED, StreamState.FAILED}
    ),
    StreamState.RUNNING: frozenset(
        {StreamState.RECONNECTING, StreamState.STALLED, StreamState.ENDED, StreamState.STOPPED, StreamState.FAILED}
    ),
    StreamState.STALLED: frozenset(
        {StreamState.RUNNING, StreamState.RECONNECTING, StreamState.ENDED, StreamState.STOPPED, StreamState.FAILED}
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
    stalls: int = 0  # times the source went silent without closing
    decode_errors: int = 0  # a grabbed frame the decoder could not deliver
    last_read_mono: float | None = None  # the last frame the source delivered, sampled or not
    state_changes: Counter[StreamState] = field(default_factory=Counter)
    _samples: deque[float] = field(default_factory=lambda: deque(maxlen=32))

    @property
    def fps(self) -> float:
        """Sampled frames per second over the recent window."""
        if len(self._samples) < 2:
            return 0.0
        span = self._samples[-1] - self._samples[0]
        return (len(self._samples) - 1) / span if span > 0 else 0.0

    def silence(self, now: float | None = None) -> float | None:
        """Seconds since the source last delivered a frame (None before the first)."""
        if self.last_read_mono is None:
            return None
        return (now if now is not None else time.monotonic()) - self.last_read_mono


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
        self._cond = threading.Condition()  # guards the slot, the state and the generation
        self._slot: Frame | None = None
        self._slot_taken = True
        self._generation = 0  # bumped by restart(): an older thread's work no longer counts
        self._started = False
        self._thread = self._new_thread()

    # --- public ------------------------------------------------------------------
    @property
    def state(self) -> StreamState:
        return self._state

    def transitions(self) -> dict[StreamState, int]:
        """State changes so far, by new state."""
        with self._cond:
            return dict(self.stats.state_changes)

    @property
    def generation(self) -> int:
        """How many times the reader was restarted."""
        return self._generation

    def start(self) -> None:
        with self._cond:
            if self._started or self._stop.is_set():
                return
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the current thread (an abandoned one is left to finish its call)."""
        thread = self._thread
        if thread.is_alive():
            thread.join(timeout)
        return not thread.is_alive()

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

    def mark_stalled(self, reason: str) -> bool:
        """From the watchdog: the running source fell silent.  False if it is not running
        (any more): it recovered, or its own read timeout got there first."""
        return self._set_state(StreamState.STALLED, reason, expect=StreamState.RUNNING)

    def restart(self, reason: str) -> bool:
        """Open the source again on a fresh thread, abandoning the current one (which may be
        stuck in the decoder).  False, and nothing done, for a pipe, or once stopped."""
        if not self.spec.reopenable or self._stop.is_set():
            return False
        with self._cond:
            if not self._started or self._state not in (StreamState.STALLED, StreamState.RUNNING):
                return False
            self._generation += 1
            self._thread = self._new_thread()
            self._thread.start()
        log.warning("stream %s: restarting the reader (%s)", self.stream_id, reason)
        return True

    # --- thread --------------------------------------------------------------------
    def _new_thread(self) -> threading.Thread:
        gen = self._generation
        return threading.Thread(target=self._run, args=(gen,), name=f"reader-{self.stream_id}-{gen}", daemon=True)

    def _current(self, gen: int) -> bool:
        return gen == self._generation and not self._stop.is_set()

    def _set_state(
        self, new: StreamState, reason: str = "", *, gen: int | None = None, expect: StreamState | None = None
    ) -> bool:
        """Move to ``new`` if allowed (and, with ``gen``, only for the current thread; with
        ``expect``, only from that state).  Listeners are called outside the lock."""
        with self._cond:
            old = self._state
            if new is old or (gen is not None and gen != self._generation) or (expect and old is not expect):
                return False
            if new not in _ALLOWED[old]:
                log.error("stream %s: illegal transition %s -> %s ignored", self.stream_id, old.value, new.value)
                return False
            self._state = new
            self.stats.state_changes[new] += 1
            if new is StreamState.STALLED:
                self.stats.stalls += 1
            self._cond.notify_all()
        log.info(
            "stream %s (%s): %s -> %s%s",
            self.stream_id,
            self.spec.display,
            old.value,
            new.value,
            f" ({reason})" if reason else "",
        )
        if self._on_state is not None:
            try:
                self._on_state(StateChange(self.stream_id, old, new, time.time(), reason))
            except Exception:  # a subscriber must not kill the reader
                log.exception("stream %s: state listener failed", self.stream_id)
        return True

    def _open(self) -> cv2.VideoCapture:
        c = self.config
        if self.spec.kind is SourceKind.WEBCAM:
            # V4L2 takes no open parameters; its read waits OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT
            # seconds (10 by default, read once per process).  Bound it by the read timeout
            # unless the operator set it.
            os.environ.setdefault(V4L_SELECT_TIMEOUT, str(max(1, math.ceil(c.read_timeout_s))))
            return cv2.VideoCapture(int(self.spec.location), cv2.CAP_ANY)
        # Each bound applies to one blocking call: a read fails once the source has been silent
        # for read_timeout_s (closing the connection afterwards can block as long again).
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(c.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, int(c.read_timeout_s * 1000)),
        ]
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

    def _run(self, gen: int) -> None:
        try:
            if gen > 0:  # a restart: the stream reconnects on this thread
                self.stats.reconnects += 1
                self._set_state(StreamState.RECONNECTING, "restarted by the watchdog", gen=gen)
            self._loop(gen)
        except Exception as e:  # a reader never dies silently
            log.exception("stream %s: reader crashed", self.stream_id)
            self._set_state(StreamState.FAILED, f"reader crashed: {e}", gen=gen)
        finally:
            if self._stop.is_set():
                self._set_state(StreamState.STOPPED, gen=gen)

    def _loop(self, gen: int) -> None:
        attempt = 0
        while self._current(gen):
            cap = self._open()
            if not self._current(gen):
                cap.release()
                return  # superseded (restarted) or stopped while opening
            outcome = self._read(cap, gen) if cap.isOpened() else "unopened"
            if outcome in ("stopped", "superseded", "ended"):
                cap.release()
                if outcome == "ended":
                    self._set_state(StreamState.ENDED, "end of file", gen=gen)
                return
            attempt = 1 if outcome in ("dropped", "stalled") else attempt + 1  # frames came: count afresh
            reason = _REASONS[outcome]
            gave_up = self.config.max_retries is not None and attempt > self.config.max_retries
            if gave_up:
                self._set_state(
                    StreamState.FAILED, f"{reason}; gave up after {self.config.max_retries} retries", gen=gen
                )
            else:
                self._set_state(StreamState.RECONNECTING, reason, gen=gen)
            if outcome == "stalled":
                # Closing a connection to a frozen server blocks (RTSP's TEARDOWN waits up to the
                # read timeout, more than once): close it on the side and carry on now.
                threading.Thread(target=cap.release, name=f"release-{self.stream_id}", daemon=True).start()
            else:
                cap.release()
            if gave_up:
                return
            self.stats.reconnects += 1
            if self._stop.wait(self._backoff(attempt)):
                return

    def _read(self, cap: cv2.VideoCapture, gen: int) -> str:
        """Read until the source fails ("dropped" when it closed after frames, "stalled" when
        it went silent, "empty" before any frame), ends, we stop, or a restart supersedes us."""
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
            asked = time.monotonic()
            grabbed = cap.grab()
            if gen != self._generation:
                return "superseded"
            if not grabbed:
                outcome = self._failed_grab(cap, got_any, time.monotonic() - asked, gen)
                if outcome is not None:
                    return outcome
            now = time.monotonic()
            wall = time.time()
            self.stats.frames_read += 1
            self.stats.last_read_mono = now
            if not got_any or self._state is StreamState.STALLED:
                got_any = True
                self._set_state(StreamState.RUNNING, gen=gen)
            if now < next_sample:
                self.stats.frames_skipped += 1
                continue
            next_sample = max(next_sample + period, now - period)  # steady rate, no burst after a stall
            ok, image = cap.retrieve()
            if not ok or image is None:
                self.stats.decode_errors += 1
                continue
            if not self._publish(image, now, wall, gen):
                return "superseded"
        return "stopped"

    def _failed_grab(self, cap: cv2.VideoCapture, got_any: bool, waited: float, gen: int) -> str | None:
        """What a failed grab means: None when a looping file started again (its first frame
        is grabbed), else the outcome of the read."""
        if self.spec.kind is SourceKind.FILE and got_any:
            looped = self.spec.loop and cap.set(cv2.CAP_PROP_POS_FRAMES, 0) and cap.grab()
            return None if looped else "ended"
        if got_any and waited >= STALL_FRACTION * self.config.read_timeout_s:
            self._set_state(StreamState.STALLED, f"no frame for {self.config.read_timeout_s:g}s", gen=gen)
            return "stalled"
        return "dropped" if got_any else "empty"

    def _publish(self, image: np.ndarray, mono: float, wall: float, gen: int) -> bool:
        c = self.config
        source = (int(image.shape[1]), int(image.shape[0]))
        if image.shape[1] != c.width or image.shape[0] != c.height:
            image = cv2.resize(image, (c.width, c.height), interpolation=cv2.INTER_AREA)
        with self._cond:
            if gen != self._generation:
                return False
            if not self._slot_taken:
                self.stats.frames_dropped += 1
            index = self._slot.index + 1 if self._slot else 1
            self._slot = Frame(self.stream_id, index, wall, mono, image, source)
            self._slot_taken = False
            self.stats.frames_sampled += 1
            self.stats._samples.append(mono)
            self._cond.notify_all()
        if self._on_frame is not None:
            self._on_frame()
        return True
