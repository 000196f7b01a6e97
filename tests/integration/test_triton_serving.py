"""The embedded Triton: served outputs equal onnxruntime, dynamic batching, clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from torchvision.models import MobileNet_V3_Small_Weights

from embedded_triton import EmbeddedTriton
from gateway.preprocess import classifier_input
from harness.helpers import PYTHON, ROOT, TRITON_VENV, free_port, process_group_members, scene, wait_until
from tests.conftest import MODEL
from tests.integration.conftest import Reference, new_triton

pytestmark = pytest.mark.integration
CATEGORIES = list(MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"])


def image_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.stack(
        [
            classifier_input(scene(300 + 17 * i, 260, seed=seed + i), resize_size=256, crop_hw=(224, 224))
            for i in range(n)
        ]
    )


def infer_input(batch: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("input", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    return inp


def top5(logits: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-logits)[:5]]


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    diff = float(np.abs(got - want).max())
    assert diff <= 1e-4, f"{what}: served logits differ from onnxruntime by {diff:.3g}"
    for g, w in zip(got, want, strict=True):
        assert top5(g) == top5(w), f"{what}: top-5 differs: {top5(g)} vs {top5(w)}"


def stats(client: grpcclient.InferenceServerClient) -> tuple[int, int, set[int]]:
    s = client.get_inference_statistics(MODEL).model_stats[0]
    return s.inference_count, s.execution_count, {b.batch_size for b in s.batch_stats}


def test_batch_1_equals_onnxruntime(triton: EmbeddedTriton, reference: Reference) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    for i, image in enumerate(image_batch(4)):
        batch = image[np.newaxis]
        result = client.infer(MODEL, [infer_input(batch)], outputs=[grpcclient.InferRequestedOutput("logits")])
        assert_same(result.as_numpy("logits"), reference(batch)[0], f"image {i}")


def test_one_request_carrying_a_batch(triton: EmbeddedTriton, reference: Reference) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    batch = image_batch(4, seed=10)
    result = client.infer(MODEL, [infer_input(batch)], outputs=[grpcclient.InferRequestedOutput("logits")])
    assert_same(result.as_numpy("logits"), reference(batch)[0], "batch of 4")


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    triton: EmbeddedTriton, reference: Reference
) -> None:
    # given 32 different images sent at once by concurrent clients
    images = image_batch(32, seed=100)
    sync = grpcclient.InferenceServerClient(triton.grpc_url)
    inferences0, executions0, _ = stats(sync)

    async def burst() -> list[np.ndarray]:
        client = grpcaio.InferenceServerClient(triton.grpc_url)
        try:
            out = grpcclient.InferRequestedOutput("logits")
            results = await asyncio.gather(
                *(client.infer(MODEL, [infer_input(img[np.newaxis])], outputs=[out]) for img in images)
            )
            return [r.as_numpy("logits")[0] for r in results]
        finally:
            await client.close()

    got = asyncio.run(burst())
    # then every answer is the one for its own image
    want = reference(images)[0]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_same(g[np.newaxis], w[np.newaxis], f"concurrent image {i}")
    # and Triton ran fewer executions than requests: the dynamic batcher combined them
    inferences1, executions1, sizes = stats(sync)
    inferences, executions = inferences1 - inferences0, executions1 - executions0
    assert inferences == 32
    assert executions < inferences, f"{inferences} requests in {executions} executions: no dynamic batching"
    assert max(sizes) > 1, f"batch sizes seen: {sorted(sizes)}"


def test_server_side_top_k_uses_the_label_file(triton: EmbeddedTriton, reference: Reference) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    batch = image_batch(1, seed=7)
    out = grpcclient.InferRequestedOutput("probabilities", class_count=5)
    rows = client.infer(MODEL, [infer_input(batch)], outputs=[out]).as_numpy("probabilities")
    entries = [e.decode().split(":", 2) for e in rows[0]]
    probs = reference(batch)[1][0]
    assert [int(i) for _, i, _ in entries] == top5(probs)
    assert [label for _, _, label in entries] == [CATEGORIES[i] for i in top5(probs)]
    assert np.allclose([float(v) for v, _, _ in entries], probs[top5(probs)], atol=1e-6)


def test_metrics_endpoint_counts_inferences(triton: EmbeddedTriton) -> None:
    body = httpx.get(triton.metrics_url, timeout=5).text
    assert f'nv_inference_request_success{{model="{MODEL}",version="1"}}' in body


def test_stop_leaves_no_orphans(exported_repo: Path, tmp_path: Path) -> None:
    server = new_triton(exported_repo, tmp_path)
    with server:
        pid = server.pid
        assert pid is not None
        members = process_group_members(pid)
        assert len(members) >= 2, f"expected tritonserver and its python stub, found {members}"
    # after stop: neither the server nor the stub is left
    assert process_group_members(pid) == [], "processes survived stop()"
    server.stop()  # idempotent


def test_killed_launcher_takes_the_server_down(exported_repo: Path, tmp_path: Path) -> None:
    # given the CLI launcher serving the repository
    http = free_port()
    launcher = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "embedded_triton",
            "--model-repository",
            str(exported_repo),
            "--work-dir",
            str(tmp_path),
            "--venv",
            str(TRITON_VENV),
            "--grpc-port",
            str(free_port()),
            "--http-port",
            str(http),
            "--metrics-port",
            str(free_port()),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _ready(http), 120, what="launcher's Triton ready")
        server_pids = [p for p in _pids_with(str(tmp_path)) if p != launcher.pid]
        assert server_pids, "no tritonserver process found"
        # when the launcher is killed without a chance to clean up
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        # then the server and its stub go too
        wait_until(lambda: not _pids_with(str(tmp_path)), 30, what="tritonserver to exit after its parent died")
    finally:
        if launcher.poll() is None:
            launcher.kill()


def _ready(http_port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _pids_with(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in cmdline and state != "Z":
                pids.append(int(entry.name))
    return pids
