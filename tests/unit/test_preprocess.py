"""Preprocessing against torchvision's own transforms, on decoded JPEG/PNG/WebP files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import MobileNet_V3_Small_Weights

from gateway.errors import BadImage, PayloadTooLarge, UnsupportedMediaType
from gateway.preprocess import (
    center_crop_box,
    classifier_input,
    decode_image,
    frame_classifier_input,
    frame_columns,
    normalize,
    resized_size,
    sniff,
)
from harness.helpers import encode, scene

ALL = ("image/jpeg", "image/png", "image/webp")
PRESET = MobileNet_V3_Small_Weights.IMAGENET1K_V1.transforms()
SIZES = [(640, 480), (333, 500), (1280, 720), (224, 224), (100, 80), (257, 999), (1920, 1080)]


def reference(data: bytes) -> np.ndarray:
    """What a torchvision user runs: PIL decode, then the weights' preset."""
    tensor = PRESET(Image.open(io.BytesIO(data)).convert("RGB"))
    assert isinstance(tensor, torch.Tensor)
    return tensor.numpy()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_matches_torchvision_preset(fmt: str, width: int, height: int) -> None:
    # given a real encoded image file
    data = encode(scene(width, height, seed=width + height), fmt, quality=90)
    # when the gateway decodes and preprocesses it, and normalizes as the exported graph does
    chw = classifier_input(decode_image(data, allowed=ALL, max_pixels=10**8), resize_size=256, crop_hw=(224, 224))
    ours = normalize(chw, PRESET.mean, PRESET.std)
    # then it equals torchvision's preset on the same file
    want = reference(data)
    assert ours.shape == want.shape == (3, 224, 224)
    mad = float(np.abs(ours - want).mean())
    assert mad <= 1 / 255, f"{fmt} {width}x{height}: mean abs diff {mad:.5f} > 1/255 after normalization"


FRAMES = [(640, 360), (1280, 720), (1920, 1080), (704, 576), (640, 480), (100, 80), (455, 256), (360, 640)]


def whole_resize(rgb: np.ndarray) -> np.ndarray:
    """torchvision's Resize(256) + CenterCrop(224) on PIL, the plain way: every pixel resized."""
    image = Image.fromarray(rgb)
    size = resized_size(image.width, image.height, 256)
    cropped = image.resize(size, Image.Resampling.BILINEAR).crop(center_crop_box(*size, 224, 224))
    return np.asarray(cropped).transpose(2, 0, 1)


@pytest.mark.parametrize(("width", "height"), FRAMES)
def test_a_frame_is_preprocessed_pixel_for_pixel_as_the_whole_resize(width: int, height: int) -> None:
    rng = np.random.default_rng(width * height)
    frames = [np.asarray(scene(width, height, seed=i))[:, :, ::-1] for i in range(3)]  # BGR, as ingest gives
    frames += [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(3)]  # every edge a hard one
    for bgr in frames:
        # given a frame, when it is preprocessed reading only the columns the crop needs
        ours = frame_classifier_input(np.ascontiguousarray(bgr), resize_size=256, crop_hw=(224, 224))
        # then every pixel is the whole resize's, and the upload path's
        want = whole_resize(np.ascontiguousarray(bgr[:, :, ::-1]))
        assert np.array_equal(ours, want), f"{width}x{height}: {(ours != want).sum()} values differ"
        upload = classifier_input(Image.fromarray(bgr[:, :, ::-1]), resize_size=256, crop_hw=(224, 224))
        assert np.array_equal(upload, want)


def test_a_16_9_frame_is_read_from_its_middle_columns_only() -> None:
    # 640 -> 455 columns is 128 -> 91 five times: the crop's columns 116..340 need 128..512 of 640
    assert frame_columns(640, 455, 116, 340) == (128, 512, 91)
    assert frame_columns(1920, 455, 116, 340) == (384, 1536, 91)
    assert frame_columns(640, 341, 58, 282) == (0, 640, 0), "640 -> 341 has no smaller unit: nothing is cut"


def test_a_cut_whose_margin_changes_the_weights_is_not_taken() -> None:
    # given output columns that start right at a unit's edge (91 of 455), whose filter reaches
    # input column 127, left of the first unit (128)
    start, stop, skipped = frame_columns(640, 455, 91, 315)
    # then the cut keeps that column, and the cut pass still gives the whole pass's pixels
    assert start < 128
    rgb = np.random.default_rng(1).integers(0, 256, (8, 640, 3), dtype=np.uint8)
    whole = np.asarray(Image.fromarray(rgb).resize((455, 8), Image.Resampling.BILINEAR))[:, 91:315]
    cut = Image.fromarray(np.ascontiguousarray(rgb[:, start:stop]))
    part = np.asarray(cut.resize(((stop - start) * 455 // 640, 8), Image.Resampling.BILINEAR))
    assert np.array_equal(part[:, 91 - skipped : 315 - skipped], whole)


def test_uint8_output_layout() -> None:
    chw = classifier_input(scene(300, 200), resize_size=256, crop_hw=(224, 224))
    assert chw.dtype == np.uint8 and chw.shape == (3, 224, 224) and chw.flags.c_contiguous


def test_resized_size_follows_torchvision_rounding() -> None:
    assert resized_size(640, 480, 256) == (341, 256)
    assert resized_size(333, 500, 256) == (256, 384)
    assert resized_size(224, 224, 256) == (256, 256)


def test_resize_smaller_than_crop_is_rejected() -> None:
    with pytest.raises(ValueError, match="smaller than the crop"):
        classifier_input(scene(300, 300), resize_size=200, crop_hw=(224, 224))


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"", BadImage, "empty"),
        (b"hello, this is plain text and not an image at all", BadImage, "not an image"),
        (encode(scene(64, 64), "JPEG")[:300], BadImage, "truncated or corrupt"),
        (encode(scene(64, 64), "PNG")[:120], BadImage, "truncated or corrupt"),
        (encode(scene(64, 64), "GIF"), UnsupportedMediaType, "unsupported"),
        (encode(scene(64, 64), "BMP"), UnsupportedMediaType, "unsupported"),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "gif", "bmp"],
)
def test_bad_uploads_raise_typed_errors(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_image(data, allowed=ALL, max_pixels=10**8)


def test_format_outside_allowed_list_is_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="image/png is not accepted"):
        decode_image(encode(scene(32, 32), "PNG"), allowed=("image/jpeg",), max_pixels=10**8)


def test_pixel_limit_checked_before_decoding() -> None:
    # 64 Mpx of grey compresses to a few KB: the limit must come from the header, not the byte size
    data = encode(Image.new("L", (8000, 8000)), "PNG")
    assert len(data) < 200_000
    with pytest.raises(PayloadTooLarge, match="8000x8000"):
        decode_image(data, allowed=ALL, max_pixels=40_000_000)


def test_exif_orientation_applied() -> None:
    image = scene(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes())
    decoded = decode_image(data, allowed=ALL, max_pixels=10**8)
    assert decoded.size == (80, 120), "EXIF orientation 6 should swap width and height"


def test_sniff() -> None:
    assert sniff(encode(scene(8, 8), "JPEG")[:16]) == "image/jpeg"
    assert sniff(encode(scene(8, 8), "PNG")[:16]) == "image/png"
    assert sniff(encode(scene(8, 8), "WEBP")[:16]) == "image/webp"
    assert sniff(b"GIF89a") is None


def test_normalize_matches_torch_ops() -> None:
    from torchvision.transforms import functional as F

    chw = np.random.default_rng(0).integers(0, 256, (3, 224, 224), dtype=np.uint8)
    want = F.normalize(F.convert_image_dtype(torch.from_numpy(chw), torch.float), PRESET.mean, PRESET.std)
    got = normalize(chw, PRESET.mean, PRESET.std)
    assert np.abs(want.numpy() - got).max() < 1e-6
