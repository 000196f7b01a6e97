"""The model catalog owns the facts of every served model: one cached entry per model,
read from Triton through one shared path, switched when Triton serves another version.

Requests, streams and readiness all read through ``get``: concurrent callers
share one in-flight read, so none waits longer than one deadline, and a failed
read is not cached (the next call tries again).  ``refresh`` (readiness) goes
through the same read.  Every Triton answer names the version that computed it;
``served_by`` turns that into the facts to interpret the answer with:

- the cached version: nothing to do;
- another version that is now current (a new one, or a rollback): the current
  facts are read once through ``get`` however many answers notice at once, cached
  and logged as a switch;
- a version that is no longer current (a late answer from the one just retired):
  its own facts are read, and the cache is left alone;
- facts Triton cannot give now: the cached ones stand, the next answer asks again.

``invalidate`` drops an entry Triton refused to serve with (a new version may
expect another input), so the next request reads the facts again.

The catalog also knows which models are **degraded**: an inference met a crashed
instance twice (``ModelDegraded``).  Readiness reports such a model as not ready
until an inference on it succeeds again.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.config import Settings
from gateway.errors import InferenceFailed, InferenceTimeout, InferenceUnavailable, ModelNotFound
from gateway.inference.client import TritonClient
from gateway.inference.model import ModelInfo

log = logging.getLogger(__name__)


class ModelCatalog:
    def __init__(self, settings: Settings, client: TritonClient) -> None:
        self._settings = settings
        self._client = client
        self._models: dict[str, ModelInfo] = {}
        self._loading: dict[str, asyncio.Future[ModelInfo]] = {}
        self._degraded: dict[str, str] = {}  # model -> why

    async def warm(self, name: str, timeout: float) -> bool:
        """At start-up: wait (bounded) for Triton and the model, then read its facts.
        False if they were not ready in time; requests retry on demand."""
        if not await self._client.wait_ready([name], timeout):
            log.warning(
                "Triton at %s or model %s not ready after %.0fs; will retry on demand",
                self._settings.triton.url,
                name,
                timeout,
            )
            return False
        info = await self.get(name)
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

    def cached(self, name: str) -> ModelInfo | None:
        """The facts in hand, without asking Triton."""
        return self._models.get(name)

    async def get(self, name: str, *, stale: ModelInfo | None = None) -> ModelInfo:
        """The model's facts, read from Triton once (again if the cached ones are ``stale``)."""
        info = self._models.get(name)
        if info is not None and info is not stale:
            return info
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name))
            self._loading[name] = loading
            loading.add_done_callback(lambda _: self._loading.pop(name, None))
        return await asyncio.shield(loading)

    async def refresh(self, name: str) -> ModelInfo:
        """Read the facts now, through the shared read (readiness reports the version being
        served even while no inference runs)."""
        return await self.get(name, stale=self._models.get(name))

    def degraded(self, name: str) -> str | None:
        """Why ``name`` is degraded, or None while its inferences succeed."""
        return self._degraded.get(name)

    def mark_degraded(self, name: str, reason: str) -> None:
        if name not in self._degraded:
            log.warning("model %s degraded: %s", name, reason)
        self._degraded[name] = reason

    def mark_healthy(self, name: str) -> None:
        if self._degraded.pop(name, None) is not None:
            log.warning("model %s recovered: an inference succeeded", name)

    def invalidate(self, info: ModelInfo) -> None:
        """Forget ``info`` if it is still the cached entry (a newer read is kept)."""
        if self._models.get(info.name) is info:
            del self._models[info.name]

    async def served_by(self, info: ModelInfo, version: str) -> ModelInfo:
        """The facts of the version that answered a request sent with ``info``."""
        if not version or version == info.version:
            return info
        try:
            current = await self.get(info.name, stale=info)
            if current.version == version:
                return current
            return self._check(await self._client.model_info(info.name, version))
        except (ModelNotFound, InferenceUnavailable, InferenceTimeout, InferenceFailed) as e:
            # Retired already, or Triton cannot say now: the answer stands (a classifier's
            # labels come from Triton itself), and the next answer asks again.
            log.debug("model %s: facts of version %s unavailable: %s", info.name, version, e)
            return info

    async def _load(self, name: str) -> ModelInfo:
        info = self._check(await self._client.model_info(name))
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

    def _check(self, info: ModelInfo) -> ModelInfo:
        """Facts the gateway's settings cannot feed are an error, not a silent mismatch."""
        if info.task == "classification" and self._settings.preprocess.resize_size < max(info.crop_hw):
            raise InferenceFailed(
                f"preprocess.resize_size {self._settings.preprocess.resize_size} is smaller than the "
                f"input {info.crop_hw} of model {info.name}"
            )
        if info.task == "detection" and self._settings.detector.person_class not in info.class_names:
            raise InferenceFailed(
                f"detector {info.name} has no class {self._settings.detector.person_class!r} (detector.person_class)"
            )
        return info
