"""SIGTERM to the gateway: requests in flight finish, every SSE client gets a final
`status` event (`shutting_down`) and a clean end of its response, and the process exits
within the grace period."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from embedded_triton import EmbeddedTriton
from harness.helpers import PYTHON, GatewayProcess, SseRecorder, encode, scene, wait_until
from harness.peers.rtsp import RtspServer
from harness.results import record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
IMAGE = encode(scene(320, 240), "JPEG")
SUBSCRIBERS = 5


def test_sigterm_drains_requests_and_ends_every_sse_response_cleanly(triton: EmbeddedTriton, tmp_path: Path) -> None:
    camera = RtspServer()
    gw = GatewayProcess({"APP_TRITON__URL": triton.grpc_url, "APP_RTSP_URL": camera.url}, tmp_path / "gw.log")
    gw.env |= {"APP_SERVER__HOST": "127.0.0.1", "APP_SERVER__PORT": str(gw.port)}
    gw.command = [PYTHON, "-m", "gateway"]
    try:
        gw.start()
        subs = [SseRecorder(f"{gw.url}/stream") for _ in range(SUBSCRIBERS)]
        wait_until(lambda: all(s.of("prediction") for s in subs), 60, what="every subscriber's first prediction")

        # given requests in flight, sent by 4 clients in a loop
        stop = threading.Event()
        outcomes: list[tuple[float, int | str]] = []

        def client() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        r = c.post(f"{gw.url}/predict", content=IMAGE, headers={"content-type": "image/jpeg"})
                        outcomes.append((started, r.status_code))
                    except httpx.HTTPError as e:
                        outcomes.append((started, type(e).__name__))

        pool = ThreadPoolExecutor(4)
        for _ in range(4):
            pool.submit(client)
        wait_until(lambda: len(outcomes) >= 20, 30, what="requests under way")

        # when the gateway gets SIGTERM
        assert gw.proc is not None
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(20)
        exited = time.monotonic() - signalled
        stop.set()
        pool.shutdown(wait=True)
        responses = [s.close() for s in subs]

        # then it exits cleanly within the grace period
        # (uvicorn re-raises the signal it handled once it is done: killed by SIGTERM, after a clean shutdown)
        assert code in (0, -signal.SIGTERM), f"exit status {code}"
        assert "Application shutdown complete." in gw.log()
        assert exited < 15, f"took {exited:.1f}s to exit"
        # requests sent before the signal all succeeded
        before = [o for t, o in outcomes if t < signalled - 0.05]
        assert before and all(o == 200 for o in before), f"requests before SIGTERM: {sorted(set(map(str, before)))}"
        # every SSE client got the final status event, then the end of the response (no cut chunk)
        for i, (sub, response) in enumerate(zip(subs, responses, strict=True)):
            assert response.ended, f"subscriber {i}: the response was cut off, not ended"
            last = sub.events[-1]
            assert last.type == "status" and last.data["reason"] == "shutting_down", f"subscriber {i}: {last}"
        log = gw.log()
        assert "ASGI callable returned without completing response" not in log
        assert "Traceback" not in log, log[-3000:]
        record(
            "sigterm",
            exit_s=round(exited, 2),
            requests_before_signal=len(before),
            failed_before_signal=sum(o != 200 for o in before),
            sse_clients=SUBSCRIBERS,
            sse_final_event=sum(s.events[-1].data.get("reason") == "shutting_down" for s in subs),
            sse_cut_off=sum(not r.ended for r in responses),
        )
    finally:
        gw.stop()
        camera.stop()
