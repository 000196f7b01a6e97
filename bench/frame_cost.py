"""``python -m bench.frame_cost``: preprocessing a sampled frame, before and now, side by side.

A BGR frame to the classifier's uint8 ``[3, 224, 224]``: PIL's whole resize of the shorter
side to 256, then the center crop (what torchvision's preset does, and what the gateway
did before) against ``frame_classifier_input``, which computes only the crop's pixels,
timed in turns in one process and one thread (so the figures are a core's).  Every output
is compared with the whole resize's, pixel for pixel, and a difference stops the run.
Frames are photo-like test scenes at common camera sizes.  Prints milliseconds per frame,
the ratio (now / before) and the input columns the horizontal pass reads.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from gateway.preprocess import center_crop_box, frame_classifier_input, frame_columns, resized_size
from harness.helpers import scene

SIZES = ((640, 360), (1280, 720), (1920, 1080), (704, 576), (640, 480))
RESIZE, CROP = 256, (224, 224)


def whole_resize(bgr: np.ndarray) -> np.ndarray:
    """The preset the plain way, as the gateway did it before: every pixel of the resize
    computed, then cropped."""
    image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    size = resized_size(image.width, image.height, RESIZE)
    cropped = image.resize(size, Image.Resampling.BILINEAR).crop(center_crop_box(*size, *CROP))
    return np.ascontiguousarray(np.asarray(cropped).transpose(2, 0, 1))


def turns(arms: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, float]:
    """Milliseconds per call of each arm, the arms taking turns round by round."""
    spent = dict.fromkeys(arms, 0.0)
    for fn in arms.values():
        fn()  # warm: caches, first-use allocations, frame_columns' check
    for _ in range(rounds):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            spent[name] += time.perf_counter() - t0
    return {name: s / (rounds * per_round) * 1e3 for name, s in spent.items()}


def _arms(bgr: np.ndarray) -> dict[str, Callable[[], object]]:
    def before() -> object:
        return whole_resize(bgr)

    def now() -> object:
        return frame_classifier_input(bgr, resize_size=RESIZE, crop_hw=CROP)

    return {"before": before, "now": now}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.frame_cost", description=__doc__)
    p.add_argument("--rounds", type=int, default=20, help="turns per arm (default: %(default)s)")
    p.add_argument("--per-round", type=int, default=25, help="calls per turn (default: %(default)s)")
    args = p.parse_args(argv)
    print(f"{'frame':>10s} {'before ms':>10s} {'now ms':>8s} {'ratio':>6s}  columns read")
    for width, height in SIZES:
        bgr = np.ascontiguousarray(np.asarray(scene(width, height, seed=width))[:, :, ::-1])
        if not np.array_equal(frame_classifier_input(bgr, resize_size=RESIZE, crop_hw=CROP), whole_resize(bgr)):
            raise SystemExit(f"{width}x{height}: the crop's pixels differ from the whole resize's")
        ms = turns(_arms(bgr), args.rounds, args.per_round)
        size = resized_size(width, height, RESIZE)
        left, _, right, _ = center_crop_box(*size, *CROP)
        start, stop, _ = frame_columns(width, size[0], left, right)
        ratio = ms["now"] / ms["before"]
        print(f"{width:>5d}x{height:<4d} {ms['before']:10.3f} {ms['now']:8.3f} {ratio:6.2f}  {start}-{stop} of {width}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
