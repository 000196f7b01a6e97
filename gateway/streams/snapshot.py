"""The frame a viewer sees: the stream's last *predicted* frame as a JPEG, encoded at most once
per ``viewer.frame_interval_s`` however many viewers ask.

The worker hands over each frame whose prediction it has just published (a reference, no
copy), so a viewer that draws the boxes of event ``frame: N`` over the JPEG of frame ``N``
(``X-Frame-Index``) draws them where they belong.  Nothing here decodes or infers: the
viewer costs the pipeline one JPEG encode per interval per watched stream, off the event
loop, and nothing for streams nobody watches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2

from gateway.errors import FrameNotReady
from gateway.ingest import Frame


@dataclass(frozen=True)
class Jpeg:
    data: bytes
    frame: int  # the sampled-frame index (the prediction event's `frame`)
    captured_at: float  # Unix seconds


class FrameSnapshot:
    """Owned by one stream worker; lives on the event loop."""

    def __init__(self, stream: str, interval_s: float, quality: int, clock: Callable[[], float] = time.monotonic):
        self._stream = stream
        self._interval_s = interval_s
        self._params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        self._clock = clock
        self._latest: Frame | None = None
        self._jpeg: Jpeg | None = None
        self._encoded_at = -float("inf")
        self._lock = asyncio.Lock()
        self.encodes = 0  # JPEGs encoded over the stream's life (streamml_frames_encoded_total)

    def offer(self, frame: Frame) -> None:
        """The frame whose prediction was just published."""
        self._latest = frame

    async def jpeg(self) -> Jpeg:
        """The newest predicted frame as a JPEG, or the one encoded less than an interval ago."""
        async with self._lock:  # concurrent viewers wait for one encode and share it
            frame = self._latest
            if frame is None:
                raise FrameNotReady(f"stream {self._stream!r} has no predicted frame yet")
            cached = self._jpeg
            fresh = self._clock() - self._encoded_at < self._interval_s
            if cached is not None and (cached.frame == frame.index or fresh):
                return cached
            ok, buf = await asyncio.to_thread(cv2.imencode, ".jpg", frame.image, self._params)
            if not ok:  # cannot happen for a uint8 BGR image; never serve a broken file
                raise RuntimeError(f"JPEG encoding failed for stream {self._stream!r}")
            self._jpeg = Jpeg(buf.tobytes(), frame.index, frame.captured_at)
            self._encoded_at = self._clock()
            self.encodes += 1
            return self._jpeg
