"""Single-image prediction: decode → preprocess (worker threads) → Triton → top-k.

``Predictor`` owns the model facts read from Triton (cached per model name) and
the thread pool that keeps decoding and resizing off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from gateway.config import Settings
from gateway.errors import BadRequest, InferenceFailed
from gateway.inference import Classification, ModelInfo, TritonClient
from gateway.preprocess import classifier_input, decode_image, normalize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    model: ModelInfo
    classes: list[Classification]
    width: int
    height: int
    decode_ms: float
    preprocess_ms: float
    inference_ms: float


class Predictor:
    def __init__(self, settings: Settings, client: TritonClient, executor: ThreadPoolExecutor) -> None:
        self._settings = settings
        self._client = client
        self._executor = executor
        self._models: dict[str, ModelInfo] = {}
        self._loading: dict[str, asyncio.Future[ModelInfo]] = {}

    async def start(self, timeout: float) -> bool:
        """Wait (bounded) for Triton and the default model, then read its metadata."""
        name = self._settings.model
        if not await self._client.wait_ready([name], timeout):
            log.warning(
                "Triton at %s or model %s not ready after %.0fs; will retry on demand",
                self._settings.triton.url,
                name,
                timeout,
            )
            return False
        info = await self.model(name)
        log.info(
            "model %s v%s ready: input %s %s%s, %d classes, instances %s",
            info.name,
            info.version,
            info.input_name,
            info.input_datatype,
            list(info.input_shape),
            info.num_classes,
            info.instance_kinds,
        )
        return True

    async def model(self, name: str) -> ModelInfo:
        """The model's facts, read from Triton once.  Concurrent callers share one
        in-flight read (so none waits longer than one deadline); a failure is not
        cached and the next call tries again."""
        info = self._models.get(name)
        if info is not None:
            return info
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name))
            self._loading[name] = loading
            loading.add_done_callback(lambda _: self._loading.pop(name, None))
        return await asyncio.shield(loading)

    async def _load(self, name: str) -> ModelInfo:
        info = await self._client.model_info(name)
        if self._settings.preprocess.resize_size < max(info.crop_hw):
            raise InferenceFailed(
                f"preprocess.resize_size {self._settings.preprocess.resize_size} is smaller than the "
                f"input {info.crop_hw} of model {name}"
            )
        self._models[name] = info
        return info

    def _decode(self, data: bytes) -> tuple[Image.Image, float]:
        t0 = time.perf_counter()
        up = self._settings.upload
        image = decode_image(data, allowed=up.allowed_types, max_pixels=up.max_pixels)
        return image, (time.perf_counter() - t0) * 1000

    def _prepare(self, image: Image.Image, info: ModelInfo) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        pre = self._settings.preprocess
        chw = classifier_input(image, resize_size=pre.resize_size, crop_hw=info.crop_hw)
        x = chw if info.input_datatype == "UINT8" else normalize(chw, pre.mean, pre.std).astype(info.input_dtype)
        return x[np.newaxis], (time.perf_counter() - t0) * 1000

    def _prepare_frame(self, bgr: np.ndarray, info: ModelInfo) -> tuple[np.ndarray, float]:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return self._prepare(Image.fromarray(rgb), info)

    async def predict_frame(self, bgr: np.ndarray, *, model: str | None = None, top_k: int | None = None) -> Prediction:
        """A decoded video frame (H x W x 3 BGR, from ingest) → top-k."""
        info = await self.model(model or self._settings.model)
        k = min(top_k or self._settings.top_k, info.num_classes)
        loop = asyncio.get_running_loop()
        batch, preprocess_ms = await loop.run_in_executor(self._executor, self._prepare_frame, bgr, info)
        t0 = time.perf_counter()
        classes = (await self._client.classify(info, batch, k))[0]
        inference_ms = (time.perf_counter() - t0) * 1000
        return Prediction(info, classes, bgr.shape[1], bgr.shape[0], 0.0, preprocess_ms, inference_ms)

    def _decode_prepare(self, data: bytes, info: ModelInfo) -> tuple[Image.Image, np.ndarray, float, float]:
        image, decode_ms = self._decode(data)
        batch, preprocess_ms = self._prepare(image, info)
        return image, batch, decode_ms, preprocess_ms

    async def predict(self, data: bytes, *, model: str | None = None, top_k: int | None = None) -> Prediction:
        name = model or self._settings.model
        k = top_k or self._settings.top_k
        loop = asyncio.get_running_loop()
        info = self._models.get(name)
        if info is not None:  # the common case: one hop to the worker threads
            image, batch, decode_ms, preprocess_ms = await loop.run_in_executor(
                self._executor, self._decode_prepare, data, info
            )
        else:  # decode first, so a bad image is a 400 even while Triton is down
            image, decode_ms = await loop.run_in_executor(self._executor, self._decode, data)
            info = await self.model(name)
            batch, preprocess_ms = await loop.run_in_executor(self._executor, self._prepare, image, info)
        if k > info.num_classes:
            raise BadRequest(f"top_k={k} exceeds the {info.num_classes} classes of model {name}")
        t0 = time.perf_counter()
        classes = (await self._client.classify(info, batch, k))[0]
        inference_ms = (time.perf_counter() - t0) * 1000
        return Prediction(info, classes, image.width, image.height, decode_ms, preprocess_ms, inference_ms)
