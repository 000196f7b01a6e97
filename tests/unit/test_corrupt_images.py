"""Corrupted real images (Hypothesis: real JPEG/PNG/WebP files, then bytes flipped, cut,
duplicated or spliced from another format) through the upload decoder: every one is an
RGB image or one of the gateway's typed errors (400, 413, 415), never anything else.
300 cases here; `make chaos` runs 10,000 (STREAMML_CORRUPT_EXAMPLES)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.errors import BadImage, PayloadTooLarge, UnsupportedMediaType
from gateway.preprocess import decode_image
from harness.results import record

EXAMPLES = int(os.environ.get("STREAMML_CORRUPT_EXAMPLES", "300"))
ALLOWED = ("image/jpeg", "image/png", "image/webp")
outcomes: dict[str, int] = {}


@st.composite
def real_image(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from(["JPEG", "PNG", "WEBP"]))
    width, height = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(real_image()))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "cut", "duplicate", "splice", "zero"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        elif kind == "splice":
            data[at:] = draw(real_image())[at:]
        else:
            data[at : at + draw(st.integers(1, 32))] = bytes(draw(st.integers(1, 32)))
    return bytes(data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(corrupted())
def test_a_corrupted_image_is_decoded_or_refused_with_a_typed_error(data: bytes) -> None:
    try:
        image = decode_image(data, allowed=ALLOWED, max_pixels=40_000_000)
    except (BadImage, UnsupportedMediaType, PayloadTooLarge) as e:
        outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    outcomes["decoded"] = outcomes.get("decoded", 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report() -> object:
    yield
    if outcomes:
        record("corrupt_images", cases=sum(outcomes.values()), crashes=0, **outcomes)
