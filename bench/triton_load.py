"""(b) batch-1 requests to Triton over gRPC from N concurrent clients.

Two client styles, since client and server share the same 2 cores:
``grpc-aio`` (one ``tritonclient.grpc.aio`` channel, N coroutines, as the gateway
does it) and ``grpc-sync`` (N threads, a sync client each).  Each level also
reads Triton's statistics API before and after, for the batch sizes the dynamic
batcher formed and where the time went.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2

from bench.loops import Load, LoopResult, run_async, run_threads
from bench.procstat import CpuMeter
from bench.results import Latency, Level, TritonStats

CHANNEL_ARGS = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
OUTPUT = "probabilities"
_NUMPY = {"UINT8": np.uint8, "FP32": np.float32}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_name: str
    datatype: str  # UINT8 | FP32
    shape: tuple[int, ...]  # without the batch axis

    @classmethod
    def read(cls, url: str, name: str) -> ModelSpec:
        with grpcclient.InferenceServerClient(url) as c:
            inp = c.get_model_metadata(name).inputs[0]
        return cls(name, inp.name, inp.datatype, tuple(int(d) for d in inp.shape[1:]))

    def sample(self, batch: int = 1, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        shape = (batch, *self.shape)
        if self.datatype == "UINT8":
            return rng.integers(0, 256, size=shape, dtype=np.uint8)
        return rng.standard_normal(size=shape, dtype=np.float32)

    def infer_input(self, array: np.ndarray) -> grpcclient.InferInput:
        inp = grpcclient.InferInput(self.input_name, list(array.shape), self.datatype)
        inp.set_data_from_numpy(array.astype(_NUMPY[self.datatype], copy=False))
        return inp


def statistics(url: str, model: str) -> service_pb2.ModelStatistics:
    with grpcclient.InferenceServerClient(url) as c:
        return c.get_inference_statistics(model_name=model).model_stats[0]


def stats_delta(a: service_pb2.ModelStatistics, b: service_pb2.ModelStatistics) -> TritonStats:
    ia, ib = a.inference_stats, b.inference_stats
    n = int(ib.success.count - ia.success.count)

    def per_request(name: str) -> float:
        return float(getattr(ib, name).ns - getattr(ia, name).ns) / max(n, 1) / 1e6

    parts = {name: per_request(f"compute_{name}") for name in ("input", "infer", "output")}
    return TritonStats(
        requests=b.inference_count - a.inference_count,
        executions=b.execution_count - a.execution_count,
        queue_ms=per_request("queue"),
        compute_ms=sum(parts.values()),
        compute_input_ms=parts["input"],
        compute_infer_ms=parts["infer"],
        compute_output_ms=parts["output"],
    )


class StatsWindow:
    """Triton statistics and CPU meters started together at the beginning of a measured interval."""

    def __init__(self, url: str, model: str, meter: CpuMeter) -> None:
        self.url, self.model, self.meter = url, model, meter
        self._before: service_pb2.ModelStatistics | None = None

    def start(self) -> None:
        self._before = statistics(self.url, self.model)
        self.meter.start()

    def finish(self) -> tuple[dict[str, float], TritonStats]:
        cores = self.meter.cores()
        after = statistics(self.url, self.model)
        assert self._before is not None, "start() was not called"
        return cores, stats_delta(self._before, after)


def level(path: str, client: str, load: Load, r: LoopResult, window: StatsWindow) -> Level:
    cores, stats = window.finish()
    if r.first_error:
        print(f"  {path}/{client}@{load.concurrency}: {r.errors} errors, first: {r.first_error[:300]}")
    return Level(
        path=path,
        client=client,
        concurrency=load.concurrency,
        batch=1,
        images_per_s=len(r.latencies) / r.elapsed,
        requests=len(r.latencies),
        errors=r.errors,
        seconds=r.elapsed,
        latency=Latency.of(r.latencies),
        cpu_cores=cores,
        triton=stats,
    )


def measure_sync(url: str, spec: ModelSpec, load: Load, window: StatsWindow, *, top_k: int = 5) -> Level:
    clients = [grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS) for _ in range(load.concurrency)]
    inputs = [spec.infer_input(spec.sample(seed=i)) for i in range(load.concurrency)]
    outputs = [grpcclient.InferRequestedOutput(OUTPUT, class_count=top_k)]

    def work(i: int) -> None:
        clients[i].infer(spec.name, [inputs[i]], outputs=outputs, client_timeout=10)

    try:
        r = run_threads(work, load, window.start)
    finally:
        for c in clients:
            c.close()
    return level("triton", "grpc-sync", load, r, window)


async def _measure_aio(url: str, spec: ModelSpec, load: Load, on_start: Callable[[], None], top_k: int) -> LoopResult:
    inp = spec.infer_input(spec.sample())
    outputs = [grpcclient.InferRequestedOutput(OUTPUT, class_count=top_k)]
    async with grpcaio.InferenceServerClient(url, channel_args=CHANNEL_ARGS) as client:

        async def work() -> object:
            return await client.infer(spec.name, [inp], outputs=outputs, client_timeout=10)

        return await run_async(work, load, on_start)


def measure_aio(url: str, spec: ModelSpec, load: Load, window: StatsWindow, *, top_k: int = 5) -> Level:
    r = asyncio.run(_measure_aio(url, spec, load, window.start, top_k))
    return level("triton", "grpc-aio", load, r, window)
