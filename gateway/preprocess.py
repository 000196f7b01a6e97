"""Preprocessing, as pure functions: sniff, decode, torchvision's classification preset,
the detector's letterbox, and ``prepare_image`` / ``prepare_frame``, which turn an
upload or a stream frame into the batch a model's metadata asks for.

``classifier_input`` reproduces ``MobileNet_V3_Small_Weights.IMAGENET1K_V1.transforms()``
on a PIL image: resize the shorter side to 256 with PIL's bilinear filter (what
torchvision's ``F.resize`` calls for PIL input), center-crop to the model's input
size with torchvision's rounding, and hand back uint8 CHW.  It computes only the
pixels the crop keeps, and ``frame_classifier_input`` reads only the columns of a
frame that it needs: each pixel for pixel what the whole resize gives.  The float steps
(x/255, minus mean, over std) run inside the exported graph, or in ``normalize``
for models that take float32.  ``Geometry`` records how the tensor maps back to
the client's image or the camera's frame, for boxes.  No torch here.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from gateway.config import PreprocessSettings
from gateway.errors import BadImage, PayloadTooLarge, UnsupportedMediaType
from gateway.inference.model import ModelInfo
from gateway.schema import MAX_SIDE

_PIL_FORMAT = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
_OTHER_IMAGES = (b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00", b"8BPS")
MAX_CUT_WIDTH = 2048  # frame_columns: wider frames are not cut (the weights' check holds a width x width int32 array)


def sniff(head: bytes) -> str | None:
    """The media type from the first bytes, for the formats the gateway decodes."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def webp_size(head: bytes) -> tuple[int, int] | None:
    """The canvas a WebP file declares (VP8X, lossy VP8 or lossless VP8L), from its first 30
    bytes, or None where they do not say.  libwebp's decoder allocates the canvas (twice, for
    animations) when Pillow's ``Image.open`` creates it, before any size check of ours could
    run, so WebP sizes are checked on these bytes first."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    if max(width, height) > MAX_SIDE:
        raise PayloadTooLarge(f"the image is {width}x{height} pixels; sides are limited to {MAX_SIDE}")


def _other_image(head: bytes) -> bool:
    return head.startswith(_OTHER_IMAGES) or head[4:8] == b"ftyp"  # GIF, BMP, TIFF, ICO, PSD, HEIC/AVIF


def decode_image(data: bytes, *, allowed: tuple[str, ...], max_pixels: int) -> Image.Image:
    """Decode an upload into an RGB image, or raise BadImage / UnsupportedMediaType / PayloadTooLarge."""
    if not data:
        raise BadImage("the image is empty (0 bytes)")
    kind = sniff(data[:16])
    if kind is None:
        if _other_image(data[:16]):
            raise UnsupportedMediaType(f"unsupported image format; send one of {', '.join(allowed)}")
        raise BadImage("the upload is not an image (unrecognised content)")
    if kind not in allowed:
        raise UnsupportedMediaType(f"{kind} is not accepted; send one of {', '.join(allowed)}")
    declared = webp_size(data[:30]) if kind == "image/webp" else None
    if declared is not None:
        _check_size(*declared, max_pixels)  # before Image.open, which allocates a WebP's canvas
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[kind]])
            _check_size(*opened.size, max_pixels)  # from the header (PNG's IHDR, JPEG's SOF): nothing decoded yet
            opened.load()  # truncated or corrupt data fails here
            ImageOps.exif_transpose(opened, in_place=True)  # as the camera held it; no copy without EXIF
            return opened if opened.mode == "RGB" else opened.convert("RGB")
    except (PayloadTooLarge, BadImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own check in Image.open, from the header (a PNG's IHDR, a JPEG's SOF), for
        # sizes past its MAX_IMAGE_PIXELS: too large, as with ours, not corrupt
        raise PayloadTooLarge(f"the image is larger than the limit of {max_pixels} pixels: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"the {kind} image could not be decoded (truncated or corrupt): {e}") from e


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision's rule for ``Resize(int)``: the shorter side becomes ``shorter``."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_box(width: int, height: int, crop_h: int, crop_w: int) -> tuple[int, int, int, int]:
    """torchvision's ``center_crop`` offsets, as a PIL box (left, top, right, bottom)."""
    top = round((height - crop_h) / 2.0)
    left = round((width - crop_w) / 2.0)
    return left, top, left + crop_w, top + crop_h


def classifier_input(image: Image.Image, *, resize_size: int, crop_hw: tuple[int, int]) -> np.ndarray:
    """RGB image → resized, center-cropped ``[3, H, W]`` uint8, as torchvision's preset does it."""
    size, box = _resize_and_crop(image.width, image.height, resize_size, crop_hw)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return _chw(_resized_crop(image, size, box))


def frame_classifier_input(bgr: np.ndarray, *, resize_size: int, crop_hw: tuple[int, int]) -> np.ndarray:
    """``classifier_input`` of a BGR frame, pixel for pixel, reading only the columns the crop
    needs where PIL's filter weights say that changes nothing (``frame_columns``)."""
    height, width = bgr.shape[:2]
    size, (left, top, right, bottom) = _resize_and_crop(width, height, resize_size, crop_hw)
    start, stop, skipped = frame_columns(width, size[0], left, right)
    image = Image.fromarray(cv2.cvtColor(bgr[:, start:stop], cv2.COLOR_BGR2RGB))
    part_size = ((stop - start) * size[0] // width, size[1])
    return _chw(_resized_crop(image, part_size, (left - skipped, top, right - skipped, bottom)))


def _resize_and_crop(
    width: int, height: int, resize_size: int, crop_hw: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The preset's resized size, and its center crop in it as a PIL box."""
    crop_h, crop_w = crop_hw
    if resize_size < max(crop_h, crop_w):
        raise ValueError(f"resize_size {resize_size} is smaller than the crop {crop_h}x{crop_w}")
    size = resized_size(width, height, resize_size)
    return size, center_crop_box(*size, crop_h, crop_w)


def _chw(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def _resized_crop(image: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """``image.resize(size, BILINEAR).crop(box)``, pixel for pixel, computing only the columns
    the crop keeps.  PIL resizes in two passes, each rounded to 8 bits: horizontal over every
    row, then vertical, which treats each column on its own; so the columns the crop drops
    are dropped between the passes (half of the vertical pass's work for a 16:9 frame)."""
    left, top, right, bottom = box
    if size[0] != image.width:
        image = image.resize((size[0], image.height), Image.Resampling.BILINEAR)  # the horizontal pass only
    image = image.crop((left, 0, right, image.height))
    if size[1] != image.height:
        image = image.resize((image.width, size[1]), Image.Resampling.BILINEAR)  # the vertical pass only
    return image.crop((0, top, image.width, bottom))


@functools.lru_cache(maxsize=16)
def frame_columns(width: int, resized: int, left: int, right: int) -> tuple[int, int, int]:
    """The input columns ``[start, stop)`` that a horizontal bilinear pass from ``width`` to
    ``resized`` columns needs for its output columns ``[left, right)``, and how many output
    columns fall left of ``start`` (``skipped``).  Columns are cut in whole units of
    ``width / resized`` in lowest terms (640 -> 455: 128 -> 91), so the cut pass has the same
    scale and its filter centers fall on the same source positions.  Whether PIL's weights
    then come out the same to the last bit (it computes the centers afresh, in floating
    point) is asked of PIL itself (``_weights``), once per geometry.  ``(0, width, 0)`` where
    no cut is both possible and exact."""
    unit = math.gcd(width, resized)
    unit_in, unit_out = width // unit, resized // unit
    cut_left, cut_right = left // unit_out, (resized - right) // unit_out
    if width > MAX_CUT_WIDTH or not (cut_left or cut_right):
        return 0, width, 0
    full = _weights(width, resized)[:, left:right]
    while cut_left or cut_right:
        start, stop, skipped = cut_left * unit_in, width - cut_right * unit_in, cut_left * unit_out
        part = _weights(stop - start, resized - (cut_left + cut_right) * unit_out)[:, left - skipped : right - skipped]
        outside = np.concatenate([full[:start], full[stop:]])
        if not outside.any() and np.array_equal(full[start:stop], part):
            return start, stop, skipped
        cut_left, cut_right = max(0, cut_left - 1), max(0, cut_right - 1)  # nearer the edges: wider margins
    return 0, width, 0


def _weights(width: int, resized: int) -> np.ndarray:
    """PIL's fixed-point weights of a horizontal bilinear pass from ``width`` to ``resized``
    columns, from PIL itself: row ``i`` holds input column ``i``'s weight in each output
    column.  A 32-bit ("I") image's pass keeps PIL's weights unrounded, and on an impulse of
    2**22 it rounds them just as the 8-bit pass turns them into fixed point (22 bits)."""
    impulses = np.eye(width, dtype=np.int32) * np.int32(1 << 22)
    return np.asarray(Image.fromarray(impulses).resize((resized, width), Image.Resampling.BILINEAR))


def normalize(chw: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """uint8 CHW → float32, the same ops as torchvision: x/255, minus mean, over std."""
    x = chw.astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (x - m) / s


def letterbox(rgb: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float, float]:
    """HWC RGB uint8 → ``[3, height, width]`` uint8, scaled to fit without distortion and
    padded with black at the right and bottom.  Returns the tensor and the x and y scale
    factors applied, so boxes map back with ``x / sx``, ``y / sy``.  Shrinking uses
    area averaging (a 2x downscale of 2x2 equal pixels is exact), enlarging bilinear."""
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    if (nw, nh) != (w, h):
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((3, height, width), dtype=np.uint8)
    out[:, :nh, :nw] = rgb.transpose(2, 0, 1)
    return out, nw / w, nh / h


@dataclass(frozen=True)
class Geometry:
    """How the tensor sent maps back to the client's image or camera frame: x_client = x / sx."""

    sx: float
    sy: float
    width: int  # the client's image, or the camera's frame as decoded
    height: int


def prepare_image(
    image: Image.Image, info: ModelInfo, pre: PreprocessSettings, frame_size: tuple[int, int]
) -> tuple[np.ndarray, Geometry]:
    """An uploaded image → the ``[1, C, H, W]`` batch the model takes, and its geometry.

    A detector gets the image letterboxed into its fixed input size, or else into
    ``frame_size`` (one shape for every request, so requests batch together)."""
    if info.task == "detection":
        width, height = info.fixed_size or frame_size
        chw, sx, sy = letterbox(np.asarray(image), width, height)
        return chw[np.newaxis], Geometry(sx, sy, image.width, image.height)
    chw = classifier_input(image, resize_size=pre.resize_size, crop_hw=info.crop_hw)
    return _classifier_batch(chw, info, pre), Geometry(1.0, 1.0, image.width, image.height)


def _classifier_batch(chw: np.ndarray, info: ModelInfo, pre: PreprocessSettings) -> np.ndarray:
    x = chw if info.input_datatype == "UINT8" else normalize(chw, pre.mean, pre.std).astype(info.input_dtype)
    return x[np.newaxis]


def prepare_frame(
    bgr: np.ndarray, source_size: tuple[int, int], info: ModelInfo, pre: PreprocessSettings
) -> tuple[np.ndarray, Geometry]:
    """A decoded stream frame (H x W x 3 BGR, resized by ingest from ``source_size``,
    (0, 0) if unknown) → the batch, and the geometry back to the camera's own size."""
    fh, fw = bgr.shape[:2]
    sw, sh = source_size if min(source_size) > 0 else (fw, fh)
    if info.task != "detection":
        chw = frame_classifier_input(bgr, resize_size=pre.resize_size, crop_hw=info.crop_hw)
        return _classifier_batch(chw, info, pre), Geometry(fw / sw, fh / sh, sw, sh)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    fixed = info.fixed_size
    if fixed is not None and fixed != (fw, fh):  # a fixed-size model: fit the frame into it
        chw, sx, sy = letterbox(rgb, *fixed)
    else:  # any size: the frame as ingest sized it (one size per stream, so streams batch together)
        chw, sx, sy = np.ascontiguousarray(rgb.transpose(2, 0, 1)), 1.0, 1.0
    # ingest resized source → frame per axis; the letterbox scaled frame → tensor
    return chw[np.newaxis], Geometry(sx * fw / sw, sy * fh / sh, sw, sh)
