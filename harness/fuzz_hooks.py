"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=harness.fuzz_hooks``): real images for the
image media types.

A schema can say that ``POST /predict`` takes ``image/jpeg`` (or octet-stream) bytes, but not that the
bytes decode.  Without these strategies every generated body would be random bytes,
which the gateway rightly refuses (400), and Schemathesis would count that against a
request it believes valid.  Here each image body is a real JPEG, PNG or WebP
(random size, pixels, mode and quality); undecodable and corrupted images are the
upload tests' job (tests/integration/test_predict_api.py).
"""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


@st.composite
def _image(draw: st.DrawFn, fmt: str) -> bytes:
    width = draw(st.integers(1, 96))
    height = draw(st.integers(1, 96))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA"] if fmt != "JPEG" else ["RGB", "L"]))
    seed = draw(st.integers(0, 2**32 - 1))
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": draw(st.integers(5, 100))} if fmt != "PNG" else {}))
    return buf.getvalue()


for media, fmt in FORMATS.items():
    schemathesis.openapi.media_type(media, _image(fmt))
schemathesis.openapi.media_type("application/octet-stream", st.one_of(*(_image(fmt) for fmt in FORMATS.values())))
