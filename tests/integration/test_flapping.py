"""A flapping camera: the RTSP server is killed and brought back on the same port, cycle
after cycle.  Each time the stream is back within 5 s of the server's return, and the
gateway's file descriptors, threads and memory stay flat (3 cycles here; `make chaos`
runs 50 with STREAMML_FLAP_CYCLES=50)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from embedded_triton import EmbeddedTriton
from harness.helpers import free_port, gateway, stream_info, wait_until
from harness.peers.rtsp import RtspServer
from harness.results import record

CYCLES = int(os.environ.get("STREAMML_FLAP_CYCLES", "3"))
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120 + 20 * CYCLES)]


def usage(pid: int) -> tuple[int, int, float]:
    """(open file descriptors, threads, RSS in MB) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return fds, int(status["Threads"]), int(status["VmRSS"].split()[0]) / 1024


def test_a_flapping_camera_comes_back_every_time_without_leaks(triton: EmbeddedTriton, tmp_path: Path) -> None:
    port = free_port()
    camera = RtspServer(port=port)
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_RTSP_URL": camera.url,
        "APP_INGEST__BACKOFF_INITIAL_S": "0.2",
        "APP_INGEST__BACKOFF_MAX_S": "1",
        "APP_INGEST__OPEN_TIMEOUT_S": "2",
        "APP_INGEST__READ_TIMEOUT_S": "2",
    }
    firsts: list[float] = []
    try:
        with gateway(env, tmp_path / "gw.log", access_log=False) as gw:
            wait_until(lambda: stream_info(gw, "default")["state"] == "running", 60, what="the stream running")
            wait_until(lambda: stream_info(gw, "default")["frames_read"] > 10, 30, what="frames")
            before = usage(gw.pid)
            for cycle in range(CYCLES):
                # when the camera dies
                camera.kill()
                wait_until(
                    lambda: stream_info(gw, "default")["state"] in {"reconnecting", "stalled"},
                    15,
                    what=f"cycle {cycle}: the stream to notice",
                )
                # and comes back on the same port
                camera = RtspServer(port=port)
                back = time.monotonic()
                read = stream_info(gw, "default")["frames_read"]
                wait_until(
                    lambda read=read: (
                        (i := stream_info(gw, "default"))["state"] == "running"  # type: ignore[misc]
                        and i["frames_read"] > read
                    ),
                    15,
                    interval=0.05,
                    what=f"cycle {cycle}: frames again",
                )
                firsts.append(time.monotonic() - back)
            after = usage(gw.pid)
    finally:
        camera.stop()
    # then every return gave frames within 5 s, and nothing leaked
    assert max(firsts) < 5.0, f"first frame after a return: {[round(f, 2) for f in firsts]}"
    assert after[0] <= before[0] + 2, f"file descriptors {before[0]} -> {after[0]}"
    assert after[1] <= before[1] + 2, f"threads {before[1]} -> {after[1]}"
    assert after[2] - before[2] < 50, f"RSS {before[2]:.0f} -> {after[2]:.0f} MB"
    firsts.sort()
    record(
        "camera_flapping",
        cycles=CYCLES,
        first_frame_p50_s=round(firsts[len(firsts) // 2], 2),
        first_frame_max_s=round(firsts[-1], 2),
        fds=f"{before[0]} -> {after[0]}",
        threads=f"{before[1]} -> {after[1]}",
        rss_mb=f"{before[2]:.0f} -> {after[2]:.0f}",
    )
