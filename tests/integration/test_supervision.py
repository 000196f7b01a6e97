"""`make run`'s launcher supervises tritonserver: a killed server is restarted while the
gateway, its streams and its SSE clients stay up; a spent restart budget ends the run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from harness.helpers import PYTHON, GatewayProcess, SseRecorder, children, encode, free_port, scene, wait_until
from harness.peers.rtsp import RtspServer
from harness.results import record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
IMAGE = encode(scene(320, 240), "JPEG")


@contextmanager
def supervised_stack(repo: Path, tmp_path: Path, env: dict[str, str], *launcher_args: str) -> Iterator[GatewayProcess]:
    """``python -m embedded_triton ... -- python -m gateway``: what `make run` starts."""
    http = free_port()
    gw = GatewayProcess(env, tmp_path / "stack.log")
    gw.env |= {"APP_SERVER__HOST": "127.0.0.1", "APP_SERVER__PORT": str(gw.port)}
    gw.env.pop("APP_TRITON__URL", None)
    gw.command = [
        PYTHON,
        "-m",
        "embedded_triton",
        *("--model-repository", str(repo), "--work-dir", str(tmp_path / "triton")),
        *("--grpc-port", str(free_port()), "--http-port", str(http), "--metrics-port", str(free_port())),
        *launcher_args,
        "--",
        PYTHON,
        "-m",
        "gateway",
    ]
    gw.triton_http = f"http://127.0.0.1:{http}"  # type: ignore[attr-defined]
    try:
        gw.start(timeout=180)
        yield gw
    finally:
        gw.stop()


def triton_ready(gw: GatewayProcess) -> bool:
    try:
        return httpx.get(f"{gw.triton_http}/v2/health/ready", timeout=1).status_code == 200  # type: ignore[attr-defined]
    except httpx.HTTPError:
        return False


def only(pids: list[int], what: str) -> int:
    assert len(pids) == 1, f"expected one {what}, found {pids}"
    return pids[0]


def test_killed_triton_is_restarted_and_nobody_is_disconnected(exported_repo: Path, tmp_path: Path) -> None:
    camera = RtspServer()
    env = {
        "APP_RTSP_URL": camera.url,
        "APP_TRITON__REQUEST_TIMEOUT_S": "2",
        "APP_TRITON__RETRY_AFTER_S": "1",
        "APP_TRITON__MAX_RECONNECT_BACKOFF_S": "0.5",
        "APP_FRAME_SAMPLE_FPS": "5",
    }
    try:
        with supervised_stack(exported_repo, tmp_path, env, "--restart-backoff", "0.5") as gw:
            gateway_pid = only(children(gw.pid, "-m gateway"), "gateway process")
            sub = SseRecorder(f"{gw.url}/stream")
            events = sub.events
            wait_until(lambda: any(e.type == "prediction" for e in events), 60, what="first prediction")

            # when tritonserver is SIGKILLed mid-stream
            server_pid = only(children(gw.pid, "tritonserver"), "tritonserver")
            killed = time.time()
            os.kill(server_pid, signal.SIGKILL)
            answers: list[httpx.Response] = []
            readiness: list[int] = []
            while not triton_ready(gw) or server_pid in children(gw.pid, "tritonserver"):
                answers.append(httpx.post(f"{gw.url}/predict", content=IMAGE, headers={"content-type": "image/jpeg"}))
                readiness.append(httpx.get(f"{gw.url}/health/ready", timeout=5).status_code)
                assert time.time() - killed < 120, "tritonserver was not restarted within 120 s"
            back = time.time()
            wait_until(
                lambda: any(e.type == "prediction" and e.received > back for e in events),
                30,
                what="predictions after the restart",
            )
            resumed = min(e.received for e in events if e.type == "prediction" and e.received > back)
            wait_until(lambda: httpx.get(f"{gw.url}/health/ready").status_code == 200, 30, what="ready again")
            response = sub.close()

            # then the gateway never restarted, the SSE client stayed connected and was told
            assert children(gw.pid, "-m gateway") == [gateway_pid], "the gateway process was restarted"
            assert not response.ended, "the SSE response ended during the outage"
            down = [e for e in events if e.type == "status" and e.data["triton"] == "unavailable"]
            assert down, "no status event said Triton was unavailable"
            status_after = down[0].received - killed
            assert status_after < 2.0, f"status event {status_after:.2f}s after the kill"
            assert any(e.type == "status" and e.data["triton"] == "available" and e.received > killed for e in events)
            # /predict answered 503 + Retry-After meanwhile, readiness turned 503
            unavailable = [r for r in answers if r.status_code == 503]
            assert unavailable, f"no 503 during the outage: {[r.status_code for r in answers]}"
            assert all(r.headers.get("retry-after") == "1" for r in unavailable)
            assert all(r.status_code in (200, 503) for r in answers), [r.status_code for r in answers]
            assert 503 in readiness
            assert resumed - back < 5.0, f"predictions resumed {resumed - back:.2f}s after Triton was ready"
            assert "restarting tritonserver (restart 1)" in gw.log()
            assert "ASGI callable returned without completing response" not in gw.log()
            record(
                "triton_killed",
                status_event_s=round(status_after, 3),
                triton_back_s=round(back - killed, 3),
                predictions_resumed_after_ready_s=round(resumed - back, 3),
                sse_disconnected=0,
                gateway_restarts=0,
                predict_503=len(unavailable),
                predict_other=len([r for r in answers if r.status_code not in (200, 503)]),
            )
    finally:
        camera.stop()


def test_a_spent_restart_budget_ends_the_run(exported_repo: Path, tmp_path: Path) -> None:
    with supervised_stack(exported_repo, tmp_path, {}, "--max-restarts", "0") as gw:
        server_pid = only(children(gw.pid, "tritonserver"), "tritonserver")
        launcher = gw.proc
        assert launcher is not None
        # when the server dies and no restart is allowed
        os.kill(server_pid, signal.SIGKILL)
        # then the launcher stops the gateway and exits with an error
        code = launcher.wait(60)
        assert code == 1, f"launcher exited {code}"
        assert "restart budget is spent" in gw.log()
        assert not children(launcher.pid), "the gateway outlived the launcher"
