"""The Triton client: the only module that imports tritonclient.

``TritonClient`` owns one ``tritonclient.grpc.aio`` channel for the life of the
app.  Every call has a deadline, and tritonclient's errors become the gateway's
own (``InferenceUnavailable``, ``InferenceTimeout``, ``InferenceFailed``,
``ModelNotFound``), always ``raise ... from``.  Model facts (input name, shape,
dtype, output, labels) are read from Triton's metadata and config, not hard-coded.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from gateway.config import TritonSettings
from gateway.errors import InferenceFailed, InferenceTimeout, InferenceUnavailable, ModelDegraded, ModelNotFound
from gateway.inference.model import DATATYPES, Detections, ModelInfo
from gateway.schema import ClassScore

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBABILITIES = "probabilities"
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
LABELS_PARAMETER = "class_labels"  # written into the detector's config by `python -m export`
RETIRED_VERSION = "is not at ready state"  # Triton's words for a version being unloaded
# Triton's words for a crashed model instance: the python backend's stub died or is being restarted
# ("Stub process 'm_0_1' is not healthy.", "Failed to restart the stub process", ...).
CRASHED_INSTANCE = re.compile(r"stub process .* is not healthy|restart(ing)? the stub|stub .*(crash|restart)", re.I)
RetryHook = Callable[[str, str], None]  # (model, reason): counted by the caller


class TritonClient:
    """One gRPC channel to Triton, created in the lifespan and closed in reverse order."""

    def __init__(self, settings: TritonSettings, on_retry: RetryHook | None = None) -> None:
        self._settings = settings
        self._client: grpcaio.InferenceServerClient | None = None
        self._on_retry = on_retry or (lambda model, reason: None)

    async def start(self) -> None:
        if self._client is not None:
            return
        backoff_ms = int(self._settings.max_reconnect_backoff_s * 1000)
        self._client = grpcaio.InferenceServerClient(
            self._settings.url,
            channel_args=[
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                # Ping only while calls are in flight: Triton (like any gRPC server by default)
                # answers pings on an idle connection with GOAWAY "too_many_pings".
                ("grpc.keepalive_permit_without_calls", 0),
                ("grpc.http2.max_pings_without_data", 0),
                # Reconnect quickly once Triton is back (gRPC's default backoff grows to 120 s).
                ("grpc.initial_reconnect_backoff_ms", min(100, backoff_ms)),
                ("grpc.min_reconnect_backoff_ms", min(100, backoff_ms)),
                ("grpc.max_reconnect_backoff_ms", backoff_ms),
            ],
        )

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    @property
    def _c(self) -> grpcaio.InferenceServerClient:
        if self._client is None:
            raise InferenceUnavailable("the Triton client is not started")
        return self._client

    async def _call(self, call: Awaitable[T], what: str, timeout: float) -> T:
        try:
            # gRPC enforces client_timeout; wait_for is the backstop for a wedged channel.
            return await asyncio.wait_for(call, timeout + 0.5)
        except TimeoutError as e:
            raise InferenceTimeout(f"Triton did not answer {what} within {timeout:g}s") from e
        except InferenceServerException as e:
            raise _translate(e, what) from e

    async def _infer(self, name: str, inputs: list[Any], outputs: list[Any], instances: int = 1) -> Any:
        """One inference, sent again when it met a transient refusal:

        - a version being retired: while Triton swaps model versions (explicit load of a
          new version), a request routed to the old version just as it is unloaded is
          refused with UNAVAILABLE "version N is not at ready state" before it ran (seen
          once in ~5 switches at ~500 requests/s); sent again, it reaches the new version;
        - a crashed instance: Triton answers INTERNAL "Stub process ... is not healthy"
          for every request its scheduler gives the dead instance until it restarts it
          (tens of seconds).  The request is sent again up to ``instances`` times (at least
          twice): Triton's scheduler spreads requests over the instances, so a retry lands
          on a healthy one even when other clients' requests take turns in between (one
          retry alone lost 1 request in 40 with a stream running beside, and (instances - 1)
          retries let a 5 fps stream meet the dead one on every try in 1 of 4 CI runs).
          If every attempt meets a crash, the model is degraded (``ModelDegraded``, 503).

        Nothing else is retried, and each retry is reported to ``on_retry``."""
        t = self._settings.request_timeout_s
        what = f"inference on {name}"
        crash_retries = max(2, instances)
        retired = False
        while True:
            try:
                return await self._call(self._c.infer(name, inputs, outputs=outputs, client_timeout=t), what, t)
            except InferenceUnavailable as e:
                if retired or RETIRED_VERSION not in str(e) or isinstance(e, InferenceTimeout):
                    raise
                retired = True
                log.info("%s met a retired version (%s); sending it again", what, e)
                self._on_retry(name, "retired_version")
            except InferenceFailed as e:
                if not CRASHED_INSTANCE.search(e.message):
                    raise
                if crash_retries == 0:
                    raise ModelDegraded(f"model {name} is degraded: an instance crashed ({e.message})") from e
                crash_retries -= 1
                log.warning("%s met a crashed instance (%s); sending it again", what, e.message)
                self._on_retry(name, "crashed_instance")

    async def server_ready(self) -> bool:
        t = self._settings.health_timeout_s
        try:
            return bool(await self._call(self._c.is_server_ready(client_timeout=t), "server ready", t))
        except InferenceUnavailable:
            return False

    async def model_ready(self, name: str) -> bool:
        t = self._settings.health_timeout_s
        try:
            return bool(await self._call(self._c.is_model_ready(name, client_timeout=t), f"{name} ready", t))
        except (InferenceUnavailable, ModelNotFound, InferenceFailed):
            return False

    async def wait_ready(self, names: list[str], timeout: float) -> bool:
        """Poll until the server and every model are ready, or ``timeout`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if await self.server_ready() and all([await self.model_ready(n) for n in names]):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))

    async def served_models(self) -> list[str]:
        """Names of the ready models (for error messages); empty if Triton cannot say."""
        t = self._settings.health_timeout_s
        try:
            index = await self._call(self._c.get_model_repository_index(client_timeout=t), "model index", t)
        except (InferenceUnavailable, InferenceTimeout, InferenceFailed, ModelNotFound):
            return []
        return sorted({m.name for m in index.models if m.state == "READY"})

    async def model_info(self, name: str, version: str = "") -> ModelInfo:
        """Facts of ``version`` (default: the newest loaded) of model ``name``."""
        t = self._settings.request_timeout_s
        what = f"{name} v{version}" if version else name
        try:
            meta = await self._call(
                self._c.get_model_metadata(name, version, client_timeout=t), f"metadata of {what}", t
            )
        except ModelNotFound as e:
            if version:
                raise
            served = await self.served_models()
            raise ModelNotFound(f"unknown model {name!r}; Triton serves: {', '.join(served) or 'nothing'}") from e
        cfg = (
            await self._call(self._c.get_model_config(name, version, client_timeout=t), f"config of {what}", t)
        ).config
        if len(meta.inputs) != 1:
            raise InferenceFailed(f"model {name} has {len(meta.inputs)} inputs; a classifier takes one image tensor")
        inp = meta.inputs[0]
        shape = tuple(int(d) for d in inp.shape)
        if cfg.max_batch_size > 0:
            shape = shape[1:]  # drop the batch axis (-1)
        outputs = {o.name: o for o in meta.outputs}
        kinds = tuple(
            grpcclient.model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind).removeprefix("KIND_")
            for g in cfg.instance_group
        )
        detector = all(n in outputs for n in DETECTION_OUTPUTS)
        instance_count = max(1, sum(int(g.count) or 1 for g in cfg.instance_group))
        if (
            len(shape) != 3
            or shape[0] != 3
            or inp.datatype not in DATATYPES
            or (min(shape[1:]) <= 0 and not (detector and shape[1] == shape[2] == -1))
        ):
            raise InferenceFailed(
                f"model {name}: input {inp.name} {inp.datatype}{list(inp.shape)} is not [3,H,W] image"
            )
        common = {
            "name": name,
            "version": version or _newest(meta.versions),
            "input_name": inp.name,
            "input_datatype": inp.datatype,
            "input_shape": (shape[0], shape[1], shape[2]),
            "max_batch_size": int(cfg.max_batch_size),
            "instance_kinds": kinds,
            "instance_count": instance_count,
        }
        if detector:
            param = cfg.parameters.get(LABELS_PARAMETER)
            if param is None or not param.string_value:
                raise InferenceFailed(f"detector {name}: no {LABELS_PARAMETER!r} parameter in its config")
            names = tuple(param.string_value.split(","))
            if inp.datatype != "UINT8":
                raise InferenceFailed(f"detector {name}: input must be UINT8, got {inp.datatype}")
            return ModelInfo(task="detection", output_name="", num_classes=len(names), class_names=names, **common)
        if PROBABILITIES not in outputs:
            raise InferenceFailed(
                f"model {name} is neither a classifier (a {PROBABILITIES!r} output) nor a detector "
                f"({', '.join(DETECTION_OUTPUTS)}); outputs: {sorted(outputs)}"
            )
        labelled = {o.name for o in cfg.output if o.label_filename}
        if PROBABILITIES not in labelled:
            raise InferenceFailed(f"model {name}: output {PROBABILITIES!r} has no label_filename in its config")
        return ModelInfo(
            task="classification",
            output_name=PROBABILITIES,
            num_classes=int(outputs[PROBABILITIES].shape[-1]),
            **common,
        )

    async def classify(self, info: ModelInfo, batch: np.ndarray, top_k: int) -> tuple[list[list[ClassScore]], str]:
        """Top-k per image, computed on the server by Triton's classification extension
        (labels included: Triton reads the label file when it loads a version), and the
        version that answered."""
        inp = grpcclient.InferInput(info.input_name, list(batch.shape), info.input_datatype)
        inp.set_data_from_numpy(batch)
        out = grpcclient.InferRequestedOutput(info.output_name, class_count=top_k)
        result = await self._infer(info.name, [inp], [out], info.instance_count)
        rows = result.as_numpy(info.output_name)
        if rows is None:
            raise InferenceFailed(f"Triton returned no {info.output_name!r} for {info.name}")
        rows = rows.reshape(batch.shape[0], -1)
        return [[_parse_class(entry) for entry in np.atleast_1d(row)] for row in rows], _version(result)

    async def detect(self, info: ModelInfo, batch: np.ndarray) -> tuple[list[Detections], str]:
        """Padded detections for a ``[B, 3, H, W]`` uint8 batch, cut to each image's count,
        and the version that answered."""
        inp = grpcclient.InferInput(info.input_name, list(batch.shape), info.input_datatype)
        inp.set_data_from_numpy(batch)
        outs = [grpcclient.InferRequestedOutput(n) for n in DETECTION_OUTPUTS]
        result = await self._infer(info.name, [inp], outs, info.instance_count)
        arrays = [result.as_numpy(n) for n in DETECTION_OUTPUTS]
        if any(a is None for a in arrays):
            raise InferenceFailed(f"Triton returned no detections for {info.name}")
        boxes, scores, labels, num = arrays
        assert boxes is not None and scores is not None and labels is not None and num is not None
        counts = num.reshape(batch.shape[0])
        found = [
            Detections(boxes[i, : counts[i]], scores[i, : counts[i]], labels[i, : counts[i]])
            for i in range(batch.shape[0])
        ]
        return found, _version(result)


def _version(result: Any) -> str:
    return str(result.get_response().model_version)


def _newest(versions: Any) -> str:
    """The highest of Triton's version strings (numbers, listed in no promised order)."""
    listed = [str(v) for v in versions]
    return max(listed, key=lambda v: (len(v), v)) if listed else ""


def _parse_class(entry: Any) -> ClassScore:
    """Triton's classification extension answers ``value:index[:label]`` per class."""
    text = entry.decode() if isinstance(entry, bytes) else str(entry)
    value, index, *label = text.split(":", 2)
    probability = min(1.0, max(0.0, float(value)))  # printed with rounding; the contract says [0, 1]
    return ClassScore(index=int(index), label=label[0] if label else index, probability=probability)


def _translate(e: InferenceServerException, what: str) -> Exception:
    status = str(e.status() or "")
    message = str(e.message() or e)
    if "DEADLINE_EXCEEDED" in status:
        return InferenceTimeout(f"Triton did not answer {what} in time")
    if "UNAVAILABLE" in status or not status:
        return InferenceUnavailable(f"Triton is unavailable ({what}): {message}")
    if "NOT_FOUND" in status:
        return ModelNotFound(f"{what}: {message}")
    return InferenceFailed(f"Triton failed {what}: {message}")
