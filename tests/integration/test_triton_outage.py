"""Triton stopped, frozen, or not there at start-up: 503 within the deadline, then recovery."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedded_triton import EmbeddedTriton
from harness.helpers import GatewayProcess, encode, gateway, scene, wait_until
from harness.results import record
from tests.integration.conftest import new_triton

pytestmark = pytest.mark.integration
DEADLINE_S = 2.0
IMAGE = encode(scene(320, 240), "JPEG")


def predict(gw: GatewayProcess) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.post(f"{gw.url}/predict", files={"image": ("a.jpg", IMAGE, "image/jpeg")}, timeout=30)
    return r, time.monotonic() - t0


def gateway_env(server: EmbeddedTriton, startup_s: float = 30) -> dict[str, str]:
    return {
        "APP_TRITON__URL": server.grpc_url,
        "APP_TRITON__REQUEST_TIMEOUT_S": str(DEADLINE_S),
        "APP_TRITON__STARTUP_TIMEOUT_S": str(startup_s),
        "APP_TRITON__RETRY_AFTER_S": "3",
        "APP_TRITON__MAX_RECONNECT_BACKOFF_S": "1",
    }


def assert_503_within_deadline(gw: GatewayProcess) -> httpx.Response:
    r, elapsed = predict(gw)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "3"
    assert r.json()["error"]["code"] in {"inference_unavailable", "inference_timeout"}
    assert elapsed < DEADLINE_S + 1.5, f"503 took {elapsed:.2f}s; the deadline is {DEADLINE_S}s"
    return r


def recovers(gw: GatewayProcess) -> bool:
    return predict(gw)[0].status_code == 200


@pytest.fixture
def own_triton(exported_repo: Path, tmp_path: Path) -> Iterator[EmbeddedTriton]:
    server = new_triton(exported_repo, tmp_path / "triton")
    with server:
        yield server


def test_stopped_triton_gives_503_then_recovers(
    own_triton: EmbeddedTriton, exported_repo: Path, tmp_path: Path
) -> None:
    with gateway(gateway_env(own_triton), tmp_path / "gw.log") as gw:
        assert recovers(gw)
        # when Triton stops
        own_triton.stop()
        # then /predict answers 503 + Retry-After within the deadline, liveness stays up, readiness drops
        assert_503_within_deadline(gw)
        assert httpx.get(f"{gw.url}/health").status_code == 200
        ready = httpx.get(f"{gw.url}/health/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["components"]["triton"]["ready"] is False
        # and when Triton is back on the same ports, predictions resume without restarting the gateway
        with new_triton(exported_repo, tmp_path / "triton2", ports=own_triton.ports):
            wait_until(lambda: recovers(gw), 30, interval=0.5, what="predictions to resume")
            # and readiness follows within the reconnect backoff (1 s): uploads and health probes
            # use two channels (sync and aio), and each reconnects on its own schedule
            resumed = time.monotonic()
            wait_until(lambda: httpx.get(f"{gw.url}/health/ready").status_code == 200, 10, 0.1, what="ready")
            assert time.monotonic() - resumed < 3.0, f"ready {time.monotonic() - resumed:.1f}s after predictions"
        assert " 500 " not in gw.log()


def test_frozen_triton_times_out_within_the_deadline(own_triton: EmbeddedTriton, tmp_path: Path) -> None:
    with gateway(gateway_env(own_triton), tmp_path / "gw.log") as gw:
        assert recovers(gw)
        pid = own_triton.pid
        assert pid is not None
        # when Triton hangs with its sockets open (SIGSTOP)
        os.kill(pid, signal.SIGSTOP)
        try:
            r = assert_503_within_deadline(gw)
            assert r.json()["error"]["code"] == "inference_timeout"
            assert httpx.get(f"{gw.url}/health", timeout=2).status_code == 200
        finally:
            os.kill(pid, signal.SIGCONT)
        # then it answers again once Triton resumes
        wait_until(lambda: recovers(gw), 30, interval=0.5, what="predictions after SIGCONT")


def test_gateway_starts_before_triton(exported_repo: Path, tmp_path: Path) -> None:
    # given a gateway started while nothing listens on the Triton port
    server = new_triton(exported_repo, tmp_path / "triton")
    with gateway(gateway_env(server, startup_s=1), tmp_path / "gw.log") as gw:
        assert httpx.get(f"{gw.url}/health").status_code == 200
        assert httpx.get(f"{gw.url}/health/ready", timeout=10).status_code == 503
        assert_503_within_deadline(gw)
        # when Triton comes up, the gateway reads the model's metadata then and serves
        with server:
            wait_until(lambda: recovers(gw), 30, interval=0.5, what="first prediction after late Triton")
            assert httpx.get(f"{gw.url}/health/ready").status_code == 200


def test_concurrent_requests_to_a_frozen_triton_each_answer_within_the_deadline(
    own_triton: EmbeddedTriton, tmp_path: Path
) -> None:
    import asyncio

    pid = own_triton.pid
    assert pid is not None
    with gateway(gateway_env(own_triton), tmp_path / "gw.log") as gw:
        assert recovers(gw)  # the channel is connected
        # given a Triton that hangs, and requests for a model whose metadata the gateway has not read yet
        os.kill(pid, signal.SIGSTOP)
        try:

            async def one(c: httpx.AsyncClient) -> tuple[int, float]:
                t0 = time.monotonic()
                r = await c.post(
                    f"{gw.url}/predict?model=not_loaded_yet", files={"image": ("a.jpg", IMAGE, "image/jpeg")}
                )
                return r.status_code, time.monotonic() - t0

            async def burst() -> list[tuple[int, float]]:
                async with httpx.AsyncClient(timeout=60) as c:
                    return await asyncio.gather(*(one(c) for _ in range(8)))

            # when 8 requests arrive at once, then none queues behind another's deadline
            results = asyncio.run(burst())
            # and liveness answers at once meanwhile
            health = []
            with httpx.Client(timeout=5) as c:
                for _ in range(100):
                    t0 = time.monotonic()
                    assert c.get(f"{gw.url}/health").status_code == 200
                    health.append(time.monotonic() - t0)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert all(status == 503 for status, _ in results), results
        worst = max(elapsed for _, elapsed in results)
        assert worst < DEADLINE_S + 1.5, f"slowest 503 took {worst:.2f}s; the deadline is {DEADLINE_S}s"
        health.sort()
        health_p50, health_p99 = health[len(health) // 2], health[int(0.99 * (len(health) - 1))]
        # the target is p99 < 50 ms (docs/reliability.md records it); on CI's 2 shared cores one
        # scheduling hiccup is the p99 of 100 calls, so the test bounds the median and the tail apart
        assert health_p50 < 0.05, f"/health p50 {health_p50 * 1000:.1f} ms while Triton hangs"
        assert health_p99 < 0.25, f"/health p99 {health_p99 * 1000:.1f} ms while Triton hangs"
        record(
            "triton_hung",
            deadline_s=DEADLINE_S,
            requests=len(results),
            answered_503=sum(status == 503 for status, _ in results),
            slowest_503_s=round(worst, 2),
            health_p50_ms=round(health_p50 * 1000, 1),
            health_p99_ms=round(health_p99 * 1000, 1),
        )
        wait_until(lambda: recovers(gw), 30, interval=0.5, what="predictions after SIGCONT")
