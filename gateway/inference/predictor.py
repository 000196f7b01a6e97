"""The predictor runs one prediction: decode and preprocess off the event loop → Triton →
post-processing, for an upload (``predict``) or a stream frame (``predict_frame``).

It is a thin orchestrator and owns no state of its own: model facts and version
switches are the ``ModelCatalog``'s, tensors come from ``gateway.preprocess``,
results from ``postprocess``, and the worker threads are the lifespan's ``Workers``.

An upload whose model's facts are known takes one hop: one worker thread decodes it,
preprocesses it and makes the Triton call (blocking, on the client's sync channel), and
the event loop only post-processes the answer.  Stream frames are preprocessed on their
reader's thread (``prepare_frame_here``, the reader's ``prepare`` hook) when a preprocessing
slot is free, so that a frame does not take two thread hops and a worker's queue to be
prepared; otherwise (every slot busy, or the model's facts not yet known) in a worker, in
turn.  They are sent from the event loop, through the ``FrameBatcher``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
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


class Workers:
    """The predictor's threads, made in the lifespan and shut down in reverse order.

    - ``preprocess`` (``preprocess.workers`` threads): the preprocessing of a stream frame whose
      reader did not prepare it, and an upload's decode and preprocessing while its model's facts
      are being read;
    - ``uploads`` (``admission.max_in_flight`` threads, one per admitted upload, made as they are
      needed): an upload's decode, preprocessing and blocking Triton call, in one go.  A call
      holds its thread until Triton answers or its deadline passes, so a frozen Triton cannot
      hold the threads that stream frames need, nor make an admitted upload wait for a thread;
    - ``cpu``: at most ``preprocess.workers`` threads of both decode or preprocess at once."""

    def __init__(self, settings: Settings) -> None:
        n = settings.preprocess.workers
        self.preprocess = ThreadPoolExecutor(n, thread_name_prefix="preprocess")
        self.uploads = ThreadPoolExecutor(settings.admission.max_in_flight, thread_name_prefix="upload")
        self.cpu = threading.BoundedSemaphore(n)

    def shutdown(self) -> None:
        """Idempotent.  Calls still in flight end when the client's channels close (before this)."""
        self.uploads.shutdown(wait=True, cancel_futures=True)
        self.preprocess.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Outcome:
    result: ClassificationResult | DetectionResult
    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    batch_ms: float = 0.0  # stream frames: waiting for other streams' frames to share the request
    queue_ms: float = 0.0  # stream frames: waiting for a preprocessing thread, and for the loop after


@dataclass(frozen=True)
class PreparedFrame:
    """A stream frame preprocessed on its reader's thread, with the model facts it was prepared for."""

    info: ModelInfo
    batch: np.ndarray
    geometry: Geometry
    preprocess_ms: float


@dataclass(frozen=True)
class _Answer:
    row: Any  # one image's ``Detections`` or list of ``ClassScore``
    version: str  # the model version that answered
    batch_ms: float  # the wait for other streams' frames
    call_ms: float  # the Triton call


@dataclass(frozen=True)
class _Upload:
    decode_ms: float
    preprocess_ms: float
    geometry: Geometry
    answer: _Answer


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
        workers: Workers,
        batcher: FrameBatcher | None = None,
    ) -> None:
        """``batcher``: where stream frames go to Triton (with other streams' frames); without it, or
        with batching off, each frame is a request of its own."""
        self._settings = settings
        self._client = client
        self._catalog = catalog
        self._workers = workers
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
        options = options or self.options()
        info = self._catalog.cached(name)
        if info is not None:  # the common case: one hop to a worker that also asks Triton
            up, result = await self._settled(info, self._one_hop(info, data, top_k, options))
            return Outcome(result, up.decode_ms, up.preprocess_ms, up.answer.call_ms)
        # decode first, so a bad image is a 400 even while Triton is down
        loop, pool = asyncio.get_running_loop(), self._workers.preprocess
        image, decode_ms = await loop.run_in_executor(pool, self._cpu_timed, self._decode, data)
        info = await self._catalog.get(name)
        (batch, geometry), preprocess_ms = await loop.run_in_executor(pool, self._cpu_timed, self._prepare, image, info)
        k = self._top_k(info, top_k)
        result, inference_ms, _ = await self._infer(info, batch, geometry, k, options)
        return Outcome(result, decode_ms, preprocess_ms, inference_ms)

    def prepare_frame_here(
        self, bgr: np.ndarray, source_size: tuple[int, int], model: str | None = None
    ) -> PreparedFrame | None:
        """A stream frame preprocessed on the calling thread (its reader's), for the model's current
        facts, when one of the ``preprocess.workers`` slots is free; None while the facts are not
        known, or every slot is taken (``predict_frame`` then prepares it in a worker, in turn).
        Readers never wait for a slot, and preprocessing never runs on more threads than there are
        slots: on more, it starves the event loop of the GIL (96 streams on 2 cores: 0.07 fps)."""
        info = self._catalog.cached(model or self._settings.model)
        if info is None or not self._workers.cpu.acquire(blocking=False):
            return None
        try:
            (batch, geometry), ms = _timed(prepare_frame, bgr, source_size, info, self._settings.preprocess)
        finally:
            self._workers.cpu.release()
        return PreparedFrame(info, batch, geometry, ms)

    async def predict_frame(
        self,
        bgr: np.ndarray,
        *,
        stream: str,
        source_size: tuple[int, int] = (0, 0),
        model: str | None = None,
        prepared: PreparedFrame | None = None,
    ) -> Outcome:
        """A decoded video frame of ``stream`` (H x W x 3 BGR from ingest, resized from ``source_size``),
        ``prepared`` on its reader's thread where it was (for facts that are still current)."""
        name = model or self._settings.model
        queue_ms = 0.0
        if prepared is not None and prepared.info is self._catalog.cached(name):
            info, batch, geometry = prepared.info, prepared.batch, prepared.geometry
            preprocess_ms = prepared.preprocess_ms
        else:
            info = await self._catalog.get(name)
            loop = asyncio.get_running_loop()
            asked = time.perf_counter()
            (batch, geometry), preprocess_ms = await loop.run_in_executor(
                self._workers.preprocess,
                self._cpu_timed,
                prepare_frame,
                bgr,
                source_size,
                info,
                self._settings.preprocess,
            )
            queue_ms = max(0.0, (time.perf_counter() - asked) * 1000 - preprocess_ms)
        k = min(self._settings.top_k, info.num_classes)
        result, inference_ms, batch_ms = await self._infer(info, batch, geometry, k, self.options(), stream=stream)
        return Outcome(result, 0.0, preprocess_ms, inference_ms, batch_ms, queue_ms)

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

    def _cpu_timed(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        with self._workers.cpu:
            return _timed(fn, *args)

    def _decode(self, data: bytes) -> Image.Image:
        up = self._settings.upload
        return decode_image(data, allowed=up.allowed_types, max_pixels=up.max_pixels)

    def _prepare(self, image: Image.Image, info: ModelInfo) -> tuple[np.ndarray, Geometry]:
        s = self._settings
        return prepare_image(image, info, s.preprocess, (s.frame_width, s.frame_height))

    def _top_k(self, info: ModelInfo, top_k: int | None) -> int:
        if top_k is not None and info.task == "classification" and top_k > info.num_classes:
            raise BadRequest(f"top_k={top_k} exceeds the {info.num_classes} classes of model {info.name}")
        return top_k or min(self._settings.top_k, info.num_classes)  # the default fits a model with fewer classes

    def _upload(self, data: bytes, info: ModelInfo, top_k: int | None) -> _Upload:
        """Decode, preprocess and ask Triton, in one worker thread (the call blocks it)."""
        image, decode_ms = self._cpu_timed(self._decode, data)
        (batch, geometry), preprocess_ms = self._cpu_timed(self._prepare, image, info)
        k = self._top_k(info, top_k)
        t0 = time.perf_counter()
        if info.task == "detection":
            found, version = self._client.detect_blocking(info, batch)
            row: Any = found[0]
        else:
            classes, version = self._client.classify_blocking(info, batch, k)
            row = classes[0]
        call_ms = (time.perf_counter() - t0) * 1000
        return _Upload(decode_ms, preprocess_ms, geometry, _Answer(row, version, 0.0, call_ms))

    # --- Triton ----------------------------------------------------------------------------------

    async def _one_hop(
        self, info: ModelInfo, data: bytes, top_k: int | None, options: DetectOptions
    ) -> tuple[_Upload, ClassificationResult | DetectionResult]:
        loop = asyncio.get_running_loop()
        up = await loop.run_in_executor(self._workers.uploads, self._upload, data, info, top_k)
        return up, await self._result(info, up.answer, up.geometry, options)

    async def _ask(self, info: ModelInfo, batch: np.ndarray, top_k: int, stream: str | None) -> _Answer:
        """One image's answer from Triton.  Frames of a ``stream`` go through the batcher, when
        there is one."""
        if stream is not None and self._batcher is not None:
            if info.task == "detection":
                b: Batched[Any] = await self._batcher.detect(info, batch, stream=stream)
            else:
                b = await self._batcher.classify(info, batch, top_k, stream=stream)
            return _Answer(b.row, b.version, b.queued_ms, b.call_ms)
        t0 = time.perf_counter()
        if info.task == "detection":
            found, version = await self._client.detect(info, batch)
            return _Answer(found[0], version, 0.0, (time.perf_counter() - t0) * 1000)
        classes, version = await self._client.classify(info, batch, top_k)
        return _Answer(classes[0], version, 0.0, (time.perf_counter() - t0) * 1000)

    async def _result(
        self, info: ModelInfo, answer: _Answer, geometry: Geometry, options: DetectOptions
    ) -> ClassificationResult | DetectionResult:
        """The answer post-processed with the facts of the version that gave it."""
        task, info = info.task, await self._catalog.served_by(info, answer.version)
        if task == "detection":
            person = self._settings.detector.person_class
            return postprocess.detection(info, answer.row, geometry, options, person)
        return postprocess.classification(info, answer.row, geometry)

    async def _settled(self, info: ModelInfo, asking: Awaitable[T]) -> T:
        """``asking`` (a Triton call and its post-processing) awaited, and what it says of the model
        told to the catalog."""
        try:
            out = await asking
        except ModelDegraded as e:
            self._catalog.mark_degraded(info.name, e.message)
            raise
        except InferenceFailed:
            # Triton refused the request (a new version may expect another input): read the facts again.
            self._catalog.invalidate(info)
            raise
        self._catalog.mark_healthy(info.name)
        return out

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

        async def asking() -> tuple[ClassificationResult | DetectionResult, float, float]:
            answer = await self._ask(info, batch, top_k, stream)
            return await self._result(info, answer, geometry, options), answer.call_ms, answer.batch_ms

        return await self._settled(info, asking())
