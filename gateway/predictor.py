"""Single-image prediction: decode → preprocess (worker threads) → Triton → result.

``Predictor`` owns the model facts read from Triton (cached per model name) and
the thread pool that keeps decoding and resizing off the event loop.  The task
comes from the model's metadata: a classifier gives top-k classes; a detector
gives person / no_person, the person count and boxes in the coordinates of the
image or frame the client sent.
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
from gateway.errors import BadRequest, InferenceFailed, InferenceTimeout, InferenceUnavailable, ModelNotFound
from gateway.inference import Classification, Detections, ModelInfo, TritonClient
from gateway.preprocess import classifier_input, decode_image, letterbox, normalize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    label: str


@dataclass(frozen=True)
class Detection:
    label: str  # "person" or "no_person"
    person_count: int
    threshold: float
    boxes: list[Box]  # best first, in the client's coordinates


@dataclass(frozen=True)
class DetectOptions:
    threshold: float
    all_classes: bool


@dataclass(frozen=True)
class _Geometry:
    """How the tensor sent maps back to the client's image: x_client = x / sx."""

    sx: float
    sy: float
    width: int  # the client's image or source frame
    height: int


@dataclass(frozen=True)
class Prediction:
    model: ModelInfo
    classes: list[Classification]  # classification; empty for detection
    detection: Detection | None  # detection; None for classification
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
            "model %s v%s ready (%s): input %s %s%s, %d classes, instances %s",
            info.name,
            info.version,
            info.task,
            info.input_name,
            info.input_datatype,
            list(info.input_shape),
            info.num_classes,
            info.instance_kinds,
        )
        return True

    async def model(self, name: str, *, stale: ModelInfo | None = None) -> ModelInfo:
        """The model's facts, read from Triton once (again if the cached ones are
        ``stale``).  Concurrent callers share one in-flight read (so none waits longer
        than one deadline); a failure is not cached and the next call tries again."""
        info = self._models.get(name)
        if info is not None and info is not stale:
            return info
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name))
            self._loading[name] = loading
            loading.add_done_callback(lambda _: self._loading.pop(name, None))
        return await asyncio.shield(loading)

    async def _load(self, name: str) -> ModelInfo:
        info = await self._client.model_info(name)
        if info.task == "classification" and self._settings.preprocess.resize_size < max(info.crop_hw):
            raise InferenceFailed(
                f"preprocess.resize_size {self._settings.preprocess.resize_size} is smaller than the "
                f"input {info.crop_hw} of model {name}"
            )
        if info.task == "detection" and self._settings.detector.person_class not in info.class_names:
            raise InferenceFailed(
                f"detector {name} has no class {self._settings.detector.person_class!r} (detector.person_class)"
            )
        old = self._models.get(name)
        if old is not None and old.version != info.version:
            log.info(
                "model %s: now serving version %s (was %s): %d classes",
                name,
                info.version,
                old.version,
                info.num_classes,
            )
        self._models[name] = info
        return info

    async def refresh(self, name: str) -> ModelInfo:
        """Read the model's facts from Triton now (readiness does, so it reports the
        version being served even while no inference runs)."""
        return await self._load(name)

    def options(self, threshold: float | None = None, all_classes: bool | None = None) -> DetectOptions:
        d = self._settings.detector
        return DetectOptions(
            threshold=d.score_threshold if threshold is None else threshold,
            all_classes=d.all_classes if all_classes is None else all_classes,
        )

    # --- worker-thread steps -----------------------------------------------------------------

    def _decode(self, data: bytes) -> tuple[Image.Image, float]:
        t0 = time.perf_counter()
        up = self._settings.upload
        image = decode_image(data, allowed=up.allowed_types, max_pixels=up.max_pixels)
        return image, (time.perf_counter() - t0) * 1000

    def _detector_size(self, info: ModelInfo) -> tuple[int, int]:
        """(width, height) the detector gets: its fixed input size, or the configured frame size."""
        _, h, w = info.input_shape
        if h > 0 and w > 0:
            return w, h
        return self._settings.frame_width, self._settings.frame_height

    def _prepare(self, image: Image.Image, info: ModelInfo) -> tuple[np.ndarray, _Geometry, float]:
        t0 = time.perf_counter()
        geometry = _Geometry(1.0, 1.0, image.width, image.height)
        if info.task == "detection":
            width, height = self._detector_size(info)
            chw, sx, sy = letterbox(np.asarray(image), width, height)
            geometry = _Geometry(sx, sy, image.width, image.height)
            x = chw
        else:
            pre = self._settings.preprocess
            chw = classifier_input(image, resize_size=pre.resize_size, crop_hw=info.crop_hw)
            x = chw if info.input_datatype == "UINT8" else normalize(chw, pre.mean, pre.std).astype(info.input_dtype)
        return x[np.newaxis], geometry, (time.perf_counter() - t0) * 1000

    def _prepare_frame(
        self, bgr: np.ndarray, source: tuple[int, int], info: ModelInfo
    ) -> tuple[np.ndarray, _Geometry, float]:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if info.task != "detection":
            return self._prepare(Image.fromarray(rgb), info)
        t0 = time.perf_counter()
        fh, fw = rgb.shape[:2]
        sw, sh = source if min(source) > 0 else (fw, fh)
        _, h, w = info.input_shape
        if h > 0 and w > 0 and (w, h) != (fw, fh):  # a fixed-size model: fit the frame into it
            chw, sx, sy = letterbox(rgb, w, h)
        else:  # any size: the frame as ingest sized it (one size per stream, so streams batch together)
            chw, sx, sy = np.ascontiguousarray(rgb.transpose(2, 0, 1)), 1.0, 1.0
        # ingest resized source → frame per axis; the letterbox scaled frame → tensor
        geometry = _Geometry(sx * fw / sw, sy * fh / sh, sw, sh)
        return chw[np.newaxis], geometry, (time.perf_counter() - t0) * 1000

    def _decode_prepare(self, data: bytes, info: ModelInfo) -> tuple[Image.Image, np.ndarray, _Geometry, float, float]:
        image, decode_ms = self._decode(data)
        batch, geometry, preprocess_ms = self._prepare(image, info)
        return image, batch, geometry, decode_ms, preprocess_ms

    # --- results --------------------------------------------------------------------------------

    def _detection(self, d: Detections, info: ModelInfo, g: _Geometry, opts: DetectOptions) -> Detection:
        person = info.class_names.index(self._settings.detector.person_class)
        scale = np.array([g.sx, g.sy, g.sx, g.sy], dtype=np.float32)
        limit = np.array([g.width, g.height, g.width, g.height], dtype=np.float32)
        boxes = np.clip(d.boxes / scale, 0, limit)  # back into the client's image
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # not wholly in the letterbox padding
        persons = inside & (d.labels == person) & (d.scores >= opts.threshold)
        keep = inside & (d.scores >= opts.threshold) if opts.all_classes else persons
        names = info.class_names
        out = [
            Box(
                x1=round(float(b[0]), 2),
                y1=round(float(b[1]), 2),
                x2=round(float(b[2]), 2),
                y2=round(float(b[3]), 2),
                score=round(float(s), 5),
                label=names[int(c)] if 0 <= int(c) < len(names) else str(int(c)),
            )
            for b, s, c in zip(boxes[keep], d.scores[keep], d.labels[keep], strict=True)
        ]
        count = int(np.count_nonzero(persons))
        return Detection("person" if count else "no_person", count, opts.threshold, out)

    async def _served_by(self, info: ModelInfo, version: str) -> ModelInfo:
        """The facts of the version that answered.

        A version other than the cached one means Triton switched (a new version, or a
        rollback): the current facts are read through ``model()`` -- one shared,
        validated read however many answers notice at once, logged as a switch.
        An answer from a version that is no longer current (a late answer from the one
        just retired) is read for itself and leaves the cache alone."""
        if not version or version == info.version:
            return info
        try:
            current = await self.model(info.name, stale=info)
            if current.version == version:
                return current
            return await self._client.model_info(info.name, version)
        except (ModelNotFound, InferenceUnavailable, InferenceTimeout, InferenceFailed) as e:
            # Retired already, or Triton cannot say now: the answer stands (a classifier's
            # labels come from Triton itself), and the next request reads again.
            log.debug("model %s: facts of version %s unavailable: %s", info.name, version, e)
            return info

    async def _infer(
        self, info: ModelInfo, batch: np.ndarray, geometry: _Geometry, top_k: int, opts: DetectOptions
    ) -> tuple[ModelInfo, list[Classification], Detection | None, float]:
        t0 = time.perf_counter()
        try:
            if info.task == "detection":
                found, version = await self._client.detect(info, batch)
                ms = (time.perf_counter() - t0) * 1000
                info = await self._served_by(info, version)
                return info, [], self._detection(found[0], info, geometry, opts), ms
            classes, version = await self._client.classify(info, batch, top_k)
            ms = (time.perf_counter() - t0) * 1000
            return await self._served_by(info, version), classes[0], None, ms
        except InferenceFailed:
            # Triton refused the request (a new version may expect another input): read the facts again.
            self._models.pop(info.name, None)
            raise

    async def predict_frame(
        self,
        bgr: np.ndarray,
        *,
        source_size: tuple[int, int] = (0, 0),
        model: str | None = None,
        top_k: int | None = None,
    ) -> Prediction:
        """A decoded video frame (H x W x 3 BGR, from ingest, resized from ``source_size``)."""
        info = await self.model(model or self._settings.model)
        k = min(top_k or self._settings.top_k, info.num_classes)
        loop = asyncio.get_running_loop()
        batch, geometry, preprocess_ms = await loop.run_in_executor(
            self._executor, self._prepare_frame, bgr, source_size, info
        )
        info, classes, detection, inference_ms = await self._infer(info, batch, geometry, k, self.options())
        return Prediction(info, classes, detection, geometry.width, geometry.height, 0.0, preprocess_ms, inference_ms)

    async def predict(
        self,
        data: bytes,
        *,
        model: str | None = None,
        top_k: int | None = None,
        options: DetectOptions | None = None,
    ) -> Prediction:
        name = model or self._settings.model
        loop = asyncio.get_running_loop()
        info = self._models.get(name)
        if info is not None:  # the common case: one hop to the worker threads
            image, batch, geometry, decode_ms, preprocess_ms = await loop.run_in_executor(
                self._executor, self._decode_prepare, data, info
            )
        else:  # decode first, so a bad image is a 400 even while Triton is down
            image, decode_ms = await loop.run_in_executor(self._executor, self._decode, data)
            info = await self.model(name)
            batch, geometry, preprocess_ms = await loop.run_in_executor(self._executor, self._prepare, image, info)
        if top_k is not None and info.task == "classification" and top_k > info.num_classes:
            raise BadRequest(f"top_k={top_k} exceeds the {info.num_classes} classes of model {name}")
        k = top_k or min(self._settings.top_k, info.num_classes)  # the default fits a model with fewer classes
        info, classes, detection, inference_ms = await self._infer(info, batch, geometry, k, options or self.options())
        return Prediction(info, classes, detection, image.width, image.height, decode_ms, preprocess_ms, inference_ms)
