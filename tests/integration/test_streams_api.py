"""Live streams end to end: real RTSP server, real Triton, the gateway under uvicorn, SSE clients."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from embedded_triton import EmbeddedTriton
from harness.helpers import (
    GatewayProcess,
    encode,
    gateway,
    predictions,
    scene,
    scrape,
    sse,
    stream_info,
    total,
    wait_until,
)
from harness.peers.clips import write_clip
from harness.peers.rtsp import RtspServer

pytestmark = pytest.mark.integration
FPS = 4


@pytest.fixture(scope="module")
def rtsp() -> Iterator[RtspServer]:
    server = RtspServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def streams_gateway(
    triton: EmbeddedTriton, rtsp: RtspServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("streams")
    loop_clip = write_clip(tmp / "loop.mp4", seconds=1.0)
    once_clip = write_clip(tmp / "once.mp4", seconds=1.5)
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_TRITON__REQUEST_TIMEOUT_S": "5",
        "APP_RTSP_URL": rtsp.url,
        "APP_FRAME_SAMPLE_FPS": str(FPS),
        "APP_STREAMS": json.dumps(
            [{"id": "clip", "url": str(loop_clip), "loop": True}, {"id": "once", "url": str(once_clip)}]
        ),
        "APP_STREAM_POLICY__ALLOWED_HOSTS": '["127.0.0.1"]',
        "APP_STREAM_POLICY__ALLOWED_NETWORKS": '["127.0.0.0/8"]',  # loopback is refused unless allowed
        "APP_INGEST__READ_TIMEOUT_S": "2",
        "APP_INGEST__OPEN_TIMEOUT_S": "2",
        "APP_INGEST__BACKOFF_INITIAL_S": "0.2",
        "APP_INGEST__BACKOFF_MAX_S": "1",
    }
    with gateway(env, tmp / "gateway.log") as gw:
        wait_until(lambda: stream_info(gw, "default")["state"] == "running", 20, what="default stream running")
        yield gw


def test_default_stream_predictions_arrive_at_the_sampling_rate(streams_gateway: GatewayProcess) -> None:
    events = sse(f"{streams_gateway.url}/stream", 5.0)
    preds = predictions(events)
    assert events[0][0] == "status", "a new subscriber first learns the stream's state"
    assert 0.6 * FPS * 5 <= len(preds) <= 1.4 * FPS * 5, f"{len(preds)} predictions in 5 s at {FPS} fps"
    p = preds[-1]
    assert p["stream"] == "default" and len(p["predictions"]) == 5 and p["model"] == "mobilenet_v3_small"
    assert {"wait", "preprocess", "inference", "total"} <= set(p["latency_ms"])
    ages = [q["latency_ms"]["total"] for q in preds]
    assert max(ages) < 500, f"capture-to-event latency must stay bounded: {ages}"
    frames = [q["frame"] for q in preds]
    assert frames == sorted(frames)


def test_streams_run_at_once_including_looping_and_ending_files(streams_gateway: GatewayProcess) -> None:
    listed = {s["id"]: s for s in httpx.get(f"{streams_gateway.url}/streams").json()}
    assert set(listed) == {"default", "clip", "once"}
    assert len(predictions(sse(f"{streams_gateway.url}/streams/clip/events", 3.0))) >= 6
    wait_until(lambda: stream_info(streams_gateway, "once")["state"] == "ended", 10, what="the non-looping file ends")
    assert stream_info(streams_gateway, "clip")["state"] == "running", "the looping file keeps running"
    health = httpx.get(f"{streams_gateway.url}/health/stream")
    assert health.status_code == 503, "a configured stream that ended is not healthy"
    assert health.json()["streams"]["once"]["state"] == "ended"


def test_ten_subscribers_cost_no_more_inference_than_one(streams_gateway: GatewayProcess) -> None:
    results: list[int] = []

    def client() -> None:
        results.append(len(predictions(sse(f"{streams_gateway.url}/stream", 4.0))))

    before = stream_info(streams_gateway, "default")["inferences"]
    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    wait_until(lambda: stream_info(streams_gateway, "default")["subscribers"] >= 10, 10, what="10 subscribers")
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - t0
    inferences = stream_info(streams_gateway, "default")["inferences"] - before
    assert inferences <= FPS * elapsed * 1.3 + 2, f"{inferences} inferences in {elapsed:.1f}s for 10 subscribers"
    assert len(results) == 10 and min(results) >= FPS * 2, f"every subscriber must receive events: {results}"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "only RTSP"),
        ("/etc/passwd", "only RTSP"),
        ("0", "only RTSP"),
        ("rtsp://192.0.2.10/cam", "not allowed"),
        ("http://127.0.0.1/x", "unsupported"),
    ],
)
def test_runtime_urls_outside_the_policy_are_refused(streams_gateway: GatewayProcess, url: str, why: str) -> None:
    r = httpx.post(f"{streams_gateway.url}/streams", json={"id": "intruder", "url": url})
    assert r.status_code == 400 and why in r.json()["error"]["message"], r.text
    assert "intruder" not in {s["id"] for s in httpx.get(f"{streams_gateway.url}/streams").json()}


@pytest.mark.parametrize("url", ["rtsp://127.0.0.1:8554/cam", "rtsp://localhost:8554/cam"])
def test_loopback_is_refused_without_allowed_networks(gateway_proc: GatewayProcess, url: str) -> None:
    # given a gateway whose allowed_hosts lists 127.0.0.1 and localhost, and no allowed_networks
    # when a stream on either is added
    r = httpx.post(f"{gateway_proc.url}/streams", json={"id": "loop", "url": url})
    # then the resolved address refuses it: the host list alone does not open loopback
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "stream_refused" and "loopback" in error["message"], error
    assert "loop" not in {s["id"] for s in httpx.get(f"{gateway_proc.url}/streams").json()}


def test_add_watch_and_remove_a_stream(streams_gateway: GatewayProcess, rtsp: RtspServer) -> None:
    r = httpx.post(f"{streams_gateway.url}/streams", json={"id": "extra", "url": rtsp.url, "sample_fps": 2})
    assert r.status_code == 201, r.text
    assert httpx.post(f"{streams_gateway.url}/streams", json={"id": "extra", "url": rtsp.url}).status_code == 409
    assert len(predictions(sse(f"{streams_gateway.url}/streams/extra/events", 10.0, stop_after=4))) >= 2
    # a subscriber still watching when the stream is removed gets a final status and the end of the response
    watching: list[tuple[str, dict[str, Any]]] = []
    watcher = threading.Thread(
        target=sse, args=(f"{streams_gateway.url}/streams/extra/events", 30.0), kwargs={"into": watching}
    )
    watcher.start()
    wait_until(lambda: any(k == "prediction" for k, _ in watching), 10, what="the watcher receiving")
    assert httpx.delete(f"{streams_gateway.url}/streams/extra").status_code == 204
    watcher.join(10)
    assert not watcher.is_alive(), "the SSE response must end when its stream is removed"
    assert watching[-1][0] == "status" and watching[-1][1]["state"] == "stopped"
    assert httpx.get(f"{streams_gateway.url}/streams/extra/events").status_code == 404
    assert httpx.delete(f"{streams_gateway.url}/streams/extra").status_code == 404


def test_killed_camera_reports_reconnecting_then_recovers(streams_gateway: GatewayProcess) -> None:
    camera = RtspServer()
    try:
        r = httpx.post(f"{streams_gateway.url}/streams", json={"id": "cam", "url": camera.url})
        assert r.status_code == 201
        wait_until(lambda: stream_info(streams_gateway, "cam")["state"] == "running", 15, what="cam running")
        seen: list[tuple[str, dict[str, Any]]] = []
        reader = threading.Thread(
            target=sse, args=(f"{streams_gateway.url}/streams/cam/events", 12.0), kwargs={"into": seen}
        )
        reader.start()
        wait_until(lambda: any(k == "prediction" for k, _ in seen), 10, what="predictions from cam")
        camera.kill()
        wait_until(
            lambda: any(k == "status" and d["state"] == "reconnecting" for k, d in seen),
            8,
            what="a reconnecting status event",
        )
        camera = RtspServer(port=camera.port)
        wait_until(lambda: stream_info(streams_gateway, "cam")["state"] == "running", 20, what="cam back")
        reader.join(30)
        after = [i for i, (k, d) in enumerate(seen) if k == "status" and d["state"] == "reconnecting"]
        assert any(k == "prediction" for k, _ in seen[after[-1] :]), "predictions must resume after the restart"
        assert stream_info(streams_gateway, "cam")["reconnects"] >= 1
    finally:
        camera.stop()
        httpx.delete(f"{streams_gateway.url}/streams/cam")


def test_stream_list_never_shows_credentials(streams_gateway: GatewayProcess) -> None:
    r = httpx.post(f"{streams_gateway.url}/streams", json={"id": "secret", "url": "rtsp://admin:s3cret@127.0.0.1:9/x"})
    assert r.status_code == 201 and "s3cret" not in r.text
    try:
        assert "s3cret" not in httpx.get(f"{streams_gateway.url}/streams").text
        assert "admin:***@" in httpx.get(f"{streams_gateway.url}/streams").text
    finally:
        httpx.delete(f"{streams_gateway.url}/streams/secret")
    assert "s3cret" not in streams_gateway.log()


def test_unknown_stream_is_404(streams_gateway: GatewayProcess, tmp_path: Path) -> None:
    r = httpx.get(f"{streams_gateway.url}/streams/nope/events")
    assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found"


def test_sse_events_match_the_published_schemas(streams_gateway: GatewayProcess) -> None:
    # given the gateway's own OpenAPI document
    doc = httpx.get(f"{streams_gateway.url}/openapi.json").json()

    def validator(name: str) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **doc})

    models = {"prediction": validator("PredictionEvent"), "status": validator("StatusEvent")}
    # when a subscriber reads a classifier stream's events
    events = sse(f"{streams_gateway.url}/stream", 10.0, stop_after=6)
    # then every event's data validates against the schema published for its type
    assert {k for k, _ in events} == {"status", "prediction"}, events
    for kind, data in events:
        errors = [e.message for e in models[kind].iter_errors(data)]
        assert not errors, (kind, data, errors)
    # and a prediction carries the same result fields as POST /predict's answer, plus the stream's own
    answer = httpx.post(
        f"{streams_gateway.url}/predict", files={"image": ("a.jpg", encode(scene(320, 240), "JPEG"), "image/jpeg")}
    ).json()
    event = predictions(events)[0]
    assert set(event) - {"stream", "frame", "captured_at", "source_at", "clock", "latency_ms"} == set(answer) - {
        "timings_ms"
    }


def test_a_1_fps_stream_decodes_keyframes_and_its_events_carry_the_camera_clock(
    streams_gateway: GatewayProcess, rtsp: RtspServer
) -> None:
    # given a stream added at 1 fps from a 25 fps camera with a keyframe every second (the PyAV reader)
    body = {"id": "keys", "url": rtsp.url, "sample_fps": 1}
    assert httpx.post(f"{streams_gateway.url}/streams", json=body).status_code == 201
    try:
        # then GET /streams shows it decoding keyframes only, at the interval it measured
        wait_until(lambda: stream_info(streams_gateway, "keys")["decode"] == "keyframes", 15, what="keyframe mode")
        wait_until(lambda: stream_info(streams_gateway, "keys")["clock"] == "rtcp", 15, what="RTCP sender reports")
        info, since = stream_info(streams_gateway, "keys"), time.monotonic()
        assert info["backend"] == "pyav" and info["decode_setting"] == "auto" and info["codec"] == "h264"
        assert abs(info["keyframe_interval_s"] - 1.0) < 0.1
        # and its prediction events carry the camera's capture time and the age measured from it
        preds = predictions(sse(f"{streams_gateway.url}/streams/keys/events", 10.0, stop_after=3))
        later, elapsed = stream_info(streams_gateway, "keys"), time.monotonic() - since
        decoded, sampled = (later[k] - info[k] for k in ("frames_decoded", "frames_sampled"))
        assert decoded <= sampled + 1 and later["frames_read"] - info["frames_read"] >= 40, (info, later)
        # and it sleeps between keyframes over TCP (the default transport), most of the time
        napped = later["napped_s"] - info["napped_s"]
        assert later["naps"] > info["naps"] and napped > 0.4 * elapsed, f"asleep {napped:.2f}s of {elapsed:.2f}s"
        assert preds and all(p["clock"] == "rtcp" for p in preds)
        for p in preds:
            assert p["source_at"] <= p["captured_at"] + 0.05, "captured before it was read"
            assert 0 <= p["latency_ms"]["age"] < 1000 and p["latency_ms"]["age"] >= p["latency_ms"]["total"] - 50
        # and the default stream, sampled above its keyframe rate, decodes every frame
        assert stream_info(streams_gateway, "default")["decode"] == "all"
    finally:
        httpx.delete(f"{streams_gateway.url}/streams/keys")


# --- frames of several streams in one Triton request -------------------------------------------


@pytest.fixture(scope="module")
def batching_gateway(
    triton: EmbeddedTriton, rtsp: RtspServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("batching")
    clip = write_clip(tmp / "loop.mp4", seconds=2.0)
    # three streams at 4 fps (a frame each every 250 ms) and a window longer than that: every
    # request carries frames of more than one stream
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_TRITON__REQUEST_TIMEOUT_S": "5",
        "APP_FRAME_SAMPLE_FPS": str(FPS),
        "APP_STREAMS": json.dumps(
            [
                {"id": "cam1", "url": rtsp.url},
                {"id": "cam2", "url": rtsp.url},
                {"id": "file", "url": str(clip), "loop": True},
            ]
        ),
        "APP_STREAM_POLICY__ALLOWED_HOSTS": '["127.0.0.1"]',
        "APP_STREAM_POLICY__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "APP_INGEST__BATCH_WINDOW_MS": "300",
    }
    with gateway(env, tmp / "gateway.log") as gw:

        def predicting() -> bool:
            return all(stream_info(gw, sid)["predictions"] >= 2 for sid in ("cam1", "cam2", "file"))

        wait_until(predicting, 30, what="the three streams predicting")
        yield gw


def test_frames_of_several_streams_share_requests_and_events_show_the_wait(batching_gateway: GatewayProcess) -> None:
    before = scrape(batching_gateway)
    # when the three streams run for a few seconds
    preds = predictions(sse(f"{batching_gateway.url}/streams/cam1/events", 4.0))
    after = scrape(batching_gateway)
    # then each stream still gets its sampling rate
    assert len(preds) >= 0.6 * FPS * 4, f"{len(preds)} predictions in 4 s at {FPS} fps"
    # and the requests carried frames of several streams
    frames = total(after, "streamml_stream_batch_frames_sum") - total(before, "streamml_stream_batch_frames_sum")
    requests = total(after, "streamml_stream_batch_frames_count") - total(before, "streamml_stream_batch_frames_count")
    assert requests > 0 and frames / requests >= 1.5, f"{frames} frames in {requests} requests"
    # and each event says how long its frame waited for the others, within the window
    waits = [p["latency_ms"]["batch"] for p in preds]
    assert max(waits) > 0 and max(waits) <= 300 + 100, f"batch waits (ms): {waits}"
    for p in preds:
        lat = p["latency_ms"]
        assert lat["total"] >= lat["batch"] + lat["inference"], lat
        # the parts account for the total: what is left is the event loop's hops (milliseconds)
        parts = lat["wait"] + lat["queue"] + lat["preprocess"] + lat["batch"] + lat["inference"]
        assert parts <= lat["total"] + 0.01 and lat["total"] - parts < 100, lat
