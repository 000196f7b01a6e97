"""H.264 MP4 test clips written with PyAV (OpenCV's writer cannot do H.264 here)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType


def write_clip(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: int = 25,
    width: int = 640,
    height: int = 360,
    still: np.ndarray | None = None,
    fmt: str | None = None,
    keyframes: Collection[int] | None = None,
    slices: int = 0,
    bframes: int = 0,
) -> Path:
    """A moving gradient (every frame differs), or ``still`` (H x W x 3 RGB) in every frame.
    The container follows the suffix, or ``fmt`` (``mpegts`` for a stream a pipe can carry).
    A keyframe every ``fps`` frames, or exactly at the frame indices in ``keyframes``.
    ``slices``: pictures of that many slices (x264's default otherwise).  ``bframes``: up to
    that many B-frames in a row (the decoder then holds frames back to reorder them)."""
    if still is not None:
        height, width = still.shape[:2]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        gop = str(fps) if keyframes is None else "100000"
        stream.options = {"bf": str(bframes), "preset": "ultrafast", "g": gop, "sc_threshold": "0"}
        if slices:
            stream.options = {**stream.options, "slices": str(slices)}
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * fps)):
            img = (
                still
                if still is not None
                else np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, np.full_like(xx, (i * 9) % 256)], -1)
            )
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            if keyframes is not None:
                frame.pict_type = PictureType.I if i in keyframes else PictureType.NONE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
