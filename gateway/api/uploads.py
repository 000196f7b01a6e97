"""Read an image upload as it streams in, and stop as soon as it is too large.

Starlette's form parsing spools whole files before a route sees them; this reads
``request.stream()`` through python-multipart's incremental parser instead, so an
oversized upload costs at most ``max_bytes`` of memory and is answered 413 at once
(immediately, when ``Content-Length`` already says it is too large).

Accepted bodies: ``multipart/form-data`` with an ``image`` file field (and small
text fields such as ``top_k``), or a raw ``image/*`` or ``application/octet-stream``
body (what many HTTP clients and generated API clients send for bytes).  The
declared type is never trusted: the decoder sniffs the bytes.

Every bound holds while the body streams in, never after it: the body's size
(413), a text field's size, the number of parts, and each part's headers (their
count and the length of each line, enforced by python-multipart's parser) are
400 as soon as they are exceeded.  This module uses python-multipart's low-level
``MultipartParser``, whose API 0.0.x releases have changed: pyproject.toml bounds
the version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.parsing import ascii_digits

IMAGE_FIELD = "image"
OCTET_STREAM = "application/octet-stream"
MAX_FIELD_BYTES = 1024
MAX_PARTS = 16  # the image and a few small fields; a form of thousands of empty parts costs CPU, not bytes
MAX_PART_HEADERS = 8  # Content-Disposition, Content-Type and a few more
MAX_HEADER_LINE = 2048  # one header line of a part (a long file name fits)
MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and small fields around the image


@dataclass
class Upload:
    data: bytes
    fields: dict[str, str] = field(default_factory=dict)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload exceeds the limit of {max_bytes} bytes")


class _MultipartCollector:
    """python-multipart callbacks that keep the image part and small text fields."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.image: bytearray | None = None
        self.fields: dict[str, str] = {}
        self._headers: dict[bytes, bytes] = {}
        self._hname = bytearray()
        self._hvalue = bytearray()
        self._name: str | None = None
        self._is_image = False
        self._buf = bytearray()
        self.parts = 0

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequest(f"the form has more than {MAX_PARTS} parts")
        self._headers = {}
        self._buf = bytearray()
        self._name = None
        self._is_image = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._hname).lower()] = bytes(self._hvalue)
        self._hname = bytearray()
        self._hvalue = bytearray()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        self._name = name.decode("utf-8", "replace") if name is not None else None
        # The declared type and file name are not trusted: the decoder sniffs the bytes.
        self._is_image = self._name == IMAGE_FIELD and self.image is None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._buf += data[start:end]
        limit = self.max_bytes if self._is_image else MAX_FIELD_BYTES
        if len(self._buf) > limit:
            if self._is_image:
                raise _too_large(self.max_bytes)
            raise BadRequest(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._is_image:
            self.image = self._buf
        elif self._name is not None and self._name != IMAGE_FIELD:
            self.fields[self._name] = self._buf.decode("utf-8", "replace").strip()
        self._buf = bytearray()


async def read_image_upload(request: Request, *, max_bytes: int) -> Upload:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    media = ctype.decode("latin-1").lower()
    multipart = media == "multipart/form-data"
    if not multipart and not media.startswith("image/") and media != OCTET_STREAM:
        raise UnsupportedMediaType(
            f"send multipart/form-data with an {IMAGE_FIELD!r} file field, or the raw image as the body "
            f"(got {media or 'no content type'!r})"
        )
    declared = request.headers.get("content-length", "")
    if ascii_digits(declared) and int(declared) > max_bytes + (MULTIPART_SLACK if multipart else 0):
        raise _too_large(max_bytes)
    if not multipart:
        return await _read_raw(request, max_bytes)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    return await _read_multipart(request, boundary, max_bytes)


async def _read_raw(request: Request, max_bytes: int) -> Upload:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    return Upload(bytes(body))


async def _read_multipart(request: Request, boundary: bytes, max_bytes: int) -> Upload:
    collector = _MultipartCollector(max_bytes)
    parser = MultipartParser(
        boundary,
        callbacks=_callbacks(collector),  # type: ignore[arg-type]
        max_header_count=MAX_PART_HEADERS,
        max_header_size=MAX_HEADER_LINE,
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + MULTIPART_SLACK:
                raise _too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except (PayloadTooLarge, BadRequest):
        raise
    except Exception as e:
        raise BadRequest(f"malformed multipart body: {e}") from e
    if collector.image is None:
        raise BadRequest(f"the form has no {IMAGE_FIELD!r} file field")
    return Upload(bytes(collector.image), collector.fields)


def _callbacks(c: _MultipartCollector) -> dict[str, object]:
    return {
        "on_part_begin": c.on_part_begin,
        "on_part_data": c.on_part_data,
        "on_part_end": c.on_part_end,
        "on_header_field": c.on_header_field,
        "on_header_value": c.on_header_value,
        "on_header_end": c.on_header_end,
        "on_headers_finished": c.on_headers_finished,
    }
