"""The viewer's server side: frame.jpg's encode budget, the demo source, the static page."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import av
import cv2
import httpx
import numpy as np
import pytest

from gateway.api.routes.viewer import CSP, STATIC
from gateway.config import DEMO_STREAM, Settings
from gateway.errors import FrameNotReady
from gateway.ingest import Frame, parse_source
from gateway.ingest.demo import FPS, HEIGHT, WIDTH, card_frame, write_clip
from gateway.main import create_app
from gateway.streams.snapshot import FrameSnapshot


def frame(index: int) -> Frame:
    image = np.full((36, 64, 3), index % 255, np.uint8)
    return Frame("cam", index, 1000.0 + index, float(index), image, (640, 360))


def test_frame_jpg_is_encoded_once_per_interval_however_many_ask() -> None:
    now = [0.0]
    snap = FrameSnapshot("cam", interval_s=0.5, quality=80, clock=lambda: now[0])

    async def scenario() -> None:
        with pytest.raises(FrameNotReady):
            await snap.jpeg()
        snap.offer(frame(1))
        got = await asyncio.gather(*(snap.jpeg() for _ in range(50)))
        assert snap.encodes == 1 and {j.frame for j in got} == {1}
        decoded = cv2.imdecode(np.frombuffer(got[0].data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape == (36, 64, 3)
        # a newer frame within the interval: the same JPEG (the old frame, and its index)
        snap.offer(frame(2))
        now[0] = 0.3
        assert (await snap.jpeg()).frame == 1 and snap.encodes == 1
        # past the interval: the newer frame, encoded once
        now[0] = 0.6
        assert (await snap.jpeg()).frame == 2 and snap.encodes == 2
        # no newer frame: no new encode, whatever the time
        now[0] = 5.0
        assert (await snap.jpeg()).frame == 2 and snap.encodes == 2

    asyncio.run(scenario())


def test_the_demo_clip_is_a_video_the_reader_opens(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "demo" / "demo.mp4", seconds=1)
    cap = cv2.VideoCapture(str(path))
    try:
        assert cap.isOpened()
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FPS
        assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (WIDTH, HEIGHT)
    finally:
        cap.release()
    # encoded as cameras send: H.264, a keyframe every second, no B-frames
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        keyframes = [i for i, packet in enumerate(container.demux(video)) if packet.is_keyframe]
    assert keyframes == [0], f"a 1 s clip has one keyframe, at its start: {keyframes}"
    two = write_clip(tmp_path / "two.mp4", seconds=2)
    with av.open(str(two)) as container:
        video = container.streams.video[0]
        assert [i for i, p in enumerate(container.demux(video)) if p.is_keyframe] == [0, FPS]
        assert not video.codec_context.has_b_frames
    # the frames move: predictions on it change
    assert not np.array_equal(card_frame(0), card_frame(FPS))
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_the_demo_stream_runs_only_while_no_camera_is_configured() -> None:
    demo = Settings(demo={"enabled": True, "path": "/tmp/d.mp4"})
    (only,) = demo.all_streams()
    assert only.id == DEMO_STREAM and only.loop and parse_source(only.url).location == "/tmp/d.mp4"
    replaced = Settings(demo={"enabled": True}, rtsp_url="rtsp://cam.local/x")
    assert [s.id for s in replaced.all_streams()] == ["default"]
    listed = Settings(demo={"enabled": True}, streams=[{"id": "a", "url": "rtsp://cam.local/a"}])
    assert [s.id for s in listed.all_streams()] == ["a"]
    assert Settings().all_streams() == []  # off by default: a deployment never runs it by surprise


def get(settings: Settings, path: str) -> httpx.Response:
    """``path`` from the app, in process (no lifespan: the static routes need none)."""

    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.get(path)

    return asyncio.run(fetch())


def test_the_page_is_served_with_a_strict_policy_and_loads_nothing_from_elsewhere() -> None:
    page = get(Settings(), "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP and "default-src 'self'" in CSP
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert len(assets) == 3
    for asset in assets:
        assert get(Settings(), f"/{asset}").status_code == 200, asset
    # offline: no URL of another origin in any static file (no CDN, no web font)
    for f in STATIC.iterdir():
        assert not re.search(r"https?://", f.read_text()), f"{f.name} refers to another origin"
    assert get(Settings(viewer={"enabled": False}), "/").status_code == 404
