"""EMF windows and the Prometheus registry, without servers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import MetricsSettings, load_settings
from gateway.errors import ConfigError
from gateway.ingest import StreamState
from gateway.metrics import EmfWindow, Metrics
from gateway.schema import StreamInfo


def test_emf_window_emits_every_log_every_predictions_and_resets() -> None:
    window = EmfWindow("lobby", "person_detector", MetricsSettings(log_every=4, dimensions={"service": "svc"}))
    window.error()
    batches = [window.add(latency_ms=float(i), age_ms=10.0 * i, fps=2.0, dropped_total=i // 2) for i in range(1, 9)]
    assert [len(b) for b in batches] == [0, 0, 0, 1] * 2
    first, second = (json.loads(b[0]) for b in batches if b)
    assert first["Errors"] == 1 and second["Errors"] == 0, "errors are per window"
    # latencies and frame ages are the values themselves: CloudWatch computes the percentiles
    assert first["InferenceLatency"] == [1.0, 2.0, 3.0, 4.0] and second["InferenceLatency"] == [5.0, 6.0, 7.0, 8.0]
    assert first["FrameAge"] == [10.0, 20.0, 30.0, 40.0]
    assert (first["FramesDropped"], second["FramesDropped"]) == (2, 2), "dropped frames per window, not a total"
    assert first["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "stream", "model"], ["service"]]
    assert (first["service"], first["stream"], first["model"]) == ("svc", "lobby", "person_detector")


def test_a_window_over_100_values_is_split_into_records_of_100() -> None:
    window = EmfWindow("s", "m", MetricsSettings(log_every=250))
    lines = [line for i in range(250) for line in window.add(float(i), 1.0, 2.0, 0)]
    records = [json.loads(line) for line in lines]
    assert [len(r["InferenceLatency"]) for r in records] == [100, 100, 50], "EMF allows 100 values per metric"
    assert [v for r in records for v in r["InferenceLatency"]] == [float(i) for i in range(250)]
    assert records[0]["Predictions"] == 250 and "Predictions" not in records[1], "counts once per window"
    for r in records:
        named = {m["Name"] for m in r["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
        assert named == {k for k in r if k not in ("_aws", "service", "stream", "model")}, "declared = present"


def stream_info(**counters: Any) -> StreamInfo:
    zero = dict.fromkeys(
        ("reconnects", "stalls", "decode_errors", "frames_read", "frames_sampled", "frames_skipped", "frames_dropped",
         "inferences", "predictions", "inference_errors", "subscribers", "events_dropped"),
        0,
    )  # fmt: skip
    base = {"id": "a", "url": "rtsp://h/x", "model": "m", "state": StreamState.RUNNING, "sample_fps": 2.0,
            "measured_fps": 0.0, "last_frame_age_s": None, "transitions": {}, "triton": "available"}  # fmt: skip
    return StreamInfo(**{**base, **zero, **counters})


def test_every_stream_counter_is_exported() -> None:
    # given a stream with a distinct value in every counter of its StreamInfo
    # (inference_errors is recorded by kind where it happens: streamml_inference_errors_total{kind})
    fields = [n for n, f in StreamInfo.model_fields.items() if f.annotation is int and n != "inference_errors"]
    assert len(fields) >= 11
    info = stream_info(**{n: i + 1 for i, n in enumerate(fields)}, transitions={StreamState.STALLED: 3}, napped_s=0.25)
    text = Metrics(lambda: [info]).render().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
    exported = set(samples.values())
    # then every counter's value appears in /metrics (the subscriber gauge included), and the transitions by state
    missing = [n for i, n in enumerate(fields) if float(i + 1) not in exported]
    assert not missing, f"StreamInfo counters not exported to /metrics: {missing}"
    key = ("streamml_stream_transitions_total", (("model", "m"), ("state", "stalled"), ("stream", "a")))
    assert samples[key] == 3
    assert samples[("streamml_napped_seconds_total", (("model", "m"), ("stream", "a")))] == 0.25


def test_registry_is_per_app_and_reads_streams_at_scrape_time() -> None:
    rows = [stream_info(frames_read=5, frames_sampled=2, measured_fps=2.0, subscribers=1)]
    one, two = Metrics(lambda: rows), Metrics()
    one.inference_seconds.labels("a", "m").observe(0.02)
    text = one.render().decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["streamml_frames_read_total"] == 5 and samples["streamml_stream_up"] == 1
    assert samples["streamml_inference_seconds_count"] == 1
    assert "streamml_inference_seconds_count{" not in two.render().decode(), "no shared global registry"
    rows[0] = rows[0].model_copy(update={"frames_read": 9})
    assert 'streamml_frames_read_total{model="m",stream="a"} 9.0' in one.render().decode()


def test_dimensions_may_not_shadow_stream_or_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_CONFIG", raising=False)
    monkeypatch.setenv("APP_METRICS__DIMENSIONS", '{"stream": "x"}')
    with pytest.raises(ConfigError, match=r"metrics\.dimensions"):
        load_settings()
