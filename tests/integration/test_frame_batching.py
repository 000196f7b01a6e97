"""Stream frames batched across streams (``gateway.inference.batcher``) against the real
embedded Triton: each frame's answer equals the model run on that frame alone.  (In the
gateway: ``test_streams_api.py::test_frames_of_several_streams_share_requests_and_events_show_the_wait``.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from embedded_triton import EmbeddedTriton
from export.parity import Detections, scenes
from gateway.config import Settings, TritonSettings
from gateway.inference.batcher import FrameBatcher
from gateway.inference.catalog import ModelCatalog
from gateway.inference.client import TritonClient
from tests.conftest import DETECTOR, MODEL
from tests.integration.conftest import Reference

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def batched(triton: EmbeddedTriton, model: str, tensors: list[np.ndarray]) -> tuple[list[Any], list[int]]:
    """Each one-frame tensor sent at once, as one frame of its own stream, through one batcher
    (a long window; a first round makes the streams known, so they all wait for each other);
    the answers of the second round in order, and the size of every request it sent."""
    sizes: list[int] = []

    async def run() -> list[Any]:
        client = TritonClient(TritonSettings(url=triton.grpc_url, request_timeout_s=60))
        await client.start()
        batcher = FrameBatcher(client, window_ms=5_000, max_size=len(tensors), on_batch=lambda m, n: sizes.append(n))
        try:
            info = await ModelCatalog(Settings(), client).get(model)

            async def one(i: int, t: np.ndarray) -> Any:
                if info.task == "detection":
                    return (await batcher.detect(info, t, stream=f"s{i}")).row
                return (await batcher.classify(info, t, 5, stream=f"s{i}")).row

            await asyncio.gather(*(one(i, t) for i, t in enumerate(tensors)))
            sizes.clear()
            return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(tensors))))
        finally:
            await batcher.stop()
            await client.stop()

    return asyncio.run(run()), sizes


def test_batched_classifications_equal_the_model_on_each_frame_alone(
    triton: EmbeddedTriton, reference: Reference
) -> None:
    # given six different frames, preprocessed, one per stream
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (1, 3, 224, 224), dtype=np.uint8) for _ in range(6)]
    # when they go to Triton through the batcher
    answers, sizes = batched(triton, MODEL, frames)
    # then they went as one request, and each got the top 5 of its own frame as onnxruntime computes it alone
    assert sizes == [6], f"request sizes {sizes}"
    for i, (got, x) in enumerate(zip(answers, frames, strict=True)):
        probs = reference(x)[1][0]
        want = np.argsort(-probs, kind="stable")[:5]
        assert [c.index for c in got] == [int(j) for j in want], f"frame {i}: classes of another frame?"
        assert np.allclose([c.probability for c in got], probs[want], atol=1e-6), f"frame {i}"


def test_batched_detections_equal_the_model_on_each_frame_alone(triton: EmbeddedTriton, exported_repo: Path) -> None:
    onnx = exported_repo / DETECTOR / "1" / "model.onnx"
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    # given three different 640x360 frames, as three streams of a detector send them
    x = scenes(3, 360, 640, seed=11)
    answers, sizes = batched(triton, DETECTOR, [x[i : i + 1] for i in range(3)])
    assert sizes == [3], f"request sizes {sizes}"
    for i, got in enumerate(answers):
        boxes, scores, labels, num = session.run(None, {"images": x[i : i + 1]})
        want = Detections.from_padded(boxes[0], scores[0], labels[0], num[0])
        assert np.array_equal(got.boxes, want.boxes), f"frame {i}: boxes of another frame?"
        assert np.array_equal(got.scores, want.scores) and np.array_equal(got.labels, want.labels), f"frame {i}"
