"""A model instance crashes (its python-backend stub is killed): the gateway retries on a
healthy instance; with none left the model is degraded (503, a status event, readiness),
and it recovers when an inference succeeds again."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from embedded_triton import EmbeddedTriton
from harness.helpers import SseRecorder, encode, gateway, process_group_members, scene, scrape, value, wait_until
from harness.peers.rtsp import RtspServer
from harness.results import record
from tests.integration.conftest import new_triton

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
MODEL = "mobilenet_v3_small"
IMAGE = encode(scene(320, 240), "JPEG")
REQUESTS = 40


def stubs(server: EmbeddedTriton, model: str) -> list[int]:
    assert server.pid is not None
    found = []
    for pid in process_group_members(server.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "triton_python_backend_stub" in cmdline and f"/{model}/" in cmdline:
            found.append(pid)
    return found


def direct_failures(server: EmbeddedTriton, n: int) -> int:
    """``n`` inferences straight to Triton with no retry: how many fail."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    meta = client.get_model_metadata(MODEL)
    inp = meta.inputs[0]
    shape = [1, *(int(d) for d in inp.shape[1:])]
    x = grpcclient.InferInput(inp.name, shape, inp.datatype)
    x.set_data_from_numpy(np.zeros(shape, np.uint8 if inp.datatype == "UINT8" else np.float32))
    failed = 0
    for _ in range(n):
        try:
            client.infer(MODEL, [x], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=1)])
        except InferenceServerException:
            failed += 1
    client.close()
    return failed


@pytest.fixture
def own_triton(exported_repo: Path, tmp_path: Path) -> Iterator[EmbeddedTriton]:
    with new_triton(exported_repo, tmp_path / "triton") as server:
        yield server


def test_a_crashed_instance_costs_no_request_and_a_dead_model_is_reported(
    own_triton: EmbeddedTriton, tmp_path: Path
) -> None:
    camera = RtspServer()
    env = {
        "APP_TRITON__URL": own_triton.grpc_url,
        "APP_TRITON__RETRY_AFTER_S": "1",
        "APP_RTSP_URL": camera.url,
        "APP_FRAME_SAMPLE_FPS": "5",
    }
    try:
        with gateway(env, tmp_path / "gw.log") as gw:
            sub = SseRecorder(f"{gw.url}/stream")
            events = sub.events
            wait_until(lambda: any(e.type == "prediction" for e in events), 60, what="first prediction")
            pids = stubs(own_triton, MODEL)
            assert len(pids) == 2, f"the classifier should run 2 instances, found stubs {pids}"

            # when one of the two instances crashes
            os.kill(pids[0], signal.SIGKILL)
            wait_until(lambda: direct_failures(own_triton, 2) > 0, 30, what="Triton to notice the dead stub")
            codes, without_retry = [], 0
            for _ in range(REQUESTS):  # side by side, in the same window: the gateway, and a client with no retry
                r = httpx.post(f"{gw.url}/predict", content=IMAGE, headers={"content-type": "image/jpeg"})
                codes.append(r.status_code)
                without_retry += direct_failures(own_triton, 1)
            # then no /predict fails: the retry lands on the healthy instance (a client without it loses some)
            assert codes == [200] * REQUESTS, f"/predict during the crash: {codes}"
            # the gateway did meet the dead instance (else the test proved nothing), and retried
            retried = value(scrape(gw), "streamml_inference_retries_total", model=MODEL, reason="crashed_instance")
            assert retried > 0, "the gateway never met the dead instance (or did not count its retries)"
            assert not any(e.type == "status" and e.data["triton"] == "degraded" for e in events)
            assert httpx.get(f"{gw.url}/health/ready").status_code == 200

            # when the other instance crashes too
            os.kill(pids[1], signal.SIGKILL)
            wait_until(lambda: direct_failures(own_triton, 1) > 0 and direct_failures(own_triton, 1) > 0, 30)
            r = httpx.post(f"{gw.url}/predict", content=IMAGE, headers={"content-type": "image/jpeg"})
            # then the model is degraded: 503 + Retry-After, a status event, readiness says which model
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_degraded", r.text
            assert r.headers["retry-after"] == "1"
            wait_until(
                lambda: any(e.type == "status" and e.data["triton"] == "degraded" for e in events),
                10,
                what="a status event saying the model is degraded",
            )
            ready = httpx.get(f"{gw.url}/health/ready", timeout=10)
            assert ready.status_code == 503, ready.text
            assert "degraded" in ready.json()["components"]["models"][MODEL]["error"]
            assert value(scrape(gw), "streamml_errors_total", code="model_degraded") >= 1

            # when Triton loads the model again (new instances), readiness and the stream recover
            own_triton._repository_call(MODEL, "load")
            wait_until(lambda: httpx.get(f"{gw.url}/health/ready").status_code == 200, 60, what="ready again")
            wait_until(
                lambda: (
                    any(e.type == "status" and e.data["triton"] == "available" and e.data["reason"] for e in events)
                    and events[-1].type == "prediction"
                ),
                30,
                what="the stream to resume",
            )
            assert not sub.close().ended, "the SSE response ended"
            record(
                "stub_killed",
                requests=REQUESTS,
                predict_failed_with_retry=REQUESTS - codes.count(200),
                retries=retried,
                direct_failed_without_retry=without_retry,
                instances=2,
            )
    finally:
        camera.stop()
