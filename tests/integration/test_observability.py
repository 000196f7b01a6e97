"""``GET /metrics`` (Prometheus text format, parsed with prometheus-client's own parser)
and the CloudWatch Embedded Metric Format lines, from the real gateway with a stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from embedded_triton import EmbeddedTriton
from harness.helpers import GatewayProcess, encode, gateway, scene, scrape, stream_info, value, wait_until
from harness.peers.clips import write_clip

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def observed(triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("observability")
    clip = write_clip(tmp / "loop.mp4", seconds=1.0)
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_TRITON__REQUEST_TIMEOUT_S": "10",
        "APP_FRAME_SAMPLE_FPS": "5",
        "APP_STREAMS": json.dumps([{"id": "cam", "url": str(clip), "loop": True}]),
        "APP_METRICS__LOG_EVERY": "3",
        "APP_METRICS__DIMENSIONS": json.dumps({"service": "stream-ml-test", "site": "lab"}),
        "APP_CAPTURE__ENABLED": "true",
        "APP_CAPTURE__EVERY_NTH": "2",
        "APP_CAPTURE__ROOT": str(tmp / "captures"),
    }
    with gateway(env, tmp / "gateway.log") as gw:
        wait_until(lambda: stream_info(gw, "cam")["predictions"] >= 1, 30, what="first prediction")
        yield gw


def test_predict_latency_is_counted_by_status_code(observed: GatewayProcess) -> None:
    good = encode(scene(320, 240), "JPEG")
    before = scrape(observed)
    headers = {"content-type": "image/jpeg"}
    assert httpx.post(f"{observed.url}/predict", content=good, headers=headers, timeout=30).status_code == 200
    assert (
        httpx.post(f"{observed.url}/predict", content=b"not an image", headers=headers, timeout=30).status_code == 400
    )
    r = httpx.post(f"{observed.url}/predict?model=nope", content=good, headers=headers, timeout=30)
    assert r.status_code == 404
    after = scrape(observed)
    name = "streamml_predict_request_seconds_count"
    assert (
        value(after, name, model="mobilenet_v3_small", code="200")
        == value(before, name, model="mobilenet_v3_small", code="200") + 1
    )
    assert value(after, name, model="", code="400") == value(before, name, model="", code="400") + 1
    assert value(after, name, model="", code="404") == value(before, name, model="", code="404") + 1
    assert not any("nope" in dict(labels).values() for _, labels in after), "a client's model name is no label"


def emf_records(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.log().splitlines() if line.startswith('{"_aws"')]


def test_emf_lines_follow_the_format(observed: GatewayProcess) -> None:
    wait_until(lambda: len(emf_records(observed)) >= 2, 30, what="two EMF lines")
    for record in emf_records(observed):
        aws = record["_aws"]
        assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] > 1_700_000_000_000
        (directive,) = aws["CloudWatchMetrics"]
        assert directive["Namespace"] == "stream-ml"
        dims, rollup = directive["Dimensions"]
        assert dims == ["service", "site", "stream", "model"] and rollup == ["service", "site"], "per stream, and all"
        for key in dims:  # dimension values are top-level strings
            assert isinstance(record[key], str), key
        assert record["service"] == "stream-ml-test" and record["stream"] == "cam"
        names = {m["Name"] for m in directive["Metrics"]}
        assert {"InferenceLatency", "FrameAge", "FPS", "Errors"} <= names
        for m in directive["Metrics"]:  # every metric is a top-level number, or an array of them, with a unit
            value = record[m["Name"]]
            assert isinstance(value, int | float) or all(isinstance(v, int | float) for v in value), m
            assert m["Unit"] in {"Milliseconds", "Count", "Count/Second"}
        assert record["Predictions"] == 3
        assert len(record["InferenceLatency"]) == 3 and all(v > 0 for v in record["InferenceLatency"])


def test_stream_frames_are_captured_and_counted(observed: GatewayProcess) -> None:
    root = observed.log_path.parent / "captures"
    wait_until(lambda: len(list(root.rglob("*.json"))) >= 2, 30, what="two captures")
    meta = json.loads(sorted(root.rglob("*.json"))[0].read_text())
    assert meta["stream"] == "cam" and meta["frame"] % 2 == 0 and meta["capture_reason"] == "every_nth"
    assert meta["model"] == "mobilenet_v3_small" and meta["predictions"] and "latency_ms" in meta
    assert list(root.rglob(meta["file"]["name"])), "its JPEG is beside it"
    samples = scrape(observed)
    assert value(samples, "streamml_capture_captured_total") >= 2


def test_metrics_endpoint_works_without_streams(gateway_proc: GatewayProcess) -> None:
    r = httpx.get(f"{gateway_proc.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert "streamml_predict_request_seconds" in r.text
