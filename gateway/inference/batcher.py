"""The frame batcher: stream frames of one model that become ready within a short window
go to Triton as one request.

Every inference request costs a fixed amount on both sides of the wire, whatever it
carries: the aio gRPC call on the gateway's event loop, Triton's request handling, and,
on the CPU build, the python backend's round trip to its stub.  Measured on the 2-core
build machine (MobileNetV3-Small, embedded Triton; docs/benchmarks.md, "Frames of
several streams in one request"): a request of 8 images costs ~5 ms of CPU per image,
client and server, where 8 requests of one cost ~10; 48 cameras at 1 fps cost 0.11-0.23
cores less with the 25 ms default (``python -m bench.stream_density --batch-windows
0,25``).  Cameras are sampled out of phase, so their requests seldom meet in Triton's
dynamic batcher (its queue delay is 100 µs); here they wait up to
``ingest.batch_window_ms`` for each other instead, the way DeepStream's stream muxer
batches cameras.  Uploads (``POST /predict``) are not
batched: a single caller would pay the window.

A batch is the frames of one model version, task, ``top_k`` and tensor shape (a
detector's frames differ in size per stream); it is sent when it is full
(``ingest.batch_max``, at most the model's ``max_batch_size``), when its first frame
has waited the window, or as soon as no other frame can join: every stream that sent
the model a frame in the last ``ACTIVE_S`` seconds has one waiting or in flight (a
stream has one frame in inference at a time).  So one camera, or a few fast ones, never
wait for frames that cannot come: a single 50 fps stream sent alone would otherwise
lose half its rate to the window.  One send failing fails each of its frames as that one call
would have (the client retries it as one request); a frame whose stream stopped while
it waited is left out, or its answer dropped.  Batches in flight are not limited here:
each waits at most the request deadline, and the frames come from a bounded set of
streams, one frame in flight per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from gateway.errors import InferenceUnavailable
from gateway.inference.client import TritonClient
from gateway.inference.model import Detections, ModelInfo
from gateway.schema import ClassScore

log = logging.getLogger(__name__)
R = TypeVar("R")
ACTIVE_S = 5.0  # a stream that sent a model a frame this recently may send the next
SizeHook = Callable[[str, int], None]  # (model, frames in the batch): observed by the caller


@dataclass(frozen=True)
class Batched(Generic[R]):
    """One frame's answer: its row of the batch, the version that answered, how long the
    frame waited for the batch to fill (``queued_ms``), the Triton call (``call_ms``), and how
    many frames the request carried."""

    row: R
    version: str
    queued_ms: float
    call_ms: float
    size: int


@dataclass
class _Waiting:
    tensor: np.ndarray  # [1, C, H, W]
    future: asyncio.Future[Batched[Any]]
    since: float


@dataclass
class _Batch:
    info: ModelInfo
    top_k: int
    limit: int
    items: list[_Waiting] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


Key = tuple[str, str, str, int, tuple[int, ...], str]


class FrameBatcher:
    """Created in the lifespan after the client, stopped before it."""

    def __init__(self, client: TritonClient, window_ms: float, max_size: int, on_batch: SizeHook | None = None) -> None:
        self._client = client
        self._window_s = window_ms / 1000
        self._max_size = max_size
        self._on_batch = on_batch or (lambda model, size: None)
        self._open: dict[Key, _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._recent: dict[str, dict[str, float]] = {}  # model -> stream -> when it last sent a frame
        self._busy: dict[str, int] = {}  # model -> frames waiting or in flight

    @property
    def enabled(self) -> bool:
        return self._window_s > 0 and self._max_size > 1

    async def classify(
        self, info: ModelInfo, tensor: np.ndarray, top_k: int, *, stream: str
    ) -> Batched[list[ClassScore]]:
        """Top-k of one frame (``[1, C, H, W]``) of ``stream``, sent with the frames that join it."""
        return await self._submit(info, tensor, top_k, stream)

    async def detect(self, info: ModelInfo, tensor: np.ndarray, *, stream: str) -> Batched[Detections]:
        """Detections of one frame (``[1, C, H, W]``) of ``stream``, sent with the frames that join it."""
        return await self._submit(info, tensor, 0, stream)

    async def _submit(self, info: ModelInfo, tensor: np.ndarray, top_k: int, stream: str) -> Batched[Any]:
        if self._stopped:
            raise InferenceUnavailable("the gateway is shutting down")
        if tensor.shape[0] != 1:
            raise ValueError(f"one frame at a time, got a batch of {tensor.shape[0]}")
        loop = asyncio.get_running_loop()
        key: Key = (info.name, info.version, info.task, top_k, tensor.shape[1:], tensor.dtype.str)
        batch = self._open.get(key)
        if batch is None:
            limit = min(self._max_size, info.max_batch_size) if info.max_batch_size > 0 else 1
            batch = self._open[key] = _Batch(info, top_k, max(1, limit))
        waiting = _Waiting(tensor, loop.create_future(), time.perf_counter())
        batch.items.append(waiting)
        model = info.name
        self._busy[model] = self._busy.get(model, 0) + 1
        try:
            everyone_in = self._everyone_in(model, stream, loop.time())
            if not self.enabled or len(batch.items) >= batch.limit:
                self._flush(key)
            elif everyone_in:
                for other in [k for k in self._open if k[0] == model]:
                    self._flush(other)
            elif batch.timer is None:
                batch.timer = loop.call_later(self._window_s, self._flush, key)
            return await waiting.future
        finally:
            self._busy[model] -= 1

    def _everyone_in(self, model: str, stream: str, now: float) -> bool:
        """``stream`` sent ``model`` a frame now: has every stream that did so recently one waiting
        or in flight?"""
        recent = self._recent.setdefault(model, {})
        recent[stream] = now
        if len(recent) > self._busy[model]:  # prune only when it may matter
            for s in [s for s, at in recent.items() if now - at > ACTIVE_S]:
                del recent[s]
        return self._busy[model] >= len(recent)

    def _flush(self, key: Key) -> None:
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        items = [w for w in batch.items if not w.future.done()]  # a stream stopped while it waited
        if not items:
            return
        task = asyncio.create_task(self._send(batch, items), name=f"batch-{batch.info.name}")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Batch, items: list[_Waiting]) -> None:
        info, sent = batch.info, time.perf_counter()
        tensors = np.concatenate([w.tensor for w in items]) if len(items) > 1 else items[0].tensor
        self._on_batch(info.name, len(items))
        try:
            rows: list[Any]
            if info.task == "detection":
                rows, version = await self._client.detect(info, tensors)
            else:
                rows, version = await self._client.classify(info, tensors, batch.top_k)
        except asyncio.CancelledError:
            for w in items:
                if not w.future.done():
                    w.future.set_exception(InferenceUnavailable("the gateway is shutting down"))
            raise
        except Exception as e:  # noqa: BLE001 (re-raised in each frame's stream) each fails as its own call would have
            for w in items:
                if not w.future.done():
                    w.future.set_exception(e)
            return
        call_ms = (time.perf_counter() - sent) * 1000
        for w, row in zip(items, rows, strict=True):
            if not w.future.done():
                w.future.set_result(Batched(row, version, (sent - w.since) * 1000, call_ms, len(items)))

    async def stop(self) -> None:
        """Frames still waiting fail (the gateway is shutting down), batches in flight are
        cancelled; safe to call twice."""
        self._stopped = True
        for key in list(self._open):
            batch = self._open.pop(key)
            if batch.timer is not None:
                batch.timer.cancel()
            for w in batch.items:
                if not w.future.done():
                    w.future.set_exception(InferenceUnavailable("the gateway is shutting down"))
        tasks, self._sending = list(self._sending), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
