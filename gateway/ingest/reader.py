"""One reader per source: its own thread, a latest-frame slot, and a state machine.

``StreamReader`` is the contract every backend keeps (``PyAvReader`` in
``pyav_reader.py``, the default, and ``OpenCvReader`` in ``opencv_reader.py``); a
backend supplies only ``_open``, ``_read`` and ``_close``.

The reader decodes as it must and keeps **only the newest sampled frame**: a
consumer that falls behind gets the newest frame, never a backlog, and every frame
it missed is counted as dropped.  Frames between samples are skipped (not decoded
at all in keyframe mode, or decoded but not converted), and counted.  A consumer's
``prepare`` hook runs on the reader's thread with each sampled image before it is
published (the gateway preprocesses it for its model there), and its result travels
in ``Frame.prepared``; a hook that fails leaves it None.

Waits are bounded: the decoder's open and read timeouts stop a dead or frozen
network source from hanging the thread; the reader then reconnects with
exponential backoff and jitter, and gives up (``failed``) after ``max_retries`` if
one is set.  A read that failed after the source fell silent for its read timeout
is a stall (``stalled``, then ``reconnecting``); a source that closed is a drop
(``reconnecting``).  A source no decoder timeout covers (a pipe, a wedged driver)
is caught by the ``Watchdog``, which calls ``mark_stalled`` and ``restart``.  Every
state change is logged (URL redacted), counted and handed to ``on_state``.

``restart`` opens the source again on a fresh thread: a thread stuck in the
decoder cannot be interrupted, so it is abandoned, and when its call returns it
finds itself superseded (its generation is old), releases its source and exits
without touching the stream.  Pipes are never reopened (two readers would split
the writer's bytes); a stalled pipe resumes when its writer does.
"""

from __future__ import annotations

import abc
import enum
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import cv2
import numpy as np

from gateway.ingest.sources import SourceSpec

log = logging.getLogger(__name__)
DecodeMode: TypeAlias = Literal["keyframes", "all"]
DecodeSetting: TypeAlias = Literal["auto", "keyframes", "all"]
Clock: TypeAlias = Literal["rtcp", "pts", "reader"]
STALL_FRACTION = 0.8  # a failed read after this fraction of read_timeout_s of silence is a stall, not a drop
_REASONS = {"stalled": "no frames", "dropped": "source closed", "empty": "no frames", "unopened": "could not open"}
MAX_ERROR_CHARS = 1000


def next_due(due: float, now: float, period: float) -> float:
    """When the sample after the one taken at ``now`` (due at ``due``) is due: a steady rate, and
    after a gap (a stall, a decoder waiting for a keyframe) one period from now, not a burst."""
    after = due + period
    return after if after > now else now + period


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
    source_at: float | None = None  # wall clock when the camera captured it, from the stream's timestamps
    clock: Clock = "reader"  # where source_at comes from: RTCP sender reports, or PTS anchored to arrival
    prepared: object | None = None  # what the consumer's ``prepare`` hook made of the image, on the reader's thread


# The consumer's hook, called on the reader's thread with each sampled image (at the configured size)
# and the source's size, before the frame is published: its result travels in ``Frame.prepared``.
Prepare: TypeAlias = Callable[[np.ndarray, tuple[int, int]], object]


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
    decode: DecodeSetting = "auto"  # PyAV: keyframes only when sample_fps allows, all frames, or chosen per stream
    hwaccel: str | None = None  # PyAV: an FFmpeg hardware device type (cuda, vaapi, ...); None: software
    decoder_threads: int = 1  # PyAV: decoder threads per stream (0: FFmpeg picks)
    ffmpeg_options: tuple[tuple[str, str], ...] = ()  # extra options for every open (the whitelist wins)
    burst_kib: int = 64  # PyAV, keyframe mode, RTSP over TCP: read between keyframes in bursts of at most this; 0: off


@dataclass
class ReaderStats:
    frames_read: int = 0
    frames_sampled: int = 0
    frames_skipped: int = 0  # read but not sampled (above sample_fps)
    frames_dropped: int = 0  # sampled but replaced before anyone took them
    reconnects: int = 0
    stalls: int = 0  # times the source went silent without closing
    decode_errors: int = 0  # a grabbed frame the decoder could not deliver
    frames_decoded: int = 0  # frames the decoder produced (keyframe mode decodes few of those read)
    decode_mode: DecodeMode | None = None  # what the reader decodes now; None until it knows
    keyframe_interval_s: float | None = None  # measured from the stream, not assumed
    mode_switches: int = 0  # changes of decode_mode after the first choice
    clock: Clock = "reader"  # where the last frame's source_at came from
    hwaccel: str | None = None  # the hardware decoder in use, None for software
    naps: int = 0  # PyAV, keyframe mode: sleeps between keyframes (the frames between read in one burst after)
    napped_s: float = 0.0  # and how long they lasted in all
    codec: str | None = None  # the video codec, FFmpeg's name (h264, hevc, mjpeg, ...); None until opened
    last_error: str | None = None  # why the source last failed, credentials masked; None until it has
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


class StreamReader(abc.ABC):
    """Owns one source's thread, latest-frame slot and state. ``stop()`` is idempotent.

    A backend subclass opens the source (``_open``: a handle, or None when it cannot be
    opened), reads it until it fails, ends or is stopped (``_read``: the outcome), and
    closes it (``_close``)."""

    backend = ""

    def __init__(
        self,
        stream_id: str,
        spec: SourceSpec,
        config: ReaderConfig,
        *,
        on_state: Callable[[StateChange], object] | None = None,
        on_frame: Callable[[], object] | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.spec = spec
        self.config = config
        self.stats = ReaderStats()
        self._detail = ""  # the backend's own words on this attempt's failure (FFmpeg's message), masked
        self._on_state = on_state
        self._on_frame = on_frame
        self._prepare = prepare
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
        self.stats.last_error = f"restarted: {reason}"[:MAX_ERROR_CHARS]
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

    @abc.abstractmethod
    def _open(self) -> Any:
        """The open source, or None when it could not be opened (logged, redacted)."""
        raise NotImplementedError

    @abc.abstractmethod
    def _read(self, handle: Any, gen: int) -> str:
        """Read until the source fails ("dropped" when it closed after frames, "stalled" when
        it went silent, "empty" before any frame), ends, we stop, or a restart supersedes us."""
        raise NotImplementedError

    @abc.abstractmethod
    def _close(self, handle: Any) -> None:
        raise NotImplementedError

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
            self._detail = ""
            handle = self._open()
            if not self._current(gen):
                if handle is not None:
                    self._close(handle)
                return  # superseded (restarted) or stopped while opening
            outcome = self._read(handle, gen) if handle is not None else "unopened"
            if outcome in ("stopped", "superseded", "ended"):
                self._close(handle)
                if outcome == "ended":
                    self._set_state(StreamState.ENDED, "end of file", gen=gen)
                return
            attempt = 1 if outcome in ("dropped", "stalled") else attempt + 1  # frames came: count afresh
            reason = _REASONS[outcome]
            self.stats.last_error = (f"{reason}: {self._detail}" if self._detail else reason)[:MAX_ERROR_CHARS]
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
                name = f"release-{self.stream_id}"
                threading.Thread(target=self._close, args=(handle,), name=name, daemon=True).start()
            elif handle is not None:
                self._close(handle)
            if gave_up:
                return
            self.stats.reconnects += 1
            if self._stop.wait(self._backoff(attempt)):
                return

    def _frame_read(self, now: float, got_any: bool, gen: int) -> None:
        """The source delivered a frame (decoded or not): count it; the first one, or one after
        a stall, means the stream runs."""
        self.stats.frames_read += 1
        self.stats.last_read_mono = now
        if not got_any or self._state is StreamState.STALLED:
            self._set_state(StreamState.RUNNING, gen=gen)

    def _silent_failure(self, got_any: bool, waited: float, gen: int) -> str:
        """What a failed read of a live source means: a stall after ``STALL_FRACTION`` of the read
        timeout of silence, else a drop (or "empty" before any frame)."""
        if got_any and waited >= STALL_FRACTION * self.config.read_timeout_s:
            self._set_state(StreamState.STALLED, f"no frame for {self.config.read_timeout_s:g}s", gen=gen)
            self._detail = self._detail or f"silent for {waited:.1f}s"
            return "stalled"
        return "dropped" if got_any else "empty"

    def _set_mode(self, mode: DecodeMode, interval: float | None) -> None:
        stats = self.stats
        measured = stats.keyframe_interval_s is not None  # the mode so far was chosen on a measurement
        stats.keyframe_interval_s = interval
        if mode != stats.decode_mode:
            if stats.decode_mode is not None and measured:
                stats.mode_switches += 1
            if interval is not None:
                log.info(
                    "stream %s: decoding %s (keyframe interval %s, sample_fps %g)",
                    self.stream_id,
                    "keyframes only" if mode == "keyframes" else "every frame",
                    f"{interval:.2f}s" if interval else "unknown",
                    self.config.sample_fps,
                )
            stats.decode_mode = mode

    def _publish(
        self,
        image: np.ndarray,
        mono: float,
        wall: float,
        gen: int,
        *,
        source_size: tuple[int, int] | None = None,
        source_at: float | None = None,
        clock: Clock = "reader",
    ) -> bool:
        c = self.config
        source = source_size or (int(image.shape[1]), int(image.shape[0]))
        if image.shape[1] != c.width or image.shape[0] != c.height:
            image = cv2.resize(image, (c.width, c.height), interpolation=cv2.INTER_AREA)
        prepared = self._prepared(image, source)
        with self._cond:
            if gen != self._generation:
                return False
            if not self._slot_taken:
                self.stats.frames_dropped += 1
            index = self._slot.index + 1 if self._slot else 1
            self._slot = Frame(self.stream_id, index, wall, mono, image, source, source_at, clock, prepared)
            self._slot_taken = False
            self.stats.frames_sampled += 1
            self.stats.clock = clock
            self.stats._samples.append(mono)
            self._cond.notify_all()
        if self._on_frame is not None:
            self._on_frame()
        return True

    def _prepared(self, image: np.ndarray, source: tuple[int, int]) -> object | None:
        """The ``prepare`` hook's result; None without one, or when it fails (the consumer then
        prepares the frame itself, and meets the failure there)."""
        if self._prepare is None:
            return None
        try:
            return self._prepare(image, source)
        except Exception:  # a consumer's hook must not kill the reader
            log.debug("stream %s: the prepare hook failed", self.stream_id, exc_info=True)
            return None
