"""The OpenCV reader (``ingest.backend: opencv``): the fallback behind the same contract.

OpenCV's FFmpeg backend takes its FFmpeg options only from the process-wide
``OPENCV_FFMPEG_CAPTURE_OPTIONS`` variable, so every open sets it under one lock.
It decodes every frame (``grab``), converts only the sampled ones (``retrieve``),
and stamps frames with the reader's clock: it exposes no timestamps worth mapping
to the camera's.  Use the PyAV reader unless a source only OpenCV can open.
"""

from __future__ import annotations

import math
import os
import threading
import time

import cv2

from gateway.ingest.reader import StreamReader, next_due
from gateway.ingest.sources import SourceKind, ffmpeg_options

_OPEN_LOCK = threading.Lock()  # OPENCV_FFMPEG_CAPTURE_OPTIONS is process-wide: set it and open under one lock
V4L_SELECT_TIMEOUT = "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"  # seconds a webcam read waits for a frame (default 10)


class OpenCvReader(StreamReader):
    backend = "opencv"

    def _open(self) -> cv2.VideoCapture | None:
        cap = self._capture()
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _capture(self) -> cv2.VideoCapture:
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
        options = ffmpeg_options(self.spec, transport=c.rtsp_transport, extra=dict(c.ffmpeg_options))
        with _OPEN_LOCK:
            previous = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = options
            try:
                return cv2.VideoCapture(self.spec.location, cv2.CAP_FFMPEG, params)
            finally:
                if previous is None:
                    os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
                else:
                    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = previous

    def _close(self, handle: cv2.VideoCapture) -> None:
        handle.release()

    def _read(self, cap: cv2.VideoCapture, gen: int) -> str:
        period = 1.0 / self.config.sample_fps
        native_fps = float(cap.get(cv2.CAP_PROP_FPS)) if not self.spec.live else 0.0
        frame_period = 1.0 / native_fps if 0 < native_fps < 1000 else 1.0 / 25
        next_sample = time.monotonic()
        next_frame = time.monotonic()
        got_any = False
        self._set_mode("all", None)  # grab() decodes every frame
        self.stats.codec = codec_name(cap.get(cv2.CAP_PROP_FOURCC))
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
            self._frame_read(now, got_any, gen)
            got_any = True
            self.stats.frames_decoded += 1
            if now < next_sample:
                self.stats.frames_skipped += 1
                continue
            next_sample = next_due(next_sample, now, period)
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
        return self._silent_failure(got_any, waited, gen)


# What OpenCV reports, by FFmpeg's codec name: a file's container tag, or a name cut to 4 letters.
_TAGS = {
    "avc1": "h264",
    "avc3": "h264",
    "hvc1": "hevc",
    "hev1": "hevc",
    "mjpg": "mjpeg",
    "mjpe": "mjpeg",
    "jpeg": "mjpeg",
}


def codec_name(fourcc: float) -> str | None:
    """OpenCV's ``CAP_PROP_FOURCC`` as FFmpeg's codec name: its FFmpeg backend reports the
    container's tag (``avc1``) where there is one, else the first four letters of the name
    (``h264``, ``hevc``); None when it reports nothing."""
    code = int(fourcc)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ").lower()
    if not text or not text.isprintable():
        return None
    return _TAGS.get(text, text)
