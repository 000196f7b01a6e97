"""The detector's letterbox: fit without distortion, pad right and bottom, map boxes back."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.preprocess import letterbox


def test_exact_half_size_is_the_original_pixels() -> None:
    # given a 640x360 image upscaled 2x by repeating pixels
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    big = small.repeat(2, axis=0).repeat(2, axis=1)
    # when it is letterboxed into 640x360
    chw, sx, sy = letterbox(big, 640, 360)
    # then area averaging gives back exactly the original pixels, and the scale is 1/2
    assert (sx, sy) == (0.5, 0.5)
    assert np.array_equal(chw, small.transpose(2, 0, 1))


@pytest.mark.parametrize(("w", "h"), [(640, 300), (300, 360), (1000, 1000), (100, 50)])
def test_other_aspect_ratios_are_padded_not_stretched(w: int, h: int) -> None:
    image = np.full((h, w, 3), 200, dtype=np.uint8)
    chw, sx, sy = letterbox(image, 640, 360)
    assert chw.shape == (3, 360, 640)
    assert abs(sx - sy) < 0.02, "one scale for both axes"
    nw, nh = round(w * sx), round(h * sy)
    assert (chw[:, :nh, :nw] == 200).all(), "the image sits at the top left"
    assert (chw[:, nh:, :] == 0).all() and (chw[:, :, nw:] == 0).all(), "black padding right and bottom"
