"""(a) onnxruntime in this process: the baseline every served path is compared with.

The session options are those of ``embedded_triton/onnx_model.py`` (the python
backend model), so the comparison is between serving paths, not ORT settings.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.procstat import CpuMeter
from bench.results import Latency, Level


def session(model: Path, intra_op_threads: int | None = None, allow_spinning: str = "0") -> ort.InferenceSession:
    """``intra_op_threads=None``: onnxruntime's defaults (all cores, spinning worker threads)."""
    if intra_op_threads is None:
        return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", allow_spinning)
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def sample_input(sess: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    shape = [batch, *(int(d) for d in inp.shape[1:])]
    rng = np.random.default_rng(seed)
    if inp.type == "tensor(uint8)":
        return {inp.name: rng.integers(0, 256, size=shape, dtype=np.uint8)}
    return {inp.name: rng.standard_normal(size=shape, dtype=np.float32)}


def measure(
    sess: ort.InferenceSession, batch: int, duration: float, warmup: float, meter: CpuMeter, *, label: str
) -> Level:
    feeds = sample_input(sess, batch)
    outputs = [o.name for o in sess.get_outputs()]
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        sess.run(outputs, feeds)
    samples: list[float] = []
    meter.start()
    t0 = time.perf_counter()
    end = t0 + duration
    while (now := time.perf_counter()) < end:
        sess.run(outputs, feeds)
        samples.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - t0
    return Level(
        path="ort",
        client=f"{label} b{batch}",
        concurrency=1,
        batch=batch,
        images_per_s=len(samples) * batch / elapsed,
        requests=len(samples),
        errors=0,
        seconds=elapsed,
        latency=Latency.of(samples),
        cpu_cores=meter.cores(),
    )
