"""Inference capture to S3: the spool against a real S3 endpoint on loopback (moto in
server mode, started by the fixture), alone and through the real gateway."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest

from embedded_triton import EmbeddedTriton
from gateway.capture import Capturer
from gateway.config import CaptureSettings, S3Settings
from harness.helpers import detection_event, encode, free_port, gateway, scene, scrape, value, wait_until
from harness.peers.clips import write_clip
from harness.peers.s3 import S3Server

pytestmark = pytest.mark.integration
BUCKET = "captures-test"


def frame(i: int) -> np.ndarray:
    return np.full((90, 160, 3), i % 256, dtype=np.uint8)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    mp = pytest.MonkeyPatch()
    for key, val in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        mp.setenv(key, val)
    server = S3Server()
    server.start()
    boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket=BUCKET)
    try:
        yield server
    finally:
        server.stop()
        mp.undo()


def objects(server: S3Server, prefix: str) -> dict[str, bytes]:
    c = boto3.client("s3", endpoint_url=server.url)
    keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]  # fmt: skip
    return {k: c.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def settings(root: Path, **kw: Any) -> CaptureSettings:
    s3 = kw.pop("s3", None)
    return CaptureSettings(enabled=True, root=str(root), **kw, **({"s3": s3} if s3 else {}))


def s3_settings(server: S3Server, prefix: str, **kw: Any) -> S3Settings:
    base = {"bucket": BUCKET, "prefix": prefix, "endpoint_url": server.url, "region": "us-east-1",
            "connect_timeout_s": 0.5, "read_timeout_s": 2, "max_attempts": 2, "backoff_initial_s": 0.1,
            "backoff_max_s": 0.5, "poll_s": 0.1}  # fmt: skip
    return S3Settings(**{**base, **kw})


def test_captures_reach_s3_image_first_with_deterministic_keys(s3_server: S3Server, tmp_path: Path) -> None:
    cap = Capturer(settings(tmp_path / "spool", every_nth=1, s3=s3_settings(s3_server, "keys/")))
    cap.start()
    for i in range(1, 5):
        cap.offer(detection_event("gate", i), frame(i))
    wait_until(lambda: cap.stats.uploaded == 4, 20, what="4 captures uploaded")
    cap.stop()
    got = objects(s3_server, "keys/")
    assert len(got) == 8
    for key, body in got.items():
        assert key.startswith("keys/") and "/gate/" in key
        if key.endswith(".json"):
            meta = json.loads(body)
            assert key.rsplit("/", 1)[0] + "/" + meta["file"]["name"] in got, "metadata names its image, which is there"
    assert not list((tmp_path / "spool").rglob("*.jpg")), "the spool is drained"


def test_s3_outage_spools_then_drains_without_duplicates_or_slowing_offers(s3_server: S3Server, tmp_path: Path) -> None:
    cap = Capturer(settings(tmp_path / "spool", every_nth=1, s3=s3_settings(s3_server, "outage/")))
    cap.start()
    offers: list[float] = []

    def capture(n: int, start: int) -> None:
        for i in range(start, start + n):
            t0 = time.perf_counter()
            cap.offer(detection_event("yard", i), frame(i))
            offers.append(time.perf_counter() - t0)
            time.sleep(0.02)

    capture(5, 1)
    wait_until(lambda: cap.stats.uploaded == 5, 20, what="uploads before the outage")
    s3_server.stop()  # the outage
    try:
        capture(10, 6)
        wait_until(lambda: cap.stats.upload_errors >= 1, 20, what="the uploader to notice")
        # then pass after pass fails while the 15 captures are on disk, and nothing is stored
        errors = cap.stats.upload_errors
        wait_until(lambda: cap.stats.captured == 15 and cap.stats.upload_errors >= errors + 2, 20, what="failed passes")
        assert cap.stats.uploaded == 5, "nothing can be stored while S3 is down"
    finally:
        s3_server.start()
    capture(5, 16)
    wait_until(lambda: cap.stats.uploaded == 20, 30, what="the spool to drain")
    cap.stop()
    got = objects(s3_server, "outage/")
    assert len(got) == 40, f"{len(got)} objects for 20 captures (image + metadata each)"
    frames = sorted(json.loads(b)["frame"] for k, b in got.items() if k.endswith(".json"))
    assert frames == list(range(1, 21)), "every capture once, none twice"
    assert max(offers) < 0.05, f"an offer took {max(offers) * 1000:.1f} ms while S3 was down"


def test_bounded_spool_drops_the_oldest_and_counts(s3_server: S3Server, tmp_path: Path) -> None:
    dead = S3Settings(bucket=BUCKET, endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
                      connect_timeout_s=0.2, max_attempts=1, backoff_initial_s=0.1, backoff_max_s=0.2,
                      poll_s=0.1, spool_max_captures=3)  # fmt: skip
    cap = Capturer(settings(tmp_path / "spool", every_nth=1, s3=dead))
    cap.start()
    for i in range(1, 9):
        cap.offer(detection_event("dock", i, at=time.time() + i * 0.001), frame(i))
    wait_until(lambda: cap.stats.captured == 8 and cap.stats.spool_dropped >= 5, 20, what="the cap to apply")
    cap.stop()
    left = sorted(json.loads(p.read_text())["frame"] for p in (tmp_path / "spool").rglob("*.json"))
    assert left == [6, 7, 8], "the newest three stay"
    assert cap.stats.spool_dropped == 5


def test_s3_outage_does_not_slow_the_gateway(s3_server: S3Server, triton: EmbeddedTriton, tmp_path: Path) -> None:
    """A live stream captures every sampled frame to S3 through the real gateway, while
    /predict is timed with S3 up and with S3 down; then S3 returns and the spool drains."""
    clip = write_clip(tmp_path / "loop.mp4", seconds=1.0)
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_FRAME_SAMPLE_FPS": "5",
        "APP_STREAMS": json.dumps([{"id": "yard", "url": str(clip), "loop": True}]),
        "APP_CAPTURE__ENABLED": "true",
        "APP_CAPTURE__EVERY_NTH": "1",
        "APP_CAPTURE__ROOT": str(tmp_path / "spool"),
        "APP_CAPTURE__S3": s3_settings(s3_server, "gateway/").model_dump_json(),
    }
    image = encode(scene(640, 480), "JPEG")

    def timed_predictions(n: int) -> float:
        """Median round trip of n sequential /predict calls, ms."""
        times = []
        with httpx.Client(timeout=30) as c:
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.post(f"{gw.url}/predict", files={"image": ("a.jpg", image, "image/jpeg")})
                times.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
        return float(np.median(times))

    def capture_counter(name: str) -> float:
        return value(scrape(gw), f"streamml_capture_{name}_total")

    with gateway(env, tmp_path / "gateway.log") as gw:
        wait_until(lambda: capture_counter("uploaded") >= 3, 30, what="uploads from the stream")
        up_ms = timed_predictions(30)
        s3_server.stop()
        try:
            errors = capture_counter("upload_errors")
            wait_until(lambda: capture_counter("upload_errors") > errors, 20, what="the uploader to notice")
            frames = capture_counter("captured")
            down_ms = timed_predictions(30)
            wait_until(lambda: capture_counter("captured") >= frames + 10, 30, what="captures during the outage")
            assert capture_counter("uploaded") <= frames, "nothing is stored while S3 is down"
        finally:
            s3_server.start()
        assert httpx.delete(f"{gw.url}/streams/yard", timeout=10).status_code == 204  # captures stop
        wait_until(
            lambda: capture_counter("uploaded") == capture_counter("captured") > frames, 60, what="the spool to drain"
        )
        uploaded = int(capture_counter("uploaded"))
        got = objects(s3_server, "gateway/")
    images = [k for k in got if k.endswith(".jpg")]
    assert len(images) == uploaded and len(got) == 2 * uploaded, "every capture once: image and metadata"
    print(f"/predict median with S3 up {up_ms:.1f} ms, down {down_ms:.1f} ms; {uploaded} captures uploaded")
    assert down_ms <= 1.5 * up_ms + 10, f"/predict median {down_ms:.1f} ms with S3 down vs {up_ms:.1f} ms up"
