"""POST /predict end to end: real gateway (uvicorn), real Triton, every bad-input case."""

from __future__ import annotations

import io
import re
import select
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from torchvision.models import MobileNet_V3_Small_Weights

from harness.helpers import GatewayProcess, encode, scene
from tests.integration.conftest import Reference

pytestmark = pytest.mark.integration
PRESET = MobileNet_V3_Small_Weights.IMAGENET1K_V1.transforms()
CATEGORIES = list(MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"])
MAX_BYTES = 2 * 1024 * 1024  # the session gateway's upload.max_bytes


def post(gw: GatewayProcess, files: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(f"{gw.url}/predict", files=files, timeout=30, **kw)


def expected_top(data: bytes, reference: Reference, k: int) -> tuple[list[int], np.ndarray]:
    """torchvision's preprocessing + onnxruntime in process: what the gateway must answer."""
    x = PRESET(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    # undo the float normalization to feed the uint8 graph exactly what torchvision computed
    u8 = np.rint((x * np.array(PRESET.std)[:, None, None] + np.array(PRESET.mean)[:, None, None]) * 255)
    probs = reference(u8.astype(np.uint8)[np.newaxis])[1][0]
    order = [int(i) for i in np.argsort(-probs)[:k]]
    return order, probs


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")])
def test_predict_equals_torchvision_and_onnxruntime(
    gateway_proc: GatewayProcess, reference: Reference, fmt: str, mime: str
) -> None:
    data = encode(scene(640, 480, seed=3), fmt, quality=92)
    r = post(gateway_proc, files={"image": (f"x.{fmt.lower()}", data, mime)})
    assert r.status_code == 200, r.text
    body = r.json()
    order, probs = expected_top(data, reference, 5)
    got = body["predictions"]
    assert [p["index"] for p in got] == order, "top-5 must equal torchvision + onnxruntime in process"
    assert [p["label"] for p in got] == [CATEGORIES[i] for i in order]
    assert np.allclose([p["probability"] for p in got], probs[order], atol=1e-5)
    assert body["model"] == "mobilenet_v3_small" and body["model_version"] == "1"
    assert body["image"] == {"width": 640, "height": 480}
    timings = body["timings_ms"]
    assert set(timings) == {"decode", "preprocess", "inference", "total"}
    assert all(v > 0 for v in timings.values()) and timings["total"] >= timings["inference"]


def test_top_k_as_form_field_and_query(gateway_proc: GatewayProcess) -> None:
    data = encode(scene(320, 240), "JPEG")
    form = post(gateway_proc, files={"image": ("a.jpg", data, "image/jpeg")}, data={"top_k": "3"})
    query = httpx.post(f"{gateway_proc.url}/predict?top_k=7", files={"image": ("a.jpg", data, "image/jpeg")})
    assert len(form.json()["predictions"]) == 3 and len(query.json()["predictions"]) == 7


def test_raw_image_body(gateway_proc: GatewayProcess) -> None:
    data = encode(scene(320, 240), "PNG")
    r = httpx.post(f"{gateway_proc.url}/predict", content=data, headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 200, r.text


def test_concurrent_requests_all_succeed(gateway_proc: GatewayProcess) -> None:
    import asyncio

    images = [encode(scene(300, 200, seed=i), "JPEG") for i in range(16)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as c:
            return await asyncio.gather(
                *(c.post(f"{gateway_proc.url}/predict", files={"image": ("a.jpg", d, "image/jpeg")}) for d in images)
            )

    assert [r.status_code for r in asyncio.run(run())] == [200] * 16


BAD = [
    ("not-an-image", {"image": ("a.jpg", b"this is text, not a JPEG" * 10, "image/jpeg")}, None, 400, "bad_image"),
    ("truncated", {"image": ("a.jpg", encode(scene(640, 480), "JPEG")[:2000], "image/jpeg")}, None, 400, "bad_image"),
    ("zero-bytes", {"image": ("a.jpg", b"", "image/jpeg")}, None, 400, "bad_image"),
    ("gif", {"image": ("a.gif", encode(scene(64, 64), "GIF"), "image/gif")}, None, 415, "unsupported_media_type"),
    ("no-image-field", {"file": ("a.jpg", encode(scene(64, 64), "JPEG"), "image/jpeg")}, None, 400, "bad_request"),
    (
        "bad-top-k",
        {"image": ("a.jpg", encode(scene(64, 64), "JPEG"), "image/jpeg")},
        {"top_k": "many"},
        400,
        "bad_request",
    ),
]


@pytest.mark.parametrize(("files", "data", "status", "code"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_uploads_get_clear_json_errors(
    gateway_proc: GatewayProcess,
    files: dict[str, Any],
    data: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    r = post(gateway_proc, files=files, data=data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_non_multipart_body_is_415(gateway_proc: GatewayProcess) -> None:
    r = httpx.post(f"{gateway_proc.url}/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_top_k_out_of_range_is_422(gateway_proc: GatewayProcess) -> None:
    r = httpx.post(f"{gateway_proc.url}/predict?top_k=0", files={"image": ("a.jpg", b"x", "image/jpeg")})
    assert r.status_code == 422 and "top_k" in r.json()["error"]["message"]


def test_unknown_model_is_404(gateway_proc: GatewayProcess) -> None:
    data = encode(scene(64, 64), "JPEG")
    r = httpx.post(f"{gateway_proc.url}/predict?model=resnet9000", files={"image": ("a.jpg", data, "image/jpeg")})
    assert r.status_code == 404 and "resnet9000" in r.json()["error"]["message"]


def test_pixel_limit_is_413(gateway_proc: GatewayProcess) -> None:
    data = encode(Image.new("L", (8000, 8000)), "PNG")  # 64 Mpx in a few KB
    r = post(gateway_proc, files={"image": ("big.png", data, "image/png")})
    assert r.status_code == 413 and "8000x8000" in r.json()["error"]["message"]


def raw_request(gw: GatewayProcess, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(head)
    return sock


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_declared_oversize_is_refused_before_the_body(gateway_proc: GatewayProcess) -> None:
    # given a request that announces 50 MB and sends none of it
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 52428800\r\n\r\n"
    )
    with raw_request(gateway_proc, head) as sock:
        # then the answer comes at once
        assert read_status(sock) == 413


def test_streamed_oversize_is_cut_off_without_reading_it_all(gateway_proc: GatewayProcess) -> None:
    # given a chunked upload with no declared length that would go on for 100 MB
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    chunk = b"\xff" * 65536
    sent = 0
    with raw_request(gateway_proc, head) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.settimeout(5)
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        deadline = time.monotonic() + 30
        while sent < 100 * 1024 * 1024 and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break  # the gateway stopped reading
            sent += len(chunk)
        status = read_status(sock)
    # then the gateway answered 413 long before the body ended: what we sent beyond the limit
    # is at most what the kernel buffers on the way (the server's autotuned receive buffer,
    # up to tcp_rmem's maximum, plus our own small send buffer)
    assert status == 413
    rmem_max = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    bound = MAX_BYTES + rmem_max + 2 * 1024 * 1024
    assert sent < bound, f"{sent} bytes were sent before the refusal (bound {bound})"


def test_health_and_readiness(gateway_proc: GatewayProcess) -> None:
    assert httpx.get(f"{gateway_proc.url}/health").json()["status"] == "ok"
    r = httpx.get(f"{gateway_proc.url}/health/ready")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True and body["components"]["triton"]["ready"] is True
    model = body["components"]["models"]["mobilenet_v3_small"]
    assert model["ready"] is True and model["instances"] == ["CPU"] and model["input"] == "UINT8[3, 224, 224]"


def test_openapi_documents_the_routes(gateway_proc: GatewayProcess) -> None:
    paths = httpx.get(f"{gateway_proc.url}/openapi.json").json()["paths"]
    assert {"/health", "/health/ready", "/predict"} <= set(paths)
    assert "503" in paths["/predict"]["post"]["responses"]


def test_cors_allows_only_configured_origins(gateway_proc: GatewayProcess) -> None:
    def preflight(origin: str) -> httpx.Response:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        return httpx.options(f"{gateway_proc.url}/predict", headers=headers)

    assert preflight("http://dashboard.test").headers.get("access-control-allow-origin") == "http://dashboard.test"
    assert "access-control-allow-origin" not in preflight("http://evil.test").headers


def test_no_500_in_the_log(gateway_proc: GatewayProcess) -> None:
    # given every kind of bad upload, sent here so the check never depends on what ran before
    for _, files, data, status, _ in BAD:
        assert post(gateway_proc, files=files, data=data).status_code == status
    assert httpx.post(f"{gateway_proc.url}/predict", content=b"x", headers={"content-type": "text/plain"}).is_error
    # then the whole access log (every test's requests included) has no server error
    lines = [line for line in gateway_proc.log().splitlines() if re.search(r'" 5\d\d ', line)]
    assert lines == [], lines[:20]
    assert '"POST /predict HTTP/1.1" 415' in gateway_proc.log(), "the access log is what this test reads"
