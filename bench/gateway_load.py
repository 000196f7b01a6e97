"""(c) ``POST /predict`` through the real gateway, against a direct client doing the same work.

The direct client runs in this process: ``decode_image`` + ``classifier_input``
(the gateway's own pure functions) and a sync ``tritonclient.grpc`` infer with
``class_count``, in N threads.  The gateway path adds HTTP, FastAPI, the
executor hops and the aio gRPC client; the ratio of the two p50s is its cost.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from bench.loops import Load, LoopResult, run_async, run_threads
from bench.results import Latency, Level
from bench.triton_load import CHANNEL_ARGS, OUTPUT, ModelSpec, StatsWindow, level
from gateway.preprocess import classifier_input, decode_image, normalize

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def sample_jpeg(width: int = 640, height: int = 480, seed: int = 0, quality: int = 90) -> bytes:
    """A camera-like frame: smooth gradients, a few blocks, mild noise (not incompressible noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 64)), int(rng.integers(0, height - 64))
        img[y0 : y0 + int(rng.integers(16, 64)), x0 : x0 + int(rng.integers(16, 64))] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class _KeepAlive:
    """The cheapest honest HTTP/1.1 client: one keep-alive connection per worker and a
    pre-built request, so the measurement is the gateway's cost, not a client library's
    (httpx alone spends ~1.5 ms of CPU per request here)."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def open(self, n: int) -> None:
        for _ in range(n):
            self.pool.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def close(self) -> None:
        while not self.pool.empty():
            _, writer = self.pool.get_nowait()
            writer.close()

    async def post(self) -> None:
        reader, writer = await self.pool.get()
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        except BaseException:
            writer.close()
            reader, writer = await asyncio.open_connection(self.host, self.port)
            raise
        finally:
            self.pool.put_nowait((reader, writer))


async def _gateway_loop(url: str, data: bytes, load: Load, window: StatsWindow, top_k: int) -> LoopResult:
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    request = (
        f"POST /predict?top_k={top_k} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    client = _KeepAlive(host, port, request)
    await client.open(load.concurrency)
    try:
        return await run_async(client.post, load, window.start)
    finally:
        await client.close()


def measure_gateway(url: str, data: bytes, load: Load, window: StatsWindow, *, top_k: int = 5) -> Level:
    r = asyncio.run(_gateway_loop(url, data, load, window, top_k))
    return level("gateway", "http keep-alive", load, r, window)


def measure_paired(
    url: str, grpc_url: str, spec: ModelSpec, data: bytes, requests: int, *, top_k: int = 5
) -> tuple[Latency, Latency]:
    """Concurrency 1, the gateway and the direct client taking turns request by request (which goes
    first alternates), so that a machine whose speed drifts between levels (this one's does by
    ±10 %) slows both alike: the p50 ratio of the two is the gateway's cost, measured side by side."""
    parsed = urlsplit(url)
    head = (
        f"POST /predict?top_k={top_k} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    client = grpcclient.InferenceServerClient(grpc_url, channel_args=CHANNEL_ARGS)
    outputs = [grpcclient.InferRequestedOutput(OUTPUT, class_count=top_k)]
    crop = (spec.shape[1], spec.shape[2])

    def direct() -> None:
        image = decode_image(data, allowed=("image/jpeg",), max_pixels=40_000_000)
        chw = classifier_input(image, resize_size=256, crop_hw=crop)
        x = chw if spec.datatype == "UINT8" else normalize(chw, MEAN, STD)
        if client.infer(spec.name, [spec.infer_input(x[np.newaxis])], outputs=outputs).as_numpy(OUTPUT) is None:
            raise RuntimeError("no output")

    with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 80)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")

        def gateway() -> None:
            sock.sendall(head + data)
            status = reader.readline().split(b" ", 2)[1]
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = reader.read(length)
            if status != b"200":
                raise RuntimeError(f"HTTP {status!r}: {body[:200]!r}")

        times: dict[str, list[float]] = {"gateway": [], "direct": []}
        calls = {"gateway": gateway, "direct": direct}
        try:
            for i in range(requests + 20):  # the first 20 pairs warm both up
                for name in ("gateway", "direct") if i % 2 else ("direct", "gateway"):
                    t0 = time.perf_counter()
                    calls[name]()
                    if i >= 20:
                        times[name].append(time.perf_counter() - t0)
        finally:
            client.close()
    return Latency.of(times["gateway"]), Latency.of(times["direct"])


def measure_direct(
    grpc_url: str, spec: ModelSpec, data: bytes, load: Load, window: StatsWindow, *, top_k: int = 5
) -> Level:
    clients = [grpcclient.InferenceServerClient(grpc_url, channel_args=CHANNEL_ARGS) for _ in range(load.concurrency)]
    outputs = [grpcclient.InferRequestedOutput(OUTPUT, class_count=top_k)]
    crop = (spec.shape[1], spec.shape[2])

    def work(i: int) -> None:
        image = decode_image(data, allowed=("image/jpeg",), max_pixels=40_000_000)
        chw = classifier_input(image, resize_size=256, crop_hw=crop)
        x = chw if spec.datatype == "UINT8" else normalize(chw, MEAN, STD)
        result = clients[i].infer(spec.name, [spec.infer_input(x[np.newaxis])], outputs=outputs, client_timeout=10)
        if result.as_numpy(OUTPUT) is None:
            raise RuntimeError("no output")

    try:
        r = run_threads(work, load, window.start)
    finally:
        for c in clients:
            c.close()
    return level("direct", "pil+grpc-sync", load, r, window)
