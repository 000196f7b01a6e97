"""The model catalog owns the facts of every served model: one cached entry per model
**version**, read from Triton once through one shared path, and for each model the
**current** version, whose facts requests are prepared with.

Requests, streams and readiness all read through ``get``: concurrent callers
share one in-flight read, so none waits longer than one deadline, and a failed
read is not cached (the next call tries again).  ``refresh`` (readiness) reads the
newest served version through the same path.  Every Triton answer names the
version that computed it; ``served_by`` turns that into the facts to interpret
the answer with: that version's own, read once (however many answers notice at
once) and kept.

What is current:

- a **newer** version than the current one becomes current at once, logged once
  ("now serving version 2 (was 1)");
- an **older** one answering is interpreted with its own facts.  With one Triton it
  is a late answer from the version just retired, or a rollback: the newest served
  version is read again (shared, as any read), and whatever that read says is current.
- with several Tritons, they may serve different versions for a while (a roll-out:
  one answers v1, the next v2, alternately under round-robin, and reads of "the
  newest" alternate too), so neither an answer nor a read from an older version
  moves the current one back, until the current version has not been seen, in an
  answer or a read, for ``ROLLBACK_AFTER_S``: then it was rolled back everywhere.

So during a roll-out the current version only moves up, once per version.  A
version whose facts Triton cannot give now (retired already; with several Tritons,
none of those asked serves it) leaves the answer standing with the facts in hand,
and is not asked about again for ``UNREADABLE_RETRY_S``.

``invalidate`` drops an entry Triton refused to serve with (a new version may
expect another input), so the next request reads the facts again.

The catalog also knows which models are **degraded**: an inference met a crashed
instance twice (``ModelDegraded``).  Readiness reports such a model as not ready
until an inference on it succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.config import Settings
from gateway.errors import InferenceFailed, InferenceTimeout, InferenceUnavailable, ModelNotFound
from gateway.inference.client import TritonClient, endpoints
from gateway.inference.model import ModelInfo

log = logging.getLogger(__name__)

ROLLBACK_AFTER_S = 60.0  # the current version unseen this long while an older one answers: rolled back
UNREADABLE_RETRY_S = 5.0  # a version whose facts could not be read is asked about again after this
_NEWEST = ""  # the key of a read of whatever version Triton serves newest
_UNREADABLE = (ModelNotFound, InferenceUnavailable, InferenceTimeout, InferenceFailed)


def newer(a: str, b: str) -> bool:
    """Is version ``a`` newer than ``b``?  Triton's versions are decimal numbers."""
    return (len(a), a) > (len(b), b)


class ModelCatalog:
    def __init__(self, settings: Settings, client: TritonClient, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self._pooled = endpoints(settings.triton.url) > 1  # several Tritons, maybe serving different versions
        self._facts: dict[tuple[str, str], ModelInfo] = {}  # (model, version) -> its facts
        self._current: dict[str, ModelInfo] = {}  # model -> the facts requests are prepared with
        self._seen: dict[tuple[str, str], float] = {}  # (model, version) -> when it last answered or was read
        self._unreadable: dict[tuple[str, str], float] = {}  # (model, version) -> when its read failed
        self._loading: dict[tuple[str, str], asyncio.Future[ModelInfo]] = {}
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
        """The current facts in hand, without asking Triton."""
        return self._current.get(name)

    async def get(self, name: str, *, stale: ModelInfo | None = None) -> ModelInfo:
        """The current facts, read from Triton once (again if the current ones are ``stale``)."""
        info = self._current.get(name)
        if info is not None and info is not stale:
            return info
        read = await self._read(name, _NEWEST)
        return self._current.get(name, read)  # the read, unless an older version than the current one

    async def refresh(self, name: str) -> ModelInfo:
        """Read the newest served version's facts now, through the shared read (readiness reports
        the version being served even while no inference runs), and return the current ones."""
        return await self.get(name, stale=self._current.get(name))

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
        """Forget ``info`` if it is still the entry in hand (a newer read is kept)."""
        if self._current.get(info.name) is info:
            del self._current[info.name]
        if self._facts.get((info.name, info.version)) is info:
            del self._facts[(info.name, info.version)]

    async def served_by(self, info: ModelInfo, version: str) -> ModelInfo:
        """The facts of the version that answered a request sent with ``info``."""
        if not version or version == info.version:
            self._observe(info)
            return info
        key = (info.name, version)
        served = self._facts.get(key)
        if served is not None:
            self._observe(served)
        else:
            failed = self._unreadable.get(key)
            if failed is not None and self._clock() - failed < UNREADABLE_RETRY_S:
                return info
            try:
                served = await self._read(info.name, version)
            except _UNREADABLE as e:
                # Retired already, or Triton cannot say now: the answer stands (a classifier's
                # labels come from Triton itself), and a later answer asks again.
                self._unreadable[key] = self._clock()
                log.debug("model %s: facts of version %s unavailable: %s", info.name, version, e)
                return info
        if not self._pooled and self._current.get(info.name) is info and newer(info.version, version):
            # One Triton answered a request sent with the current facts from an older version:
            # retired a moment ago, or rolled back?  Its newest version says (so one Triton's
            # rollback is seen at once).
            with contextlib.suppress(*_UNREADABLE):
                await self.get(info.name, stale=info)
        return served

    async def _read(self, name: str, version: str) -> ModelInfo:
        """``version``'s facts (or the newest served version's, for ``_NEWEST``) from Triton,
        one read in flight per key however many callers ask."""
        key = (name, version)
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name, version))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    async def _load(self, name: str, version: str) -> ModelInfo:
        read = self._check(await self._client.model_info(name, version))
        key = (name, read.version)
        info = self._facts.get(key)
        if info != read:  # a version seen for the first time (or re-exported): keep the new facts
            if info is not None and self._current.get(name) is info:
                self._current[name] = read
            info = self._facts[key] = read
            if version:
                log.info("model %s: read the facts of version %s, which answered a request", name, read.version)
        self._unreadable.pop(key, None)
        self._observe(info, newest=not version)
        return info

    def _observe(self, info: ModelInfo, *, newest: bool = False) -> None:
        """``info``'s version answered or was read just now (``newest``: as the newest Triton
        serves).  It becomes current if none is (only through a read of the newest: not after
        an invalidation), if it is newer than the current one, or if it is older and a rollback:
        the newest one Triton serves, or with several Tritons, the current one has not been seen
        for ``ROLLBACK_AFTER_S``."""
        now = self._clock()
        self._seen[(info.name, info.version)] = now
        old = self._current.get(info.name)
        if old is None:
            if newest:
                self._current[info.name] = info
            return
        if old.version == info.version:
            return
        if newer(info.version, old.version):
            why = ""
        elif newest and not self._pooled:
            why = ", rolled back"
        elif self._pooled and now - self._seen.get((old.name, old.version), now) >= ROLLBACK_AFTER_S:
            why = f", rolled back: version {old.version} unseen for {ROLLBACK_AFTER_S:.0f}s"
        else:
            return  # an older version answering beside the current one: nothing changes
        self._current[info.name] = info
        log.info(
            "model %s: now serving version %s (was %s): %d classes%s",
            info.name,
            info.version,
            old.version,
            info.num_classes,
            why,
        )

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
