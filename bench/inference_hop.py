"""``python -m bench.inference_hop``: what the way the gateway calls Triton costs, per request.

One request = decode a 640x480 JPEG + torchvision's preprocessing in a worker thread,
then one classification through the embedded Triton (the exported MobileNetV3-Small).
Arms, alternated in one run, sequential (concurrency 1):

- ``aio``: what the gateway does: the worker prepares, the event loop sends the call on
  a ``tritonclient.grpc.aio`` channel and awaits it;
- ``bridge``: the worker prepares and starts the call on a sync channel's future API
  (``async_infer``), whose completion callback wakes the loop: no aio call on the loop;
- ``blocking``: the worker prepares and makes the blocking call: one hop, the loop only
  awaits the worker (what "one hop" in docs/benchmarks.md means);
- ``direct``: no event loop, no worker: the benchmark's direct client.

Prints, per arm and round, the p50 latency, the event-loop thread's CPU per request
(``time.thread_time`` on the loop thread) and the process's CPU per request.  The loop
thread is what serialises the gateway under load; the process total is what a machine pays.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from PIL import Image

from bench import servers
from embedded_triton.repository import default_instances
from gateway.preprocess import classifier_input, decode_image

CHANNEL_ARGS = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
OUTPUT = "probabilities"
TIMEOUT_S = 10.0


def jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


class Arms:
    def __init__(self, url: str, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.data, self.loop = data, loop
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="preprocess")
        self.aio = grpcaio.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self.sync = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)

    def prepare(self) -> np.ndarray:
        image = decode_image(self.data, allowed=("image/jpeg",), max_pixels=40_000_000)
        return classifier_input(image, resize_size=256, crop_hw=(224, 224))[np.newaxis]

    @staticmethod
    def request(batch: np.ndarray) -> tuple[list[Any], list[Any]]:
        inp = grpcclient.InferInput("input", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        return [inp], [grpcclient.InferRequestedOutput(OUTPUT, class_count=5)]

    async def aio_call(self) -> None:
        batch = await self.loop.run_in_executor(self.executor, self.prepare)
        inputs, outputs = self.request(batch)
        result = await self.aio.infer(servers.MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
        _check(result)

    def _begin(self) -> asyncio.Future[Any]:
        inputs, outputs = self.request(self.prepare())
        future: asyncio.Future[Any] = self.loop.create_future()

        def settle(result: Any, error: Any) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def done(result: Any, error: Any) -> None:  # on gRPC's thread
            self.loop.call_soon_threadsafe(settle, result, error)

        self.sync.async_infer(servers.MODEL, inputs, done, outputs=outputs, client_timeout=TIMEOUT_S)
        return future

    async def bridge_call(self) -> None:
        future = await self.loop.run_in_executor(self.executor, self._begin)
        _check(await future)

    def _blocking(self) -> Any:
        inputs, outputs = self.request(self.prepare())
        return self.sync.infer(servers.MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)

    async def blocking_call(self) -> None:
        _check(await self.loop.run_in_executor(self.executor, self._blocking))

    async def direct_call(self) -> None:  # runs on this thread: no loop work to speak of, no hop
        _check(self._blocking())

    async def close(self) -> None:
        await self.aio.close()
        self.sync.close()
        self.executor.shutdown()


def _check(result: Any) -> None:
    if result.as_numpy(OUTPUT) is None:
        raise RuntimeError("Triton returned no classes")


async def _measure(name: str, call: Callable[[], Awaitable[None]], n: int) -> str:
    for _ in range(10):
        await call()
    latencies = []
    loop0, proc0 = time.thread_time(), time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - t0)
    loop_ms, proc_ms = (time.thread_time() - loop0) / n * 1e3, (time.process_time() - proc0) / n * 1e3
    return (
        f"{name:9s} p50 {statistics.median(latencies) * 1e3:6.2f} ms   event-loop thread CPU {loop_ms:5.2f} ms/request"
        f"   process CPU {proc_ms:5.2f} ms/request"
    )


async def _run(url: str, rounds: int, n: int) -> None:
    arms = Arms(url, jpeg(), asyncio.get_running_loop())
    calls = {
        "aio": arms.aio_call,
        "bridge": arms.bridge_call,
        "blocking": arms.blocking_call,
        "direct": arms.direct_call,
    }
    try:
        for r in range(rounds):
            for name, call in calls.items():
                print(f"round {r + 1}  " + await _measure(name, call, n), flush=True)
    finally:
        await arms.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inference_hop", description=__doc__)
    p.add_argument("--rounds", type=int, default=4, help="rounds, each running every arm (default: %(default)s)")
    p.add_argument("--requests", type=int, default=300, help="requests per arm and round (default: %(default)s)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stream-ml-hop-") as tmp:
        work = Path(tmp)
        servers.export_model(work / "repo")
        tuning = servers.ServerTuning(instance_count=default_instances(), intra_op_threads=1)
        with servers.triton(work / "repo", work, tuning) as tri:
            asyncio.run(_run(tri.grpc_url, args.rounds, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
