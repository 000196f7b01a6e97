"""``make run`` as a new user runs it, with no configuration: the embedded Triton, the gateway, and
the demo stream, whose predictions ``GET /stream`` and the viewer show at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from harness.helpers import ROOT, SseEvent, free_port, read_sse, wait_until

pytestmark = pytest.mark.timeout(300)


def test_make_run_with_no_configuration_serves_the_demo_stream(exported_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    args = [f"REPO={exported_repo}", f"PORT={port}"]
    args += [f"{name}={free_port()}" for name in ("GRPC_PORT", "HTTP_PORT", "METRICS_PORT")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}  # no configuration at all
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches make, the launcher, Triton and the gateway
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, f"make run exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 180, what="make run to serve /health")
        streams = httpx.get(f"{url}/streams", timeout=10).json()
        assert [s["id"] for s in streams] == ["demo"], streams
        # GET /stream (the default stream) yields predictions of the demo clip
        predictions: list[SseEvent] = []

        def keep(e: SseEvent) -> None:
            if e.type == "prediction":
                predictions.append(e)

        got = asyncio.run(read_sse(f"{url}/stream", 60, on_event=keep, until=lambda: len(predictions) >= 3))
        assert got.status == 200
        assert len(predictions) >= 3, got.events
        assert {p.data["stream"] for p in predictions} == {"demo"}
        assert len({p.data["frame"] for p in predictions}) == len(predictions)
        # and the viewer is there
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200 and "stream-ml" in page.text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "viewer: http://" in log.read_text()
