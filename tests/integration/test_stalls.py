"""Sources that stop delivering frames without closing, through the real gateway: a frozen
RTSP server (SIGSTOP, then SIGCONT) and a FIFO whose writer pauses.  Each stream goes
to ``stalled`` within its read timeout + 2 s of its last frame (a status event, a
counted stall), and back to ``running`` when frames return, with no gateway restart."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from embedded_triton import EmbeddedTriton
from harness.helpers import GatewayProcess, gateway, scrape, sse, stream_info, value, wait_until
from harness.peers.clips import write_clip
from harness.peers.pipe import PipeCamera
from harness.peers.rtsp import RtspServer

pytestmark = pytest.mark.integration
READ_TIMEOUT = 2.0
Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def rig(
    triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, RtspServer, PipeCamera]]:
    tmp = tmp_path_factory.mktemp("stalls")
    camera = RtspServer()
    clip = write_clip(tmp / "clip.ts", seconds=2.0, width=320, height=180, fmt="mpegts")
    pipe = PipeCamera(tmp / "pipe.ts", clip.read_bytes(), seconds=2.0)
    pipe.start()
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_FRAME_SAMPLE_FPS": "5",
        "APP_STREAMS": json.dumps([{"id": "cam", "url": camera.url}, {"id": "pipe", "url": str(pipe.fifo)}]),
        "APP_INGEST__READ_TIMEOUT_S": str(READ_TIMEOUT),
        "APP_INGEST__OPEN_TIMEOUT_S": "2",
        "APP_INGEST__BACKOFF_INITIAL_S": "0.2",
        "APP_INGEST__BACKOFF_MAX_S": "1",
    }
    try:
        with gateway(env, tmp / "gateway.log") as gw:
            both = ("cam", "pipe")
            wait_until(lambda: all(stream_info(gw, s)["predictions"] >= 3 for s in both), 30, what="predictions")
            yield gw, camera, pipe
    finally:
        pipe.stop()
        camera.stop()


def watch(gw: GatewayProcess, sid: str, seconds: float) -> tuple[threading.Thread, Events]:
    events: Events = []
    reader = threading.Thread(target=sse, args=(f"{gw.url}/streams/{sid}/events", seconds), kwargs={"into": events})
    reader.start()
    wait_until(lambda: any(k == "prediction" for k, _ in events), 10, what=f"{sid} events")
    return reader, events


def statuses(events: Events) -> list[dict[str, Any]]:
    return [d for k, d in events if k == "status"]


def stall_while(events: Events, pause: Callable[[], None], resume: Callable[[], None]) -> float:
    """``pause()`` the source until a ``stalled`` event arrives, ``resume()`` it; the silence
    before the stall (from the last frame predicted to the event), in seconds."""
    pause()
    try:
        wait_until(lambda: any(d["state"] == "stalled" for d in statuses(events)), 20, what="a stalled event")
    finally:
        resume()
    return silence_before_stall(events)


def silence_before_stall(events: Events) -> float:
    """From the last frame predicted before the stall to the stall, in seconds."""
    i = next(i for i, (k, d) in enumerate(events) if k == "status" and d["state"] == "stalled")
    last = max(float(d["captured_at"]) for k, d in events[:i] if k == "prediction")
    return float(events[i][1]["at"]) - last


def check_recovery(gw: GatewayProcess, sid: str, events: Events, pid: int) -> None:
    after = next(i for i, (k, d) in enumerate(events) if k == "status" and d["state"] == "stalled")
    wait_until(
        lambda: any(k == "prediction" for k, _ in events[after:]) and stream_info(gw, sid)["state"] == "running",
        30,
        what=f"{sid} running and predicting again",
    )
    info = stream_info(gw, sid)
    assert info["stalls"] >= 1 and info["transitions"]["stalled"] >= 1, info
    assert value(scrape(gw), "streamml_stalls_total", stream=sid, model="mobilenet_v3_small") >= 1
    assert gw.pid == pid, "no gateway restart"


def test_frozen_rtsp_server_is_stalled_then_running(rig: tuple[GatewayProcess, RtspServer, PipeCamera]) -> None:
    gw, camera, _ = rig
    pid = gw.pid
    reader, events = watch(gw, "cam", 60)
    # when the camera's server freezes with its connection open, until the stream is stalled
    silence = stall_while(events, camera.freeze, camera.thaw)
    # then the stall came within the read timeout + 2 s of the last frame, and the stream recovers
    assert silence < READ_TIMEOUT + 2, f"stalled {silence:.1f}s after the last frame"
    check_recovery(gw, "cam", events, pid)
    reader.join(70)


def test_paused_pipe_writer_is_stalled_then_running(rig: tuple[GatewayProcess, RtspServer, PipeCamera]) -> None:
    gw, _, pipe = rig
    pid = gw.pid
    reader, events = watch(gw, "pipe", 60)
    # when the FIFO's writer pauses without closing it, until the stream is stalled (and stays so)

    def paused() -> None:
        pipe.pause()
        wait_until(lambda: any(d["state"] == "stalled" for d in statuses(events)), 20, what="a stalled event")
        assert stream_info(gw, "pipe")["state"] == "stalled", "a pipe stays stalled until its writer resumes"

    silence = stall_while(events, paused, pipe.resume)
    assert silence < READ_TIMEOUT + 2, f"stalled {silence:.1f}s after the last frame"
    check_recovery(gw, "pipe", events, pid)
    states = [d["state"] for d in statuses(events)]
    assert states[states.index("stalled") + 1] == "running", f"the pipe is not reopened: {states}"
    reader.join(70)
