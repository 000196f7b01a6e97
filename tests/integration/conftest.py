"""Real servers on loopback: the embedded Triton and the gateway under uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from embedded_triton import EmbeddedTriton, TritonPorts
from harness.helpers import TRITON_VENV, GatewayProcess, free_port, gateway

pytestmark = pytest.mark.integration


def new_triton(repo: Path, work_dir: Path, ports: TritonPorts | None = None) -> EmbeddedTriton:
    return EmbeddedTriton(
        model_repository=repo,
        work_dir=work_dir,
        venv=TRITON_VENV,
        ports=ports or TritonPorts(grpc=free_port(), http=free_port(), metrics=free_port()),
    )


@pytest.fixture(scope="session")
def triton(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    with new_triton(exported_repo, tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture(scope="session")
def gateway_proc(triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_TRITON__REQUEST_TIMEOUT_S": "10",
        "APP_UPLOAD__MAX_BYTES": str(2 * 1024 * 1024),
        "APP_CORS_ORIGINS": '["http://dashboard.test"]',
        # loopback is an allowed host, but no allowed_networks: POST /streams must refuse it
        "APP_STREAM_POLICY__ALLOWED_HOSTS": '["127.0.0.1", "localhost"]',
    }
    with gateway(env, tmp_path_factory.mktemp("gateway") / "gateway.log") as gw:
        yield gw


class Reference:
    """onnxruntime in process on the same exported file: what Triton must reproduce."""

    def __init__(self, onnx_path: Path) -> None:
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.session.run(["logits", "probabilities"], {"input": batch})
        return logits, probs


@pytest.fixture(scope="session")
def reference(onnx_path: Path) -> Reference:
    return Reference(onnx_path)
