"""Observability: the Prometheus registry behind ``GET /metrics`` and CloudWatch EMF lines.

``Metrics`` owns one ``CollectorRegistry`` per app (no module-level globals), created
in the lifespan.  Event metrics (inference latency, frame age, errors, ``/predict``
latency) are recorded where they happen; per-stream counters that ingest already
keeps (frames read, sampled, dropped, reconnects, fps, subscribers) are read from
the stream workers at scrape time, so nothing is counted twice.

``EmfWindow`` collects one stream's predictions and, every ``log_every`` of them,
returns JSON lines in CloudWatch Embedded Metric Format, with latencies and frame
ages as arrays of values (CloudWatch computes percentiles from them): CloudWatch
Logs turns such lines into metrics with no agent.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.capture import CaptureStats
from gateway.config import MetricsSettings
from gateway.ingest.reader import StreamState
from gateway.schema import StreamInfo

PREFIX = "streamml"
# Fine between 5 and 100 ms, where a CPU or GPU classifier lives and a p95 has to be
# told apart (the capture benchmark's arms differ by a few ms there); coarse above.
LATENCY_BUCKETS = (
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
AGE_BUCKETS = (0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StreamCollector(Collector):
    """Ingest's and the streams' own counters, read from ``StreamInfo`` when Prometheus scrapes."""

    COUNTERS: ClassVar[dict[str, str]] = {  # StreamInfo field -> help
        "frames_read": "Frames the source delivered, decoded or not.",
        "frames_decoded": "Frames decoded (keyframe mode decodes few of those read).",
        "decode_switches": "Times the reader switched between keyframes-only and all-frame decoding.",
        "frames_sampled": "Frames sampled for inference.",
        "frames_skipped": "Frames read but not sampled (above sample_fps).",
        "frames_dropped": "Sampled frames replaced by a newer one before inference.",
        "reconnects": "Source reconnects.",
        "stalls": "Times the source stopped delivering frames without closing (watchdog or read timeout).",
        "decode_errors": "Frames the decoder failed to deliver.",
        "inferences": "Stream inferences started.",
        "predictions": "Prediction events published.",
        "events_dropped": "Events slow SSE subscribers lost because their queue was full (oldest first).",
        "frames_encoded": "JPEGs encoded for the viewer's frame.jpg (at most one per viewer.frame_interval_s).",
        "naps": "Keyframe mode, RTSP over TCP: the reader's sleeps until just before the next keyframe.",
    }

    def __init__(self, streams: Callable[[], Iterable[StreamInfo]]) -> None:
        self._streams = streams

    def collect(self) -> Iterator[Metric]:
        labels = ["stream", "model"]
        counters = {
            name: CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels) for name, doc in self.COUNTERS.items()
        }
        transitions = CounterMetricFamily(
            f"{PREFIX}_stream_transitions", "Source state changes, by the state entered.", labels=[*labels, "state"]
        )
        fps = GaugeMetricFamily(f"{PREFIX}_stream_fps", "Achieved sampled frames per second.", labels=labels)
        subs = GaugeMetricFamily(f"{PREFIX}_sse_subscribers", "Connected SSE subscribers.", labels=labels)
        running = GaugeMetricFamily(f"{PREFIX}_stream_up", "1 while the stream's source is running.", labels=labels)
        state = GaugeMetricFamily(
            f"{PREFIX}_stream_state", "1 for the state the stream's source is in.", labels=[*labels, "state"]
        )
        decode = GaugeMetricFamily(
            f"{PREFIX}_stream_decode",
            "1 for what the stream's reader decodes now: keyframes (only those sampled) or all frames.",
            labels=[*labels, "mode"],
        )
        keyframes = GaugeMetricFamily(
            f"{PREFIX}_stream_keyframe_interval_seconds",
            "The keyframe interval measured from the stream.",
            labels=labels,
        )
        napped = CounterMetricFamily(
            f"{PREFIX}_napped_seconds", "Seconds the stream's reader slept between keyframes.", labels=labels
        )
        for s in self._streams():
            values = [s.id, s.model]
            for name, family in counters.items():
                family.add_metric(values, float(getattr(s, name)))
            for entered, count in s.transitions.items():
                transitions.add_metric([*values, entered.value], float(count))
            fps.add_metric(values, s.measured_fps)
            subs.add_metric(values, float(s.subscribers))
            running.add_metric(values, 1.0 if s.state is StreamState.RUNNING else 0.0)
            state.add_metric([*values, s.state.value], 1.0)
            if s.decode is not None:
                decode.add_metric([*values, s.decode], 1.0)
            if s.keyframe_interval_s is not None:
                keyframes.add_metric(values, s.keyframe_interval_s)
            napped.add_metric(values, s.napped_s)
        yield from counters.values()
        yield from (transitions, fps, subs, running, state, decode, keyframes, napped)


@dataclass(frozen=True)
class ClusterStats:
    members: int
    streams: int  # registered in the cluster
    owned: int  # running here
    redis_up: bool
    events_written: int
    events_dropped: int
    events_pending: int
    events_read: int
    mirrors_subscribers: int


class _ClusterCollector(Collector):
    def __init__(self, stats: Callable[[], ClusterStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        gauges = {
            "cluster_members": ("Live gateways in the cluster, as this gateway last read them.", s.members),
            "cluster_streams": ("Streams registered in the cluster.", s.streams),
            "cluster_owned_streams": ("Streams this gateway runs.", s.owned),
            "cluster_redis_up": ("1 while Redis answers this gateway.", 1.0 if s.redis_up else 0.0),
            "cluster_events_pending": ("Events waiting to be appended to Redis.", s.events_pending),
            "cluster_sse_subscribers": ("SSE subscribers of this gateway, over every stream.", s.mirrors_subscribers),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))
        counters = {
            "cluster_events_written": ("Events this gateway appended to Redis Streams.", s.events_written),
            "cluster_events_dropped": (
                "Events never appended to Redis: dropped while Redis was down and the queue was full, or refused.",
                s.events_dropped,
            ),
            "cluster_events_read": ("Events this gateway read from Redis Streams for its subscribers.", s.events_read),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))


class _CaptureCollector(Collector):
    """Capture and S3 spool counters, read at scrape time."""

    FIELDS: ClassVar[dict[str, str]] = {  # CaptureStats field -> help
        "offered": "Stream predictions checked against the capture policy.",
        "captured": "Captures written to disk.",
        "dropped_queue_full": "Captures dropped because the writer queue was full.",
        "write_errors": "Captures that failed to write.",
        "uploaded": "Captures (image and metadata) stored in S3.",
        "upload_errors": "Failed S3 upload passes.",
        "spool_dropped": "Oldest captures deleted by the spool cap.",
    }

    def __init__(self, stats: Callable[[], CaptureStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        for name, doc in self.FIELDS.items():
            yield CounterMetricFamily(f"{PREFIX}_capture_{name}", doc, value=float(getattr(stats, name)))


class Metrics:
    """The gateway's metrics; ``render()`` is the ``/metrics`` body."""

    def __init__(
        self,
        streams: Callable[[], Iterable[StreamInfo]] = list,
        capture: Callable[[], CaptureStats | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.inference_seconds = Histogram(
            f"{PREFIX}_inference_seconds",
            "Stream frames: preprocess, the wait for a batch (ingest.batch_window_ms) and the Triton round trip.",
            ["stream", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_age_seconds = Histogram(
            f"{PREFIX}_frame_age_seconds",
            "Stream frames: from capture (decode) to the prediction event.",
            ["stream", "model"],
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.inference_errors = Counter(
            f"{PREFIX}_inference_errors",
            "Failed stream inferences by kind: triton (unavailable or failed), timeout, crashed_instance "
            "(a model instance crashed, the retry too), internal.",
            ["stream", "model", "kind"],
            registry=r,
        )
        self.stream_batch_size = Histogram(
            f"{PREFIX}_stream_batch_frames",
            "Stream frames per Triton request (frames of several streams batched within ingest.batch_window_ms).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_retries = Counter(
            f"{PREFIX}_inference_retries",
            "Inferences sent again, by reason: crashed_instance (a stub died), retired_version, "
            "endpoint_unavailable (a Triton went away; several Tritons), endpoint_lacks_model (a Triton without "
            "the model).",
            ["model", "reason"],
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Error answers of the API by error code (bad_image, model_degraded, overloaded, ...).",
            ["code"],
            registry=r,
        )
        self.sse_dropped = Counter(
            f"{PREFIX}_sse_dropped",
            "SSE subscribers the gateway disconnected, by reason: frozen (stopped reading), limit (refused, "
            "ingest.max_subscribers).",
            ["reason"],
            registry=r,
        )
        self.predict_in_flight = Gauge(
            f"{PREFIX}_predict_in_flight", "POST /predict requests being processed (admission control).", registry=r
        )
        self.predict_queued = Gauge(
            f"{PREFIX}_predict_queued", "POST /predict requests waiting for a slot (admission control).", registry=r
        )
        self.predict_seconds = Histogram(
            f"{PREFIX}_predict_request_seconds",
            "POST /predict latency by status code (model is empty unless the request succeeded).",
            ["model", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cluster_handovers = Counter(
            f"{PREFIX}_cluster_stream_changes",
            "Cluster mode: streams this gateway started (started) or stopped: removed from the registry (removed), "
            "now another gateway's by rendezvous hashing (moved), or its lease found with another gateway "
            "(lease_lost).",
            ["kind"],
            registry=r,
        )
        r.register(_StreamCollector(streams))
        r.register(_CaptureCollector(capture))

    def watch_cluster(self, stats: Callable[[], ClusterStats]) -> None:
        """Cluster mode: export the node's figures, read at scrape time."""
        self.registry.register(_ClusterCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


EMF_MAX_VALUES = 100  # CloudWatch's limit on the values of one metric in one EMF record


class EmfWindow:
    """One stream's predictions since its last EMF records.

    Latency and frame age are published as the **values** themselves (arrays of up to
    100 per record, as the EMF specification allows), never as percentiles of a window:
    CloudWatch cannot combine percentiles across windows or streams, but it computes
    true percentiles over values, across any period and any set of streams.  Each record
    also rolls up to the configured dimensions alone (e.g. ``service``), the metric an
    alarm on the whole deployment watches."""

    def __init__(self, stream: str, model: str, settings: MetricsSettings) -> None:
        self.stream, self.model, self._settings = stream, model, settings
        self._latencies_ms: list[float] = []
        self._ages_ms: list[float] = []
        self._errors = 0
        self._dropped_before = 0

    def error(self) -> None:
        self._errors += 1

    def add(self, latency_ms: float, age_ms: float, fps: float, dropped_total: int) -> list[str]:
        """Record one prediction; every ``log_every`` predictions, the EMF records of the window
        (one per 100 values).  ``dropped_total`` is the stream's running count of dropped frames."""
        self._latencies_ms.append(round(latency_ms, 3))
        self._ages_ms.append(round(age_ms, 3))
        if len(self._latencies_ms) < self._settings.log_every:
            return []
        dimensions = {**self._settings.dimensions, "stream": self.stream, "model": self.model}
        lines = []
        for start in range(0, len(self._latencies_ms), EMF_MAX_VALUES):
            first = start == 0  # the window's counts go into its first record only
            end = start + EMF_MAX_VALUES
            values: dict[str, tuple[float | list[float], str]] = {
                "InferenceLatency": (self._latencies_ms[start:end], "Milliseconds"),
                "FrameAge": (self._ages_ms[start:end], "Milliseconds"),
            }
            if first:
                values |= {
                    "FPS": (round(fps, 3), "Count/Second"),
                    "Predictions": (float(len(self._latencies_ms)), "Count"),
                    "Errors": (float(self._errors), "Count"),
                    "FramesDropped": (float(dropped_total - self._dropped_before), "Count"),
                }
            lines.append(
                emf_line(
                    namespace=self._settings.namespace,
                    dimensions=dimensions,
                    values=values,
                    rollups=(tuple(self._settings.dimensions),) if self._settings.dimensions else (),
                )
            )
        self._latencies_ms.clear()
        self._ages_ms.clear()
        self._errors = 0
        self._dropped_before = dropped_total
        return lines


def emf_line(
    *,
    namespace: str,
    dimensions: Mapping[str, str],
    values: Mapping[str, tuple[float | list[float], str]],
    rollups: tuple[tuple[str, ...], ...] = (),
    now: float | None = None,
) -> str:
    """One CloudWatch Embedded Metric Format record: the ``_aws`` envelope names the
    metrics and the dimension sets (all ``dimensions``, then each of ``rollups``: fewer
    dimensions, so one alarm covers every stream); dimension values and metric values are
    top-level keys."""
    record: dict[str, Any] = {
        "_aws": {
            "Timestamp": int((now if now is not None else time.time()) * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions), *(list(r) for r in rollups)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
                }
            ],
        },
        **dimensions,
        **{name: value for name, (value, _) in values.items()},
    }
    return json.dumps(record, separators=(",", ":"))


def emf_logger() -> logging.Logger:
    """Writes each EMF record as a bare JSON line on stdout (no timestamp or level prefix),
    where the CloudWatch agent or the awslogs driver picks it up."""
    logger = logging.getLogger("gateway.emf")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
    return logger
