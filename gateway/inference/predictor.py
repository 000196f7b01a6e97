"""The predictor runs one prediction: decode and preprocess off the event loop → Triton →
post-processing, for an upload (``predict``) or a stream frame (``predict_frame``).

It is a thin orchestrator and owns no state of its own: model facts and version
switches are the ``ModelCatalog``'s, tensors come from ``gateway.preprocess``,
results from ``postprocess``, and the worker threads are the lifespan's executor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from gateway.config import Settings
from gateway.errors import BadRequest, InferenceFailed, ModelDegraded
from gateway.inference import postprocess
from gateway.inference.batcher import Batched, FrameBatcher
from gateway.inference.catalog import ModelCatalog
from gateway.inference.client import TritonClient
from gateway.inference.model import ModelInfo
from gateway.inference.postprocess import DetectOptions
from gateway.preprocess import Geometry, decode_image, prepare_frame, prepare_image
from gateway.schema import ClassificationResult, DetectionResult

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    result: ClassificationResult | DetectionResult
    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    batch_ms: float = 0.0  # stream frames: waiting for other streams' frames to share the request


def _timed(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0) * 1000


class Predictor:
    def __init__(
        self,
        settings: Settings,
        client: TritonClient,
        catalog: ModelCatalog,
        executor: ThreadPoolExecutor,
        batcher: FrameBatcher | None = None,
    ) -> None:
        """``batcher``: where stream frames go to Triton (with other streams' frames); without it, or
        with batching off, each frame is a request of its own."""
        self._settings = settings
        self._client = client
        self._catalog = catalog
        self._executor = executor
        self._batcher = batcher if batcher is not None and batcher.enabled else None

    def options(self, threshold: float | None = None, all_classes: bool | None = None) -> DetectOptions:
        d = self._settings.detector
        return DetectOptions(
            threshold=d.score_threshold if threshold is None else threshold,
            all_classes=d.all_classes if all_classes is None else all_classes,
        )

    async def predict(
        self,
        data: bytes,
        *,
        model: str | None = None,
        top_k: int | None = None,
        options: DetectOptions | None = None,
    ) -> Outcome:
        """One uploaded image (JPEG, PNG or WebP bytes)."""
        name = model or self._settings.model
        loop = asyncio.get_running_loop()
        info = self._catalog.cached(name)
        if info is not None:  # the common case: one hop to the worker threads
            (image, decode_ms), ((batch, geometry), preprocess_ms) = await loop.run_in_executor(
                self._executor, self._decode_prepare, data, info
            )
        else:  # decode first, so a bad image is a 400 even while Triton is down
            image, decode_ms = await loop.run_in_executor(self._executor, _timed, self._decode, data)
            info = await self._catalog.get(name)
            (batch, geometry), preprocess_ms = await loop.run_in_executor(
                self._executor, _timed, self._prepare, image, info
            )
        if top_k is not None and info.task == "classification" and top_k > info.num_classes:
            raise BadRequest(f"top_k={top_k} exceeds the {info.num_classes} classes of model {name}")
        k = top_k or min(self._settings.top_k, info.num_classes)  # the default fits a model with fewer classes
        result, inference_ms, _ = await self._infer(info, batch, geometry, k, options or self.options())
        return Outcome(result, decode_ms, preprocess_ms, inference_ms)

    async def predict_frame(
        self, bgr: np.ndarray, *, stream: str, source_size: tuple[int, int] = (0, 0), model: str | None = None
    ) -> Outcome:
        """A decoded video frame of ``stream`` (H x W x 3 BGR from ingest, resized from ``source_size``)."""
        info = await self._catalog.get(model or self._settings.model)
        k = min(self._settings.top_k, info.num_classes)
        loop = asyncio.get_running_loop()
        (batch, geometry), preprocess_ms = await loop.run_in_executor(
            self._executor, _timed, prepare_frame, bgr, source_size, info, self._settings.preprocess
        )
        result, inference_ms, batch_ms = await self._infer(info, batch, geometry, k, self.options(), stream=stream)
        return Outcome(result, 0.0, preprocess_ms, inference_ms, batch_ms)

    async def probe(self, name: str) -> None:
        """One inference on a blank input of the model's shape (readiness of a degraded model:
        clears the mark when it succeeds, raises as an inference would when it does not)."""
        info = await self._catalog.get(name)
        _, height, width = info.input_shape
        if height <= 0 or width <= 0:  # a detector of any size: the stream frame size
            height, width = self._settings.frame_height, self._settings.frame_width
        batch = np.zeros((1, 3, height, width), dtype=info.input_dtype)
        await self._infer(info, batch, Geometry(1.0, 1.0, width, height), 1, self.options())

    # --- worker-thread steps -----------------------------------------------------------------

    def _decode(self, data: bytes) -> Image.Image:
        up = self._settings.upload
        return decode_image(data, allowed=up.allowed_types, max_pixels=up.max_pixels)

    def _prepare(self, image: Image.Image, info: ModelInfo) -> tuple[np.ndarray, Geometry]:
        s = self._settings
        return prepare_image(image, info, s.preprocess, (s.frame_width, s.frame_height))

    def _decode_prepare(
        self, data: bytes, info: ModelInfo
    ) -> tuple[tuple[Image.Image, float], tuple[tuple[np.ndarray, Geometry], float]]:
        decoded = _timed(self._decode, data)
        return decoded, _timed(self._prepare, decoded[0], info)

    # --- Triton ----------------------------------------------------------------------------------

    async def _ask(
        self, info: ModelInfo, batch: np.ndarray, top_k: int, stream: str | None
    ) -> tuple[Any, str, float, float]:
        """One image's raw answer (``Detections`` or a list of ``ClassScore``), the version that
        answered, the time it waited for a batch, and the Triton call's time (ms).  Frames of a
        ``stream`` go through the batcher, when there is one."""
        if stream is not None and self._batcher is not None:
            if info.task == "detection":
                b: Batched[Any] = await self._batcher.detect(info, batch, stream=stream)
            else:
                b = await self._batcher.classify(info, batch, top_k, stream=stream)
            return b.row, b.version, b.queued_ms, b.call_ms
        t0 = time.perf_counter()
        if info.task == "detection":
            found, version = await self._client.detect(info, batch)
            return found[0], version, 0.0, (time.perf_counter() - t0) * 1000
        classes, version = await self._client.classify(info, batch, top_k)
        return classes[0], version, 0.0, (time.perf_counter() - t0) * 1000

    async def _infer(
        self,
        info: ModelInfo,
        batch: np.ndarray,
        geometry: Geometry,
        top_k: int,
        options: DetectOptions,
        *,
        stream: str | None = None,
    ) -> tuple[ClassificationResult | DetectionResult, float, float]:
        """The result, the Triton call's time and the batching wait (ms)."""
        try:
            row, version, batch_ms, ms = await self._ask(info, batch, top_k, stream)
            self._catalog.mark_healthy(info.name)
            task, info = info.task, await self._catalog.served_by(info, version)
            if task == "detection":
                person = self._settings.detector.person_class
                return postprocess.detection(info, row, geometry, options, person), ms, batch_ms
            return postprocess.classification(info, row, geometry), ms, batch_ms
        except ModelDegraded as e:
            self._catalog.mark_degraded(info.name, e.message)
            raise
        except InferenceFailed:
            # Triton refused the request (a new version may expect another input): read the facts again.
            self._catalog.invalidate(info)
            raise
