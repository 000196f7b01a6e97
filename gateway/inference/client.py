"""The Triton client: the only module that imports tritonclient.

``TritonClient`` owns one ``tritonclient.grpc.aio`` channel for the life of the
app.  Every call has a deadline, and tritonclient's errors become the gateway's
own (``InferenceUnavailable``, ``InferenceTimeout``, ``InferenceFailed``,
``ModelNotFound``), always ``raise ... from``.  Model facts (input name, shape,
dtype, output, labels) are read from Triton's metadata and config, not hard-coded.

The channel's target may name several Tritons (``ipv4:a:8001,b:8001``, or
``dns:///triton-headless:8001``).  gRPC then balances calls round-robin over the
connected ones and skips one it cannot reach; a call that met a Triton going away
(UNAVAILABLE) or lacking the model (NOT_FOUND) is sent again, to the next one; and a
readiness probe asks as many Tritons as the target names, true when any says ready.
A plain ``host:port`` keeps gRPC's default (pick_first) and none of these retries.

An inference can be awaited on the event loop (``classify``, ``detect``: the aio channel) or
made from a worker thread (``classify_blocking``, ``detect_blocking``: a second, sync
channel to the same target).  An upload is decoded, preprocessed and sent from one worker
thread, so its answer comes back to the event loop in one hop, and the loop does none of
gRPC's work (``bench.inference_hop``: 0.6 ms less per request, and 1.6 ms less of the event
loop's CPU).  Both ways share one retry policy (``_Attempts``) and one deadline per try.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from functools import partial
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
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
DNS_ENDPOINTS = 3  # a dns:/// target names an unknown number of Tritons: asked as if it named this many
MAX_ENDPOINT_RETRIES = 3  # an inference sent again on another endpoint at most this often
MIN_ATTEMPT_S = 0.05  # no retry with less of the request's deadline left than this
# A try that met a crashed instance is sent again after a pause, 4 times longer each time (jittered
# by half): while the healthy instances are all busy with other requests, Triton's scheduler gives
# a retry sent at once to the dead one, the only one free.
CRASH_PAUSE_S = 0.025
CRASH_PAUSE_MAX_S = 0.4
FACT_TRIES = 8  # reads of a version's metadata or config, when some Tritons may not serve that version


def endpoints(url: str) -> int:
    """How many Tritons a gRPC target names: the addresses of an ``ipv4:``/``ipv6:`` list,
    ``DNS_ENDPOINTS`` for a ``dns:`` target (its name may resolve to several), else 1
    (``host:port``, ``unix:``: one Triton, even when a name resolves to several addresses)."""
    scheme, sep, rest = url.partition(":")
    if not sep:
        return 1
    if scheme in ("ipv4", "ipv6"):
        return max(1, len([a for a in rest.split(",") if a.strip()]))
    if scheme == "dns":
        return DNS_ENDPOINTS
    return 1


class _Attempts:
    """The retry policy of one inference (see ``TritonClient._infer``), whichever way its tries
    are waited for: ``timeout`` is the next try's deadline; ``after(error)`` is called with the
    error a try met and answers the pause before the next try, or ``None`` when the error stands."""

    def __init__(self, client: TritonClient, name: str, instances: int, clock: Callable[[], float]) -> None:
        self._client, self._clock = client, clock
        self.name, self.what = name, f"inference on {name}"
        self.timeout = self._full = client._settings.request_timeout_s
        self._deadline = clock() + self._full
        self._crash_retries = self._crash_tries = max(3, instances + 1)  # see docs/reliability.md, section 2
        self._endpoint_tries = min(client.endpoints, MAX_ENDPOINT_RETRIES) if client.endpoints > 1 else 0
        self._endpoint_retries = self._endpoint_tries
        self._retired = False

    def after(self, e: Exception) -> float | None:
        pause = 0.0
        if isinstance(e, (InferenceUnavailable, ModelNotFound)):
            if not self._retired and RETIRED_VERSION in e.message and not isinstance(e, InferenceTimeout):
                self._retired, reason = True, "retired_version"
                log.info("%s met a retired version (%s); sending it again", self.what, e)
            elif self._endpoint_retries > 0 and _another_may_serve(e):
                # the first retry at once, the later ones after a pause (gRPC may not have
                # marked the dead Triton yet), jittered so that a burst does not return as one
                done = self._endpoint_tries - self._endpoint_retries
                pause = random.uniform(0.5, 1.0) * 0.05 * done  # noqa: S311
                self._endpoint_retries -= 1
                reason = "endpoint_lacks_model" if isinstance(e, ModelNotFound) else "endpoint_unavailable"
                log.warning("%s; sending it to another Triton", e.message)
            else:
                return None
        elif isinstance(e, InferenceFailed):
            if not CRASHED_INSTANCE.search(e.message):
                return None
            if self._crash_retries == 0:
                raise ModelDegraded(f"model {self.name} is degraded: an instance crashed ({e.message})") from e
            reason = "crashed_instance"
            done = self._crash_tries - self._crash_retries
            pause = min(CRASH_PAUSE_MAX_S, CRASH_PAUSE_S * 4**done) * random.uniform(0.5, 1.0)  # noqa: S311
            self._crash_retries -= 1
            log.warning("%s met a crashed instance (%s); sending it again", self.what, e.message)
        else:
            return None
        self.timeout = self._deadline - self._clock() - pause if reason.startswith("endpoint_") else self._full
        if self.timeout < MIN_ATTEMPT_S:
            return None  # no time left for another try: the refusal stands
        self._client._on_retry(self.name, reason)
        return pause


class TritonClient:
    """Two gRPC channels to Triton (aio for the event loop, sync for worker threads), created in
    the lifespan and closed in reverse order."""

    def __init__(self, settings: TritonSettings, on_retry: RetryHook | None = None) -> None:
        self._settings = settings
        self._client: grpcaio.InferenceServerClient | None = None
        self._sync: grpcclient.InferenceServerClient | None = None
        self._on_retry = on_retry or (lambda model, reason: None)
        self.endpoints = endpoints(settings.url)

    async def start(self) -> None:
        if self._client is not None:
            return
        backoff_ms = int(self._settings.max_reconnect_backoff_s * 1000)
        args = [
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
            # Several Tritons: every call to the next connected one (a dead endpoint is skipped).
            *([("grpc.service_config", ROUND_ROBIN)] if self.endpoints > 1 else []),
        ]
        self._client = grpcaio.InferenceServerClient(self._settings.url, channel_args=args)
        self._sync = grpcclient.InferenceServerClient(self._settings.url, channel_args=args)

    async def stop(self) -> None:
        client, self._client = self._client, None
        sync, self._sync = self._sync, None
        if client is not None:
            await client.close()
        if sync is not None:
            sync.close()

    @property
    def _c(self) -> grpcaio.InferenceServerClient:
        if self._client is None:
            raise InferenceUnavailable("the Triton client is not started")
        return self._client

    @property
    def _s(self) -> grpcclient.InferenceServerClient:
        if self._sync is None:
            raise InferenceUnavailable("the Triton client is not started")
        return self._sync

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
          Each retry waits first (``CRASH_PAUSE_S``, then 4 times as long each time, jittered):
          while the healthy instances are busy, the dead one is the only one free and gets a
          retry sent at once (two retries at once met it three times in a row in a CI run,
          with a 5 fps stream beside).
          If every attempt meets a crash, the model is degraded (``ModelDegraded``, 503);
        - a Triton that cannot serve it (several Tritons only): gRPC answers UNAVAILABLE for a
          call on a connection that was refused or reset (the Triton it went to was killed
          mid-call: "Stream removed (recvmsg:Connection reset by peer)"), and Triton answers
          NOT_FOUND for a model it does not serve (yet); round-robin sends the next try to the
          next Triton.  Up to ``min(endpoints, MAX_ENDPOINT_RETRIES)`` times
          (``endpoint_unavailable``, ``endpoint_lacks_model``), and only within the
          request's deadline (``request_timeout_s`` from the first try): a Triton going
          away does not make a request take longer than one call may.  (The two retries
          above give each try the whole deadline, as before: Triton took up to ~1 s to
          answer "not healthy" with both instances dead.)

        Nothing else is retried: not a deadline spent (DEADLINE_EXCEEDED), not a request Triton
        rejected (INVALID_ARG, INTERNAL), and with one Triton not an UNAVAILABLE or NOT_FOUND
        either (the same Triton would answer).  Each retry is reported to ``on_retry``."""
        tries = _Attempts(self, name, instances, asyncio.get_running_loop().time)
        while True:
            try:
                call = self._c.infer(name, inputs, outputs=outputs, client_timeout=tries.timeout)
                return await self._call(call, tries.what, tries.timeout)
            except (InferenceUnavailable, ModelNotFound, InferenceFailed) as e:
                if (pause := tries.after(e)) is None:
                    raise
            if pause:
                await asyncio.sleep(pause)

    def _infer_blocking(self, name: str, inputs: list[Any], outputs: list[Any], instances: int = 1) -> Any:
        """``_infer`` from a worker thread: the same tries, each a blocking call on the sync channel
        (gRPC ends it at its deadline, so a frozen Triton holds the thread no longer than that)."""
        tries = _Attempts(self, name, instances, time.monotonic)
        while True:
            try:
                try:
                    return self._s.infer(name, inputs, outputs=outputs, client_timeout=tries.timeout)
                except InferenceServerException as e:
                    raise _translate(e, tries.what) from e
            except (InferenceUnavailable, ModelNotFound, InferenceFailed) as e:
                if (pause := tries.after(e)) is None:
                    raise
            if pause:
                time.sleep(pause)

    async def _anywhere(self, probe: Callable[[], Awaitable[bool]]) -> bool:
        """``probe()`` asked of as many Tritons as the target names, at once (round-robin sends
        each call to the next connected one): true as soon as one says true.  One deadline
        for all of them, so a hung Triton does not hide a ready one."""
        if self.endpoints == 1:
            return await probe()
        tasks = [asyncio.ensure_future(probe()) for _ in range(self.endpoints)]
        try:
            for answer in asyncio.as_completed(tasks):
                if await answer:
                    return True
            return False
        finally:
            for task in tasks:
                task.cancel()

    async def server_ready(self) -> bool:
        """Is Triton ready?  With several, is any of them ready (requests that meet one that
        is not are sent to another)."""
        t = self._settings.health_timeout_s

        async def probe() -> bool:
            try:
                return bool(await self._call(self._c.is_server_ready(client_timeout=t), "server ready", t))
            except InferenceUnavailable:
                return False

        return await self._anywhere(probe)

    async def model_ready(self, name: str) -> bool:
        """Is the model ready (on any of the Tritons)?"""
        t = self._settings.health_timeout_s

        async def probe() -> bool:
            try:
                return bool(await self._call(self._c.is_model_ready(name, client_timeout=t), f"{name} ready", t))
            except (InferenceUnavailable, ModelNotFound, InferenceFailed):
                return False

        return await self._anywhere(probe)

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
        meta, cfg = await self._metadata_and_config(name, version)
        version = version or _newest(meta.versions)
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
            "version": version,
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

    async def _metadata_and_config(self, name: str, version: str) -> tuple[Any, Any]:
        """The model's metadata, and the config of the same version (the newest one the metadata
        names, when ``version`` is "").  These are two calls, which may reach two Tritons, or
        straddle a version swap on one:

        - with several Tritons, each call that meets one without the model or that version
          (NOT_FOUND, or UNAVAILABLE) is sent again, up to ``FACT_TRIES`` times in all;
          round-robin moves each try on to the next Triton (metadata then config, asked in
          pairs, would meet the same two Tritons every time);
        - with one, a config that is gone (the version was just retired) is read again
          once, from the metadata up."""
        t = self._settings.request_timeout_s
        what = f"{name} v{version}" if version else name
        tries = min(FACT_TRIES, 2 * self.endpoints) if self.endpoints > 1 else 1
        for swap in (False, True):
            try:
                metadata = partial(self._c.get_model_metadata, name, version, client_timeout=t)
                meta = await self._until_served(metadata, f"metadata of {what}", tries)
            except ModelNotFound as e:
                if version:
                    raise
                served = await self.served_models()
                raise ModelNotFound(f"unknown model {name!r}; Triton serves: {', '.join(served) or 'nothing'}") from e
            newest = version or _newest(meta.versions)
            try:
                config = partial(self._c.get_model_config, name, newest, client_timeout=t)
                return meta, (await self._until_served(config, f"config of {name} v{newest}", tries)).config
            except (ModelNotFound, InferenceUnavailable) as e:
                if swap or version or self.endpoints > 1 or not _another_may_serve(e):
                    raise
                log.debug("config of %s v%s: %s; reading the metadata again", name, newest, e)
        raise AssertionError("unreachable")  # the second pass returns or raises

    async def _until_served(self, call: Callable[[], Awaitable[T]], what: str, tries: int) -> T:
        """``call()`` up to ``tries`` times while it meets a Triton that lacks what it asks for."""
        t = self._settings.request_timeout_s
        for attempt in range(1, tries + 1):
            try:
                return await self._call(call(), what, t)
            except (ModelNotFound, InferenceUnavailable) as e:
                if attempt == tries or not _another_may_serve(e):
                    raise
                log.debug("%s: %s; asking again (%d of %d)", what, e, attempt, tries)
        raise AssertionError("unreachable")  # the last try returns or raises

    async def classify(self, info: ModelInfo, batch: np.ndarray, top_k: int) -> tuple[list[list[ClassScore]], str]:
        """Top-k per image, computed on the server by Triton's classification extension
        (labels included: Triton reads the label file when it loads a version), and the
        version that answered."""
        inputs, outputs = _classify_request(info, batch, top_k)
        return _classes(info, batch, await self._infer(info.name, inputs, outputs, info.instance_count))

    def classify_blocking(self, info: ModelInfo, batch: np.ndarray, top_k: int) -> tuple[list[list[ClassScore]], str]:
        """``classify`` from a worker thread."""
        inputs, outputs = _classify_request(info, batch, top_k)
        return _classes(info, batch, self._infer_blocking(info.name, inputs, outputs, info.instance_count))

    async def detect(self, info: ModelInfo, batch: np.ndarray) -> tuple[list[Detections], str]:
        """Padded detections for a ``[B, 3, H, W]`` uint8 batch, cut to each image's count,
        and the version that answered."""
        inputs, outputs = _detect_request(info, batch)
        return _detections(info, batch, await self._infer(info.name, inputs, outputs, info.instance_count))

    def detect_blocking(self, info: ModelInfo, batch: np.ndarray) -> tuple[list[Detections], str]:
        """``detect`` from a worker thread."""
        inputs, outputs = _detect_request(info, batch)
        return _detections(info, batch, self._infer_blocking(info.name, inputs, outputs, info.instance_count))


def _classify_request(info: ModelInfo, batch: np.ndarray, top_k: int) -> tuple[list[Any], list[Any]]:
    inp = grpcclient.InferInput(info.input_name, list(batch.shape), info.input_datatype)
    inp.set_data_from_numpy(batch)
    return [inp], [grpcclient.InferRequestedOutput(info.output_name, class_count=top_k)]


def _classes(info: ModelInfo, batch: np.ndarray, result: Any) -> tuple[list[list[ClassScore]], str]:
    rows = result.as_numpy(info.output_name)
    if rows is None:
        raise InferenceFailed(f"Triton returned no {info.output_name!r} for {info.name}")
    rows = rows.reshape(batch.shape[0], -1)
    return [[_parse_class(entry) for entry in np.atleast_1d(row)] for row in rows], _version(result)


def _detect_request(info: ModelInfo, batch: np.ndarray) -> tuple[list[Any], list[Any]]:
    inp = grpcclient.InferInput(info.input_name, list(batch.shape), info.input_datatype)
    inp.set_data_from_numpy(batch)
    return [inp], [grpcclient.InferRequestedOutput(n) for n in DETECTION_OUTPUTS]


def _detections(info: ModelInfo, batch: np.ndarray, result: Any) -> tuple[list[Detections], str]:
    arrays = [result.as_numpy(n) for n in DETECTION_OUTPUTS]
    if any(a is None for a in arrays):
        raise InferenceFailed(f"Triton returned no detections for {info.name}")
    boxes, scores, labels, num = arrays
    assert boxes is not None and scores is not None and labels is not None and num is not None
    counts = num.reshape(batch.shape[0])
    found = [
        Detections(boxes[i, : counts[i]], scores[i, : counts[i]], labels[i, : counts[i]]) for i in range(batch.shape[0])
    ]
    return found, _version(result)


def _version(result: Any) -> str:
    return str(result.get_response().model_version)


def _status(e: Exception) -> str:
    """The gRPC status code (``UNAVAILABLE``, ...) behind one of our errors, or "" when it did not
    come from a gRPC answer (a client not started)."""
    cause = e.__cause__
    if isinstance(cause, InferenceServerException):
        return str(cause.status() or "").removeprefix("StatusCode.")
    return ""


def _another_may_serve(e: Exception) -> bool:
    """A refusal that another Triton (or the same one a moment later) may not repeat: a model
    or version it does not serve, or a connection that failed; not a deadline spent."""
    return isinstance(e, ModelNotFound) or (not isinstance(e, InferenceTimeout) and _status(e) == "UNAVAILABLE")


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
