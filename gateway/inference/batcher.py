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
has waited the window, or as soon as no other frame is expected to join it.  A stream
has one frame in inference at a time, and sends them at its own pace: a stream whose
frame is waiting or in flight cannot join, nor can one whose next frame (its last one
plus the gap before it) is not due before the window ends.  So one camera, or a fast
one beside slow ones, never waits for frames that cannot come: a single 50 fps stream
held for the window would lose half its rate.  A stream seen only once may join for
``ACTIVE_S`` seconds; one not seen for that long is forgotten.

A request that fails fails each of its frames with its error (the client retries it as
one request: ``streamml_inference_retries`` counts requests, ``streamml_inference_errors``
frames), except a refusal (``InferenceFailed``: one frame's content, or a new version that
takes smaller batches), after which each frame is sent alone, so that none fails that
would have passed alone.  A frame whose stream stopped while it waited is left out, or
its answer dropped.  Requests in flight are not limited here: each waits at most the
request deadline, and the frames come from a bounded set of streams, one frame in flight
per stream.
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

from gateway.errors import InferenceFailed, InferenceUnavailable
from gateway.inference.client import TritonClient
from gateway.inference.model import Detections, ModelInfo
from gateway.schema import ClassScore

log = logging.getLogger(__name__)
R = TypeVar("R")
ACTIVE_S = 5.0  # a stream not seen for this long is forgotten
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
    deadline: float  # loop time: sent then at the latest
    items: list[_Waiting] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Seen:
    """A stream's frames for one key: when it last sent one, the gap before it, and whether it
    has one waiting or in flight."""

    at: float
    gap: float | None = None
    busy: int = 0


Key = tuple[str, str, str, int, tuple[int, ...], str]


class FrameBatcher:
    """Created in the lifespan after the client, stopped before it."""

    def __init__(self, client: TritonClient, window_ms: float, max_size: int, on_batch: SizeHook | None = None) -> None:
        self._client = client
        self._window_s = window_ms / 1000
        self._max_size = max_size
        self._on_batch = on_batch or (lambda model, size: None)
        self._open: dict[Key, _Batch] = {}
        self._sending: dict[asyncio.Task[None], list[_Waiting]] = {}
        self._seen: dict[Key, dict[str, _Seen]] = {}
        self._stopped = False

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
        now = loop.time()
        key: Key = (info.name, info.version, info.task, top_k, tensor.shape[1:], tensor.dtype.str)
        batch = self._open.get(key)
        if batch is None:
            limit = min(self._max_size, info.max_batch_size) if info.max_batch_size > 0 else 1
            batch = self._open[key] = _Batch(info, top_k, max(1, limit), now + self._window_s)
        waiting = _Waiting(tensor, loop.create_future(), time.perf_counter())
        batch.items.append(waiting)
        seen = self._arrived(key, stream, now)
        try:
            if not self.enabled or len(batch.items) >= batch.limit or not self._may_join(key, batch, now):
                self._flush(key)
            elif batch.timer is None:
                batch.timer = loop.call_at(batch.deadline, self._flush, key)
            return await waiting.future
        finally:
            seen.busy -= 1

    def _arrived(self, key: Key, stream: str, now: float) -> _Seen:
        streams = self._seen.setdefault(key, {})
        seen = streams.get(stream)
        if seen is None:
            seen = streams[stream] = _Seen(now)
            if len(streams) > 1:  # forget streams gone quiet (stopped, moved to another version or size)
                for s in [s for s, x in streams.items() if not x.busy and now - x.at > ACTIVE_S]:
                    del streams[s]
            if len(self._seen) > 1:
                for k in [
                    k for k, v in self._seen.items() if k != key and all(now - x.at > ACTIVE_S for x in v.values())
                ]:
                    del self._seen[k]
        else:
            seen.gap, seen.at = now - seen.at, now
        seen.busy += 1
        return seen

    def _may_join(self, key: Key, batch: _Batch, now: float) -> bool:
        """May another stream's frame join ``batch`` before it is due?  A stream with a frame
        waiting or in flight cannot; one seen once may, for ``ACTIVE_S``; any other when its next
        frame is due before the batch (with half a window's slack) and not overdue by more than
        its gap and a window (it stopped)."""
        slack = self._window_s / 2
        for seen in self._seen.get(key, {}).values():
            if seen.busy:
                continue
            if seen.gap is None:
                if now - seen.at <= ACTIVE_S:
                    return True
                continue
            due = seen.at + seen.gap
            if due <= batch.deadline + slack and now - due <= seen.gap + self._window_s:
                return True
        return False

    def _flush(self, key: Key) -> None:
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        items = [w for w in batch.items if not w.future.done()]  # a stream stopped while it waited
        if items:
            self._start(batch, items)

    def _start(self, batch: _Batch, items: list[_Waiting]) -> None:
        task = asyncio.create_task(self._send(batch, items), name=f"batch-{batch.info.name}")
        self._sending[task] = items
        task.add_done_callback(lambda t: self._sending.pop(t, None))

    async def _send(self, batch: _Batch, items: list[_Waiting]) -> None:
        info, sent = batch.info, time.perf_counter()
        try:
            self._on_batch(info.name, len(items))
            tensors = np.concatenate([w.tensor for w in items]) if len(items) > 1 else items[0].tensor
            rows: list[Any]
            if info.task == "detection":
                rows, version = await self._client.detect(info, tensors)
            else:
                rows, version = await self._client.classify(info, tensors, batch.top_k)
        except asyncio.CancelledError:
            _fail(items, InferenceUnavailable("the gateway is shutting down"))
            raise
        except InferenceFailed as e:
            if len(items) == 1:
                _fail(items, e)
                return
            # Triton refused the request (one frame's content, or a new version that takes smaller
            # batches): each frame goes alone, so none fails that would have passed alone
            log.warning("%s refused a batch of %d frames (%s); sending them one by one", info.name, len(items), e)
            for w in items:
                self._start(batch, [w])
            return
        except Exception as e:  # noqa: BLE001 (re-raised in each frame's stream) each fails as its own call would have
            _fail(items, e)
            return
        call_ms = (time.perf_counter() - sent) * 1000
        for w, row in zip(items, rows, strict=True):
            if not w.future.done():
                w.future.set_result(Batched(row, version, (sent - w.since) * 1000, call_ms, len(items)))

    async def stop(self) -> None:
        """Frames still waiting or in flight fail (the gateway is shutting down), and requests in
        flight are cancelled; safe to call twice."""
        self._stopped = True
        shutting_down = InferenceUnavailable("the gateway is shutting down")
        for key in list(self._open):
            batch = self._open.pop(key)
            if batch.timer is not None:
                batch.timer.cancel()
            _fail(batch.items, shutting_down)
        sending, self._sending = dict(self._sending), {}
        for task in sending:
            task.cancel()
        for task, items in sending.items():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            _fail(items, shutting_down)  # a task cancelled before it started


def _fail(items: list[_Waiting], error: BaseException) -> None:
    for w in items:
        if not w.future.done():
            w.future.set_exception(error)
