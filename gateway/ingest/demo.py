"""The demo source: a test-card clip written once, then read like any video file, in a loop.

``make run`` with no camera configured turns on ``demo.enabled``, so that the viewer and
``GET /stream`` show live predictions in the first minute.  The clip is drawn with
OpenCV (already the reader's library): colour bars, a ball and a block that move, a
clock and a frame counter, so that every sampled frame differs from the last and the
predictions change.  Encoded as cameras send video: H.264 (libx264, through PyAV, the
reader's library), a keyframe every second, no B-frames; so the demo runs the reader
paths a camera does (keyframe mode at or below 1 fps).

``python -m gateway.ingest.demo PATH`` writes it (what ``make run`` does at set-up);
the gateway writes it itself on first use when the file is missing.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 25, 12
# SMPTE-like bars, BGR
_BARS = [(192, 192, 192), (0, 192, 192), (192, 192, 0), (0, 192, 0), (192, 0, 192), (0, 0, 192), (192, 0, 0)]


def card_frame(index: int, width: int = WIDTH, height: int = HEIGHT, fps: int = FPS) -> np.ndarray:
    """Frame ``index`` of the clip, BGR."""
    img = np.zeros((height, width, 3), np.uint8)
    bar = math.ceil(width / len(_BARS))
    for i, colour in enumerate(_BARS):
        img[: height * 2 // 3, i * bar : (i + 1) * bar] = colour
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    img[height * 2 // 3 :, :, :] = ramp[None, :, None]
    t = index / fps
    cx = int(width / 2 + width * 0.38 * math.sin(2 * math.pi * t / 6))
    cy = int(height / 2 + height * 0.3 * math.sin(2 * math.pi * t / 3.7))
    cv2.circle(img, (cx, cy), height // 7, (255, 255, 255), -1, cv2.LINE_AA)
    cv2.circle(img, (cx, cy), height // 7, (0, 0, 0), 3, cv2.LINE_AA)
    bx = int((t / SECONDS) * (width + 120)) - 120
    cv2.rectangle(img, (bx, height // 8), (bx + 110, height // 8 + 150), (30, 60, 200), -1)
    cv2.putText(img, "stream-ml demo", (16, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 5, cv2.LINE_AA)
    cv2.putText(img, "stream-ml demo", (16, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2, cv2.LINE_AA)
    label = f"{t:05.2f}s  frame {index:04d}"
    cv2.putText(img, label, (16, height - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(img, label, (16, height - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    return img


def write_clip(path: Path, seconds: int = SECONDS, fps: int = FPS) -> Path:
    """Write the clip to ``path`` (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            stream.options = {"g": str(fps), "keyint_min": str(fps), "bf": "0", "sc_threshold": "0", "preset": "fast"}
            for i in range(seconds * fps):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(card_frame(i, fps=fps), format="bgr24")))
            container.mux(stream.encode(None))  # flush the encoder
    except BaseException:
        os.unlink(tmp)
        raise
    os.chmod(tmp, 0o644)  # mkstemp made it private
    os.replace(tmp, path)
    return path


def ensure_clip(path: Path) -> Path:
    """The demo clip, written first if missing."""
    if not path.is_file():
        log.info("writing the demo clip to %s", path)
        write_clip(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    args = parser.parse_args()
    write_clip(args.path)
    print(f"demo clip: {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
