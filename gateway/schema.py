"""The one contract: results, events, stream descriptions and the error body (pydantic).

``POST /predict``, the SSE events, capture metadata, ``/metrics`` and the stream
list all produce and consume these models, and ``/openapi.json`` publishes them;
nothing else in the gateway defines these shapes or parses another module's JSON.

A result has the same fields wherever it travels.  The task-specific result
(``ClassificationResult`` or ``DetectionResult``, told apart by ``task``) is
extended, never wrapped, by what each path adds: ``timings_ms`` for ``/predict``,
the stream, frame and ``latency_ms`` for an SSE ``prediction`` event, and the
stored file and reason for a capture record.  So a client reads a prediction the
same way from ``/predict``, from ``/stream`` and from a capture's ``.json``.

Every number has bounds, so a generated client and the fuzzing in CI know what
is valid.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from gateway.ingest.reader import Clock, DecodeMode, DecodeSetting, StreamState

MAX_SIDE = 65_535  # pixels: the largest side the gateway decodes (JPEG's own limit)
MAX_MS = 3_600_000.0  # one hour, in milliseconds: a bound for every duration reported
MAX_COUNT = 2**63 - 1  # counters
MAX_TIME = 1e11  # Unix seconds (the year 5138): a bound for every timestamp
MAX_S = 1e9  # seconds: a bound for every age and uptime
STREAM_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"  # what Triton accepts as a model directory name


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- results -------------------------------------------------------------------------------------


class ImageSize(Contract):
    """The size of the image the coordinates refer to."""

    width: int = Field(ge=1, le=MAX_SIDE, description="Pixels.")
    height: int = Field(ge=1, le=MAX_SIDE, description="Pixels.")


class ClassScore(Contract):
    index: int = Field(ge=0, le=1_000_000, description="Class index in the model's label file.")
    label: str = Field(max_length=1024, description="Class name.")
    probability: float = Field(ge=0, le=1, description="Softmax probability.")


class Box(Contract):
    x1: float = Field(ge=0, le=MAX_SIDE, description="Left, in pixels of `image`.")
    y1: float = Field(ge=0, le=MAX_SIDE, description="Top, in pixels of `image`.")
    x2: float = Field(ge=0, le=MAX_SIDE, description="Right, in pixels of `image`.")
    y2: float = Field(ge=0, le=MAX_SIDE, description="Bottom, in pixels of `image`.")
    score: float = Field(ge=0, le=1, description="Detection score.")
    label: str = Field(max_length=1024, description="Class name (person unless all_classes).")


class _Result(Contract):
    model: str = Field(max_length=128, description="The Triton model that answered.")
    model_version: str = Field(max_length=32, description="The model version that computed this answer.")
    image: ImageSize = Field(description="The client's image, or the camera's native frame size for streams.")


class ClassificationResult(_Result):
    task: Literal["classification"] = "classification"
    predictions: list[ClassScore] = Field(max_length=1000, description="Top-k classes, most probable first.")


class DetectionResult(_Result):
    task: Literal["detection"] = "detection"
    label: Literal["person", "no_person"] = Field(description="person if any person box scores >= threshold.")
    person_count: int = Field(ge=0, le=100_000, description="Person boxes at or above the threshold.")
    threshold: float = Field(ge=0, le=1, description="The score threshold applied.")
    boxes: list[Box] = Field(max_length=100_000, description="Best first, in the coordinates of `image`.")


Result: TypeAlias = Annotated[ClassificationResult | DetectionResult, Field(discriminator="task")]


# --- POST /predict -------------------------------------------------------------------------------


class Timings(Contract):
    decode: float = Field(ge=0, le=MAX_MS, description="Image decode, ms.")
    preprocess: float = Field(ge=0, le=MAX_MS, description="Resize, crop and layout, ms.")
    inference: float = Field(ge=0, le=MAX_MS, description="Triton round trip, ms.")
    total: float = Field(ge=0, le=MAX_MS, description="From the first byte read to the answer, ms.")


class ClassificationResponse(ClassificationResult):
    timings_ms: Timings


class DetectionResponse(DetectionResult):
    timings_ms: Timings


PredictResponse: TypeAlias = Annotated[ClassificationResponse | DetectionResponse, Field(discriminator="task")]


# --- SSE events ----------------------------------------------------------------------------------


class Latency(Contract):
    wait: float = Field(ge=0, le=MAX_MS, description="From capture to the start of inference, ms.")
    preprocess: float = Field(ge=0, le=MAX_MS, description="Colour conversion, resize and layout, ms.")
    queue: float = Field(
        0.0,
        ge=0,
        le=MAX_MS,
        description="Waiting for a preprocessing thread (preprocess.workers, busy with other frames and uploads) "
        "and for the event loop to take the result, ms.",
    )
    inference: float = Field(ge=0, le=MAX_MS, description="Triton round trip, ms.")
    batch: float = Field(
        0.0,
        ge=0,
        le=MAX_MS,
        description="Waiting for other streams' frames to share the Triton request (ingest.batch_window_ms), ms.",
    )
    total: float = Field(ge=0, le=MAX_MS, description="From the reader taking the frame to the event, ms.")
    age: float | None = Field(
        None,
        ge=0,
        le=MAX_MS,
        description="From the camera capturing the frame (source_at) to the event, ms: the frame's true age, "
        "including the network and the decoder's buffers; null without a source clock.",
    )


class _StreamFrame(Contract):
    stream: str = Field(pattern=STREAM_ID_PATTERN, description="Stream id.")
    frame: int = Field(ge=1, le=MAX_COUNT, description="Sampled-frame index, from 1, per reader.")
    captured_at: float = Field(ge=0, le=MAX_TIME, description="When the reader took the frame, Unix seconds.")
    source_at: float | None = Field(
        None,
        ge=0,
        le=MAX_TIME,
        description="When the camera captured the frame, Unix seconds, from the stream's own timestamps (see clock); "
        "null where the reader has none (the OpenCV reader).",
    )
    clock: Clock = Field(
        "reader",
        description="Where source_at comes from. rtcp: the camera's RTCP sender reports (its own wall clock); pts: "
        "the stream's presentation timestamps, anchored to the earliest arrival (delays inside the gateway "
        "show, the network's do not); reader: no source clock, source_at is null.",
    )
    latency_ms: Latency


class ClassificationEvent(_StreamFrame, ClassificationResult):
    """SSE event ``prediction`` from a classifier stream."""


class DetectionEvent(_StreamFrame, DetectionResult):
    """SSE event ``prediction`` from a detector stream."""


PredictionEvent: TypeAlias = Annotated[ClassificationEvent | DetectionEvent, Field(discriminator="task")]
TritonState: TypeAlias = Literal["available", "unavailable", "degraded"]


SHUTTING_DOWN = "shutting_down"  # the reason of the last status event when the gateway stops
EVENTS_LOST = "events_lost"  # the reason of the status event that announces a gap in a subscriber's events
MOVING = "moving"  # cluster mode: the gateway that ran the stream stopped it; another one takes it over
STREAM_REMOVED = "stream removed"  # the last status event of a stream removed with DELETE /streams/{id}


class StatusEvent(Contract):
    """SSE event ``status``: a state change of the stream's source or of Triton's availability.
    A new subscriber gets the current status first."""

    stream: str = Field(pattern=STREAM_ID_PATTERN, description="Stream id.")
    state: StreamState = Field(description="The source's state.")
    reason: str = Field(
        max_length=4096,
        description="Why, when there is a reason (empty otherwise).  `shutting_down`: the gateway is stopping; "
        "this is the response's last event (reconnect, to another replica if there is one).  `events_lost`: "
        "see lost_events.  `stream removed`: the stream's last event.  `moving` (cluster mode): the gateway that "
        "ran the stream stopped it (it is leaving, or the stream now belongs to another gateway); the response "
        "goes on, and the next run's events follow with a new run in their ids.",
    )
    at: float = Field(ge=0, le=MAX_TIME, description="When, Unix seconds.")
    triton: TritonState = Field(
        description="Whether the stream's inferences succeed: unavailable (Triton down, frozen or timing out), "
        "degraded (a model instance crashed and the retry failed too)."
    )
    lost_events: int | None = Field(
        None,
        ge=0,
        le=MAX_COUNT,
        description="Only with reason `events_lost`, sent to one subscriber: how many of the stream's events after "
        "its position it will never get (its Last-Event-ID is older than the resume ring, or it read too slowly); "
        "null when that cannot be known (an id from a run of the stream this gateway does not remember).",
    )


StreamEvent: TypeAlias = PredictionEvent | StatusEvent


def event_type(event: StreamEvent) -> Literal["prediction", "status"]:
    """The SSE ``event:`` name of an event."""
    return "status" if isinstance(event, StatusEvent) else "prediction"


# --- capture -------------------------------------------------------------------------------------


class CapturedFile(Contract):
    name: str = Field(max_length=255, description="The JPEG beside this record (the frame as ingest sized it).")
    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)


CaptureReason: TypeAlias = Literal["every_nth", "person", "low_confidence"]


class _Captured(Contract):
    capture_reason: CaptureReason = Field(description="The capture policy that matched.")
    file: CapturedFile


class ClassificationCapture(_Captured, ClassificationEvent):
    """A capture record: the prediction event of the frame, and where its JPEG is."""


class DetectionCapture(_Captured, DetectionEvent):
    """A capture record: the prediction event of the frame, and where its JPEG is."""


CaptureRecord: TypeAlias = Annotated[ClassificationCapture | DetectionCapture, Field(discriminator="task")]


# --- one result, extended per path ---------------------------------------------------------------


def predict_response(result: ClassificationResult | DetectionResult, timings: Timings) -> PredictResponse:
    if isinstance(result, DetectionResult):
        return DetectionResponse(**_fields(result), timings_ms=timings)
    return ClassificationResponse(**_fields(result), timings_ms=timings)


def prediction_event(
    result: ClassificationResult | DetectionResult,
    *,
    stream: str,
    frame: int,
    captured_at: float,
    latency: Latency,
    source_at: float | None = None,
    clock: Clock = "reader",
) -> PredictionEvent:
    extra = {
        "stream": stream,
        "frame": frame,
        "captured_at": captured_at,
        "source_at": source_at,
        "clock": clock,
        "latency_ms": latency,
    }
    if isinstance(result, DetectionResult):
        return DetectionEvent(**_fields(result), **extra)
    return ClassificationEvent(**_fields(result), **extra)


def capture_record(
    event: ClassificationEvent | DetectionEvent, reason: CaptureReason, file: CapturedFile
) -> CaptureRecord:
    if isinstance(event, DetectionEvent):
        return DetectionCapture(**_fields(event), capture_reason=reason, file=file)
    return ClassificationCapture(**_fields(event), capture_reason=reason, file=file)


def _fields(model: BaseModel) -> dict[str, object]:
    """A model's fields as they are (validated objects, not serialized), to build a subclass."""
    return {name: getattr(model, name) for name in type(model).model_fields}


# --- streams -------------------------------------------------------------------------------------


class StreamInfo(Contract):
    """One stream: its source, state and counters (``GET /streams``; ``/metrics`` reads the same)."""

    id: str = Field(pattern=STREAM_ID_PATTERN)
    url: str = Field(max_length=4096, description="The source, password replaced by ***.")
    model: str = Field(max_length=128, description="The Triton model the stream uses.")
    state: StreamState
    sample_fps: float = Field(gt=0, le=120, description="Frames per second sampled for inference.")
    measured_fps: float = Field(ge=0, le=100_000, description="Sampled frames per second, measured.")
    last_frame_age_s: float | None = Field(
        ge=0, le=MAX_S, description="Seconds since the source last delivered a frame (null before the first)."
    )
    reconnects: int = Field(ge=0, le=MAX_COUNT, description="Times the source was opened again.")
    stalls: int = Field(ge=0, le=MAX_COUNT, description="Times the source stopped delivering frames without closing.")
    decode_errors: int = Field(ge=0, le=MAX_COUNT, description="Frames the decoder failed to deliver.")
    frames_read: int = Field(ge=0, le=MAX_COUNT, description="Frames the source delivered, decoded or not.")
    frames_decoded: int = Field(
        0, ge=0, le=MAX_COUNT, description="Frames the decoder produced (few of those read in keyframe mode)."
    )
    frames_sampled: int = Field(ge=0, le=MAX_COUNT, description="Frames sampled for inference.")
    frames_skipped: int = Field(
        ge=0, le=MAX_COUNT, description="Frames read but not sampled (above sample_fps), decoded or not."
    )
    backend: Literal["pyav", "opencv"] = Field("pyav", description="The reader (ingest.backend).")
    decode: DecodeMode | None = Field(
        None,
        description="What the reader decodes now: keyframes (only those nearest the samples; sample_fps is at or "
        "below the keyframe rate) or all frames; null until it knows.",
    )
    decode_setting: DecodeSetting = Field(
        "auto", description="The stream's decode setting: auto chooses from the measured keyframe interval."
    )
    keyframe_interval_s: float | None = Field(
        None, ge=0, le=MAX_S, description="The keyframe interval measured from the stream (null until two are seen)."
    )
    decode_switches: int = Field(0, ge=0, le=MAX_COUNT, description="Times the decode mode changed after the first.")
    clock: Clock = Field("reader", description="Where the last frame's capture time came from (see PredictionEvent).")
    hwaccel: str | None = Field(
        None, max_length=32, description="The hardware decoder in use (ingest.hwaccel), null for software."
    )
    last_error: str | None = Field(
        None,
        max_length=1000,
        description="Why the source last failed: the reader's reason and, where it gave one, FFmpeg's message "
        "(credentials masked); null until it has failed.  It stays after the stream recovers.",
    )
    codec: str | None = Field(
        None,
        max_length=32,
        description="The video codec, by FFmpeg's name (h264, hevc, mjpeg, ...); null until the source is opened.",
    )
    naps: int = Field(
        0,
        ge=0,
        le=MAX_COUNT,
        description="Keyframe mode, RTSP over TCP: times the reader slept until just before the next keyframe (the "
        "frames in between read in one burst after; ingest.burst_kib).",
    )
    napped_s: float = Field(0.0, ge=0, le=MAX_S, description="Seconds the reader spent in those sleeps, in all.")
    frames_dropped: int = Field(ge=0, le=MAX_COUNT, description="Sampled frames replaced by a newer one, unseen.")
    inferences: int = Field(ge=0, le=MAX_COUNT, description="Inferences started.")
    predictions: int = Field(ge=0, le=MAX_COUNT, description="Prediction events published.")
    inference_errors: int = Field(ge=0, le=MAX_COUNT, description="Inferences that failed.")
    subscribers: int = Field(ge=0, le=MAX_COUNT, description="SSE subscribers connected now.")
    events_dropped: int = Field(
        ge=0, le=MAX_COUNT, description="Events slow subscribers lost (oldest first) because their queue was full."
    )
    transitions: dict[StreamState, Annotated[int, Field(ge=0, le=MAX_COUNT)]] = Field(
        description="State changes of the source, by the state entered."
    )
    triton: TritonState
    frames_encoded: int = Field(
        0, ge=0, le=MAX_COUNT, description="JPEGs encoded for GET /streams/{id}/frame.jpg (at most one per interval)."
    )
    last_event_id: str | None = Field(
        None, max_length=64, description="The id of the stream's latest SSE event ('<run>-<seq>'), if any."
    )
    owner: str | None = Field(
        None,
        max_length=128,
        description="Cluster mode: the id of the gateway that runs the stream (null while none does, e.g. during a "
        "takeover).  Null for a gateway on its own.",
    )


class StreamHealth(Contract):
    healthy: bool = Field(description="Every configured stream is running.")
    streams: dict[str, StreamInfo]


class StreamCreate(Contract):
    """A stream added at runtime: an RTSP URL allowed by ``stream_policy``."""

    id: str = Field(pattern=STREAM_ID_PATTERN, description="Stream id, used in URLs.")
    url: str = Field(min_length=1, max_length=4096, description="rtsp:// or rtsps:// URL on an allowed host.")
    sample_fps: float | None = Field(
        None, ge=0.01, le=120, description="Frames per second sampled (default: frame_sample_fps)."
    )
    width: int | None = Field(None, ge=16, le=7680, description="Frame width after ingest (default: frame_width).")
    height: int | None = Field(None, ge=16, le=4320, description="Frame height after ingest (default: frame_height).")
    model: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="Triton model for this stream (default: model)."
    )
    decode: DecodeSetting | None = Field(
        None,
        description="keyframes, all, or auto: chosen from the measured keyframe interval (default: ingest.decode).",
    )


# --- auth ----------------------------------------------------------------------------------------


class SseToken(Contract):
    """A short-lived token for ``?token=`` on the SSE routes, which ``EventSource`` cannot send headers to."""

    token: str = Field(min_length=1, max_length=256, description="Signed; send it as ?token= on an SSE route.")
    expires_at: int = Field(ge=0, le=int(MAX_TIME), description="Unix seconds: refused from then on.")
    stream: str | None = Field(
        None, pattern=STREAM_ID_PATTERN, description="The one stream whose events it opens; null: every stream."
    )


# --- health --------------------------------------------------------------------------------------


ClusterState: TypeAlias = Literal["joining", "active", "redis_down", "stopped"]


class ClusterHealth(Contract):
    """Cluster mode: this gateway's place in the cluster."""

    node_id: str = Field(max_length=128, description="This gateway's id (cluster.node_id).")
    state: ClusterState = Field(
        description="joining: not yet heard from Redis; active: in the cluster; redis_down: Redis does not answer "
        "(streams this gateway runs keep running and serving its own subscribers, registry changes answer 503); "
        "stopped: leaving."
    )
    members: list[str] = Field(max_length=100_000, description="Live gateways, as last read from Redis.")
    streams: int = Field(ge=0, le=MAX_COUNT, description="Streams registered in the cluster, as last read.")
    owned: int = Field(ge=0, le=MAX_COUNT, description="Streams this gateway runs.")
    redis_down_s: float | None = Field(
        None, ge=0, le=MAX_S, description="Seconds since Redis last answered, while it does not."
    )
    settling_s: float | None = Field(
        None,
        ge=0,
        le=MAX_S,
        description="Seconds left of the settling after joining, or after Redis answered again: meanwhile this "
        "gateway keeps the streams it runs and takes no other over (the member list may still lack gateways that "
        "have not heartbeated yet).  Null once settled.",
    )


class Ownership(Contract):
    """One run of a stream on this gateway: from just before its reader started to just after it stopped."""

    stream: str = Field(pattern=STREAM_ID_PATTERN)
    started_at: float = Field(ge=0, le=MAX_TIME, description="Unix seconds.")
    stopped_at: float | None = Field(None, ge=0, le=MAX_TIME, description="Unix seconds; null while it runs.")


class ClusterStatus(ClusterHealth):
    """``GET /cluster``: this gateway's view of the cluster, and the streams it ran (newest last)."""

    running: list[str] = Field(max_length=100_000, description="Streams this gateway runs now.")
    history: list[Ownership] = Field(
        max_length=100_000, description="This gateway's recent stream runs (bounded), for audits of ownership."
    )


class Liveness(Contract):
    status: Literal["ok"] = "ok"
    uptime_s: float = Field(ge=0, le=MAX_S, description="Seconds since the gateway started.")
    cluster: ClusterHealth | None = Field(None, description="Cluster mode only.")


class TritonReadiness(Contract):
    ready: bool
    url: str = Field(max_length=4096)


class ModelReadiness(Contract):
    ready: bool
    version: str | None = Field(None, max_length=32)
    input: str | None = Field(None, max_length=256, description="Input datatype and shape, e.g. UINT8[3, 224, 224].")
    instances: list[str] | None = Field(None, description="Instance kinds (CPU, GPU).")
    warning: str | None = Field(None, max_length=4096)
    error: str | None = Field(None, max_length=4096)


class Components(Contract):
    triton: TritonReadiness
    models: dict[str, ModelReadiness]
    cluster: ClusterHealth | None = Field(
        None,
        description="Cluster mode only.  Redis being down does not make the gateway unready: /predict and the "
        "streams it runs still work.",
    )


class Readiness(Contract):
    ready: bool = Field(description="Triton and every configured model are ready, and the gateway is not stopping.")
    shutting_down: bool = Field(False, description="The gateway was asked to stop (SIGTERM): it drains, then exits.")
    components: Components


# --- errors --------------------------------------------------------------------------------------


class ErrorDetail(Contract):
    code: str = Field(max_length=64, description="Stable, machine-readable: bad_image, model_not_found, ...")
    message: str = Field(max_length=65_536, description="For people: what was wrong and what to do.")


class ErrorBody(Contract):
    """Every error answer."""

    error: ErrorDetail
