"""Upload limits without a server: a Starlette ``Request`` built from a scope and a
``receive`` that counts what the gateway pulled, so each limit is shown to hold while the
body streams in (a 1 GiB body, thousands of parts, oversized part headers); decompression
bombs refused from the header; formats judged by their bytes, whatever they are called."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from PIL import Image, ImageFile
from starlette.requests import Request

from gateway.api.uploads import MAX_FIELD_BYTES, MAX_PARTS, MULTIPART_SLACK, Upload, read_image_upload
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, UnsupportedMediaType
from gateway.preprocess import decode_image, webp_size
from harness.helpers import encode, scene

ALL = ("image/jpeg", "image/png", "image/webp")
CHUNK = 64 * 1024
MAX_BYTES = 2 * 1024 * 1024
GIB = 1024**3
BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


class Body:
    """The ASGI ``receive`` of one request: its chunks, pulled lazily, and a count of the bytes
    the application asked for."""

    def __init__(self, chunks: Iterable[bytes] | AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.consumed = 0

    async def _iterate(self) -> AsyncIterator[bytes]:
        if isinstance(self._chunks, AsyncIterator):
            async for chunk in self._chunks:
                yield chunk
        else:
            for chunk in self._chunks:
                yield chunk

    def receive(self) -> Any:
        it = self._iterate()

        async def receive() -> dict[str, Any]:
            try:
                chunk = await anext(it)
            except StopAsyncIteration:
                return {"type": "http.request", "body": b"", "more_body": False}
            self.consumed += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": True}

        return receive


def request(body: Body, content_type: str, content_length: int | None = None) -> Request:
    headers = [(b"content-type", content_type.encode())]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers, "query_string": b""}
    return Request(scope, body.receive())


def read(body: Body, content_type: str = MULTIPART, content_length: int | None = None) -> Upload:
    return asyncio.run(read_image_upload(request(body, content_type, content_length), max_bytes=MAX_BYTES))


def part(name: str, data: bytes, *, filename: str | None = None, ctype: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "")
    return head.encode() + b"\r\n" + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def endless_image_part(total: int) -> AsyncIterator[bytes]:
    """A multipart body whose image part goes on for ``total`` bytes, made as it is read."""
    yield part("image", b"", filename="a.jpg", ctype="image/jpeg")[:-2]  # headers, then the data
    block = b"\xff" * CHUNK
    for _ in range(total // CHUNK):
        yield block


async def endless_raw(total: int) -> AsyncIterator[bytes]:
    block = b"\xff" * CHUNK
    for _ in range(total // CHUNK):
        yield block


# --- the body's size -------------------------------------------------------------------------------


def test_a_1_gib_multipart_upload_is_cut_off_after_the_limit() -> None:
    # given a chunked (undeclared) 1 GiB multipart upload, generated as it is read
    body = Body(endless_image_part(GIB))
    # when the gateway reads it, then it answers 413 having pulled at most the limit, one chunk
    # and the multipart slack: never the gigabyte
    with pytest.raises(PayloadTooLarge, match=f"limit of {MAX_BYTES} bytes"):
        read(body)
    assert MAX_BYTES < body.consumed <= MAX_BYTES + MULTIPART_SLACK + CHUNK, f"{body.consumed} bytes read"


def test_a_1_gib_raw_upload_is_cut_off_after_the_limit() -> None:
    body = Body(endless_raw(GIB))
    with pytest.raises(PayloadTooLarge):
        read(body, "image/jpeg")
    assert MAX_BYTES < body.consumed <= MAX_BYTES + CHUNK, f"{body.consumed} bytes read"


@pytest.mark.parametrize("content_type", [MULTIPART, "image/jpeg", "application/octet-stream"])
def test_a_declared_1_gib_upload_is_refused_before_any_byte(content_type: str) -> None:
    body = Body(endless_raw(GIB))
    with pytest.raises(PayloadTooLarge):
        read(body, content_type, content_length=GIB)
    assert body.consumed == 0, "a Content-Length over the limit is answered before the body is read"


def test_a_form_within_the_limits_is_read() -> None:
    image = encode(scene(32, 32), "JPEG")
    fields = [part(f"f{i}", b"1") for i in range(MAX_PARTS - 1)]
    upload = read(Body([form(part("image", image, filename="a.jpg", ctype="image/jpeg"), *fields)]))
    assert upload.data == image and len(upload.fields) == MAX_PARTS - 1


# --- parts and their headers ---------------------------------------------------------------------


def test_many_parts_are_refused_while_parsing() -> None:
    # given a form of 100,000 tiny parts, sent one part per chunk
    parts = [part(f"f{i}", b"x") for i in range(100_000)]
    body = Body([*parts, f"--{BOUNDARY}--\r\n".encode()])
    # when it is read, then the 17th part ends it: 400, with the rest never pulled
    with pytest.raises(BadRequest, match=f"more than {MAX_PARTS} parts"):
        read(body)
    assert body.consumed <= sum(map(len, parts[: MAX_PARTS + 2])), f"{body.consumed} bytes read"


def test_too_many_headers_in_a_part_are_refused() -> None:
    extra = "".join(f"X-Pad-{i}: 1\r\n" for i in range(20))
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"\r\n{extra}\r\n'.encode()
    body = Body([head, *(b"\xff" * CHUNK for _ in range(100))])
    with pytest.raises(BadRequest, match="header count"):
        read(body)
    assert body.consumed <= len(head) + CHUNK


def test_a_huge_header_line_is_refused_without_buffering_it() -> None:
    # given a part header that goes on for 10 MB, in chunks
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="'.encode()
    body = Body([head, *(b"a" * CHUNK for _ in range(160))])
    with pytest.raises(BadRequest, match="header size"):
        read(body)
    assert body.consumed <= len(head) + CHUNK, f"{body.consumed} bytes read"


def test_a_long_text_field_is_refused() -> None:
    body = Body([form(part("top_k", b"9" * (MAX_FIELD_BYTES + 1)))])
    with pytest.raises(BadRequest, match=f"longer than {MAX_FIELD_BYTES} bytes"):
        read(body)


# --- decompression bombs -----------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR for ``width`` x ``height`` grey pixels, and a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose start-of-frame marker is patched to declare ``width`` x ``height``."""
    data = bytearray(encode(Image.new("L", (8, 8)), "JPEG"))
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):  # walk the markers to the SOF
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) whose canvas is ``width`` x ``height``, around a tiny 8x8 frame."""
    tiny = encode(Image.new("RGB", (8, 8)), "WEBP", lossless=True)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    payload = b"WEBP" + vp8x + tiny[12:]
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


BOMBS = {
    "png-50000x50000": png_declaring(50_000, 50_000),
    "png-10000x10000": png_declaring(10_000, 10_000),  # past our limit, under Pillow's
    "jpeg-50000x50000": jpeg_declaring(50_000, 50_000),
    "jpeg-9000x9000": jpeg_declaring(9_000, 9_000),
    "webp-16383x16383": webp_declaring(16_383, 16_383),  # the largest canvas a WebP frame can fill
    "webp-7000x7000": webp_declaring(7_000, 7_000),
}


@pytest.mark.parametrize("data", BOMBS.values(), ids=BOMBS.keys())
def test_decompression_bombs_are_413_from_the_header(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a file of a few hundred bytes that declares a huge image, and a decoder that must not run
    assert len(data) < 1024

    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the pixels must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr("PIL._webp.WebPAnimDecoder", no_decode)  # it allocates the canvas
    t0 = time.monotonic()
    # when it is decoded, then it is refused as too large (413 payload_too_large), at once
    with pytest.raises(PayloadTooLarge, match="pixels") as e:
        decode_image(data, allowed=ALL, max_pixels=40_000_000)
    assert time.monotonic() - t0 < 0.5
    assert (e.value.status, e.value.code) == (413, "payload_too_large")


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({"lossless": False}, (301, 17)),  # VP8
        ({"lossless": True}, (16, 999)),  # VP8L
        ({"lossless": False, "exif": Image.Exif().tobytes()}, (640, 360)),  # VP8X
    ],
    ids=["vp8", "vp8l", "vp8x"],
)
def test_webp_size_reads_every_kind_of_header(options: dict[str, Any], size: tuple[int, int]) -> None:
    data = encode(scene(*size), "WEBP", **options)
    assert webp_size(data[:30]) == size == Image.open(io.BytesIO(data)).size


def test_the_crafted_headers_are_what_pillow_reads() -> None:
    # the bombs above are refused for their size, not for being unreadable: small ones decode
    assert decode_image(png_declaring(4, 4), allowed=ALL, max_pixels=10**6).size == (4, 4)
    assert decode_image(webp_declaring(8, 8), allowed=ALL, max_pixels=10**6).size == (8, 8)
    opened = Image.open(io.BytesIO(jpeg_declaring(9_000, 9_000)))
    assert opened.size == (9_000, 9_000)


# --- formats by their bytes --------------------------------------------------------------------

OTHER = {fmt: encode(scene(16, 16), fmt) for fmt in ("GIF", "BMP", "TIFF")}


@pytest.mark.parametrize("fmt", OTHER)
def test_other_formats_called_jpeg_are_415(fmt: str) -> None:
    data = OTHER[fmt]
    # sent as a multipart file named a.jpg of type image/jpeg, and as a raw image/jpeg body
    multipart = read(Body([form(part("image", data, filename="a.jpg", ctype="image/jpeg"))]))
    raw = read(Body([data]), "image/jpeg")
    for upload in (multipart, raw):
        with pytest.raises(UnsupportedMediaType, match="unsupported image format") as e:
            decode_image(upload.data, allowed=ALL, max_pixels=10**8)
        assert (e.value.status, e.value.code) == (415, "unsupported_media_type")


def test_the_bytes_decide_not_the_name_or_declared_type() -> None:
    png = encode(scene(16, 16), "PNG")
    upload = read(Body([form(part("image", png, filename="photo.jpg", ctype="image/jpeg"))]))
    with pytest.raises(UnsupportedMediaType, match="image/png is not accepted"):
        decode_image(upload.data, allowed=("image/jpeg",), max_pixels=10**8)
    jpeg = encode(scene(16, 16), "JPEG")
    upload = read(Body([form(part("image", jpeg, filename="photo.png", ctype="image/png"))]))
    assert decode_image(upload.data, allowed=("image/jpeg",), max_pixels=10**8).size == (16, 16)


def test_every_refusal_is_a_typed_gateway_error() -> None:
    for error in (PayloadTooLarge, BadRequest, UnsupportedMediaType):
        assert issubclass(error, GatewayError)
