"""EMF windows and the Prometheus registry, without servers."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import MetricsSettings, load_settings
from gateway.errors import ConfigError
from gateway.metrics import EmfWindow, Metrics


def test_emf_window_emits_every_log_every_predictions_and_resets() -> None:
    window = EmfWindow("lobby", "person_detector", MetricsSettings(log_every=4, dimensions={"service": "svc"}))
    window.error()
    lines = [window.add(latency_ms=float(i), age_ms=10.0 * i, fps=2.0, dropped=1) for i in range(1, 9)]
    assert [line is not None for line in lines] == [False, False, False, True] * 2
    first, second = (json.loads(line) for line in lines if line)
    assert first["Errors"] == 1 and second["Errors"] == 0, "errors are per window"
    assert first["InferenceLatencyP50"] in (2.0, 3.0) and first["InferenceLatencyP95"] == 4.0
    assert second["InferenceLatencyP95"] == 8.0
    assert first["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "stream", "model"]]
    assert (first["service"], first["stream"], first["model"]) == ("svc", "lobby", "person_detector")


def test_registry_is_per_app_and_reads_streams_at_scrape_time() -> None:
    rows = [
        {"id": "a", "model": "m", "frames_read": 5, "frames_sampled": 2, "measured_fps": 2.0, "subscribers": 1,
         "state": "running", "reconnects": 0},
    ]  # fmt: skip
    one, two = Metrics(lambda: rows), Metrics()
    one.inference_seconds.labels("a", "m").observe(0.02)
    text = one.render().decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["streamml_frames_read_total"] == 5 and samples["streamml_stream_up"] == 1
    assert samples["streamml_inference_seconds_count"] == 1
    assert "streamml_inference_seconds_count{" not in two.render().decode(), "no shared global registry"
    rows[0]["frames_read"] = 9
    assert 'streamml_frames_read_total{model="m",stream="a"} 9.0' in one.render().decode()


def test_dimensions_may_not_shadow_stream_or_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_CONFIG", raising=False)
    monkeypatch.setenv("APP_METRICS__DIMENSIONS", '{"stream": "x"}')
    with pytest.raises(ConfigError, match=r"metrics\.dimensions"):
        load_settings()
